"""Generation semantics against OpenAI's completions contract (reference §6), on a tiny model.

The tiny model is random, so its text is noise; the tests pin behaviour (stops, offsets,
penalties, ranking) relative to the model's own logits, computed here without a KV cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine.generation import (
    GenerateRequest,
    InvalidRequestError,
    chat_prompt,
    generate,
    generate_stream,
)

PROMPT = "Hello world"


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[Any, Any]:
    model: Any = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return model, tokenizer


def _prompt_ids(tokenizer: Any, prompt: str = PROMPT) -> list[int]:
    return list(tokenizer(prompt)["input_ids"])


def _full_logits(model: Any, ids: list[int], vocab: int) -> torch.Tensor:
    """Logits for every position, from one uncached forward (the reference).

    Ids past the tokenizer's vocab (padding rows of the embedding) are never generated.
    """
    with torch.no_grad():
        logits: torch.Tensor = model(input_ids=torch.tensor([ids])).logits[0].float()
    logits[:, vocab:] = -torch.inf
    return logits


def _reference_greedy(
    model: Any,
    tokenizer: Any,
    prompt_ids: list[int],
    steps: int,
    *,
    presence: float = 0.0,
    frequency: float = 0.0,
    bias: dict[int, float] | None = None,
) -> list[int]:
    """Greedy decoding written straight from OpenAI's penalty formula, without a cache."""
    ids = list(prompt_ids)
    generated: list[int] = []
    for _ in range(steps):
        logits = _full_logits(model, ids, len(tokenizer))[-1]
        counts = torch.zeros_like(logits)
        for token in generated:
            counts[token] += 1
        logits = logits - counts * frequency - (counts > 0).float() * presence
        for token, value in (bias or {}).items():
            logits[token] += value
        token = int(logits.argmax())
        ids.append(token)
        generated.append(token)
    return generated


def _greedy(**kwargs: Any) -> GenerateRequest:
    defaults: dict[str, Any] = {"prompt": PROMPT, "temperature": 0, "stop_on_eos": False}
    return GenerateRequest(**(defaults | kwargs))


def _stream_texts(model: Any, tokenizer: Any, request: GenerateRequest) -> dict[int, str]:
    texts: dict[int, str] = {}
    for delta in generate_stream(model, tokenizer, request):
        texts[delta.index] = texts.get(delta.index, "") + delta.text
    return texts


