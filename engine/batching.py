"""Continuous batching: one model, many requests, one forward per step.

A `Scheduler` owns one loaded model (a base, or a full fine-tune as a base of its own) and a
thread that loops:

1. admit waiting requests while the batch has rows to spare (a request is `n` or `best_of`
   rows: its candidates);
2. run one chunk of prompt ("prefill") for the requests still reading their prompt: at most
   `prefill_chunk` tokens in all, so a 1,000-message conversation is read a slice per loop
   while everyone else keeps decoding;
3. sample one token for every decoding row, each request with its own sampler and generator
   (`engine.generation.RequestState`), stream what can be streamed, retire finished or
   cancelled requests, and run the next decode forward for all remaining rows at once.

Requests join and leave between steps. Each row has its own KV cache (`engine.ragged`), so
joining or leaving copies nothing, and rows of any length share a forward without padding.

LoRA fine-tunes of the base share the batch: the adapters are loaded into one `PeftModel` and
every forward says which adapter each row uses (peft's mixed-adapter batches, `adapter_names`),
so a batch mixes the base and any number of fine-tunes. The names are injected by forward
pre-hooks registered once per adapter load, not by peft's per-call hook set-up, which walks
every module of the model on every forward.
"""

from __future__ import annotations

import hashlib
import logging
import math
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.utils.other import AuxiliaryTrainingWrapper

from engine.generation import (
    GenerateRequest,
    GenerateResult,
    InvalidRequestError,
    RequestState,
    StreamDelta,
    _context_length,
    _drive_alone,
    _eos_ids,
    _model_device,
    check_streamable,
)
from engine.models import ThreadsFollowLoad
from engine.ragged import RaggedCache, RowCache, ragged_forward, use_ragged_attention

logger = logging.getLogger(__name__)

BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch
MIN_PREFILL_SLICE = 16  # prompt tokens per loop at least, however slow the prompt is


@dataclass(frozen=True)
class BatchSettings:
    max_rows: int = 32  # sequences decoding at once
    prefill_chunk: int = 256  # prompt tokens read per loop, shared by all prefilling requests
    max_adapters: int = 16  # LoRA adapters kept loaded per model, least recently used evicted
    max_prompt_tokens: int | None = None  # None: the model's context length
    max_tokens: int | None = None  # the most tokens one request may ask for; None: no cap
    # CPU torch threads for decoding. None: the cores other processes leave free, re-read
    # every few seconds (engine.models.ThreadsFollowLoad), at most OMP_NUM_THREADS if set.
    threads: int | None = None


class Cancelled(Exception):
    """The request was cancelled before it finished (its client went away)."""


class Ticket:
    """The caller's handle on one submitted request.

    `deltas()` (a stream) or `result()` waits for the scheduler. Both take `gone`, polled every
    `interval` seconds while nothing arrives (a select() on the socket: cheap): when it says the client went away, the request
    is cancelled and its rows leave the batch at the next step. Closing the `deltas()`
    iterator early cancels too.
    """

    def __init__(self, *, stream: bool, on_cancel: Callable[[], None]) -> None:
        self.stream = stream
        self.cancelled = False
        self._events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._on_cancel = on_cancel

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._on_cancel()

    # scheduler side

    def _put(self, kind: str, payload: Any = None) -> None:
        self._events.put((kind, payload))

    # caller side

    def _next(self, gone: Callable[[], bool] | None, interval: float) -> tuple[str, Any]:
        # Also asked before the first wait: a client that hung up before its request was
        # even queued must not cost a whole generation (a small model's may end in one wait).
        while not (gone is not None and self._events.empty() and gone()):
            try:
                return self._events.get(timeout=interval)
            except queue.Empty:
                pass
        self.cancel()
        raise Cancelled()

    def result(
        self, *, gone: Callable[[], bool] | None = None, interval: float = 0.1
    ) -> GenerateResult:
        kind, payload = self._next(gone, interval)
        if kind == "error":
            raise payload
        assert kind == "result", kind
        result: GenerateResult = payload  # what a "result" message carries
        return result

    def deltas(
        self, *, gone: Callable[[], bool] | None = None, interval: float = 0.1
    ) -> Generator[StreamDelta]:
        finished = False
        try:
            while True:
                kind, payload = self._next(gone, interval)
                if kind == "error":
                    finished = True
                    raise payload
                if kind == "end":
                    finished = True
                    return
                yield from payload
        finally:
            if not finished:
                self.cancel()


