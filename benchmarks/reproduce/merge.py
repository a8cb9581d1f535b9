"""Merging the records of a driver's finished runs into the results file.

A run evaluated again replaces its record.  A run trained again (its run directory made anew, so
another ``started``: the time of the first line of its training log) does not erase the
training it replaces: the earlier record stays, as ``NAME@DATE`` (the date it started;
``NAME@earlier`` for records from before ``started`` was recorded), with ``superseded_by``
naming the run and its kept translations beside it, and the records that learnt from it
(``teacher_run``) point at it, so that a system distilled from the earlier teacher keeps that
teacher's cost.  A record from before ``started`` was recorded is of the same training if it
has the same updates and training minutes.  Superseded records are in no table or target
(:func:`report.current`).
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any


def started(run_dir: Path) -> str | None:
    """When the run's training started, ``YYYY-MM-DDTHH:MM:SSZ``: the time of the first line of
    its ``log.jsonl`` (a continued run's is its twin's); None without one."""
    log = run_dir / "log.jsonl"
    if not log.is_file():
        return None
    with open(log, encoding="utf-8") as lines:
        first = lines.readline()
    seconds = json.loads(first).get("time") if first.strip() else None
    if seconds is None:
        return None
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge(runs: dict[str, dict[str, Any]], records: list[dict[str, Any]],
          results_dir: Path) -> None:
    """Put ``records`` (this driver's finished runs) into ``runs`` (the results file's),
    keeping a record its run's new training supersedes (module docstring); the translations
    kept in ``results_dir`` move with it."""
    fresh = {record["run"] for record in records}
    for record in records:
        name = record["run"]
        earlier = runs.get(name)
        if earlier and not _same_training(earlier, record):
            kept = _free_name(runs, name, earlier.get("started"))
            runs[kept] = _moved(earlier, kept, results_dir) | {"superseded_by": name}
            for other in runs.values():
                if other.get("teacher_run") == name and other["run"] not in fresh:
                    other["teacher_run"] = kept
        runs[name] = record


def _same_training(earlier: dict[str, Any], record: dict[str, Any]) -> bool:
    """Whether two records of a run are of one training: the same ``started`` or, for a record
    from before it was recorded, the same updates and training minutes."""
    if earlier.get("started"):
        return earlier["started"] == record.get("started")
    return (earlier.get("updates"), earlier.get("train_minutes")) == (
        record.get("updates"), record.get("train_minutes"))


def _free_name(runs: dict[str, Any], name: str, when: str | None) -> str:
    tag = "earlier" if when is None else when[:10]
    kept, number = f"{name}@{tag}", 2
    while kept in runs:
        kept, number = f"{name}@{tag}-{number}", number + 1
    return kept


def _moved(record: dict[str, Any], kept: str, results_dir: Path) -> dict[str, Any]:
    """``record`` renamed ``kept``, its kept translations moved to the directory of that name.

    Translations named by an absolute path are a run directory's own (records from before the
    copies were kept in the results directory): the new training's run directory holds its own
    translations there now, so the earlier record has none left."""
    moved, directory = {**record, "run": kept}, record.get("translations")
    if directory and Path(directory).is_absolute():
        del moved["translations"]
    elif directory:
        source = Path(directory)
        target = source.with_name(kept)
        if (results_dir / source).is_dir() and not (results_dir / target).exists():
            (results_dir / source).rename(results_dir / target)
        moved["translations"] = str(target)
    return moved
