"""A run with a long stage 2 trained as the continuation of its capped twin.

The default of a preset with ``long_stage2`` trains stage 1 for U updates and stage 2 for up to
2U; its twin ``aiokd-capped`` is the same run stopped at U + U.  Since a stage stopped at its
cap goes on when the cap is raised, to the files of a run trained with the longer stage at once
(``tests/test_stage1_updates.py``), the driver trains the twin, copies its run directory (less
the final model and the evaluations, which belong to the twin) and lets ``aiokd train`` with
the long command go on from its checkpoints: both rows for the price of the long one.  The copy
records where it came from, so that the long run's cost includes the twin's training.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

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


def continued_run(run_dir: Path) -> str | None:
    """The run that ``run_dir`` is the continuation of, or None."""
    marker = run_dir / MARKER
    return json.loads(marker.read_text())["continues"] if marker.is_file() else None
