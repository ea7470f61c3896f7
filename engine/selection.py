"""Best-checkpoint selection and early stopping (a Tunery extension; docs/adr/0018).

With a validation file, the trainer scores the whole validation set at each epoch-end model
checkpoint. The rule that picks the best one:

- the metric is `classification/accuracy` when the run computes classification metrics (the
  task's own measure; the trainer computes them for data that is a closed label set even when
  the job did not ask), ties broken by the lower `full_validation_loss`; otherwise the
  `full_validation_loss` alone (lower is better);
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
LOSS = "full_validation_loss"


@dataclass
class Evaluation:
    step: int
    epoch: int
    metrics: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def metric_of(metrics: dict[str, float]) -> str:
    """The metric that ranks checkpoints: classification accuracy when measured, else loss."""
    return ACCURACY if ACCURACY in metrics else LOSS


def _key(ev: Evaluation, metric: str) -> tuple[float, float]:
    """A sort key where smaller is better."""
    loss = ev.metrics.get(LOSS, float("inf"))
    if metric == ACCURACY:
        return (-ev.metrics.get(ACCURACY, float("-inf")), loss)
    return (loss, 0.0)


def _describe(metric: str, value: float) -> str:
    if metric == ACCURACY:
        return f"classification accuracy {value:.4f}"
    return f"full validation loss {value:.4f}"


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
        rule = "highest" if metric == ACCURACY else "lowest"
        text = (
            f"step {best.step} (epoch {best.epoch}) has the {rule} {_describe(metric, value)} "
            f"of {n} evaluation{'s' if n != 1 else ''} on the whole validation set"
        )
        if metric == ACCURACY and any(
            ev is not best and ev.metrics.get(ACCURACY) == value for ev in self.evaluations
        ):
            text += f" (tied on accuracy; full validation loss {best.metrics.get(LOSS, 0):.4f})"
        if stopped_early:
            text += f"; stopped early: {patience} evaluation{'s' if patience != 1 else ''} "
            text += "in a row without improvement"
        return text
