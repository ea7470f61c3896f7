"""What the benchmark scripts share: a description of the machine they ran on."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str = "cpu") -> str:
    """One line for results tables: the GPU, or the CPU with its core count and whether it has
    native bf16 matmuls (which decides the engine's precision on CPU)."""
    import torch

    if device.startswith("cuda"):
        return (
            f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}), torch {torch.__version__}"
        )
    from engine.models import cpu_has_native_bf16

    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    return f"{cpu_name()}, {os.cpu_count()} cores, {bf16}, torch {torch.__version__}"
