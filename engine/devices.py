"""The devices this host can train on: what a training worker announces (manage.py
worker_devices) and which device class it serves (jobs.routing)."""

from __future__ import annotations

import os
from typing import Any


def detect() -> dict[str, Any]:
    """{"kind": "cuda" | "cpu", "count", "memory_gib" (per device), "names"}."""
    import torch

    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        props = [torch.cuda.get_device_properties(i) for i in range(count)]
        return {
            "kind": "cuda",
            "count": count,
            "memory_gib": round(min(p.total_memory for p in props) / 2**30, 1),
            "names": sorted({p.name for p in props}),
        }
    import psutil

    return {
        "kind": "cpu",
        "count": os.cpu_count() or 1,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "names": [],
    }


def device_class(info: dict[str, Any], configured: str = "") -> str:
    """The configured class, else the detected kind (`cpu`, `cuda`)."""
    return configured or str(info["kind"])
