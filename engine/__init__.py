"""Tunery's ML engine: plain Python (torch, transformers, peft), no Django.

Training entry point: `train(TrainSpec(...), hooks)`. Generation lives in engine.generation.
Submodules import torch lazily where they can, so importing `engine` stays cheap for web
processes that only need the dataclasses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.spec import (
    CheckpointInfo,
    Hooks,
    LoraSpec,
    TrainingError,
    TrainResult,
    TrainSpec,
    resolve_hyperparameters,
)

if TYPE_CHECKING:
    from engine.merge import merge_adapter
    from engine.models import (
        DEFAULT_MODEL_SOURCE,
        load_model_and_tokenizer,
        resolve_model_source,
    )
    from engine.trainer import train

__all__ = [
    "DEFAULT_MODEL_SOURCE",
    "CheckpointInfo",
    "Hooks",
    "LoraSpec",
    "TrainResult",
    "TrainSpec",
    "TrainingError",
    "load_model_and_tokenizer",
    "merge_adapter",
    "resolve_hyperparameters",
    "resolve_model_source",
    "train",
]

# Names served from heavier submodules on first access (PEP 562), so that `import engine` in the
# web process does not pull in torch and transformers.
_LAZY = {
    "train": "engine.trainer",
    "merge_adapter": "engine.merge",
    "resolve_model_source": "engine.models",
    "load_model_and_tokenizer": "engine.models",
    "DEFAULT_MODEL_SOURCE": "engine.models",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
