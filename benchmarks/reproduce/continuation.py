"""A run with a long stage 2 trained as the continuation of its capped twin.

The default of a preset with ``long_stage2`` trains stage 1 for U updates and stage 2 for up to
2U; its twin ``aiokd-capped`` is the same run stopped at U + U.  Since a stage stopped at its
cap goes on when the cap is raised, to the files of a run trained with the longer stage at once
(``tests/test_stage1_updates.py``), the driver trains the twin, copies its run directory (less
the final model and the evaluations, which belong to the twin) and lets ``aiokd train`` with
the long command go on from its checkpoints: both rows for the price of the long one.  The copy
records where it came from, so that the long run's cost includes the twin's training.

An ablation that differs from the default only in what stage 2 reads (no mutual learning, where
mutual learning starts in stage 2) has the default's stage 1 at its budget, bit for bit
(``tests/test_reproduce.py``); it starts from a copy of that stage (:func:`copy_stage1`, the
checkpoints of stage 1 and the log's stage-1 lines) and trains its own stage 2.  Its cost includes
the twin's training in the share of the updates it took over (:func:`shared_share`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from training_log import updates_by_stage

from aiokd.io import atomic_directory

MARKER = "continues.json"
"""File of a copied run directory naming the run it continues."""
LEFT_OUT = ("model.safetensors", "results*", "run.lock")
"""What the copy leaves behind: the twin's final model and its evaluations (the continuation
writes its own), and its lock."""


def copy_to_continue(source: Path, target: Path, source_run: str) -> None:
    """Copy the run directory ``source`` (the run ``source_run``) to the new ``target``,
    atomically, less :data:`LEFT_OUT`, with :data:`MARKER` naming ``source_run``."""
    with atomic_directory(target) as building:
        shutil.copytree(source, building, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(*LEFT_OUT))
        (building / MARKER).write_text(json.dumps({"continues": source_run}) + "\n")


def copy_stage1(source: Path, target: Path, source_run: str) -> None:
    """Make the new run directory ``target`` from stage 1 of the finished run ``source`` (the run
    ``source_run``), atomically: the checkpoints and log lines of its stage 1 and of its teacher
    stage if it has one (not its settings, which ``aiokd train`` writes for the new run), with
    :data:`MARKER` naming ``source_run`` and the stages copied."""
    with atomic_directory(target) as building:
        (building / "checkpoints").mkdir()
        for checkpoint in sorted((source / "checkpoints").glob("stage[01]-*.safetensors")):
            shutil.copy2(checkpoint, building / "checkpoints" / checkpoint.name)
        lines = (source / "log.jsonl").read_text().splitlines(keepends=True)
        (building / "log.jsonl").write_text(
            "".join(line for line in lines if json.loads(line)["stage"] <= 1))
        marker = {"continues": source_run, "stages": [0, 1]}
        (building / MARKER).write_text(json.dumps(marker) + "\n")


def continued_run(run_dir: Path) -> str | None:
    """The run that ``run_dir`` is the continuation of, or None."""
    marker = run_dir / MARKER
    return json.loads(marker.read_text())["continues"] if marker.is_file() else None


def shared_share(run_dir: Path, twin_dir: Path) -> float:
    """The part of its twin's training that the run ``run_dir`` took over: all of it for a
    continuation, for a copy of stage 1 the twin's updates in the stages copied over all its
    updates."""
    stages = json.loads((run_dir / MARKER).read_text()).get("stages")
    if not stages:
        return 1.0
    last = updates_by_stage(twin_dir)
    return sum(last.get(stage, 0) for stage in stages) / max(sum(last.values()), 1)
