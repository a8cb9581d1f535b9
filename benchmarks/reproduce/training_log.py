"""What an ``aiokd train`` run's ``log.jsonl`` says about its training: the validation curve of
every stage, its best validation, why the stage stopped, and how often DGD detached a KD term.

``log.jsonl`` holds one JSON object per line, ``{"kind", "stage", "update", "time", ...}``:

- ``"valid"``: the validation CE (nats/token) of every student by name (``"4-2"``) and their
  ``"mean"``, the number the stage keeps its best checkpoint and its patience by;
- ``"train"`` (every ``train.log_every`` updates): the update's statistics, each summed over
  the update's batches and divided by its target ``"tokens"``; DGD shows as ``"detached"``
  (the number of sampled students whose KD term had its teacher side detached), or, where
  the log has them, as per-student ``"gates"`` (1: the teacher learns from that student, 0:
  detached) or ``"ratios"`` (CE_S / CE_T, detached above ``distill.eta``).

A resumed run logs again the updates after its last checkpoint; the last entry of each
``(kind, stage, update)`` is the one kept; entries of other kinds are not read.  The run's
settings come from its ``run.json``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from aiokd.config import Config
from aiokd.train.loop import stage_config

STUDENT = re.compile(r"^\d+-\d+$")


def run_config(run_dir: Path) -> dict[str, Any]:
    """The settings a run was started with (``run.json``'s ``config``), or ``{}``."""
    path = Path(run_dir) / "run.json"
    return json.loads(path.read_text())["config"] if path.is_file() else {}


def read_entries(run_dir: Path) -> list[dict[str, Any]]:
    """The entries of ``log.jsonl``, one per ``(kind, stage, update)`` (the last logged), by
    stage and update."""
    path = Path(run_dir) / "log.jsonl"
    kept: dict[tuple[str, int, int], dict[str, Any]] = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        if line.strip():
            entry = json.loads(line)
            kept[(entry["kind"], entry["stage"], entry["update"])] = entry
    return sorted(kept.values(), key=lambda e: (e["stage"], e["update"]))


def updates_by_stage(run_dir: Path) -> dict[int, int]:
    """Stage -> the last update it logged."""
    return {entry["stage"]: entry["update"] for entry in read_entries(run_dir)}


def validations(entries: list[dict[str, Any]], stage: int) -> list[dict[str, Any]]:
    """``{"update", "ce": {student: CE}, "mean"}`` for each validation of ``stage``."""
    return [{"update": e["update"], "mean": e["mean"],
             "ce": {key: value for key, value in e.items() if STUDENT.match(key)}}
            for e in entries if e["kind"] == "valid" and e["stage"] == stage]


def best_validation(curve: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first validation with the lowest mean CE (as the training loop picks its best
    checkpoint), with ``spread``: its highest minus its lowest student CE."""
    if not curve:
        return None
    best = min(curve, key=lambda v: v["mean"])
    ce = best["ce"]
    return {**best, "spread": round(max(ce.values()) - min(ce.values()), 4) if ce else None}


def why_stopped(curve: list[dict[str, Any]], patience: int, max_updates: int) -> str:
    """Why a stage stopped, read from its validation ``curve``: ``patience`` (``patience``
    validations in a row without a lower mean CE), ``max_updates`` (the stage's cap) or
    ``unfinished`` (still training, or interrupted)."""
    best = best_validation(curve)
    stale = sum(v["update"] > best["update"] for v in curve) if best else 0
    if patience and stale >= patience:
        return "patience"
    if curve and curve[-1]["update"] >= max_updates:
        return "max_updates"
    return "unfinished"


def stage_stop(entries: list[dict[str, Any]], stage: int, curve: list[dict[str, Any]],
               cfg: dict[str, Any]) -> str:
    """Why ``stage`` of a run stopped: as its last ``finished`` entry says, if no validation came
    after it (the stage was not reopened since); else :func:`why_stopped` of its ``curve`` under
    the run's settings ``cfg`` (:func:`stage_cap`)."""
    finished = [e for e in entries if e["kind"] == "finished" and e["stage"] == stage]
    if finished and (not curve or finished[-1]["update"] >= curve[-1]["update"]):
        return finished[-1]["why"]
    return why_stopped(curve, cfg.get("train", {}).get("patience", 0), stage_cap(cfg, stage))


def stage_cap(cfg: dict[str, Any], stage: int) -> int:
    """The cap of ``stage`` under the run's settings ``cfg`` (``run.json``'s ``config``), as
    training applies it (:func:`aiokd.train.loop.stage_config`)."""
    return stage_config(Config.from_dict(cfg, where="run.json"), stage).train.max_updates


def detached_terms(entry: dict[str, Any], cfg: dict[str, Any]) -> tuple[int, int] | None:
    """``(detached, KD terms)`` of one ``"train"`` entry, or None where it says nothing of
    DGD.  KD terms: K per batch of the update (``gates``/``ratios``: one per value)."""
    distill, train = cfg.get("distill", {}), cfg.get("train", {})
    per_student = entry.get("gates", entry.get("ratios"))
    if per_student is not None:
        values = list(per_student.values() if isinstance(per_student, dict) else per_student)
        if "gates" in entry:
            return round(sum(1 - g for g in values)), len(values)
        detached = distill.get("detach", True)
        return sum(detached and r > distill.get("eta", 1.1) for r in values), len(values)
    if "detached" not in entry:
        return None
    value = entry["detached"]
    # a count is a whole number; a count divided by the update's tokens (how the loop logs
    # every summed statistic) is not, unless it is 0
    count = value if float(value).is_integer() else value * entry["tokens"]
    return round(count), distill.get("k", 2) * train.get("update_freq", 1)


def detached_fraction(entries: list[dict[str, Any]], stage: int,
                      cfg: dict[str, Any]) -> tuple[float | None, int]:
    """The fraction of KD terms of ``stage``'s logged updates whose teacher side DGD detached,
    and the number of logged updates it is over."""
    counts = [detached_terms(e, cfg) for e in entries
              if e["kind"] == "train" and e["stage"] == stage]
    counts = [c for c in counts if c is not None]
    terms = sum(n for _, n in counts)
    return (round(sum(d for d, _ in counts) / terms, 4) if terms else None), len(counts)


def stage_numbers(entries: list[dict[str, Any]]) -> list[int]:
    """The training stages the log has updates or validations of (0: the teacher stage)."""
    return sorted({e["stage"] for e in entries if e["kind"] in ("train", "valid")})


def observe(run_dir: Path) -> dict[str, Any]:
    """Per stage of the run: the detached fraction of KD terms (AIO-KD runs), the best
    validation with every student's CE and their spread, and why the stage stopped; ``best``:
    the last stage's best validation, the checkpoint the run's model comes from."""
    cfg, entries = run_config(run_dir), read_entries(run_dir)
    aiokd = cfg.get("distill", {}).get("method", "aiokd") == "aiokd"
    stages = {}
    for stage in stage_numbers(entries):
        curve = validations(entries, stage)
        found = {"validations": len(curve), "best": best_validation(curve),
                 "stopped": stage_stop(entries, stage, curve, cfg)}
        if aiokd:
            found["detached_fraction"], found["logged_updates"] = detached_fraction(
                entries, stage, cfg)
        stages[str(stage)] = found
    last = stages[max(stages, key=int)] if stages else {}
    return {"k": cfg.get("distill", {}).get("k"), "stages": stages, "best": last.get("best")}
