"""Are the measured defaults the fastest here?  Translation with the default settings of
``aiokd.load`` (``--dtype auto``; for CTranslate2 also the measured thread count) against every
explicit alternative, side by side in one process.

For each engine, every setting translates the first ``--sentences`` test sentences in one call
(batched, as ``aiokd translate`` does a file) and ``--single`` of them one at a time; the
settings take turns, their order rotating each round, and a setting's time is the median of its
``--rounds`` rounds.  ``default / fastest`` is the default's time over the fastest setting's:
1.00 when the default is the fastest.

    python benchmarks/auto_settings.py --model RUN --data DATA --json results.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

import aiokd
from aiokd.data.corpus import ParallelSplit
from aiokd.model.probe import bf16_is_native


def settings_to_compare(engine: str, threads: int) -> dict[str, dict[str, Any]]:
    """``aiokd.load`` keyword arguments of the default and of each explicit alternative."""
    if engine == "torch":
        dtypes = ["float32", "bfloat16"] if bf16_is_native(torch.device("cpu")) else ["float32"]
        return {"default": {}, **{dtype: {"dtype": dtype} for dtype in dtypes}}
    counts = sorted({1, threads})
    return {"default": {}, **{f"threads={n}": {"threads": n} for n in counts}}


def workload(translator, sources: list[str], single: int, beam: int) -> float:
    """Seconds to translate ``sources`` in one call and the first ``single`` one at a time."""
    start = time.perf_counter()
    translator.translate(sources, beam=beam)
    for line in sources[:single]:
        translator.translate([line], beam=beam)
    return time.perf_counter() - start


def compare(model: Path, sources: list[str], engine: str, rounds: int, single: int,
            beam: int) -> dict[str, Any]:
    """Median seconds of each setting of ``engine`` and what the default chose."""
    threads = torch.get_num_threads()
    loaded = {}
    for name, options in settings_to_compare(engine, threads).items():
        loaded[name] = aiokd.load(model, device="cpu", engine=engine, **options)
        torch.set_num_threads(threads)
        workload(loaded[name], sources[:8], 2, beam)  # warm-up; CTranslate2 opens its student
    times: dict[str, list[float]] = {name: [] for name in loaded}
    names = list(loaded)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(workload(loaded[name], sources, single, beam))
    medians = {name: statistics.median(values) for name, values in times.items()}
    fastest = min(medians, key=medians.get)
    return {"seconds": medians, "fastest": fastest,
            "default_vs_fastest": medians["default"] / medians[fastest],
            "default_chose": loaded["default"].settings}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a run or model directory")
    p.add_argument("--data", required=True, help="a prepared data directory (its test split)")
    p.add_argument("--sentences", type=int, default=200)
    p.add_argument("--single", type=int, default=16, help="sentences translated one at a time")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--engines", default="torch,ctranslate2")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args(argv)
    sources = ParallelSplit.load(args.data, "test").source_lines()[:args.sentences]
    report: dict[str, Any] = {"command": " ".join(sys.argv), "threads": torch.get_num_threads(),
                              "sentences": len(sources), "single": args.single,
                              "rounds": args.rounds, "engines": {}}
    for engine in args.engines.split(","):
        found = compare(Path(args.model), sources, engine, args.rounds, args.single, args.beam)
        report["engines"][engine] = found
        timings = ", ".join(f"{name} {s:.2f} s" for name, s in found["seconds"].items())
        print(f"{engine}: {timings}; default / fastest ({found['fastest']}) = "
              f"{found['default_vs_fastest']:.2f}; the default chose {found['default_chose']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report


if __name__ == "__main__":
    main()
