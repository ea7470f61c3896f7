"""The inference service's loaded models: one continuous-batching scheduler per base.

A base model is loaded once, on first use, and kept (up to `max_bases`; the least recently
used idle one is evicted). A full fine-tune is a base of its own (its directory is the key).
LoRA fine-tunes of a base are adapters inside that base's scheduler, mixed per row in its
batches (`engine.batching`), so serving a fine-tune never reloads or switches the base.

Admission: requests that cannot join a batch yet wait in their scheduler's queue. Past
`max_queue` waiting requests in all, `submit` raises `QueueFull` with a retry-after guess,
which the service turns into a 429.
"""

from __future__ import annotations

import gc
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.batching import (
    BatchSettings,
    QueueFull,
    Scheduler,
    SchedulerStats,
    Ticket,
    retry_after_seconds,
)
from engine.generation import GenerateRequest

Loader = Callable[[str], tuple[Any, Any]]


@dataclass
class PoolStats:
    base_loads: dict[str, int]  # how many times each base was loaded, evictions included
    loaded_bases: list[str]  # least recently used first
    adapters: dict[str, list[str]]  # base key -> loaded adapter paths
    adapter_loads: int
    schedulers: dict[str, SchedulerStats]


class _Base:
    """One base model slot. `ready` is set once loading ends, successfully or not."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.scheduler: Scheduler | None = None
        self.submitting = 0  # callers between lookup and submit: never evict under them


class ModelPool:
    """Thread-safe; `loader(base_key)` returns `(model, tokenizer)` for a base."""

    def __init__(
        self,
        loader: Loader,
        *,
        max_bases: int = 1,
        settings: BatchSettings | None = None,
        max_queue: int = 64,
    ) -> None:
        if max_bases < 1:
            raise ValueError("the pool must hold at least one base")
        self._loader = loader
        self._max_bases = max_bases
        self.settings = settings or BatchSettings()
        self.max_queue = max_queue
        self._lock = threading.Lock()
        self._bases: OrderedDict[str, _Base] = OrderedDict()
        self._base_loads: dict[str, int] = {}
        self._adapter_loads_evicted = 0

    def submit(
        self,
        base_key: str,
        adapter_path: str | Path | None,
        request: GenerateRequest,
        *,
        stream: bool = False,
    ) -> Ticket:
        """Queue `request` on the base (with the adapter, None for the bare base).

        Loads the base on first use; callers that arrive while it loads wait for it. Raises
        `QueueFull` when too many requests are waiting already.
        """
        self._check_queue()
        entry = self._acquire(base_key)
        try:
            assert entry.scheduler is not None
            return entry.scheduler.submit(request, adapter=adapter_path, stream=stream)
        finally:
            with self._lock:
                entry.submitting -= 1

    def model_info(self, base_key: str) -> tuple[Any, int | None]:
        """The base's tokenizer and context length (loading the base on first use)."""
        entry = self._acquire(base_key)
        try:
            assert entry.scheduler is not None
            return entry.scheduler.tokenizer, entry.scheduler.context
        finally:
            with self._lock:
                entry.submitting -= 1

    def _check_queue(self) -> None:
        with self._lock:
            schedulers = [e.scheduler for e in self._bases.values() if e.scheduler is not None]
        waiting = sum(s.waiting for s in schedulers)
        if waiting >= self.max_queue:
            seconds = max((s.mean_request_seconds() for s in schedulers), default=1.0)
            raise QueueFull(retry_after_seconds(waiting, seconds, self.settings.max_rows))

    def unload_adapter(self, adapter_path: str | Path) -> bool:
        """Drop an adapter from every base (its model was deleted); False if none held it."""
        with self._lock:
            schedulers = [e.scheduler for e in self._bases.values() if e.scheduler is not None]
        found = False
        for scheduler in schedulers:
            found = scheduler.unload_adapter(adapter_path) or found
        return found

    def stats(self) -> PoolStats:
        with self._lock:
            entries = list(self._bases.items())
            loads = dict(self._base_loads)
        schedulers = {k: e.scheduler.stats() for k, e in entries if e.scheduler is not None}
        return PoolStats(
            base_loads=loads,
            loaded_bases=list(schedulers),
            adapters={k: s.adapters for k, s in schedulers.items()},
            adapter_loads=self._adapter_loads_evicted
            + sum(s.adapter_loads for s in schedulers.values()),
            schedulers=schedulers,
        )

    def close(self) -> None:
        with self._lock:
            entries = list(self._bases.values())
            self._bases.clear()
        _release([e for e in entries if e.scheduler is not None])

    def _acquire(self, base_key: str) -> _Base:
        with self._lock:
            entry = self._bases.get(base_key)
            must_load = entry is None
            if entry is None:
                entry = self._bases[base_key] = _Base(base_key)
            entry.submitting += 1
            self._bases.move_to_end(base_key)
            # Make room before loading, so two bases never sit in memory beyond the bound.
            evicted = self._evict_idle() if must_load else []
        self._adapter_loads_evicted += sum(
            e.scheduler.adapters.loads for e in evicted if e.scheduler is not None
        )
        _release(evicted)
        if must_load:
            self._load(entry)
        else:
            entry.ready.wait()
        if entry.error is not None:
            with self._lock:
                entry.submitting -= 1
            raise RuntimeError(f"loading base model {base_key!r} failed") from entry.error
        return entry

    def _load(self, entry: _Base) -> None:
        try:
            model, tokenizer = self._loader(entry.key)
            entry.scheduler = Scheduler(model, tokenizer, self.settings, name=Path(entry.key).name)
        except BaseException as exc:  # waiters must wake up and see the failure
            entry.error = exc
            with self._lock:
                # Forget the failed slot so that a later request tries again.
                if self._bases.get(entry.key) is entry:
                    del self._bases[entry.key]
        else:
            with self._lock:
                self._base_loads[entry.key] = self._base_loads.get(entry.key, 0) + 1
        finally:
            entry.ready.set()

    def _evict_idle(self) -> list[_Base]:
        """Drop least recently used idle bases beyond the bound (caller holds the pool lock)."""
        evicted: list[_Base] = []
        for key in list(self._bases):
            if len(self._bases) <= self._max_bases:
                break
            entry = self._bases[key]
            busy = entry.scheduler is not None and not entry.scheduler.idle
            if entry.submitting == 0 and entry.ready.is_set() and not busy:
                del self._bases[key]
                evicted.append(entry)
        return evicted


def _release(entries: list[_Base]) -> None:
    """Stop evicted bases' schedulers and free their memory now, not whenever gc runs."""
    if not entries:
        return
    for entry in entries:
        if entry.scheduler is not None:
            entry.scheduler.close()
            entry.scheduler = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


__all__ = ["BatchSettings", "ModelPool", "PoolStats", "QueueFull", "Ticket"]