class _Adapters:
    """The LoRA adapters loaded into one model, and the per-row selection of the next forward."""

    def __init__(self, model: Any, max_adapters: int) -> None:
        self.model = model
        self.max_adapters = max_adapters
        self.loaded: OrderedDict[str, str] = OrderedDict()  # path -> name, least recent first
        self.in_use: dict[str, int] = {}  # name -> requests running with it
        self.pending_unload: set[str] = set()  # paths to drop once no request uses them
        self.row_names: list[str] | None = None  # what the hooks inject into the next forward
        self._hooked: set[int] = set()
        self.loads = 0

    @property
    def language_model(self) -> Any:
        """The transformers model to call: inside a PeftModel, its base with LoRA layers."""
        return self.model.get_base_model() if isinstance(self.model, PeftModel) else self.model

    def name_for(self, path: str) -> str:
        """The loaded adapter's name, loading it first (evicting an idle one beyond the bound)."""
        name = self.loaded.get(path)
        if name is not None:
            self.loaded.move_to_end(path)
            return name
        for old_path, old_name in list(self.loaded.items()):
            if len(self.loaded) < self.max_adapters:
                break
            if not self.in_use.get(old_name):
                self._delete(old_path)
        name = "adapter_" + hashlib.sha1(path.encode()).hexdigest()[:16]
        if isinstance(self.model, PeftModel):
            self.model.load_adapter(path, adapter_name=name)
        else:
            # The first adapter wraps the base in place: its LoRA layers are injected into the
            # same modules, so later adapters share every base weight.
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
        self.model.eval()
        self.loaded[path] = name
        self.loads += 1
        self._hook_layers()
        return name

    def unload(self, path: str) -> bool:
        name = self.loaded.get(path)
        if name is None:
            return False
        if self.in_use.get(name):
            self.pending_unload.add(path)
        else:
            self._delete(path)
        return True

    def release(self, name: str | None) -> None:
        if name is None:
            return
        self.in_use[name] -= 1
        if not self.in_use[name]:
            del self.in_use[name]
            for path in [p for p in self.pending_unload if self.loaded.get(p) == name]:
                self.pending_unload.discard(path)
                self._delete(path)

    def _delete(self, path: str) -> None:
        name = self.loaded.pop(path)
        if not self.loaded:
            # Unwrap rather than keep a PeftModel with no adapter; the base modules get their
            # original layers back (and the hooks go with the LoRA layers).
            self.model = self.model.unload()
            self.model.eval()
            self._hooked.clear()
        else:
            self.model.delete_adapter(name)

    def _hook_layers(self) -> None:
        for module in self.model.modules():
            layer: torch.nn.Module = module  # LoraLayer is a mixin: narrowing would drop Module
            if isinstance(module, LoraLayer | AuxiliaryTrainingWrapper) and id(module) not in (
                self._hooked
            ):
                layer.register_forward_pre_hook(self._inject, with_kwargs=True)
                self._hooked.add(id(module))

    def _inject(
        self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        names = self.row_names
        if names is not None:
            if len(names) == 1 and args and args[0].shape[0] > 1:
                names = names * args[0].shape[0]  # a lone request's candidates share its adapter
            kwargs["adapter_names"] = names
        return args, kwargs


@dataclass
class _Job:
    ticket: Ticket
    request: GenerateRequest
    adapter_path: str | None
    state: RequestState | None = None
    adapter: str | None = None  # the loaded adapter's name
    rows: list[RowCache] = field(default_factory=list)
    prefilled: int = 0  # prompt tokens already in the cache
    logits: torch.Tensor | None = None  # awaiting sampling, one row per live candidate
    alone: Generator[None] | None = (
        None  # the serial path's driver (models without ragged attention)
    )
    started: float = 0.0

    @property
    def rows_needed(self) -> int:
        return self.request.num_candidates


class QueueFull(Exception):
    """More requests are waiting than the queue admits; try again in `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the inference queue is full; retry in {retry_after}s")
        self.retry_after = retry_after


@dataclass
class SchedulerStats:
    waiting: int
    running: int
    rows: int
    steps: int
    rows_stepped: int  # sum of batch sizes over decode steps: / steps = mean batch
    prefill_tokens: int
    completed: int
    cancelled: int
    adapters: list[str]
    adapter_loads: int


class Scheduler:
    """Continuous batching over one model; thread-safe `submit`, one worker thread."""

    def __init__(
        self, model: Any, tokenizer: Any, settings: BatchSettings | None = None, *, name: str = ""
    ) -> None:
        self.settings = settings or BatchSettings()
        self.tokenizer = tokenizer
        self.name = name
        model.eval()
        self.ragged = use_ragged_attention(model)
        if not self.ragged:
            logger.warning(
                "%s cannot use ragged attention: serving one request at a time",
                type(model).__name__,
            )
        self.adapters = _Adapters(model, self.settings.max_adapters)
        self.device = _model_device(model)
        # On a CPU shared with training jobs, decode with the cores they leave free.
        follow = self.device.type == "cpu" and self.settings.threads is None
        self._threads = ThreadsFollowLoad() if follow else None
        self.context = _context_length(model)
        self.eos_ids = _eos_ids(model, tokenizer)
        self.num_layers = int(model.config.num_hidden_layers)
        self._cache_kwarg = _cache_kwarg(model)
        self._cond = threading.Condition()
        self._waiting: deque[_Job] = deque()
        self._unloads: list[tuple[str, threading.Event, list[bool]]] = []
        self._closed = False
        self._jobs: list[_Job] = []
        self._durations: deque[float] = deque(maxlen=32)
        self._prefill_seconds_per_token = 0.0
        self._decode_seconds = 0.0
        self._stats = {"steps": 0, "rows_stepped": 0, "prefill_tokens": 0}
        self._completed = 0
        self._cancelled = 0
        self._thread = threading.Thread(target=self._loop, name=f"batch-{name}", daemon=True)
        self._thread.start()

    # --- caller side ------------------------------------------------------------------------

    def submit(
        self, request: GenerateRequest, *, adapter: str | Path | None = None, stream: bool = False
    ) -> Ticket:
        """Queue a request; its answer (or error) comes through the returned ticket."""
        if stream:
            check_streamable(request)
        ticket = Ticket(stream=stream, on_cancel=self._wake)
        path = str(Path(adapter).resolve()) if adapter is not None else None
        with self._cond:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            self._waiting.append(_Job(ticket, request, path))
            self._cond.notify()
        return ticket

    def unload_adapter(self, path: str | Path, *, timeout: float = 60.0) -> bool:
        """Drop an adapter (its model was deleted); False if it was not loaded here.

        Requests already running with it finish first; none starts with it after this returns.
        """
        done, found = threading.Event(), [False]
        with self._cond:
            if self._closed:
                return False
            self._unloads.append((str(Path(path).resolve()), done, found))
            self._cond.notify()
        done.wait(timeout)
        return found[0]

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Admit nothing until the block exits, so requests submitted in it start together."""
        with self._cond:
            yield

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def idle(self) -> bool:
        with self._cond:
            return not self._waiting and not self._jobs

    def mean_request_seconds(self) -> float:
        durations = list(self._durations)
        return sum(durations) / len(durations) if durations else 1.0

    def stats(self) -> SchedulerStats:
        with self._cond:
            return SchedulerStats(
                waiting=len(self._waiting),
                running=len(self._jobs),
                rows=sum(len(j.rows) for j in self._jobs),
                steps=self._stats["steps"],
                rows_stepped=self._stats["rows_stepped"],
                prefill_tokens=self._stats["prefill_tokens"],
                completed=self._completed,
                cancelled=self._cancelled,
                adapters=list(self.adapters.loaded),
                adapter_loads=self.adapters.loads,
            )

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout=30)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    # --- the loop -----------------------------------------------------------------------------

    def _loop(self) -> None:
        if self.settings.threads is not None:
            torch.set_num_threads(self.settings.threads)  # per thread: this loop's own
        while True:
            with self._cond:
                while not (self._waiting or self._jobs or self._unloads or self._closed):
                    self._cond.wait()
                if self._closed:
                    pending = list(self._waiting) + self._jobs
                    self._waiting.clear()
                    break
                unloads, self._unloads = self._unloads, []
                admitted = self._take_admissible()
            if self._threads is not None:
                self._threads.refresh()
            try:
                self._run_unloads(unloads)
                for job in admitted:
                    self._admit(job)
                self._retire_cancelled()
                if self.ragged:
                    self._prefill()
                    self._decode()
                else:
                    self._step_alone()
            except Exception as exc:  # a failed forward fails its requests, not the server
                logger.exception("batch step failed on %s", self.name)
                for job in list(self._jobs):
                    self._fail(job, exc)
        for job in pending:
            job.ticket._put("error", RuntimeError("the inference scheduler stopped"))

    def _take_admissible(self) -> list[_Job]:
        """Waiting jobs that fit in the batch now, oldest first (caller holds the lock)."""
        rows = sum(j.rows_needed for j in self._jobs)
        limit = self.settings.max_rows if self.ragged else 1
        taken: list[_Job] = []
        while self._waiting:
            job = self._waiting[0]
            if job.ticket.cancelled:
                self._waiting.popleft()
                self._cancelled += 1
                continue
            # A request wider than the whole batch still runs, alone.
            if rows and rows + job.rows_needed > limit:
                break
            self._waiting.popleft()
            rows += job.rows_needed
            taken.append(job)
        self._jobs += taken
        return taken

    def _admit(self, job: _Job) -> None:
        job.started = time.monotonic()
        try:
            job.state = self._state_for(job.request)
            if job.adapter_path is not None:
                job.adapter = self.adapters.name_for(job.adapter_path)
                self.adapters.in_use[job.adapter] = self.adapters.in_use.get(job.adapter, 0) + 1
        except Exception as exc:
            if not isinstance(exc, InvalidRequestError):
                logger.exception("could not start a request on %s", self.name)
            self._fail(job, exc)
            return
        if self.ragged:
            job.rows = [RowCache(self.num_layers)]
        else:
            job.alone = self._alone(job)

    def _state_for(self, request: GenerateRequest) -> RequestState:
        state = RequestState(
            self.tokenizer,
            request,
            context_length=self.context,
            eos_ids=self.eos_ids,
            device=self.device,
        )
        limit = self.settings.max_prompt_tokens
        if limit is not None and len(state.prompt_ids) > limit:
            raise InvalidRequestError(
                "prompt",
                f"The prompt has {len(state.prompt_ids)} tokens; this server accepts at most "
                f"{limit}.",
            )
        cap = self.settings.max_tokens
        if cap is not None and request.max_tokens > cap:
            raise InvalidRequestError(
                "max_tokens",
                f"max_tokens is {request.max_tokens}; this server allows at most {cap}.",
            )
        return state

    def _run_unloads(self, unloads: list[tuple[str, threading.Event, list[bool]]]) -> None:
        for path, done, found in unloads:
            try:
                found[0] = self.adapters.unload(path)
            finally:
                done.set()

    def _retire_cancelled(self) -> None:
        for job in [j for j in self._jobs if j.ticket.cancelled]:
            if job.state is not None:
                job.state.cancel()
            self._cancelled += 1
            self._remove(job)

    # prefill

    def _prefill(self) -> None:
        """Run the next slice of prompt for the requests still reading theirs, in one forward."""
        budget = self._prefill_budget()
        batch: list[tuple[_Job, int]] = []
        reading = [j for j in self._jobs if j.state is not None and not j.state.started]
        # Shortest remaining prompt first: a short request arriving behind a long prompt
        # starts at once instead of waiting for the long one's every chunk.
        reading.sort(key=lambda j: len(j.state.prompt_ids) - j.prefilled if j.state else 0)
        for job in reading:
            state = job.state
            assert state is not None
            take = min(len(state.prompt_ids) - job.prefilled, budget)
            if take <= 0:
                break
            batch.append((job, take))
            budget -= take
        if not batch:
            return
        width = max(take for _, take in batch)
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        positions = torch.zeros(len(batch), width, dtype=torch.long)
        for b, (job, take) in enumerate(batch):
            assert job.state is not None
            start = job.prefilled
            ids[b, :take] = torch.tensor(job.state.prompt_ids[start : start + take])
            positions[b] = torch.arange(start, start + width)
        scoring = any(job.state is not None and job.state.wants_prompt_logits for job, _ in batch)
        # Only the prompts' last positions are sampled from; skip the vocab projection elsewhere.
        last = sorted({take - 1 for _, take in batch})
        keep: int | torch.Tensor = 0 if scoring else torch.tensor(last)
        started = time.perf_counter()
        logits = self._forward(
            ids, positions, [j.rows[0] for j, _ in batch], [t for _, t in batch],
            [j.adapter for j, _ in batch], keep,
        )  # fmt: skip
        tokens = sum(t for _, t in batch)
        self._prefill_seconds_per_token = _ewma(
            self._prefill_seconds_per_token, (time.perf_counter() - started) / tokens
        )
        self._stats["prefill_tokens"] += tokens
        for b, (job, take) in enumerate(batch):
            state = job.state
            assert state is not None
            if state.wants_prompt_logits:
                state.score_prompt(logits[b, :take], job.prefilled)
            job.prefilled += take
            if job.prefilled < len(state.prompt_ids):
                continue
            position = take - 1 if scoring else last.index(take - 1)
            first = state.begin(logits[b, position][None])
            if first is None:  # max_tokens=0: scored, nothing to sample
                self._emit(job)
                continue
            job.rows += [job.rows[0].copy() for _ in range(first.shape[0] - 1)]
            job.logits = first

    # decode

    def _decode(self) -> None:
        feed: list[tuple[_Job, list[int]]] = []
        for job in [j for j in self._jobs if j.logits is not None]:
            state = job.state
            assert state is not None and job.logits is not None
            keep, tokens = state.step(job.logits)
            job.logits = None
            job.rows = [job.rows[k] for k in keep]
            self._emit(job)
            if not state.done:
                feed.append((job, tokens))
        if not feed:
            return
        rows = [row for job, _ in feed for row in job.rows]
        ids = torch.tensor([[t] for _, tokens in feed for t in tokens], dtype=torch.long)
        positions = torch.tensor([[row.length] for row in rows], dtype=torch.long)
        adapters = [job.adapter for job, tokens in feed for _ in tokens]
        started = time.perf_counter()
        logits = self._forward(ids, positions, rows, [1] * len(rows), adapters, 1)
        self._decode_seconds = _ewma(self._decode_seconds, time.perf_counter() - started)
        self._stats["steps"] += 1
        self._stats["rows_stepped"] += len(rows)
        offset = 0
        for job, tokens in feed:
            job.logits = logits[offset : offset + len(tokens), -1]
            offset += len(tokens)

    def _prefill_budget(self) -> int:
        """Prompt tokens to read in this loop.

        While others decode, about one decode step's worth of time, so a long prompt slows
        their tokens by about half instead of stalling them; alone, a whole chunk.
        """
        chunk = self.settings.prefill_chunk
        decoding = any(j.logits is not None for j in self._jobs)
        if not decoding or not self._prefill_seconds_per_token or not self._decode_seconds:
            return chunk
        fair = int(self._decode_seconds / self._prefill_seconds_per_token)
        return max(MIN_PREFILL_SLICE, min(chunk, fair))

    def _forward(
        self,
        ids: torch.Tensor,
        positions: torch.Tensor,
        rows: list[RowCache],
        new_tokens: list[int],
        adapters: list[str | None],
        keep: int | torch.Tensor,
    ) -> torch.Tensor:
        cache = RaggedCache(rows, new_tokens)
        lm = self.adapters.language_model
        kwargs: dict[str, Any] = {self._cache_kwarg: cache, "use_cache": True}
        if keep is not None:
            kwargs["logits_to_keep"] = (
                keep.to(self.device) if isinstance(keep, torch.Tensor) else keep
            )
        names = [a or BASE_ADAPTER for a in adapters]
        self.adapters.row_names = names if isinstance(self.adapters.model, PeftModel) else None
        try:
            with torch.inference_mode(), ragged_forward(cache):
                out = lm(
                    input_ids=ids.to(self.device), position_ids=positions.to(self.device), **kwargs
                )
        finally:
            self.adapters.row_names = None
        logits: torch.Tensor = out.logits
        return logits.float()

    # the serial path, for models that cannot use ragged attention

    def _alone(self, job: _Job) -> Generator[None]:
        assert job.state is not None
        if isinstance(self.adapters.model, PeftModel):
            self.adapters.row_names = [job.adapter or BASE_ADAPTER]
        try:
            yield from _drive_alone(self.adapters.model, job.state)
        finally:
            self.adapters.row_names = None

    def _step_alone(self) -> None:
        for job in [j for j in self._jobs if j.alone is not None]:
            assert job.alone is not None
            try:
                next(job.alone)
            except StopIteration:
                pass
            self._emit(job)

    # answers

    def _emit(self, job: _Job) -> None:
        state = job.state
        assert state is not None
        if job.ticket.stream:
            deltas = state.stream_deltas()
            if deltas:
                job.ticket._put("deltas", deltas)
        if state.done:
            # Book the request out before its caller wakes: whoever reads stats() after
            # result() returns must not still count it as running.
            self._completed += 1
            self._durations.append(time.monotonic() - job.started)
            self._remove(job)
            if job.ticket.stream:
                job.ticket._put("end")
            else:
                job.ticket._put("result", state.result())

    def _fail(self, job: _Job, exc: BaseException) -> None:
        self._remove(job)
        job.ticket._put("error", exc)

    def _remove(self, job: _Job) -> None:
        if job in self._jobs:
            with self._cond:
                self._jobs.remove(job)
            self.adapters.release(job.adapter)
            job.adapter = None
        job.rows = []
        job.logits = None
        if job.alone is not None:
            job.alone.close()
            job.alone = None


def _ewma(previous: float, value: float, weight: float = 0.2) -> float:
    return value if not previous else previous + weight * (value - previous)


def _cache_kwarg(model: Any) -> str:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def retry_after_seconds(waiting: int, mean_request_seconds: float, rows: int) -> int:
    """A guess at when the queue will have room: the requests ahead, done `rows` at a time."""
    return max(1, min(60, math.ceil(mean_request_seconds * (waiting + 1) / max(1, rows))))
