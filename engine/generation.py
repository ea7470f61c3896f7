"""Text generation with every OpenAI completions parameter (reference §6).

`RequestState` is one request's decoding: tokenizing, sampling with penalties, logit bias,
logprobs, stop strings and best_of exactly as OpenAI documents them, and what to stream when.
It runs no model: its driver feeds it logits. `generate` and `generate_stream` drive one
request alone on a private KV cache (all `n` or `best_of` candidates share one prompt forward,
then advance together, one batched forward per step); `engine.batching` drives many requests
at once in one continuously batched forward. Both feed the same state, so they give the same
answers.

`generate`'s caller owns the model: it must be in eval mode and must not be used by another
thread during a call.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import DynamicCache

from engine import chat_format

MAX_STOP_SEQUENCES = 4
MAX_LOGPROBS = 5
MAX_N = 128
MAX_BEST_OF = 20
LOGIT_BIAS_LIMIT = 100.0
PENALTY_LIMIT = 2.0
# Prompt tokens decoded ahead of the completion, so that tokenizers which drop a leading space
# at the start of a decode (SentencePiece) still give the completion its leading space.
_DECODE_CONTEXT_TOKENS = 5
_REPLACEMENT_CHAR = "\ufffd"


class InvalidRequestError(ValueError):
    """A request parameter is out of range; `param` names it for the API's 400 error."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


# Fill-in-the-middle special tokens (prefix, suffix, middle) as the model families trained
# for it name them (StarCoder/SantaCoder; Qwen2.5-Coder). SmolLM2 has none.
FIM_TOKENS = (
    ("<fim_prefix>", "<fim_suffix>", "<fim_middle>"),
    ("<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"),
)
# torch.Generator.manual_seed takes a 64-bit integer; OpenAI's seed is an int64 too.
SEED_RANGE = (-(2**63), 2**63 - 1)


def fim_token_ids(tokenizer: Any) -> tuple[int, int, int] | None:
    """The tokenizer's (prefix, suffix, middle) token ids, or None if it has no FIM tokens."""
    vocab = tokenizer.get_vocab()
    for names in FIM_TOKENS:
        if all(name in vocab for name in names):
            prefix, suffix, middle = (int(vocab[name]) for name in names)
            return prefix, suffix, middle
    return None


@dataclass
class GenerateRequest:
    """The parameters of `POST /v1/completions`, with OpenAI's defaults and ranges.

    Exactly one of `prompt` (text) and `prompt_tokens` (token ids) is given. Set
    `add_special_tokens=False` for prompts that already carry them, such as `chat_prompt`'s.
    """

    prompt: str | None = None
    prompt_tokens: list[int] | None = None
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    best_of: int | None = None
    stop: list[str] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    seed: int | None = None
    stop_on_eos: bool = True
    add_special_tokens: bool = True

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.prompt_tokens is None):
            raise InvalidRequestError("prompt", "give exactly one of prompt and prompt_tokens")
        # OpenAI accepts a bare string for `stop`; empty strings would match everywhere.
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        self.stop = [s for s in stops if s]
        if len(self.stop) > MAX_STOP_SEQUENCES:
            raise InvalidRequestError("stop", f"at most {MAX_STOP_SEQUENCES} stop sequences")
        # JSON object keys arrive as strings ("50256": -100).
        self.logit_bias = {int(k): float(v) for k, v in (self.logit_bias or {}).items()}
        _check_range("max_tokens", self.max_tokens, 0, None)
        _check_range("temperature", self.temperature, 0.0, 2.0)
        _check_range("top_p", self.top_p, 0.0, 1.0)
        _check_range("n", self.n, 1, MAX_N)
        _check_range("presence_penalty", self.presence_penalty, -PENALTY_LIMIT, PENALTY_LIMIT)
        _check_range("frequency_penalty", self.frequency_penalty, -PENALTY_LIMIT, PENALTY_LIMIT)
        for bias in self.logit_bias.values():
            _check_range("logit_bias", bias, -LOGIT_BIAS_LIMIT, LOGIT_BIAS_LIMIT)
        if self.logprobs is not None:
            _check_range("logprobs", self.logprobs, 0, MAX_LOGPROBS)
        if self.seed is not None:
            _check_range("seed", self.seed, *SEED_RANGE)
        if self.best_of is not None:
            _check_range("best_of", self.best_of, 1, MAX_BEST_OF)
            if self.best_of < self.n:
                raise InvalidRequestError("best_of", "best_of must be greater than or equal to n")

    @property
    def num_candidates(self) -> int:
        return self.best_of if self.best_of is not None else self.n


