"""Where a comparison stands (``run.py --status``): each step of the plan done, running (a
driver holds its lock) or to come, and for a training step its stage, update and cap, its best
validation so far and the minutes spent on it.  Reads the work directory, changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from locks import held
from plan import Step, Work
from training_log import best_validation, read_entries, validations

from aiokd.cli import build_parser
from aiokd.train.api import build_config
from aiokd.train.loop import stage_config


def stage_caps(step: Step) -> dict[int, int]:
    """The cap of every stage that the ``aiokd train`` command of ``step`` trains."""
    a = build_parser().parse_args(step.args)
    cfg = build_config(a.preset, a.config, a.overrides, a.max_updates, a.stage, a.method,
                       a.student, a.teacher)
    return {stage: stage_config(cfg, stage).train.max_updates for stage in (0, 1, 2)}


def training_line(step: Step, run_dir: Path) -> str | None:
    """Where the run of a training step is: its last logged stage and update, against that
    stage's cap, and the stage's best mean validation CE so far (None: nothing logged yet)."""
    entries = read_entries(run_dir)
    if not entries:
        return None
    last = entries[-1]
    stage, update = last["stage"], last["update"]
    line = f"stage {stage}, update {update:,} of {stage_caps(step)[stage]:,}"
    best = best_validation(validations(entries, stage))
    if best:
        line += f", best mean valid CE {best['mean']:.4f} at update {best['update']:,}"
    return line


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
