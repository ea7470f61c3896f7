"""An in-process pool of loaded base models whose LoRA adapters are swapped, not reloaded.

A base model is loaded once and kept (up to `max_bases`, least recently used evicted). Its
fine-tunes are PEFT adapters loaded into the same `PeftModel` under their own names; serving
one means activating it, which flips flags on the LoRA layers and takes milliseconds, where
reloading the base would take seconds and double the memory.

One generation runs per base at a time: activating an adapter changes the shared model, so a
lease holds that base's lock until the caller is done (for a stream, until it is consumed).
Different bases serve in parallel.
"""

from __future__ import annotations

import gc
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper

Loader = Callable[[str], tuple[Any, Any]]

DEFAULT_MAX_ADAPTERS_PER_BASE = 16


@dataclass
class PoolStats:
    base_loads: dict[str, int]  # how many times each base was loaded, evictions included
    loaded_bases: list[str]  # least recently used first
    adapters: dict[str, list[str]]  # base key -> loaded adapter paths
    adapter_loads: int
    adapter_switches: int
    last_switch_ms: float | None  # activating an already loaded adapter (or the bare base)
    last_adapter_load_ms: float | None  # reading an adapter from disk into the base


class _Base:
    """One base model slot. `ready` is set once loading ends, successfully or not."""

    def __init__(self, key: str) -> None:
        # Fields other than `model` are read under the pool's lock; `model` and the adapters
        # inside it change only under this base's own `lock`.
        self.key = key
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.model: Any = None
        self.tokenizer: Any = None
        self.lock = threading.Lock()  # held for a whole generation
        self.adapters: OrderedDict[str, str] = OrderedDict()  # path -> adapter name, LRU first
        self.leases = 0  # guarded by the pool's lock; a leased base is never evicted
        # The model's LoRA layers, found once per adapter load rather than on every switch:
        # walking a 135M model's ~3000 modules is most of what peft's own switch costs.
        self.tuner_layers: list[BaseTunerLayer] = []
        self.fast_switch = False
        # Whether `model.active_adapter` says which adapter every layer has: false after an
        # adapter load, which may touch layers without going through `activate`.
        self.active_is_known = False

    def index_layers(self) -> None:
        modules = list(self.model.modules()) if isinstance(self.model, PeftModel) else []
        self.tuner_layers = [m for m in modules if isinstance(m, BaseTunerLayer)]
        self.active_is_known = False
        # Wrapped extra modules (modules_to_save, trainable tokens) need peft's full switch.
        self.fast_switch = not any(isinstance(m, AuxiliaryTrainingWrapper) for m in modules)

    def activate(self, name: str) -> None:
        if getattr(self.model, "active_adapter", None) == name and self.active_is_known:
            # Back-to-back requests for one model: re-setting it walked ~200 layers (4-9 ms).
            return
        self.active_is_known = True
        if not self.fast_switch:
            self.model.set_adapter(name, inference_mode=True)
            return
        # What PeftModel.set_adapter does, minus the two walks over every module.
        for layer in self.tuner_layers:
            layer.set_adapter(name, inference_mode=True)
        self.model.base_model.active_adapter = name
        self.model.active_adapter = name

    @contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        if not self.fast_switch:
            with self.model.disable_adapter():
                yield
            return
        # PeftModel.disable_adapter first computes a full model status report (~50 ms).
        for layer in self.tuner_layers:
            layer.enable_adapters(False)
        try:
            yield
        finally:
            for layer in self.tuner_layers:
                layer.enable_adapters(True)