def test_generate_greedy_matches_uncached_reference(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny

    first = generate(model, tokenizer, _greedy(max_tokens=12))
    second = generate(model, tokenizer, _greedy(max_tokens=12))

    expected = _reference_greedy(model, tokenizer, _prompt_ids(tokenizer), 12)
    assert first.choices[0].token_ids == expected
    assert first == second
    assert first.choices[0].text == tokenizer.decode(expected, skip_special_tokens=True)


def test_generate_max_tokens_finishes_with_length_and_counts_usage(
    tiny: tuple[Any, Any],
) -> None:
    model, tokenizer = tiny

    result = generate(model, tokenizer, _greedy(max_tokens=7))

    assert result.choices[0].finish_reason == "length"
    assert len(result.choices[0].token_ids) == 7
    prompt_len = len(_prompt_ids(tokenizer))
    assert result.usage.to_dict() == {
        "prompt_tokens": prompt_len,
        "completion_tokens": 7,
        "total_tokens": prompt_len + 7,
    }


def test_generate_eos_stops_unless_disabled(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    eos = {tokenizer.eos_token_id: 100.0}

    stopped = generate(model, tokenizer, _greedy(max_tokens=5, logit_bias=eos, stop_on_eos=True))
    running = generate(model, tokenizer, _greedy(max_tokens=5, logit_bias=eos, stop_on_eos=False))

    assert (stopped.choices[0].text, stopped.choices[0].finish_reason) == ("", "stop")
    assert stopped.usage.completion_tokens == 1
    assert running.choices[0].finish_reason == "length"
    assert running.choices[0].token_ids == [tokenizer.eos_token_id] * 5


def _cross_boundary_stop(tokens: list[str], text: str) -> tuple[str, int]:
    """A two-character stop string made of the end of one token and the start of the next,
    whose first occurrence in the text is at that boundary."""
    offset = 0
    for left, right in zip(tokens, tokens[1:], strict=False):
        offset += len(left)
        if left and right:
            stop = left[-1] + right[0]
            if text.find(stop) == offset - 1:
                return stop, offset - 1
    raise AssertionError("no usable token boundary in the sample text")


def test_generate_stop_matches_text_across_token_boundaries(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    full = generate(model, tokenizer, _greedy(max_tokens=30, logprobs=0)).choices[0]
    assert full.logprobs is not None
    stop, position = _cross_boundary_stop(full.logprobs.tokens, full.text)

    result = generate(model, tokenizer, _greedy(max_tokens=30, stop=["never-seen", stop]))

    choice = result.choices[0]
    assert choice.text == full.text[:position]
    assert choice.finish_reason == "stop"
    assert stop not in choice.text


def test_generate_stop_picks_the_earliest_of_several(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    full = generate(model, tokenizer, _greedy(max_tokens=30)).choices[0].text
    early, late = full[3:5], full[20:23]

    result = generate(model, tokenizer, _greedy(max_tokens=30, stop=[late, early]))

    assert result.choices[0].text == full[: min(full.find(early), full.find(late))]


def test_stream_never_emits_partial_stop_text(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    full = generate(model, tokenizer, _greedy(max_tokens=30, logprobs=0)).choices[0]
    assert full.logprobs is not None
    stop, position = _cross_boundary_stop(full.logprobs.tokens, full.text)
    # A longer stop string that only shares the first characters: held, then released.
    decoy = full.text[position : position + 1] + "\x00never"
    request = _greedy(max_tokens=30, stop=[stop, decoy])

    deltas = list(generate_stream(model, tokenizer, request))

    emitted = ""
    for delta in deltas:
        emitted += delta.text
        assert full.text[:position].startswith(emitted)
    assert emitted == full.text[:position]
    assert [d.finish_reason for d in deltas if d.finish_reason] == ["stop"]
    assert deltas[-1].usage is not None


def test_generate_logprobs_shapes_and_offsets(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    k = 3

    choice = generate(model, tokenizer, _greedy(max_tokens=10, logprobs=k)).choices[0]

    lp = choice.logprobs
    assert lp is not None
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 10
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset == [len("".join(lp.tokens[:i])) for i in range(10)]
    for value, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True):
        assert top is not None
        assert value is not None
        assert len(top) in (k, k + 1)  # the k best, plus the chosen one when it is not among them
        # Greedy picks the most likely token, so its logprob is the best alternative.
        assert value == pytest.approx(max(top.values()), abs=1e-5)
    # The values are the model's own distribution.
    all_ids = _prompt_ids(tokenizer) + choice.token_ids
    logp = torch.log_softmax(_full_logits(model, all_ids, len(tokenizer)), dim=-1)
    start = len(all_ids) - len(choice.token_ids) - 1
    expected = [float(logp[start + i, t]) for i, t in enumerate(choice.token_ids)]
    assert lp.token_logprobs == pytest.approx(expected, abs=1e-4)


def test_generate_logprobs_zero_returns_the_chosen_token_only(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny

    result = generate(model, tokenizer, GenerateRequest(prompt=PROMPT, logprobs=0, seed=3))

    lp = result.choices[0].logprobs
    assert lp is not None
    for value, top in zip(lp.token_logprobs, lp.top_logprobs, strict=True):
        assert top is not None
        assert list(top.values()) == [value]


def test_generate_echo_prepends_prompt(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny

    plain = generate(model, tokenizer, _greedy(max_tokens=6)).choices[0]
    echoed = generate(model, tokenizer, _greedy(max_tokens=6, echo=True)).choices[0]

    assert echoed.text == PROMPT + plain.text
    assert echoed.logprobs is None


def test_generate_echo_with_logprobs_scores_prompt_tokens(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    prompt_ids = _prompt_ids(tokenizer)

    choice = generate(model, tokenizer, _greedy(max_tokens=4, echo=True, logprobs=2)).choices[0]

    lp = choice.logprobs
    assert lp is not None
    assert len(lp.tokens) == len(prompt_ids) + 4
    assert lp.token_logprobs[0] is None
    assert lp.top_logprobs[0] is None
    assert all(v is not None for v in lp.token_logprobs[1:])
    assert "".join(lp.tokens) == choice.text
    assert lp.text_offset[0] == 0
    assert lp.text_offset[len(prompt_ids)] == len(PROMPT)
    logp = torch.log_softmax(_full_logits(model, prompt_ids, len(tokenizer)), dim=-1)
    expected = [float(logp[i - 1, prompt_ids[i]]) for i in range(1, len(prompt_ids))]
    assert lp.token_logprobs[1 : len(prompt_ids)] == pytest.approx(expected, abs=1e-4)


def test_generate_echo_with_zero_max_tokens_only_scores_the_prompt(
    tiny: tuple[Any, Any],
) -> None:
    # How evaluation harnesses compute a prompt's loglikelihood.
    model, tokenizer = tiny

    result = generate(model, tokenizer, _greedy(max_tokens=0, echo=True, logprobs=0))

    choice = result.choices[0]
    assert (choice.text, choice.finish_reason) == (PROMPT, "length")
    assert choice.logprobs is not None
    assert len(choice.logprobs.tokens) == result.usage.prompt_tokens
    assert result.usage.completion_tokens == 0


def test_generate_refuses_a_suffix_without_fill_in_the_middle_tokens(
    tiny: tuple[Any, Any],
) -> None:
    # Appending the suffix to text the model never saw it for would only pretend to honour it.
    model, tokenizer = tiny

    with pytest.raises(InvalidRequestError) as caught:
        generate(model, tokenizer, _greedy(max_tokens=5, suffix=" END"))

    assert caught.value.param == "suffix"
    assert generate(model, tokenizer, _greedy(max_tokens=2, suffix="")).choices[0].text is not None


def test_generate_conditions_on_the_suffix_with_fim_tokens(tiny_model_dir: Path) -> None:
    # A model whose tokenizer has StarCoder's FIM tokens gets the prefix-suffix-middle prompt.
    model: Any = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    names = ["<fim_prefix>", "<fim_suffix>", "<fim_middle>"]
    tokenizer.add_special_tokens({"additional_special_tokens": names})
    model.resize_token_embeddings(len(tokenizer))
    fim = [tokenizer.convert_tokens_to_ids(name) for name in names]

    result = generate(model, tokenizer, _greedy(max_tokens=3, suffix=" END"))

    prefix = _prompt_ids(tokenizer)
    suffix = list(tokenizer(" END", add_special_tokens=False)["input_ids"])
    expected = [fim[0], *prefix, fim[1], *suffix, fim[2]]
    assert result.usage.prompt_tokens == len(expected)
    assert result.choices[0].token_ids == _reference_greedy(model, tokenizer, expected, 3)
    assert not result.choices[0].text.endswith(" END")


def test_generate_n_returns_n_batched_samples(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny

    result = generate(model, tokenizer, GenerateRequest(prompt=PROMPT, n=3, seed=7))

    assert [c.index for c in result.choices] == [0, 1, 2]
    assert len({c.text for c in result.choices}) == 3
    assert result.usage.completion_tokens == sum(len(c.token_ids) for c in result.choices)


def test_generate_best_of_returns_the_n_best_by_mean_logprob(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    common: dict[str, Any] = {"prompt": PROMPT, "seed": 11, "max_tokens": 8, "stop_on_eos": False}
    # The same seed and batch size sample the same four candidates.
    all_four = generate(model, tokenizer, GenerateRequest(n=4, logprobs=0, **common)).choices

    best = generate(model, tokenizer, GenerateRequest(n=2, best_of=4, **common))

    def mean(lp: Any) -> float:
        return float(sum(lp.token_logprobs) / len(lp.token_logprobs))

    ranked = sorted(all_four, key=lambda c: -mean(c.logprobs))
    assert [c.text for c in best.choices] == [c.text for c in ranked[:2]]
    assert [c.index for c in best.choices] == [0, 1]
    assert best.usage.completion_tokens == 4 * 8  # every candidate counts


def test_logit_bias_plus_100_forces_a_token(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    forced = next(t for t in range(len(tokenizer)) if tokenizer.decode([t]).isalpha())

    result = generate(
        model,
        tokenizer,
        GenerateRequest(prompt=PROMPT, n=2, seed=1, max_tokens=6, logit_bias={forced: 100}),
    )

    for choice in result.choices:
        assert choice.token_ids == [forced] * 6


def test_logit_bias_minus_100_bans_tokens(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    greedy_ids = generate(model, tokenizer, _greedy(max_tokens=10)).choices[0].token_ids
    banned = dict.fromkeys(greedy_ids, -100.0)

    result = generate(model, tokenizer, _greedy(max_tokens=10, logit_bias=banned))

    assert not set(result.choices[0].token_ids) & set(banned)
    assert result.choices[0].token_ids == _reference_greedy(
        model, tokenizer, _prompt_ids(tokenizer), 10, bias=banned
    )


@pytest.mark.parametrize(("presence", "frequency"), [(1.5, 0.0), (0.0, 0.7), (0.4, -0.3)])
def test_penalties_follow_openais_formula(
    tiny: tuple[Any, Any], presence: float, frequency: float
) -> None:
    model, tokenizer = tiny

    result = generate(
        model,
        tokenizer,
        _greedy(max_tokens=16, presence_penalty=presence, frequency_penalty=frequency),
    )

    expected = _reference_greedy(
        model, tokenizer, _prompt_ids(tokenizer), 16, presence=presence, frequency=frequency
    )
    assert result.choices[0].token_ids == expected


def test_penalties_push_sampling_away_from_or_towards_repeats(tiny: tuple[Any, Any]) -> None:
    # A random tiny model's logits differ by far less than 2, so the extremes are decisive.
    model, tokenizer = tiny

    varied = generate(model, tokenizer, _greedy(max_tokens=20, presence_penalty=2.0))
    looping = generate(model, tokenizer, _greedy(max_tokens=20, frequency_penalty=-2.0))

    assert len(set(varied.choices[0].token_ids)) == 20
    assert len(set(looping.choices[0].token_ids)) == 1


def test_sampling_is_deterministic_under_a_seed(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny

    def sample(seed: int) -> list[str]:
        request = GenerateRequest(prompt=PROMPT, n=2, seed=seed, top_p=0.9, temperature=0.8)
        return [c.text for c in generate(model, tokenizer, request).choices]

    assert sample(5) == sample(5)
    assert sample(5) != sample(6)


def test_tiny_top_p_samples_like_greedy(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny

    nucleus = generate(
        model, tokenizer, GenerateRequest(prompt=PROMPT, top_p=1e-9, seed=2, stop_on_eos=False)
    )

    assert nucleus.choices[0].text == generate(model, tokenizer, _greedy()).choices[0].text


def test_stream_concatenates_to_the_non_streamed_text(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    greedy = _greedy(max_tokens=20, echo=True)
    sampled = GenerateRequest(prompt=PROMPT, n=3, seed=4, max_tokens=20)

    for request in (greedy, sampled):
        expected = {c.index: c.text for c in generate(model, tokenizer, request).choices}
        assert _stream_texts(model, tokenizer, request) == expected


def test_stream_logprobs_match_the_non_streamed_ones(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    request = _greedy(max_tokens=12, echo=True, logprobs=2, stop=["zz"])
    expected = generate(model, tokenizer, request).choices[0].logprobs
    assert expected is not None

    streamed: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "text_offset": []}
    finish = []
    for delta in generate_stream(model, tokenizer, request):
        assert delta.logprobs is not None
        finish.append(delta.finish_reason)
        for key, values in streamed.items():
            values += getattr(delta.logprobs, key)

    assert streamed["tokens"] == expected.tokens
    assert streamed["token_logprobs"] == expected.token_logprobs
    assert streamed["text_offset"] == expected.text_offset
    assert finish[-1] == "length"


def test_stream_refuses_best_of(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny

    with pytest.raises(InvalidRequestError) as error:
        generate_stream(model, tokenizer, GenerateRequest(prompt=PROMPT, n=1, best_of=2))

    assert error.value.param == "best_of"


def test_generate_accepts_token_prompts(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    ids = _prompt_ids(tokenizer)

    from_tokens = generate(model, tokenizer, _greedy(prompt=None, prompt_tokens=ids))

    assert from_tokens == generate(model, tokenizer, _greedy())


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"n": 3, "best_of": 2}, "best_of"),
        ({"logprobs": 6}, "logprobs"),
        ({"temperature": 2.5}, "temperature"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"prompt": None}, "prompt"),
    ],
)
def test_request_rejects_out_of_range_parameters(kwargs: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as error:
        GenerateRequest(**({"prompt": PROMPT} | kwargs))

    assert error.value.param == param


def test_generate_rejects_requests_beyond_the_context(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    too_many = model.config.max_position_embeddings

    with pytest.raises(InvalidRequestError) as error:
        generate(model, tokenizer, GenerateRequest(prompt=PROMPT, max_tokens=too_many))

    assert error.value.param == "max_tokens"


def test_chat_prompt_applies_the_template_for_the_assistant_turn(
    tiny: tuple[Any, Any], tiny_model_dir: Path
) -> None:
    model, tokenizer = tiny
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]

    text = chat_prompt(tokenizer, messages)

    assert text == tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    assert "Be brief." in text
    assert text.index("Hi") < text.rindex("assistant")
    result = generate(model, tokenizer, _greedy(prompt=text, add_special_tokens=False))
    assert result.usage.prompt_tokens == len(tokenizer(text, add_special_tokens=False)["input_ids"])

    bare = AutoTokenizer.from_pretrained(tiny_model_dir)
    bare.chat_template = None
    with pytest.raises(InvalidRequestError, match="chat template"):
        chat_prompt(bare, messages)
