"""Where a comparison stands (``run.py --status``): each step of the plan done, running (a
driver holds its lock) or to come, and for a training step its stage, update and cap, its best
validation so far, its recent speed and the minutes spent on it.  Reads the work directory,
changes nothing."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from locks import held
from plan import Step, Work
from training_log import best_validation, read_entries, validations

from aiokd.cli import build_parser
from aiokd.config import Config
from aiokd.train.api import build_config
from aiokd.train.loop import stage_config

RECENT = 10
"""Logged training updates the rate of a running stage is read over."""


def train_config(args: list[str]) -> Config:
    """The config that ``aiokd ARGS`` (a train command) trains with."""
    a = build_parser().parse_args(args)
    return build_config(a.preset, a.config, a.overrides, a.max_updates, a.stage, a.method,
                        a.student, a.teacher)


def stage_caps(step: Step) -> dict[int, int]:
    """The cap of every stage that the ``aiokd train`` command of ``step`` trains."""
    cfg = train_config(step.args)
    return {stage: stage_config(cfg, stage).train.max_updates for stage in (0, 1, 2)}


def training_line(step: Step, run_dir: Path) -> str | None:
    """Where the run of a training step is: its last logged stage and update, against that
    stage's cap, the stage's best mean validation CE so far, and its recent seconds per update
    with the hours they leave to the cap (None: nothing logged yet)."""
    entries = read_entries(run_dir)
    if not entries:
        return None
    last = entries[-1]
    stage, update, cap = last["stage"], last["update"], stage_caps(step)[last["stage"]]
    line = f"stage {stage}, update {update:,} of {cap:,}"
    best = best_validation(validations(entries, stage))
    if best:
        line += f", best mean valid CE {best['mean']:.4f} at update {best['update']:,}"
    seconds = seconds_per_update(entries, stage)
    if seconds:
        line += f", {seconds:.2f} s per update: {(cap - update) * seconds / 3600:.1f} h to the cap"
    return line


def seconds_per_update(entries: list[dict[str, Any]], stage: int,
                       recent: int = RECENT) -> float | None:
    """Wall seconds per update of ``stage``: the median over its last ``recent`` logged training
    updates of the time from one to the next per update (a pause or a resume between two is one
    outlier the median passes over); None with fewer than two."""
    logged = [e for e in entries if e["kind"] == "train" and e["stage"] == stage][-recent:]
    rates = [(b["time"] - a["time"]) / (b["update"] - a["update"])
             for a, b in itertools.pairwise(logged)]
    return statistics.median(rates) if rates else None


def status_lines(steps: list[Step], work: Work,
                 wall_minutes: Callable[[str], float]) -> list[str]:
    """One line per step: ``[n/N] title: done | running | to come``, a training step's
    progress (:func:`training_line`) where it has one, and the wall-clock minutes spent on it
    so far (``wall_minutes(key)``)."""
    lines = []
    for number, step in enumerate(steps, 1):
        state = ("done" if step.done() else "running" if held(work.root, step.key)
                 else "to come")
        line = f"[{number:>2}/{len(steps)}] {step.title}: {state}"
        progress = (training_line(step, work.run_dir(step.run))
                    if step.key.startswith("train:") and state != "done" and step.run else None)
        if progress:
            line += f"; {progress}"
        minutes = wall_minutes(step.key)
        if minutes:
            line += f"; {minutes:.1f} min (wall clock)"
        lines.append(line)
    return lines