class ModelPool:
    """Thread-safe pool; `loader(base_key)` returns `(model, tokenizer)` for a base."""

    def __init__(
        self,
        loader: Loader,
        max_bases: int = 1,
        max_adapters_per_base: int = DEFAULT_MAX_ADAPTERS_PER_BASE,
    ) -> None:
        if max_bases < 1 or max_adapters_per_base < 1:
            raise ValueError("the pool must hold at least one base and one adapter")
        self._loader = loader
        self._max_bases = max_bases
        self._max_adapters = max_adapters_per_base
        self._lock = threading.Lock()  # guards everything below except a base's model
        self._bases: OrderedDict[str, _Base] = OrderedDict()
        self._base_loads: dict[str, int] = {}
        self._adapter_loads = 0
        self._adapter_switches = 0
        self._last_switch_ms: float | None = None
        self._last_adapter_load_ms: float | None = None

    @contextmanager
    def lease(
        self, base_key: str, adapter_path: str | Path | None = None
    ) -> Iterator[tuple[Any, Any]]:
        """Yield `(model, tokenizer)` with the adapter active (None: the bare base).

        Loads the base on first use; callers that arrive while it loads wait for it. Holds
        the base's lock until the block exits, so use the model only inside the block.
        """
        entry = self._acquire(base_key)
        try:
            with entry.lock, ExitStack() as stack:
                model = self._activate(entry, adapter_path, stack)
                yield model, entry.tokenizer
        finally:
            with self._lock:
                entry.leases -= 1
                evicted = self._evict_idle()
            _release_memory(evicted)

    def unload_adapter(self, adapter_path: str | Path) -> bool:
        """Drop an adapter from every base (its model was deleted); False if none held it.

        Waits for a generation that uses the base to finish, so none starts with it after.
        """
        path = _normalise(adapter_path)
        with self._lock:
            entries = [e for e in self._bases.values() if path in e.adapters]
        found = False
        for entry in entries:
            with entry.lock:
                with self._lock:
                    name = entry.adapters.pop(path, None)
                if name is not None:
                    self._delete_adapter(entry, name)
                    found = True
        return found

    def stats(self) -> PoolStats:
        with self._lock:
            return PoolStats(
                base_loads=dict(self._base_loads),
                loaded_bases=[k for k, e in self._bases.items() if e.model is not None],
                adapters={k: list(e.adapters) for k, e in self._bases.items()},
                adapter_loads=self._adapter_loads,
                adapter_switches=self._adapter_switches,
                last_switch_ms=self._last_switch_ms,
                last_adapter_load_ms=self._last_adapter_load_ms,
            )

    def _acquire(self, base_key: str) -> _Base:
        with self._lock:
            entry = self._bases.get(base_key)
            must_load = entry is None
            if entry is None:
                entry = self._bases[base_key] = _Base(base_key)
            entry.leases += 1
            self._bases.move_to_end(base_key)
            # Make room before loading, so two bases never sit in memory beyond the bound.
            evicted = self._evict_idle() if must_load else []
        _release_memory(evicted)
        if must_load:
            self._load(entry)
        else:
            entry.ready.wait()
        if entry.error is not None:
            with self._lock:
                entry.leases -= 1
            raise RuntimeError(f"loading base model {base_key!r} failed") from entry.error
        return entry

    def _load(self, entry: _Base) -> None:
        try:
            model, tokenizer = self._loader(entry.key)
            model.eval()
        except BaseException as exc:  # waiters must wake up and see the failure
            entry.error = exc
            with self._lock:
                # Forget the failed slot so that a later request tries again.
                if self._bases.get(entry.key) is entry:
                    del self._bases[entry.key]
        else:
            entry.model, entry.tokenizer = model, tokenizer
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
            if entry.leases == 0 and entry.ready.is_set():
                del self._bases[key]
                evicted.append(entry)
        return evicted

    def _activate(self, entry: _Base, adapter_path: str | Path | None, stack: ExitStack) -> Any:
        """Make the requested adapter (or none) active; runs under the base's lock."""
        if adapter_path is None:
            started = time.perf_counter()
            if isinstance(entry.model, PeftModel):
                stack.enter_context(entry.adapters_disabled())
            self._record_switch(started)
            return entry.model
        path = _normalise(adapter_path)
        name = entry.adapters.get(path)
        if name is None:
            name = self._load_adapter(entry, path)
        started = time.perf_counter()
        entry.activate(name)
        self._record_switch(started)
        with self._lock:
            entry.adapters.move_to_end(path)
        return entry.model

    def _load_adapter(self, entry: _Base, path: str) -> str:
        started = time.perf_counter()
        name = "adapter_" + hashlib.sha1(path.encode()).hexdigest()[:16]
        if len(entry.adapters) >= self._max_adapters:
            with self._lock:
                _, oldest = entry.adapters.popitem(last=False)
            self._delete_adapter(entry, oldest)
        if isinstance(entry.model, PeftModel):
            entry.model.load_adapter(path, adapter_name=name)
        else:
            # The first adapter wraps the base in place: its LoRA layers are injected into the
            # same modules, so later adapters share every base weight.
            entry.model = PeftModel.from_pretrained(entry.model, path, adapter_name=name)
        entry.model.eval()
        entry.index_layers()
        with self._lock:
            entry.adapters[path] = name
            self._adapter_loads += 1
            self._last_adapter_load_ms = (time.perf_counter() - started) * 1000
        return name

    def _delete_adapter(self, entry: _Base, name: str) -> None:
        """Remove an adapter's weights from the base (caller holds the base's lock)."""
        if not entry.adapters:
            # Unwrap rather than keep a PeftModel with no adapter, which cannot even be
            # disabled; the base modules get their original layers back.
            entry.model = entry.model.unload()
            entry.model.eval()
        else:
            entry.model.delete_adapter(name)
        entry.index_layers()

    def _record_switch(self, started: float) -> None:
        elapsed = (time.perf_counter() - started) * 1000
        with self._lock:
            self._adapter_switches += 1
            self._last_switch_ms = elapsed


def _normalise(adapter_path: str | Path) -> str:
    return str(Path(adapter_path).resolve())


def _release_memory(evicted: list[_Base]) -> None:
    """Free evicted bases now rather than whenever the collector runs."""
    if not evicted:
        return
    for entry in evicted:
        entry.model = entry.tokenizer = None
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
