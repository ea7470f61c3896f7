"""Continuous batching against the one-request-at-a-time reference (`engine.generation`).

Every request in a batch must get the answer it would get alone: the same tokens, text,
logprobs and finish reason, whichever adapters and parameters share the batch with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine import batching
from engine.batching import BatchSettings, Scheduler
from engine.generation import GenerateRequest, GenerateResult, InvalidRequestError, generate


@pytest.fixture(scope="module")
def lora_dirs(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
        path = tmp_path_factory.mktemp(f"lora{seed}")
        get_peft_model(base, config).save_pretrained(str(path))
        paths.append(path)
    return paths


def _alone(model_dir: Path, adapter: Path | None, request: GenerateRequest) -> GenerateResult:
    """The reference: a dedicated model, one request, no batch."""
    model: Any = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    return generate(model.eval(), AutoTokenizer.from_pretrained(model_dir), request)


def _scheduler(model_dir: Path, **settings: Any) -> Scheduler:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return Scheduler(model, AutoTokenizer.from_pretrained(model_dir), BatchSettings(**settings))


def _same(batched: GenerateResult, alone: GenerateResult) -> None:
    assert [c.token_ids for c in batched.choices] == [c.token_ids for c in alone.choices]
    assert [c.text for c in batched.choices] == [c.text for c in alone.choices]
    assert [c.finish_reason for c in batched.choices] == [c.finish_reason for c in alone.choices]
    assert batched.usage == alone.usage
    for got, want in zip(batched.choices, alone.choices, strict=True):
        if want.logprobs is None:
            assert got.logprobs is None
            continue
        assert got.logprobs is not None
        assert got.logprobs.tokens == want.logprobs.tokens
        assert got.logprobs.text_offset == want.logprobs.text_offset
        assert got.logprobs.token_logprobs == pytest.approx(want.logprobs.token_logprobs, abs=1e-4)


def _greedy(prompt: str, **kwargs: Any) -> GenerateRequest:
    return GenerateRequest(prompt=prompt, temperature=0, stop_on_eos=False, **kwargs)


def test_a_mixed_batch_answers_like_each_request_alone(
    tiny_model_dir: Path, lora_dirs: list[Path]
) -> None:
    first, second = lora_dirs
    cases: list[tuple[Path | None, GenerateRequest]] = [
        (None, _greedy("Hello world", max_tokens=10, logprobs=2)),
        (first, _greedy("Hello world", max_tokens=10, logprobs=2)),
        (second, _greedy("The quick brown fox", max_tokens=6, echo=True, logprobs=1)),
        (None, _greedy("123 456", max_tokens=12, presence_penalty=1.5, frequency_penalty=0.5)),
        (first, _greedy("spam", max_tokens=8, logit_bias={7: 5.0, 9: -100.0})),
        (second, GenerateRequest(prompt="Hello", max_tokens=8, n=3, seed=4, temperature=0.8)),
        (None, GenerateRequest(prompt="Hi", max_tokens=5, n=2, best_of=3, seed=2, logprobs=0)),
        (first, _greedy("Hello world", max_tokens=0, echo=True, logprobs=0)),
        (None, GenerateRequest(prompt="The", max_tokens=9, top_p=0.5, seed=9)),
    ]
    scheduler = _scheduler(tiny_model_dir, prefill_chunk=8)
    expected = [_alone(tiny_model_dir, adapter, request) for adapter, request in cases]
    # A stop string taken from the reference's own text, so that it really fires.
    stop = expected[0].choices[0].text[4:6]
    cases.append((None, _greedy("Hello world", max_tokens=10, stop=[stop])))
    expected.append(_alone(tiny_model_dir, None, cases[-1][1]))

    with scheduler.hold():  # all start together, in one batch
        tickets = [scheduler.submit(request, adapter=adapter) for adapter, request in cases]
    results = [ticket.result() for ticket in tickets]

    for got, want in zip(results, expected, strict=True):
        _same(got, want)
    assert results[-1].choices[0].finish_reason == "stop"
    assert results[0].choices[0].text != results[1].choices[0].text  # the adapters do differ
    stats = scheduler.stats()
    assert stats.rows_stepped / stats.steps > 4  # really batched
    assert stats.adapter_loads == 2
    scheduler.close()


def test_seeded_sampling_does_not_depend_on_batch_mates(tiny_model_dir: Path) -> None:
    scheduler = _scheduler(tiny_model_dir)
    seeded = GenerateRequest(prompt="Hello", max_tokens=10, n=2, seed=42, temperature=1.0)
    alone = scheduler.submit(seeded).result()

    with scheduler.hold():
        others = [
            scheduler.submit(GenerateRequest(prompt=p, max_tokens=12, seed=i, n=i + 1))
            for i, p in enumerate(["The", "123", "spam spam"])
        ]
        crowded = scheduler.submit(seeded)
    together = crowded.result()

    assert [c.token_ids for c in together.choices] == [c.token_ids for c in alone.choices]
    assert all(o.result().choices for o in others)
    scheduler.close()


def test_streamed_deltas_concatenate_to_the_answer_alone(
    tiny_model_dir: Path, lora_dirs: list[Path]
) -> None:
    scheduler = _scheduler(tiny_model_dir)
    request = _greedy("Hello world", max_tokens=12, echo=True, n=2, logprobs=1)
    expected = _alone(tiny_model_dir, lora_dirs[0], request)

    with scheduler.hold():
        stream = scheduler.submit(request, adapter=lora_dirs[0], stream=True)
        other = scheduler.submit(_greedy("The quick", max_tokens=20))
    texts: dict[int, str] = {}
    finishes = []
    for delta in stream.deltas():
        texts[delta.index] = texts.get(delta.index, "") + delta.text
        if delta.finish_reason:
            finishes.append(delta.finish_reason)

    assert texts == {c.index: c.text for c in expected.choices}
    assert finishes == ["length", "length"]
    assert other.result().choices[0].finish_reason == "length"
    scheduler.close()


def test_a_long_prompt_is_read_in_chunks_while_a_short_request_finishes(
    tiny_model_dir: Path,
) -> None:
    scheduler = _scheduler(tiny_model_dir, prefill_chunk=16)
    long = _greedy(" ".join(["apple banana cherry"] * 25), max_tokens=2)
    short = _greedy("Hello", max_tokens=3)
    order: list[str] = []

    with scheduler.hold():
        long_ticket = scheduler.submit(long)
        short_ticket = scheduler.submit(short)
    short_result = short_ticket.result()
    order.append("short")
    if scheduler.stats().running:
        order.append("long still running")
    long_result = long_ticket.result()

    assert order == ["short", "long still running"]
    assert len(long_result.choices[0].token_ids) == 2
    _same(long_result, _alone(tiny_model_dir, None, long))
    _same(short_result, _alone(tiny_model_dir, None, short))
    scheduler.close()


def test_a_cancelled_request_leaves_the_batch(tiny_model_dir: Path) -> None:
    scheduler = _scheduler(tiny_model_dir)
    endless = GenerateRequest(prompt="x", max_tokens=400, stop_on_eos=False, seed=1)
    stream = scheduler.submit(endless, stream=True)
    deltas = stream.deltas()
    next(deltas)

    deltas.close()  # what a server does when its client disconnects
    neighbour = scheduler.submit(_greedy("Hello", max_tokens=4)).result()

    assert neighbour.choices[0].finish_reason == "length"
    stats = scheduler.stats()
    assert stats.cancelled == 1
    assert stats.running == 0
    assert stats.steps < 100  # the cancelled request stopped long before its 400 tokens
    scheduler.close()


def test_a_bad_request_fails_alone_and_bounds_name_their_param(tiny_model_dir: Path) -> None:
    scheduler = _scheduler(tiny_model_dir, max_prompt_tokens=20, max_tokens=50)
    with scheduler.hold():
        too_long = scheduler.submit(_greedy(" ".join(["word"] * 40), max_tokens=2))
        too_many = scheduler.submit(_greedy("Hello", max_tokens=60))
        fine = scheduler.submit(_greedy("Hello", max_tokens=3))

    with pytest.raises(InvalidRequestError) as prompt_error:
        too_long.result()
    with pytest.raises(InvalidRequestError) as tokens_error:
        too_many.result()

    assert prompt_error.value.param == "prompt"
    assert tokens_error.value.param == "max_tokens"
    assert len(fine.result().choices[0].token_ids) == 3
    scheduler.close()


def test_models_without_ragged_attention_are_served_one_at_a_time(
    tiny_model_dir: Path, lora_dirs: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batching, "use_ragged_attention", lambda model: False)
    scheduler = _scheduler(tiny_model_dir)
    requests = [(None, _greedy("Hello", max_tokens=5)), (lora_dirs[1], _greedy("Hi", max_tokens=4))]

    tickets = [scheduler.submit(r, adapter=a, stream=i == 1) for i, (a, r) in enumerate(requests)]

    _same(tickets[0].result(), _alone(tiny_model_dir, None, requests[0][1]))
    text = "".join(d.text for d in tickets[1].deltas())
    assert text == _alone(tiny_model_dir, lora_dirs[1], requests[1][1]).choices[0].text
    scheduler.close()
