"""Best-checkpoint selection and early stopping (a Tunery extension; docs/adr/0018).

With a validation file, the trainer scores the whole validation set at each epoch-end model
checkpoint. The rule that picks the best one:

- the metric is `classification/accuracy` when the run computes classification metrics (the
  task's own measure; the trainer computes them for data that is a closed label set even when
  the job did not ask); for free text, `generation/rouge_l`, the ROUGE-L of greedy generations
  (engine.free_text); either way ties are broken by the lower `full_validation_loss`. Without
  either, the `full_validation_loss` alone (lower is better);
- a checkpoint improves on the best so far only if it is strictly better; on equal scores the
  earlier checkpoint stays best (it saw less of the training data for the same result);
- training stops early once `patience` evaluations in a row have not improved on the best.

The final model is the best checkpoint's. Plain Python, no torch: tested on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

ACCURACY = "classification/accuracy"
ROUGE_L = "generation/rouge_l"  # engine.free_text.METRIC
LOSS = "full_validation_loss"
# Metrics where higher is better, in order of preference, and how the reason names them.
SCORES = {ACCURACY: "classification accuracy", ROUGE_L: "ROUGE-L of greedy generations"}


def scored_on(metric: str) -> str:
    """What `metric` was measured on: greedy generations cost far more than a loss pass, so
    they score a fixed sample of the validation set (engine.free_text.MAX_EXAMPLES)."""
    return "validation sample" if metric == ROUGE_L else "whole validation set"


@dataclass
class Evaluation:
    step: int
    epoch: int
    metrics: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def metric_of(metrics: dict[str, float]) -> str:
    """The metric that ranks checkpoints: classification accuracy or ROUGE-L when measured,
    else the loss."""
    return next((m for m in SCORES if m in metrics), LOSS)


def _key(ev: Evaluation, metric: str) -> tuple[float, float]:
    """A sort key where smaller is better."""
    loss = ev.metrics.get(LOSS, float("inf"))
    if metric in SCORES:
        return (-ev.metrics.get(metric, float("-inf")), loss)
    return (loss, 0.0)


def _describe(metric: str, value: float) -> str:
    return f"{SCORES.get(metric, 'full validation loss')} {value:.4f}"


@dataclass
class Selection:
    """The evaluations so far and what they decide."""

    evaluations: list[Evaluation] = field(default_factory=list)

    @classmethod
    def restore(cls, rows: Sequence[dict[str, Any]]) -> Selection:
        return cls([Evaluation(int(r["step"]), int(r["epoch"]), dict(r["metrics"])) for r in rows])

    def dump(self) -> list[dict[str, Any]]:
        return [ev.as_dict() for ev in self.evaluations]

    @property
    def metric(self) -> str:
        return metric_of(self.evaluations[-1].metrics) if self.evaluations else LOSS

    def add(self, evaluation: Evaluation) -> bool:
        """Record an evaluation; True if it is the new best."""
        self.evaluations.append(evaluation)
        return self.best is evaluation

    @property
    def best(self) -> Evaluation | None:
        best: Evaluation | None = None
        metric = self.metric
        for ev in self.evaluations:
            if best is None or _key(ev, metric) < _key(best, metric):
                best = ev
        return best

    @property
    def since_best(self) -> int:
        """Evaluations after the best one (none of them improved on it)."""
        best = self.best
        if best is None:
            return 0
        return len(self.evaluations) - 1 - self.evaluations.index(best)

    def should_stop(self, patience: int | None) -> bool:
        return bool(patience) and self.since_best >= (patience or 0)

    def reason(self, *, stopped_early: bool, patience: int | None) -> str:
        """Why the best checkpoint won, in a sentence for the events and the results file."""
        best = self.best
        assert best is not None
        metric = self.metric
        n = len(self.evaluations)
        value = best.metrics.get(metric, float("nan"))
        rule = "highest" if metric in SCORES else "lowest"
        text = (
            f"step {best.step} (epoch {best.epoch}) has the {rule} {_describe(metric, value)} "
            f"of {n} evaluation{'s' if n != 1 else ''} on the {scored_on(metric)}"
        )
        if metric in SCORES and any(
            ev is not best and ev.metrics.get(metric) == value for ev in self.evaluations
        ):
            text += f" (tied; full validation loss {best.metrics.get(LOSS, 0):.4f})"
        if stopped_early:
            text += f"; stopped early: {patience} evaluation{'s' if patience != 1 else ''} "
            text += "in a row without improvement"
        return text
