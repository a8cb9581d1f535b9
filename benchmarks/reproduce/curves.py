"""Learning curves of ``aiokd train`` runs: the validation CE of every student and of their mean,
update by update, from each run directory's ``log.jsonl``.

    python benchmarks/reproduce/curves.py --runs W/runs/aiokd W/runs/aiokd-seed2 \\
        --labels "AIO-KD seed 1" "AIO-KD seed 2" --out benchmarks/results/curves-small

writes ``PREFIX.json`` (per run and stage: update -> CE of each student and ``mean``, the best
validation, and why the stage stopped: ``patience``, ``max_updates`` or ``unfinished``) and
``PREFIX.png`` (mean validation CE against the update, one line per run, each stage's best
marked; a second stage continues the first's updates).  ``--keep OLD.json`` adds the curves of
an earlier file whose runs are not among ``--runs`` (their directories may be gone): a figure
grows run by run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from training_log import (
    best_validation,
    read_entries,
    run_config,
    stage_numbers,
    stage_stop,
    validations,
)

from aiokd.io import atomic_write_json

COLOURS = 10
"""Colours in matplotlib's default cycle: every ``COLOURS`` runs the line style changes."""
LINE_STYLES = ("-", "--", ":", "-.")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="+", required=True, help="run directories of `aiokd train`")
    p.add_argument("--labels", nargs="+", help="a label per run (default: the directory names)")
    p.add_argument("--out", required=True, help="PREFIX of PREFIX.json and PREFIX.png")
    p.add_argument("--keep", help="an earlier PREFIX.json: its curves of runs not in --runs "
                   "come first")
    args = p.parse_args(argv)
    if args.labels and len(args.labels) != len(args.runs):
        p.error(f"{len(args.labels)} labels for {len(args.runs)} runs")
    return args


def curve(run_dir: Path, label: str) -> dict[str, Any]:
    """One run's curves by stage, its best validation (of the last stage: the evaluated
    checkpoint) and whether patience stopped its last stage."""
    cfg = run_config(run_dir)
    entries = read_entries(run_dir)
    if not any(e["kind"] == "valid" for e in entries):
        raise SystemExit(f"curves.py: {run_dir}: no validation in its log.jsonl")
    stages = {}
    for stage in stage_numbers(entries):
        points = validations(entries, stage)
        if not points:
            continue
        best = best_validation(points)
        stages[str(stage)] = {
            "valid": {str(p["update"]): {**p["ce"], "mean": p["mean"]} for p in points},
            "best_update": best["update"], "best_mean": best["mean"],
            "stopped": stage_stop(entries, stage, points, cfg),
        }
    last = stages[max(stages, key=int)]
    return {"label": label, "run": str(run_dir), "stages": stages,
            "best": {"stage": int(max(stages, key=int)), "update": last["best_update"],
                     "mean": last["best_mean"]},
            "stopped_by_patience": last["stopped"] == "patience"}


def plot(curves: list[dict[str, Any]], path: Path) -> None:
    """Mean validation CE against the update (stages one after the other), best points
    marked: the whole run on the left, its last two thirds magnified on the right (where the
    runs converge, a few hundredths of a nat apart)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (whole, tail) = plt.subplots(1, 2, figsize=(13, 5.5))
    points_of = [joined_curve(found) for found in curves]
    last = max(xs[-1] for xs, *_ in points_of)
    tail_ys = [y for xs, ys, *_ in points_of for x, y in zip(xs, ys, strict=True)
               if x >= last / 3]
    for index, (found, (xs, ys, best_x, best_y)) in enumerate(zip(curves, points_of, strict=True)):
        for axes in (whole, tail):
            style = LINE_STYLES[index // COLOURS % len(LINE_STYLES)]
            line, = axes.plot(xs, ys, style, label=found["label"])
            axes.scatter(best_x, best_y, color=line.get_color(), marker="*", s=120, zorder=3)
    low, high = min(tail_ys), max(tail_ys)
    margin = max(0.05 * (high - low), 0.005)
    tail.set_xlim(last / 3, last * 1.02)
    tail.set_ylim(low - margin, high + margin)
    whole.set_title("Validation CE (* best of each stage)")
    tail.set_title(f"from update {last / 3:,.0f}, magnified")
    for axes in (whole, tail):
        axes.set_xlabel("update (stage 2 continues stage 1)")
        axes.grid(alpha=0.3)
    whole.set_ylabel("validation CE, mean over students (nats/token)")
    tail.legend(fontsize="small")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def joined_curve(found: dict[str, Any]) -> tuple[list[int], list[float], list[int], list[float]]:
    """``(updates, mean CEs, best updates, best mean CEs)`` of one run, its stages one after the
    other (a stage's updates continue the previous stage's last)."""
    xs, ys, best_x, best_y, offset = [], [], [], [], 0
    for stage in sorted(found["stages"], key=int):
        points = found["stages"][stage]
        updates = sorted(map(int, points["valid"]))
        xs += [offset + u for u in updates]
        ys += [points["valid"][str(u)]["mean"] for u in updates]
        best_x.append(offset + points["best_update"])
        best_y.append(points["best_mean"])
        offset += updates[-1]
    return xs, ys, best_x, best_y


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = [Path(run) for run in args.runs]
    labels = args.labels or [run.name for run in runs]
    for run in runs:
        if not (run / "log.jsonl").is_file():
            raise SystemExit(f"curves.py: {run}: no log.jsonl (not an `aiokd train` run)")
    curves = [curve(run, label) for run, label in zip(runs, labels, strict=True)]
    if args.keep:
        read_again = {found["run"] for found in curves}
        curves = [found for found in json.loads(Path(args.keep).read_text())["runs"]
                  if found["run"] not in read_again] + curves
    out = Path(args.out)
    atomic_write_json(out.with_name(out.name + ".json"), {"runs": curves})
    plot(curves, out.with_name(out.name + ".png"))
    print(f"wrote {out}.json and {out}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