def _check_range(param: str, value: float, low: float, high: float | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise InvalidRequestError(param, f"{param} must be a number, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise InvalidRequestError(param, f"{param} must be {bound}, got {value}")


@dataclass
class Logprobs:
    """OpenAI's `logprobs` object: one entry per token of the returned text.

    `text_offset[i]` is where `tokens[i]` starts in the choice's text, and the tokens
    concatenate to the text. Logprobs are the model's own distribution,
    before penalties, logit bias and temperature, so they score text the same way under any
    sampling settings (as vLLM's default does).
    """

    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = field(default_factory=list)
    text_offset: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def extend(self, other: Logprobs) -> None:
        self.tokens += other.tokens
        self.token_logprobs += other.token_logprobs
        self.top_logprobs += other.top_logprobs
        self.text_offset += other.text_offset


@dataclass
class Choice:
    text: str
    index: int
    finish_reason: str  # "stop" | "length"
    logprobs: Logprobs | None = None
    # The sampled token ids (including a final EOS), for callers that post-process tokens.
    token_ids: list[int] = field(default_factory=list)
    # Calls already parsed out of `text` (a remote server's answer); None: not parsed.
    tool_calls: list[dict[str, Any]] | None = None


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass
class GenerateResult:
    choices: list[Choice]
    usage: Usage


@dataclass
class StreamDelta:
    """New text for one choice. `finish_reason` is set on that choice's last delta only;
    `usage` is set on the last delta of the whole stream."""

    index: int
    text: str
    finish_reason: str | None = None
    logprobs: Logprobs | None = None
    usage: Usage | None = None


def chat_prompt(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    *,
    parallel_tool_calls: bool = True,
) -> str:
    """Render a chat request with the tokenizer's template, ready for the assistant's turn.

    Rendered exactly as training renders a conversation (`engine.chat_format`: the same tool
    definitions and calls, natively or by the fallback), so a fine-tuned model sees the prompt
    it was trained on. The text already holds the template's special tokens (a BOS where the
    template writes one), so generate from it with `add_special_tokens=False`.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise InvalidRequestError(
            "model", "this model has no chat template; use /v1/completions with a plain prompt"
        )
    try:
        conversation = chat_format.normalise_request(
            list(messages), list(tools) if tools else None, parallel_tool_calls=parallel_tool_calls
        )
        return chat_format.prompt_text(chat_format.TokenizerRenderer(tokenizer), conversation)
    except chat_format.ChatFormatError as exc:
        raise InvalidRequestError(exc.error.param or "messages", exc.error.message) from None
    except chat_format.TemplateError as exc:
        raise InvalidRequestError("messages", str(exc)) from None


def generate(model: Any, tokenizer: Any, request: GenerateRequest) -> GenerateResult:
    state = RequestState.for_model(model, tokenizer, request)
    for _ in _drive_alone(model, state):
        pass
    return state.result()


def generate_stream(model: Any, tokenizer: Any, request: GenerateRequest) -> Iterator[StreamDelta]:
    """Yield text as it is generated; the deltas of each index concatenate to `generate`'s text.

    Text that could be the start of a stop string is held back until it is known not to be
    one, so stop text never leaks. `best_of > n` cannot be streamed (as at OpenAI). Invalid
    requests raise here, before the first delta, so a server can still answer with a 400.
    """
    check_streamable(request)
    state = RequestState.for_model(model, tokenizer, request)
    return _stream_alone(model, state)


def check_streamable(request: GenerateRequest) -> None:
    if request.best_of is not None and request.best_of > request.n:
        raise InvalidRequestError("best_of", "best_of cannot be streamed unless it equals n")


def _stream_alone(model: Any, state: RequestState) -> Iterator[StreamDelta]:
    for _ in _drive_alone(model, state):
        yield from state.stream_deltas()


def _drive_alone(model: Any, state: RequestState) -> Generator[None]:
    """Run one request on a KV cache of its own; yield after the prompt and after each step."""
    forward = _Forward(model)
    with torch.inference_mode():
        prompt = torch.tensor([state.prompt_ids], device=state.device)
        prompt_logits = forward(prompt, keep_all=state.wants_prompt_logits)
        if state.wants_prompt_logits:
            state.score_prompt(prompt_logits[0], 0)
        first = state.begin(prompt_logits[:, -1, :])
        if first is not None and first.shape[0] > 1:
            forward.cache.batch_repeat_interleave(first.shape[0])
    yield
    logits: torch.Tensor | None = first
    while logits is not None and not state.done:
        rows = logits.shape[0]
        with torch.inference_mode():
            keep, tokens = state.step(logits)
        yield
        if state.done:
            return
        with torch.inference_mode():
            next_tokens = torch.tensor(tokens, device=state.device)
            if len(keep) < rows:
                # Drop finished rows so their compute stops (the cache shrinks with them).
                forward.cache.batch_select_indices(torch.tensor(keep, device=state.device))
            logits = forward(next_tokens[:, None], keep_all=False)[:, -1, :]


class _IncrementalDecoder:
    """Turns token ids into text pieces that concatenate to the decoded text.

    Decodes a short sliding window and emits only what the new token added, holding back a
    trailing U+FFFD (a UTF-8 character split across byte tokens) until it completes.
    """

    def __init__(self, tokenizer: Any, context: list[int]) -> None:
        self._tokenizer = tokenizer
        self._ids = list(context)
        self._prefix = 0
        self._read = len(self._ids)

    def _decode(self, ids: list[int]) -> str:
        return str(
            self._tokenizer.decode(
                ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
        )

    def step(self, token_id: int) -> str:
        self._ids.append(token_id)
        return self._emit(final=False)

    def flush(self) -> str:
        return self._emit(final=True)

    def _emit(self, *, final: bool) -> str:
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        if len(new_text) <= len(prefix_text):
            return ""
        if new_text.endswith(_REPLACEMENT_CHAR) and not final:
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return new_text[len(prefix_text) :]


class _Candidate:
    """One sampled sequence: its tokens, their text pieces and logprobs, and its stop state."""

    def __init__(self, decoder: _IncrementalDecoder) -> None:
        self.decoder = decoder
        self.ids: list[int] = []
        self.sampled_logprobs: list[float] = []  # every sampled token, EOS included
        # Visible tokens only (not EOS): text piece, logprob, top alternatives.
        self.pieces: list[str] = []
        self.piece_ends: list[int] = []
        self.piece_logprobs: list[float] = []
        self.piece_tops: list[dict[str, float]] = []
        self.text = ""
        self.cut: int | None = None  # where a stop string starts, in completion text
        self.finish_reason: str | None = None
        self.released = 0  # tokens already streamed
        self.released_chars = 0
        self.reported = False

    def mean_logprob(self) -> float:
        if not self.sampled_logprobs:
            return 0.0
        return sum(self.sampled_logprobs) / len(self.sampled_logprobs)

    def add_piece(self, piece: str, logprob: float, top: dict[str, float]) -> None:
        self.pieces.append(piece)
        self.text += piece
        self.piece_ends.append(len(self.text))
        self.piece_logprobs.append(logprob)
        self.piece_tops.append(top)

    def append_text(self, extra: str) -> None:
        """Add flushed text to the last visible token (there is none without tokens)."""
        if not extra or not self.pieces:
            return
        self.pieces[-1] += extra
        self.text += extra
        self.piece_ends[-1] = len(self.text)

    def find_stop(self, stops: list[str], searched_upto: int) -> bool:
        """Look for the earliest stop string that ends after `searched_upto`."""
        best: int | None = None
        for stop in stops:
            pos = self.text.find(stop, max(0, searched_upto - len(stop) + 1))
            if pos >= 0 and (best is None or pos < best):
                best = pos
        if best is not None:
            self.cut = best
        return best is not None

    def visible_text(self) -> str:
        return self.text if self.cut is None else self.text[: self.cut]

    def visible_token_count(self) -> int:
        """Tokens that start before the stop string (all of them without a stop)."""
        if self.cut is None:
            return len(self.pieces)
        count = 0
        while count < len(self.pieces) and self.piece_start(count) < self.cut:
            count += 1
        return count

    def piece_start(self, i: int) -> int:
        return self.piece_ends[i] - len(self.pieces[i])

    def releasable_tokens(self, stops: list[str]) -> int:
        """How many leading tokens can be streamed without risking a partial stop string."""
        held = 0
        for stop in stops:
            for size in range(min(len(stop) - 1, len(self.text)), held, -1):
                if self.text.endswith(stop[:size]):
                    held = size
                    break
        safe_end = len(self.text) - held
        count = self.released
        while count < len(self.pieces) and self.piece_ends[count] <= safe_end:
            count += 1
        # A trailing empty piece may be bytes of a split character that a later token (or
        # the final flush) completes onto it: keep it until then.
        while count > self.released and not self.pieces[count - 1]:
            count -= 1
        return count

    def logprobs_slice(self, start: int, stop: int | None, base_offset: int) -> Logprobs:
        """Logprobs of visible tokens [start, stop), the last one trimmed at a stop string."""
        stop = self.visible_token_count() if stop is None else stop
        limit = len(self.visible_text())
        lp = Logprobs()
        for i in range(start, stop):
            begin = self.piece_start(i)
            lp.tokens.append(self.pieces[i][: max(0, limit - begin)])
            lp.token_logprobs.append(self.piece_logprobs[i])
            lp.top_logprobs.append(self.piece_tops[i])
            lp.text_offset.append(base_offset + begin)
        return lp

    def release(
        self, index: int, upto: int | None, base_offset: int, with_logprobs: bool
    ) -> StreamDelta:
        """Stream tokens [released, upto); None means everything left (the choice ended)."""
        end = self.visible_token_count() if upto is None else upto
        text_end = len(self.visible_text()) if upto is None else self.piece_ends[end - 1]
        lp = self.logprobs_slice(self.released, end, base_offset) if with_logprobs else None
        text = self.visible_text()[self.released_chars : text_end]
        self.released, self.released_chars = max(end, self.released), text_end
        return StreamDelta(index, text, None, lp)


class RequestState:
    """One request's decoding state: prompt, candidates, sampler and what is left to stream.

    It runs no model. Its driver runs the prompt (whole or in chunks), calls `begin` with the
    logits of the prompt's last position, then for each step runs one token per live
    candidate (`live`, in order) and calls `step` with their logits. `stream_deltas` and
    `result` turn the state into OpenAI's answers. A request's randomness is its own
    generator's, so its samples do not depend on what else shares the batch.
    """

    def __init__(
        self,
        tokenizer: Any,
        request: GenerateRequest,
        *,
        context_length: int | None,
        eos_ids: set[int],
        device: torch.device,
    ) -> None:
        self.tokenizer = tokenizer
        self.request = request
        self.device = device
        self.prompt_ids = self._prompt_ids()
        self.vocab_limit = len(tokenizer)
        self._check_lengths(context_length)
        self._token_texts: dict[int, str] = {}
        self.eos_ids = eos_ids if request.stop_on_eos else set()
        self.candidates = [
            _Candidate(_IncrementalDecoder(tokenizer, self.prompt_ids[-_DECODE_CONTEXT_TOKENS:]))
            for _ in range(request.num_candidates)
        ]
        # The echoed prompt is the decoder's view of the prompt tokens, so text offsets agree
        # with the tokens even where a tokenizer does not round-trip its input exactly.
        self.prompt_pieces = _decode_pieces(tokenizer, self.prompt_ids) if request.echo else []
        self.echo_text = "".join(self.prompt_pieces)
        self.echo_text_len = len(self.echo_text)
        self.wants_prompt_logits = request.echo and request.logprobs is not None
        self._prompt_chosen: list[float] = []
        self._prompt_top_ids: list[list[int]] = []
        self._prompt_top_vals: list[list[float]] = []
        self._prompt_lp: Logprobs | None = None
        self.started = False  # the prompt has been run
        self.live: list[int] = []  # candidates still sampling, in the order of their rows
        self._sampler: _Sampler | None = None
        self._steps = 0
        self._echo_sent = False
        self._unreported = request.n

    @classmethod
    def for_model(cls, model: Any, tokenizer: Any, request: GenerateRequest) -> RequestState:
        return cls(
            tokenizer,
            request,
            context_length=_context_length(model),
            eos_ids=_eos_ids(model, tokenizer),
            device=_model_device(model),
        )

    @property
    def done(self) -> bool:
        return self.started and not self.live

    def _prompt_ids(self) -> list[int]:
        req = self.request
        if req.prompt_tokens is not None:
            ids = [int(t) for t in req.prompt_tokens]
            if any(t < 0 or t >= len(self.tokenizer) for t in ids):
                raise InvalidRequestError("prompt", "prompt contains a token id outside the vocab")
        else:
            encoded = self.tokenizer(req.prompt, add_special_tokens=req.add_special_tokens)
            ids = list(encoded["input_ids"])
        if req.suffix:
            return self._fill_in_the_middle(ids, req.suffix)
        if not ids:
            # OpenAI's default prompt is the document separator: start a fresh document.
            start = self.tokenizer.bos_token_id
            start = self.tokenizer.eos_token_id if start is None else start
            if start is None:
                raise InvalidRequestError("prompt", "the prompt is empty")
            ids = [int(start)]
        return ids

    def _fill_in_the_middle(self, prefix: list[int], suffix: str) -> list[int]:
        """The prefix-suffix-middle prompt: the model writes what goes between the two."""
        fim = fim_token_ids(self.tokenizer)
        if fim is None:
            raise InvalidRequestError(
                "suffix",
                "This model has no fill-in-the-middle tokens, so it can't write text to go "
                "before a `suffix`. Leave `suffix` out (or null).",
            )
        if self.request.echo:
            raise InvalidRequestError("suffix", "suffix can't be combined with echo")
        prefix_id, suffix_id, middle_id = fim
        suffix_ids = list(self.tokenizer(suffix, add_special_tokens=False)["input_ids"])
        return [prefix_id, *prefix, suffix_id, *suffix_ids, middle_id]

    def _check_lengths(self, context: int | None) -> None:
        total = len(self.prompt_ids) + self.request.max_tokens
        if context is not None and total > context:
            raise InvalidRequestError(
                "max_tokens",
                f"This model's maximum context length is {context} tokens, however you "
                f"requested {total} tokens ({len(self.prompt_ids)} in your prompt; "
                f"{self.request.max_tokens} for the completion).",
            )
        for token_id in self.request.logit_bias:
            if not 0 <= token_id < self.vocab_limit:
                raise InvalidRequestError("logit_bias", f"token id {token_id} is not in the vocab")

    def usage(self) -> Usage:
        return Usage(len(self.prompt_ids), sum(len(c.ids) for c in self.candidates))

    def token_text(self, token_id: int) -> str:
        """A token's key in `top_logprobs`: its text, or OpenAI's "bytes:\\x.." form for a
        token that is only part of a UTF-8 character (so such alternatives stay distinct)."""
        text = self._token_texts.get(token_id)
        if text is None:
            # Special tokens stay visible here so that distinct alternatives keep distinct keys.
            text = str(self.tokenizer.decode([token_id], skip_special_tokens=False))
            if _REPLACEMENT_CHAR in text:
                text = _token_bytes_key(self.tokenizer.convert_ids_to_tokens(token_id), text)
            self._token_texts[token_id] = text
        return text

    def top_dict(
        self, ids: list[int], values: list[float], chosen: int, lp: float
    ) -> dict[str, float]:
        top: dict[str, float] = {}
        for token_id, value in zip(ids, values, strict=True):
            top.setdefault(self.token_text(token_id), value)
        # OpenAI returns the sampled token among the alternatives even outside the top k.
        top.setdefault(self.token_text(chosen), lp)
        return top

    def score_prompt(self, logits: torch.Tensor, start: int) -> None:
        """Score echoed prompt tokens from the logits of positions [start, start + len(logits)).

        A chunked prefill calls this once per chunk, in order. Position p predicts token p + 1.
        """
        k = self.request.logprobs or 0
        end = min(start + logits.shape[0], len(self.prompt_ids) - 1)
        if end <= start:
            return
        logits = logits[: end - start].float().clone()
        logits[:, self.vocab_limit :] = -math.inf
        logp = torch.log_softmax(logits, dim=-1)
        targets = torch.tensor(self.prompt_ids[start + 1 : end + 1], device=logp.device)
        self._prompt_chosen += logp.gather(1, targets[:, None]).squeeze(1).tolist()
        if k:
            values, indices = logp.topk(k, dim=-1)
            self._prompt_top_vals += values.tolist()
            self._prompt_top_ids += indices.tolist()
        else:
            self._prompt_top_vals += [[] for _ in range(end - start)]
            self._prompt_top_ids += [[] for _ in range(end - start)]

    def _prompt_scores(self) -> Logprobs:
        """Echoed prompt logprobs; the first token has no context, so it gets None/None."""
        lp = Logprobs()
        offset = 0
        for i, piece in enumerate(self.prompt_pieces):
            lp.tokens.append(piece)
            lp.text_offset.append(offset)
            offset += len(piece)
            if i == 0:
                lp.token_logprobs.append(None)
                lp.top_logprobs.append(None)
            else:
                token, value = self.prompt_ids[i], self._prompt_chosen[i - 1]
                lp.token_logprobs.append(value)
                top = self.top_dict(
                    self._prompt_top_ids[i - 1], self._prompt_top_vals[i - 1], token, value
                )
                lp.top_logprobs.append(top)
        return lp

    def prompt_logprobs(self) -> Logprobs:
        """A fresh copy of the echoed prompt's logprobs (each choice gets its own)."""
        assert self._prompt_lp is not None, "begin() scores the prompt"
        lp = self._prompt_lp
        tops = [dict(t) if t is not None else None for t in lp.top_logprobs]
        return Logprobs(list(lp.tokens), list(lp.token_logprobs), tops, list(lp.text_offset))

    def begin(self, last_logits: torch.Tensor) -> torch.Tensor | None:
        """The prompt has run; `last_logits` ([1, vocab]) are its last position's.

        Returns the logits to sample the first tokens from, one row per candidate (every
        candidate shares the prompt), or None when nothing is sampled (`max_tokens=0`).
        """
        if self.wants_prompt_logits:
            self._prompt_lp = self._prompt_scores()
        self.started = True
        num = len(self.candidates)
        if self.request.max_tokens == 0:
            # Echo-only scoring requests: nothing is sampled.
            for cand in self.candidates:
                self._finish(cand, "length")
            return None
        self.live = list(range(num))
        self._sampler = _Sampler(
            self.request, last_logits.shape[-1], self.vocab_limit, self.device, num
        )
        return last_logits.float().expand(num, -1)

    def step(self, logits: torch.Tensor) -> tuple[list[int], list[int]]:
        """Sample one token per live candidate (`logits`: one row each, in `live` order).

        Returns the rows that go on and their new tokens: the next forward's input.
        """
        assert self._sampler is not None, "begin() comes first"
        req = self.request
        tokens, chosen_lp, top_ids, top_vals = self._sampler.sample(logits.float())
        last = self._steps + 1 == req.max_tokens
        self._steps += 1
        for row, cand_index in enumerate(self.live):
            cand = self.candidates[cand_index]
            self._advance(cand, tokens[row], chosen_lp[row], top_ids[row], top_vals[row])
            if last and cand.finish_reason is None:
                self._finish(cand, "length")
        keep = [row for row, c in enumerate(self.live) if self.candidates[c].finish_reason is None]
        self.live = [self.live[row] for row in keep]
        if self.live and len(keep) < len(tokens):
            self._sampler.select(torch.tensor(keep, device=self.device))
        return keep, [tokens[row] for row in keep]

    def cancel(self) -> None:
        """Stop sampling (the client went away); the state is finished after this."""
        self.started = True
        self.live = []

    def stream_deltas(self) -> list[StreamDelta]:
        """What a stream can send now that it has not sent: the echoed prompt once the prompt
        has run, then text that cannot be the start of a stop string, then each choice's end."""
        request = self.request
        want_logprobs = request.logprobs is not None
        deltas: list[StreamDelta] = []
        if not self.started:
            return deltas
        if not self._echo_sent:
            self._echo_sent = True
            if request.echo:
                for index in range(request.n):
                    lp = self.prompt_logprobs() if want_logprobs else None
                    deltas.append(StreamDelta(index, self.echo_text, None, lp))
        for index, cand in enumerate(self.candidates):
            if cand.reported:
                continue
            if cand.finish_reason is None:
                upto = cand.releasable_tokens(request.stop)
                if upto > cand.released:
                    deltas.append(cand.release(index, upto, self.echo_text_len, want_logprobs))
                continue
            delta = cand.release(index, None, self.echo_text_len, want_logprobs)
            delta.finish_reason = cand.finish_reason
            cand.reported = True
            self._unreported -= 1
            if self._unreported == 0:
                delta.usage = self.usage()
            deltas.append(delta)
        return deltas

    def result(self) -> GenerateResult:
        request = self.request
        candidates = self.candidates
        if request.best_of is not None and request.best_of > request.n:
            # OpenAI: "the one with the highest log probability per token" (stable: ties keep order).
            candidates = sorted(candidates, key=lambda c: -c.mean_logprob())[: request.n]
        choices = []
        for index, cand in enumerate(candidates):
            lp = None
            if request.logprobs is not None:
                lp = self.prompt_logprobs() if request.echo else Logprobs()
                lp.extend(cand.logprobs_slice(0, None, self.echo_text_len))
            text = self.echo_text + cand.visible_text()
            choices.append(Choice(text, index, cand.finish_reason or "length", lp, list(cand.ids)))
        return GenerateResult(choices, self.usage())

    def _advance(
        self,
        cand: _Candidate,
        token: int,
        logprob: float,
        top_ids: list[int],
        top_vals: list[float],
    ) -> None:
        cand.ids.append(token)
        cand.sampled_logprobs.append(logprob)
        if token in self.eos_ids:
            self._finish(cand, "stop")
            return
        before = len(cand.text)
        top = self.top_dict(top_ids, top_vals, token, logprob)
        cand.add_piece(cand.decoder.step(token), logprob, top)
        if cand.find_stop(self.request.stop, before):
            cand.finish_reason = "stop"

    def _finish(self, cand: _Candidate, reason: str) -> None:
        before = len(cand.text)
        cand.append_text(cand.decoder.flush())
        # Flushed bytes may complete a stop string; it still counts as a stop.
        cand.finish_reason = "stop" if cand.find_stop(self.request.stop, before) else reason


class _Forward:
    """Calls the model with a KV cache, under whatever name this transformers uses for it."""

    def __init__(self, model: Any) -> None:
        self.model = model
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        params = inspect.signature(base.forward).parameters
        self.cache = DynamicCache(config=model.config)
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._can_trim_logits = "logits_to_keep" in params

    def __call__(self, input_ids: torch.Tensor, *, keep_all: bool) -> torch.Tensor:
        kwargs: dict[str, Any] = {self._cache_kwarg: self.cache, "use_cache": True}
        if self._can_trim_logits and not keep_all:
            # Only the last position is sampled; skip the [seq, vocab] projection for the rest.
            kwargs["logits_to_keep"] = 1
        logits: torch.Tensor = self.model(input_ids=input_ids, **kwargs).logits
        return logits.float()


class _Sampler:
    """Applies OpenAI's logit adjustments and samples, for a batch of live candidates."""

    def __init__(
        self,
        request: GenerateRequest,
        logits_size: int,
        vocab_limit: int,
        device: torch.device,
        rows: int,
    ) -> None:
        self.request = request
        self.vocab_limit = min(vocab_limit, logits_size)
        # Token counts per row, kept only when a penalty reads them.
        self.counts: torch.Tensor | None = None
        if request.frequency_penalty or request.presence_penalty:
            self.counts = torch.zeros(rows, logits_size, device=device)
        self.bias: torch.Tensor | None = None
        if request.logit_bias:
            self.bias = torch.zeros(logits_size, device=device)
            for token_id, value in request.logit_bias.items():
                self.bias[token_id] = value
        self.generator = torch.Generator(device=device)
        if request.seed is not None:
            self.generator.manual_seed(request.seed)
        else:
            self.generator.seed()

    def select(self, index: torch.Tensor) -> None:
        if self.counts is not None:
            self.counts = self.counts[index]

    def sample(
        self, logits: torch.Tensor
    ) -> tuple[list[int], list[float], list[list[int]], list[list[float]]]:
        req = self.request
        # Embedding matrices are often padded past the tokenizer; those ids decode to nothing.
        logits = logits.clone()
        logits[:, self.vocab_limit :] = -math.inf
        logp = torch.log_softmax(logits, dim=-1)
        # OpenAI: mu[j] -= c[j] * frequency_penalty + (c[j] > 0) * presence_penalty.
        adjusted = logits
        if self.counts is not None:
            adjusted = logits - (
                self.counts * req.frequency_penalty + (self.counts > 0) * req.presence_penalty
            )
        if self.bias is not None:
            adjusted = adjusted + self.bias
        if req.temperature == 0:
            tokens = adjusted.argmax(dim=-1)
        else:
            probs = torch.softmax(adjusted / req.temperature, dim=-1)
            if req.top_p < 1.0:
                probs = _nucleus(probs, req.top_p)
            tokens = torch.multinomial(probs, 1, generator=self.generator).squeeze(1)
        if self.counts is not None:
            self.counts.scatter_add_(1, tokens[:, None], torch.ones_like(tokens[:, None]).float())
        chosen = logp.gather(1, tokens[:, None]).squeeze(1)
        k = req.logprobs or 0
        if k:
            top_vals, top_ids = logp.topk(k, dim=-1)
            return tokens.tolist(), chosen.tolist(), top_ids.tolist(), top_vals.tolist()
        empty: list[list[Any]] = [[] for _ in range(logits.shape[0])]
        return tokens.tolist(), chosen.tolist(), empty, empty


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose mass reaches top_p (at least one)."""
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    sorted_probs[:, 0] = torch.where(
        sorted_probs.sum(dim=-1) > 0, sorted_probs[:, 0], torch.ones_like(sorted_probs[:, 0])
    )
    return torch.zeros_like(probs).scatter(1, order, sorted_probs)


def _decode_pieces(tokenizer: Any, ids: list[int]) -> list[str]:
    decoder = _IncrementalDecoder(tokenizer, [])
    pieces = [decoder.step(token_id) for token_id in ids]
    if pieces:
        pieces[-1] += decoder.flush()
    return pieces


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet: printable stand-ins for the 256 byte values."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes, strict=True)}


_BYTE_LEVEL = _byte_level_alphabet()
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _token_bytes_key(raw: str, text: str) -> str:
    """Recover a partial character's bytes from a byte-level or byte-fallback token."""
    if match := _BYTE_FALLBACK.fullmatch(raw or ""):
        data = bytes([int(match.group(1), 16)])
    elif raw and all(ch in _BYTE_LEVEL for ch in raw):
        data = bytes(_BYTE_LEVEL[ch] for ch in raw)
    else:
        return raw or text
    return "bytes:" + "".join(f"\\x{b:02x}" for b in data)


def _model_device(model: Any) -> torch.device:
    try:
        device: torch.device = next(model.parameters()).device
        return device
    except StopIteration:
        return torch.device("cpu")


def _context_length(model: Any) -> int | None:
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    """End-of-sequence ids from the generation config (chat models list several) and tokenizer."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return ids
