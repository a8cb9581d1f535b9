"""Training steps on a CPU with freed memory kept for reuse (``train.keep_freed_memory=true``,
the default, :mod:`aiokd.train.allocator`) and returned to the system (``false``), side by side.

The allocator's setting holds for a whole process, so each side is a process of its own: the
training section of the speed benchmark (``speed_training.py``: the teacher step and AIO-KD's
stage 1 and 2 steps, the same batches and students on both sides), run ``--rounds`` times on
each side in turn (kept, returned, kept, returned, ...), so that a slow spell of a shared machine
falls on both.  Per variant it reports the median over all rounds' timed steps on each side,
their ratio, and the median minor page faults of a step (pages mapped on first touch).

    python benchmarks/freed_memory.py --preset narrow --data DATA --threads 1 \\
        --json benchmarks/results/freed-memory-cpu.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from speed_common import device_name, finish

SIDES = {"kept": "true", "returned": "false"}
"""Each side's ``train.keep_freed_memory``."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="narrow", help="preset to train (default: narrow)")
    p.add_argument("--data", required=True, help="prepared data directory")
    p.add_argument("--threads", type=int, default=1,
                   help="PyTorch CPU threads of each side (default: 1)")
    p.add_argument("--ks", default="2", help="numbers of students K (default: 2)")
    p.add_argument("--runs", type=int, default=3,
                   help="timed steps per variant in each round (default: 3)")
    p.add_argument("--rounds", type=int, default=2,
                   help="processes per side, the sides alternating (default: 2)")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides for both sides, e.g. train.max_tokens=2048")
    p.add_argument("--json", default=None, help="write every figure to this JSON file")
    return p.parse_args(argv)


def one_round(args: argparse.Namespace, keep: str, out: Path) -> tuple[dict[str, Any],
                                                                       dict[str, float]]:
    """The float32 training figures of one ``speed_training.py`` process, and its float32 GEMM
    FLOP/s per shape ``MxKxN`` (each product into a new tensor)."""
    command = [sys.executable, str(Path(__file__).with_name("speed_training.py")),
               "--preset", args.preset, "--data", args.data, "--threads", str(args.threads),
               "--ks", args.ks, "--runs", str(args.runs), "--amp", "none",
               "--set", *args.overrides, f"train.keep_freed_memory={keep}", "--json", str(out)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    report = json.loads(out.read_text(encoding="utf-8"))
    if report["freed_memory_kept"] != (keep == "true"):
        raise SystemExit(f"freed_memory.py: the side {keep} ran with freed_memory_kept="
                         f"{report['freed_memory_kept']} (not glibc?)")
    gemm = {f"{g['m']}x{g['k']}x{g['n']}": g["flops_per_s"]
            for g in report["gemm"]["float32"]["shapes"]}
    return report["presets"][args.preset]["precisions"]["float32"]["training"], gemm


def format_report(report: dict[str, Any]) -> str:
    """The table of step times, page faults and peak memory, and the GEMM line."""
    gemm = report["gemm_flops_per_s_median"]
    lines = [f"{report['device_name']}, {report['threads']} thread(s), preset {report['preset']}, "
             f"float32, {report['rounds']} rounds x {report['runs']} steps per side",
             f"{'variant':22s} {'kept ms':>9s} {'returned ms':>12s} {'ratio':>7s} "
             f"{'page faults kept':>17s} {'returned':>9s} {'peak MiB kept':>14s} {'returned':>9s}"]
    for name, v in report["variants"].items():
        lines.append(f"{name:22s} {v['step_s_median_kept'] * 1e3:9.0f} "
                     f"{v['step_s_median_returned'] * 1e3:12.0f} "
                     f"{v['ratio_returned_vs_kept']:7.3f} "
                     f"{v['minor_page_faults_median_kept']:17.0f} "
                     f"{v['minor_page_faults_median_returned']:9.0f} "
                     f"{v['peak_memory_mb_kept']:14.0f} {v['peak_memory_mb_returned']:9.0f}")
    lines.append("float32 GEMM into a new tensor, GFLOP/s (median over the rounds), "
                 "kept / returned: "
                 + ", ".join(f"{shape} {gemm['kept'][shape] / 1e9:.1f} / "
                             f"{gemm['returned'][shape] / 1e9:.1f}" for shape in gemm["kept"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    steps: dict[str, dict[str, list[float]]] = {side: {} for side in SIDES}
    peaks: dict[str, dict[str, list[float]]] = {side: {} for side in SIDES}
    gemms: dict[str, dict[str, list[float]]] = {side: {} for side in SIDES}
    faults: dict[str, dict[str, list[int]]] = {side: {} for side in SIDES}
    with tempfile.TemporaryDirectory(prefix="aiokd-freed-memory-") as work:
        for round_number in range(args.rounds):
            for side, keep in SIDES.items():
                print(f"round {round_number + 1}/{args.rounds}: freed memory {side} ...",
                      file=sys.stderr, flush=True)
                found, gemm = one_round(args, keep, Path(work) / f"{side}-{round_number}.json")
                for shape, flops in gemm.items():
                    gemms[side].setdefault(shape, []).append(flops)
                for name, figures in found.items():
                    steps[side].setdefault(name, []).extend(figures["step_s"])
                    faults[side].setdefault(name, []).extend(figures["minor_page_faults"])
                    peaks[side].setdefault(name, []).append(figures["peak_memory_mb"])
    variants = {}
    for name in steps["kept"]:
        kept = statistics.median(steps["kept"][name])
        returned = statistics.median(steps["returned"][name])
        variants[name] = {"step_s_median_kept": kept, "step_s_median_returned": returned,
                          "ratio_returned_vs_kept": returned / kept,
                          "peak_memory_mb_kept": max(peaks["kept"][name]),
                          "peak_memory_mb_returned": max(peaks["returned"][name]),
                          "minor_page_faults_median_kept": statistics.median(
                              faults["kept"][name]),
                          "minor_page_faults_median_returned": statistics.median(
                              faults["returned"][name]),
                          "step_s_kept": steps["kept"][name],
                          "step_s_returned": steps["returned"][name]}
    report = {"device_name": device_name(torch.device("cpu")), "threads": args.threads,
              "preset": args.preset, "precision": "float32", "rounds": args.rounds,
              "runs": args.runs, "torch_version": torch.__version__,
              "command": " ".join(["python", "benchmarks/freed_memory.py",
                                   *(sys.argv[1:] if argv is None else argv)]),
              "variants": variants,
              "gemm_flops_per_s_median": {side: {shape: statistics.median(values)
                                                 for shape, values in found.items()}
                                          for side, found in gemms.items()}}
    return finish(report, started, format_report, args.json)


if __name__ == "__main__":
    main()
