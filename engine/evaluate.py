"""Score trained models on a whole validation set, exactly as training measures them.

`evaluate_models(spec, model_dirs)` loads the base once per model (an adapter, or a full
model's weights), and returns for each the `full_validation_*` loss and accuracies of the
trainer's own forward pass, plus the classification metrics when the spec asks for them. The
web side uses it to compare a job's checkpoints in one table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from engine.models import pick_device, resolve_model_source
from engine.spec import Hooks, TrainingError, TrainSpec
from engine.trainer import (
    Trainer,
    build_runtime,
    classification_metrics,
    setup_classification,
)


def evaluate_models(
    spec: TrainSpec, model_dirs: Sequence[str], hooks: Hooks | None = None
) -> list[dict[str, float]]:
    """One metrics dict per model dir, in order. `spec.validation_path` is required; the
    training file is read only for the classification metrics' class set."""
    if not spec.validation_path:
        raise TrainingError("Scoring needs a validation file")
    hooks = hooks or Hooks()
    device = pick_device(spec.device)
    base_dir = resolve_model_source(spec.model_source, spec.cache_dir)
    results: list[dict[str, float]] = []
    first: Trainer | None = None
    for model_dir in model_dirs:
        if not Path(model_dir).is_dir():
            raise TrainingError(f"Model files not found: {model_dir}")
        trainer = Trainer(replace(spec, continue_from=model_dir), hooks)
        trainer.runtime = build_runtime(trainer.spec, base_dir, device, None)
        if first is None:
            trainer._load_data(trainer.runtime.tokenizer, base_dir)
            first = trainer
        else:  # same base, same tokenizer: tokenize the files once
            trainer.max_length, trainer.tokenizing = first.max_length, first.tokenizing
            trainer.train_examples = first.train_examples
            trainer.validation_examples = first.validation_examples
        trainer.plan = trainer._plan(device, trainer.runtime.bf16)
        model = trainer.runtime.model
        model.eval()
        with torch.no_grad():
            row = trainer._evaluate(trainer.validation_examples).row("full_validation")
            setup = setup_classification(
                trainer.spec,
                trainer.tokenizing,
                trainer.train_examples,
                trainer.validation_examples,
                hooks,
            )
            if setup is not None:
                row.update(classification_metrics(trainer.runtime, setup, trainer.plan.pack_tokens))
        results.append({k: v for k, v in row.items() if not _isnan(v)})
        # Free this model before loading the next (the first trainer's data is still needed).
        del model
        # The trainer is not used again; dropping its runtime lets the model's memory go now.
        trainer.runtime = None  # type: ignore[assignment]  # see above
    return results


def _isnan(value: float) -> bool:
    return isinstance(value, float) and math.isnan(value)
