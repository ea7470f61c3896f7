"""The training contract: what the caller asks for, how it is told about progress, what it gets.

Everything here is plain data so that `jobs/runner.py` can build a spec from its ORM objects and
map the results back without the engine knowing about Django.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

Method = Literal["lora", "full"]
# What the run optimises: next-token loss on the completions (supervised), or the DPO loss on
# preference pairs (engine.dpo). OpenAI's `method.type`; `Method` above is how weights change.
Objective = Literal["supervised", "dpo"]
TooLongPolicy = Literal["truncate", "drop"]
# The names of the rules that fill in "auto" hyperparameters (`resolve_hyperparameters`): "openai", OpenAI's
# published rules, or "small", fitted to small open models by issue 14's sweep
# (bench/quality/sweep.py, docs/benchmarks/quality.md).
AUTO_RULES: tuple[str, ...] = ("openai", "small")

# Base learning rates, multiplied by `learning_rate_multiplier` (OpenAI's knob). LoRA adapters
# start at zero and need a much larger step than full weights: with OpenAI's default multipliers
# (0.05-0.2) these give 2e-4..8e-4 for LoRA and 1e-5..4e-5 for full fine-tuning, the usual ranges.
DEFAULT_BASE_LEARNING_RATE: dict[str, float] = {"lora": 4e-3, "full": 2e-4}

# DPO's β when "auto" (the DPO paper's and TRL's usual value), and the range the API accepts.
DEFAULT_BETA = 0.1
BETA_RANGE = (0.001, 10.0)

AUTO_N_EPOCHS = 4
AUTO_BATCH_FRACTION = 0.002  # OpenAI: "about 0.2% of the training examples"
AUTO_BATCH_MAX = 256


class TrainingError(Exception):
    """An expected failure (bad data, missing model...). `str(error)` is fit to show a user."""


@dataclass
class LoraSpec:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    # "all-linear" is peft's shorthand for every linear layer except the output head.
    target_modules: str | list[str] = "all-linear"


@dataclass
class TrainSpec:
    model_source: str
    train_path: str
    output_dir: str
    validation_path: str | None = None
    method: Method = "lora"
    objective: Objective = "supervised"
    beta: float | None = None  # DPO's β; None: engine.dpo.DEFAULT_BETA
    n_epochs: int | None = None
    batch_size: int | None = None
    learning_rate_multiplier: float | None = None
    auto_rule: str = "openai"  # how None hyperparameters are filled in (see below)
    prompt_loss_weight: float = 0.01
    base_learning_rate: float | None = None  # None: DEFAULT_BASE_LEARNING_RATE[method]
    lora: LoraSpec = field(default_factory=LoraSpec)
    seed: int = 42
    compute_classification_metrics: bool = False
    classification_n_classes: int | None = None
    classification_positive_class: str | None = None
    classification_betas: list[float] | None = None
    validation_every_n_steps: int = 10
    too_long: TooLongPolicy = "truncate"
    max_length: int | None = None  # None: the model's context length
    # Resume from the newest resume checkpoint in output_dir (resume=True), or from this one
    # (a `resume/step-N` dir, e.g. an earlier attempt's); see engine.checkpoints.
    resume: bool = False
    resume_from: str | None = None
    # Resume checkpoints every N optimizer steps and/or every T seconds of training, whichever
    # comes first (None or 0 turns one off); also at each epoch end and when stopped.
    checkpoint_every_steps: int | None = None
    checkpoint_every_seconds: float | None = 600.0
    # Where the per-epoch model checkpoints go (None: output_dir/checkpoints).
    checkpoints_dir: str | None = None
    continue_from: str | None = None  # an adapter dir (LoRA) or model dir (full) to keep training
    cache_dir: str | None = None  # where dequantized GGUF copies are kept
    device: str = "auto"
    max_train_examples: int | None = None
    # Train on this share of the training examples (a seeded subset, see engine.data): the ¼ and
    # ½ runs of a data-scaling forecast. 1.0 trains on all of them.
    data_fraction: float = 1.0
    # After the last step, evaluate the whole validation set once and add full_validation_* to
    # TrainResult.final_metrics, so runs of different lengths compare on the same examples.
    final_full_validation: bool = False
    # Tunery's best-checkpoint selection (docs/adr/0018): score the whole validation set at each
    # epoch-end checkpoint, and make the best one (engine.selection's rule) the final model.
    # Needs a validation file; off, the final model is the last step's, as OpenAI's.
    best_checkpoint: bool = False
    # With best_checkpoint: stop once this many epoch-end evaluations in a row have not improved
    # on the best (None: train all epochs).
    early_stopping_patience: int | None = None
    # Fraction of the optimizer steps spent warming the learning rate up linearly from ~0.
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    # Tokens packed into one forward pass. Bigger packs make bigger (faster) matmuls but hold
    # more activations; a step's examples are split into as many packs as needed and their
    # gradients accumulated. None: a per-device default (see trainer.py).
    max_tokens_per_pack: int | None = None
    # None: bf16 autocast where the hardware runs it natively (CUDA with bf16, CPUs with
    # AVX512-BF16/AMX), fp32 otherwise. True/False force it.
    bf16: bool | None = None
    num_threads: int | None = None  # CPU intra-op threads; None: models.auto_threads()


@dataclass
class CheckpointInfo:
    epoch: int  # epochs fully completed when the checkpoint was taken
    step: int
    path: str
    metrics: dict[str, float] = field(default_factory=dict)


class Hooks:
    """Callbacks from a running training. Subclass and override what you need.

    They run on the training thread between steps, so they should be quick; `should_stop` is
    polled before every optimizer step.
    """

    def on_event(self, level: str, message: str) -> None:
        pass

    def on_metrics(self, row: dict[str, float]) -> None:
        pass

    def on_progress(
        self, step: int, total_steps: int, tokens: int, eta_seconds: float | None
    ) -> None:
        pass

    def on_checkpoint(self, info: CheckpointInfo) -> None:
        pass

    def on_resume_checkpoint(self, path: str) -> None:
        """A resume checkpoint is complete at `path` (the runner copies it to the artifact
        store, so another host can resume from it)."""

    def should_stop(self) -> bool:
        return False

    def may_write(self) -> bool:
        """False once this run has lost its claim on the job (another attempt owns it now):
        the engine then writes no checkpoint and no model, and stops."""
        return True


@dataclass
class TrainResult:
    status: Literal["succeeded", "stopped"]
    output_dir: str
    # The final adapter (LoRA) or full model directory; when stopped, the resume checkpoint's.
    model_dir: str
    results_csv: str
    trained_tokens: int
    steps: int
    hyperparameters: dict[str, float | int]
    final_metrics: dict[str, float]
    checkpoints: list[CheckpointInfo]
    # When stopped: the resume checkpoint to continue from (None if the run may not write).
    resume_checkpoint: str | None = None
    # With best_checkpoint: {"step", "epoch", "metric", "reason", "stopped_early", "evaluations"}.
    selection: dict[str, Any] | None = None


def auto_learning_rate_multiplier(batch_size: int) -> float:
    """OpenAI's 0.05 / 0.1 / 0.2 by batch size; the thresholds are ours (OpenAI never published
    them): below 8 → 0.05, 8 to 63 → 0.1, 64 and above → 0.2. Bigger batches average out more
    noise, so they can take bigger steps."""
    if batch_size < 8:
        return 0.05
    if batch_size < 64:
        return 0.1
    return 0.2


# The "small" rule (ADR 0019; the sweep behind it is in docs/benchmarks/quality.md).
SMALL_BATCH = 8  # from SMALL_BATCH_TINY_SET to SMALL_BATCH_LARGE_SET examples
SMALL_BATCH_LARGE = 16
SMALL_BATCH_LARGE_SET = 1000
# Below 250 examples, batches of 4 (twice the steps for the same passes): at 100 examples
# batches of 8 trailed OpenAI's rules (batch 1) by 2 points over three seeds, batches of 4 did
# not (docs/benchmarks/quality.md, 2026-12-07 evening).
SMALL_BATCH_TINY = 4
SMALL_BATCH_TINY_SET = 250
SMALL_MULTIPLIER_AT_8 = 0.25  # LoRA: 1e-3 at batch 8
# 200 steps of 8 were tried too: no better within the sweep's noise, and twice the training time.
SMALL_MIN_STEPS = 100
# At 2,000 examples one or two epochs left 3 points on the table against OpenAI's 4 epochs
# (docs/benchmarks/quality.md, 2026-12-07 Xeon); best-checkpoint selection keeps an earlier
# epoch where the last ones overshoot.
SMALL_MIN_EPOCHS = 3
SMALL_MAX_EPOCHS = 10
# A job that keeps its best checkpoint (a validation file, early stopping "auto": ADR 0018) gets
# passes enough to see SELECTING_MIN_EXAMPLES examples, at most SELECTING_MAX_FLOOR epochs: at
# 500 examples 6 epochs instead of 3 won 11 runs of 11 over five tasks and up to three seeds
# (+0.3 to +4.0, 1.5-2.3 times the job time), and selection keeps an earlier epoch where the
# last ones overshoot. Bounded in examples, the extra time stays bounded too: from 1,000 examples the
# floor is 3 as before (at 2,000, 6 epochs gained 0.5 on one task for twice the time).
SELECTING_MIN_EXAMPLES = 3000
SELECTING_MAX_FLOOR = 6


def _small_batch(n_examples: int) -> int:
    if n_examples < SMALL_BATCH_TINY_SET:
        return SMALL_BATCH_TINY
    return SMALL_BATCH_LARGE if n_examples >= SMALL_BATCH_LARGE_SET else SMALL_BATCH


def _small_multiplier(batch_size: int) -> float:
    """Square-root scaling with the batch size around 0.25 at 8 (the noise of the gradient
    falls with the square root of the batch)."""
    return round(SMALL_MULTIPLIER_AT_8 * math.sqrt(batch_size / SMALL_BATCH), 4)


def _small_epochs(n_examples: int, batch_size: int, selecting: bool) -> int:
    """Enough epochs for about SMALL_MIN_STEPS optimizer steps, a step counted as at least
    SMALL_BATCH examples, between SMALL_MIN_EPOCHS and SMALL_MAX_EPOCHS: a small set needs many
    passes, and a large one still gains from three. Smaller batches make more steps of the same
    passes rather than fewer passes. A run that selects its best checkpoint has a higher floor
    (SELECTING_MIN_EXAMPLES)."""
    n = max(1, n_examples)
    wanted = math.ceil(SMALL_MIN_STEPS * max(batch_size, SMALL_BATCH) / n)
    floor = SMALL_MIN_EPOCHS
    if selecting:
        floor = max(floor, min(SELECTING_MAX_FLOOR, math.ceil(SELECTING_MIN_EXAMPLES / n)))
    return max(floor, min(SMALL_MAX_EPOCHS, wanted))


def auto_rule_for(rule: str, objective: str) -> str:
    """The rule a run's auto values follow. "small" was fitted on supervised tasks; DPO keeps
    OpenAI's rules until preference data is swept (its usual learning rates are far lower)."""
    return rule if objective == "supervised" else "openai"


