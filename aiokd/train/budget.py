"""The time budget of a training job, ``train.max_minutes``: its stages share the minutes in
proportion to the work each has left, and a stage whose share is spent stops as at its cap.

    work(stage)  = updates it has left x cost of one of its updates
    cost         = 1 for a model trained alone (the teacher stage, a baseline)
                   1 + K/2 for an AIO-KD update (the teacher's pass, and K students that are on
                   average two thirds of its depth and share its encoder prefix: measured
                   1.6-1.9 for K = 2 by benchmarks/speed_training.py)
    deadline     = now + (end - now) x work(stage) / (work(stage) + work of the stages after it)
    end          = the job's start + max_minutes

Each stage's deadline is set when it starts, from the time actually left, so the estimate's
error moves time between stages but not past ``end``, and a stage that stops early (patience)
leaves its time to the next ones.  A stage stopped by the budget is validated and saved as at
its cap (``finished = "max_minutes"``); running the job again goes on with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiokd.config import Config


def update_cost(cfg: Config) -> float:
    """The cost of one update of a stage with settings ``cfg``, in updates of a model alone."""
    return 1 + cfg.distill.k / 2 if cfg.distill.method == "aiokd" else 1.0


def stage_work(stage_cfg: Config, updates_done: int = 0) -> float:
    """The work a stage with settings ``stage_cfg`` has left after ``updates_done`` updates."""
    return (stage_cfg.train.max_updates - updates_done) * update_cost(stage_cfg)


class TimeBudget:
    """``minutes`` (0: no budget) from now, shared out stage by stage; ``clock``: seconds."""

    def __init__(self, minutes: float, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.end = clock() + 60 * minutes if minutes else None

    def stage_deadline(self, work: float, later_work: float) -> float | None:
        """The clock time at which a stage with ``work`` left must stop, when the stages after
        it have ``later_work`` (None: no budget)."""
        if self.end is None:
            return None
        now = self.clock()
        share = work / (work + later_work) if work + later_work > 0 else 1.0
        return now + max(0.0, self.end - now) * share

    def minutes_left(self, deadline: float) -> float:
        """Minutes from now to ``deadline`` (0 once it has passed)."""
        return max(0.0, deadline - self.clock()) / 60

    def expired(self, deadline: float | None) -> bool:
        """Whether ``deadline`` (None: none) has passed."""
        return deadline is not None and self.clock() >= deadline
