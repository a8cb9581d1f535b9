"""Batch-1 latency of every student timed in rounds across the students, against student by
student, side by side.

``aiokd evaluate`` takes each student's repeated batch-1 runs in rounds: run ``r`` of every
student before run ``r + 1`` (:class:`aiokd.evaluation.latency.FamilyTimer`).  Here the same
timer is also given one student at a time, which is timing them student by student, and the two
protocols alternate ``--repeats`` times on the same sample in one process.  For each protocol it
prints how far a student's figure moves between repeats ((max - min) / mean, averaged over the
students) and its ranking errors: pairs in which a student with more decoder layers and no fewer
encoder layers (so clearly more work per sentence) was measured faster.

    python benchmarks/latency_rounds.py --model RUN --data DATA --threads 1 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch

from aiokd.evaluation.evaluate import read_test_set
from aiokd.evaluation.latency import FamilyTimer, LatencySettings, PeakMemory
from aiokd.inference.api import Translator, load
from aiokd.students import parse_student

PROTOCOLS = ("in rounds", "student by student")


def time_family(translator: Translator, names: list[str], lines: list[str],
                settings: LatencySettings, protocol: str) -> dict[str, float]:
    """ms per sentence at batch 1 of every student in ``names``, timed by ``protocol``."""
    memory = PeakMemory(torch.device("cpu"))

    def translate(name: str):
        return lambda batch: translator.translate(batch, student=name, beam=5)

    if protocol == "in rounds":
        timer = FamilyTimer(lines, settings, memory)
        for name in names:
            timer.scored_pass(name, translate(name))
        return {name: timing.ms_per_sentence for name, timing in timer.rounds().items()}
    found = {}
    for name in names:
        timer = FamilyTimer(lines, settings, memory)
        timer.scored_pass(name, translate(name))
        found[name] = timer.rounds()[name].ms_per_sentence
    return found


def clearly_slower_pairs(names: list[str]) -> list[tuple[str, str]]:
    """``(a, b)`` with ``b`` having more decoder layers than ``a`` and no fewer encoder layers."""
    layers = {name: parse_student(name) for name in names}
    return [(a, b) for a in names for b in names
            if layers[b][1] > layers[a][1] and layers[b][0] >= layers[a][0]]


def summarize(repeats: list[dict[str, float]], pairs: list[tuple[str, str]]) -> dict:
    """Movement between repeats and ranking errors of one protocol's repeats."""
    names = list(repeats[0])
    movement = [(max(r[n] for r in repeats) - min(r[n] for r in repeats))
                / statistics.mean(r[n] for r in repeats) for n in names]
    errors = [sum(r[b] < r[a] for a, b in pairs) for r in repeats]
    return {"ms_per_sentence": repeats, "movement_mean": statistics.mean(movement),
            "movement_max": max(movement), "ranking_errors": errors, "pairs": len(pairs)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="run directory or model directory")
    p.add_argument("--data", required=True, help="prepared data directory (its test split)")
    p.add_argument("--students", default=None, help="comma-separated (default: all)")
    p.add_argument("--sentences", type=int, default=100,
                   help="test sentences translated batched in each student's scored pass")
    p.add_argument("--sample", type=int, default=50, help="sentences timed one at a time")
    p.add_argument("--runs", type=int, default=3, help="batch-1 runs per student")
    p.add_argument("--repeats", type=int, default=2, help="measurements per protocol")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    translator = load(args.model, dtype="float32", threads=args.threads)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.students.split(",") if args.students else translator.students
    lines = read_test_set(args.data, "test").sources[:args.sentences]
    settings = LatencySettings(sample=args.sample, runs=args.runs)
    measured: dict[str, list[dict[str, float]]] = {protocol: [] for protocol in PROTOCOLS}
    for repeat in range(args.repeats):
        for protocol in PROTOCOLS[repeat % 2:] + PROTOCOLS[:repeat % 2]:
            print(f"  repeat {repeat + 1}: {protocol} ...", file=sys.stderr)
            measured[protocol].append(time_family(translator, names, lines, settings, protocol))
    pairs = clearly_slower_pairs(names)
    report = {"command": " ".join(["python", *sys.argv]), "threads": torch.get_num_threads(),
              "cpus": os.cpu_count(), "load_average": os.getloadavg(),
              "settings": settings.describe(),
              "protocols": {protocol: summarize(measured[protocol], pairs)
                            for protocol in PROTOCOLS}}
    print(f"{len(names)} students, float32, {report['threads']} threads, {args.repeats} repeats "
          f"of each protocol, alternating; load average at the end {report['load_average']}")
    print(f"{'protocol':>20}{'movement mean':>15}{'max':>8}{'ranking errors':>16}")
    for protocol, found in report["protocols"].items():
        errors = "/".join(str(e) for e in found["ranking_errors"])
        print(f"{protocol:>20}{found['movement_mean']:>15.1%}{found['movement_max']:>8.1%}"
              f"{errors + ' of ' + str(found['pairs']):>16}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
