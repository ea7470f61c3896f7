"""When to write a resume checkpoint: every N optimizer steps or T seconds of training,
whichever comes first, so that a lost worker costs at most that much training.

The clock is the training's own (monotonic, this process): time spent loading the model or
waiting in the queue is not training that could be lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class CheckpointCadence:
    every_steps: int | None = None  # None or 0: no step cadence
    every_seconds: float | None = 600.0  # None or 0: no wall-clock cadence
    clock: Callable[[], float] = time.monotonic
    _last_step: int = field(default=0, init=False)
    _last_time: float = field(default=0.0, init=False)

    def mark(self, step: int) -> None:
        """A checkpoint at `step` was just written (or the run just (re)started there)."""
        self._last_step = step
        self._last_time = self.clock()

    def due(self, step: int) -> bool:
        if self.every_steps and step - self._last_step >= self.every_steps:
            return True
        return bool(self.every_seconds) and self.clock() - self._last_time >= (
            self.every_seconds or 0
        )
