"""Score trained models on a whole validation set, exactly as training measures them.

`evaluate_models(spec, model_dirs)` loads the base once per model (an adapter, or a full
model's weights), and returns for each the `full_validation_*` loss and accuracies of the
trainer's own forward pass, plus what ranks checkpoints in training when the spec selects one
(docs/adr/0018): the classification metrics when the spec asks for them or the data is a
closed label set, else the ROUGE-L of greedy generations. The web side uses it to compare a
job's checkpoints in one table.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from engine import free_text
from engine.models import pick_device, resolve_model_source
from engine.spec import Hooks, TrainingError, TrainSpec
from engine.trainer import (
    Classification,
    Trainer,
    build_runtime,
    classification_metrics,
    setup_classification,
    setup_free_text,
    validation_order,
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
    scoring: Classification | free_text.FreeText | None = None
    for model_dir in model_dirs:
        if not Path(model_dir).is_dir():
            raise TrainingError(f"Model files not found: {model_dir}")
        trainer = Trainer(replace(spec, continue_from=model_dir), hooks)
        trainer.runtime = build_runtime(trainer.spec, base_dir, device, None)
        if first is None:
            trainer._load_data(trainer.runtime.tokenizer, base_dir)
            scoring = _task_scoring(trainer, hooks)
            first = trainer
        else:  # same base, same tokenizer: tokenize the files and set the scoring up once
            trainer.max_length, trainer.tokenizing = first.max_length, first.tokenizing
            trainer.train_examples = first.train_examples
            trainer.validation_examples = first.validation_examples
        trainer.plan = trainer._plan(device, trainer.runtime.bf16)
        runtime = trainer.runtime
        runtime.model.eval()
        with torch.no_grad():
            row = trainer._evaluate(trainer.validation_examples).row("full_validation")
            if isinstance(scoring, free_text.FreeText):
                row.update(
                    free_text.score(runtime.model, runtime.tokenizer, scoring, runtime.autocast)
                )
            elif scoring is not None:
                row.update(classification_metrics(runtime, scoring, trainer.plan.pack_tokens))
        results.append({k: v for k, v in row.items() if not _isnan(v)})
        # The trainer is not used again; dropping its runtime lets the model's memory go before
        # the next one loads (the first trainer's data is still needed).
        del runtime
        trainer.runtime = None  # type: ignore[assignment]  # see above
    return results


def _task_scoring(trainer: Trainer, hooks: Hooks) -> Classification | free_text.FreeText | None:
    """What ranks checkpoints in training besides the loss: the classification set-up when the
    spec asks for it or the data is a closed label set, else (when the spec selects a
    checkpoint) the free-text generation sample; None for neither."""
    selects = trainer.spec.best_checkpoint and not trainer.dpo  # as in training: DPO never does
    setup = setup_classification(
        trainer.spec,
        trainer.tokenizing,
        trainer.train_examples,
        trainer.validation_examples,
        hooks,
        for_selection=selects,
    )
    if setup is not None or not selects:
        return setup
    examples = trainer.validation_examples
    order = validation_order(trainer.spec.seed, len(examples))
    return setup_free_text(trainer.runtime, trainer.tokenizing, [examples[i] for i in order], hooks)


def _isnan(value: float) -> bool:
    return isinstance(value, float) and math.isnan(value)