def subset_size(n_examples: int, fraction: float) -> int:
    """How many of `n_examples` a run with `data_fraction=fraction` trains on (at least 1)."""
    if fraction >= 1:
        return n_examples
    return max(1, min(n_examples, round(fraction * n_examples)))


def resolve_hyperparameters(
    n_examples: int,
    n_epochs: int | None,
    batch_size: int | None,
    learning_rate_multiplier: float | None,
    rule: str = "openai",
    selecting: bool = False,
) -> tuple[int, int, float]:
    """Fill in the automatic values where the caller gave None, by `rule`.

    "openai": n_epochs 4; batch_size round(0.2% of n_examples), at least 1 and at most 256;
    learning_rate_multiplier: see `auto_learning_rate_multiplier`.
    "small": batch_size 8 (4 below 250 examples, 16 from 1,000); learning_rate_multiplier 0.25
    at batch 8, scaled by the square root of the batch size; n_epochs enough for about 100 steps
    of at least 8 examples, 3 to 10, and when `selecting` (the run keeps its best checkpoint)
    at least enough to see 3,000 examples, up to 6 (6 at 500 examples, 3 from 1,000).
    Either way the batch size never exceeds the number of examples.
    """
    if rule not in AUTO_RULES:
        raise TrainingError(f"Unknown auto rule {rule!r}; expected one of {AUTO_RULES}")
    if batch_size is not None:
        batch = int(batch_size)
    elif rule == "small":
        batch = _small_batch(n_examples)
    else:
        batch = min(AUTO_BATCH_MAX, max(1, round(AUTO_BATCH_FRACTION * n_examples)))
    batch = max(1, min(batch, max(1, n_examples)))
    if n_epochs is not None:
        epochs = int(n_epochs)
    elif rule == "small":
        epochs = _small_epochs(n_examples, batch, selecting)
    else:
        epochs = AUTO_N_EPOCHS
    if learning_rate_multiplier is not None:
        multiplier = float(learning_rate_multiplier)
    elif rule == "small":
        multiplier = _small_multiplier(batch)
    else:
        multiplier = auto_learning_rate_multiplier(batch)
    if epochs < 1:
        raise TrainingError(f"n_epochs must be at least 1, got {epochs}")
    if multiplier <= 0:
        raise TrainingError(f"learning_rate_multiplier must be positive, got {multiplier}")
    return epochs, batch, multiplier
