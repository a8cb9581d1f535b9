"""Speed of validating all candidate students against validating the teacher alone.

``validation_nll`` (one shared pass, as ``aiokd train`` validates) over the validation batches
for all evaluated students and for the teacher alone, on the same batches, interleaved.

    python benchmarks/speed_validation.py --json validation.json

``speed.py`` runs this section with the others.  See ``benchmarks/README.md`` for the figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from typing import Any

import torch
from speed_common import (
    PRECISIONS,
    RUNS,
    add_amp_argument,
    base_parser,
    bench_config,
    choose_precisions,
    chosen_device,
    finish,
    format_head,
    forward_flops,
    new_report,
    prepared_data,
    workdir,
)

from aiokd.config import Config
from aiokd.data.batching import Batch, token_batches
from aiokd.data.corpus import ParallelSplit, load_manifest
from aiokd.distill.objective import validation_nll
from aiokd.evaluation.latency import timed
from aiokd.model.transformer import Transformer
from aiokd.students import Student
from aiokd.train.stream import make_batch


def validation_batches(split: ParallelSplit, cfg: Config, count: int,
                       device: torch.device) -> list[Batch]:
    """The first ``count`` validation batches (all of them for 0), cut as ``aiokd train`` cuts
    them (``train.valid_max_tokens``, else ``train.max_tokens``, in order)."""
    tokens = cfg.train.valid_max_tokens or cfg.train.max_tokens
    found = token_batches(split.src_lengths, split.tgt_lengths, tokens, shuffle=False)
    return [make_batch(split, indices, device) for indices in found[:count or None]]


def bench_validation(cfg: Config, batches: list[Batch], runs: int, device: torch.device,
                     dtype: torch.dtype | None) -> dict[str, Any]:
    """Time :func:`validation_nll` over ``batches`` for every evaluated student and for the
    teacher alone: after one untimed pass of each, ``runs`` rounds of one timed pass of each
    (interleaved), and the median."""
    torch.manual_seed(cfg.train.seed)
    model = Transformer(cfg.model).to(device).eval()
    sets = {"teacher": [model.teacher], "all_students": cfg.distill.space(cfg.model).evaluated}

    def one_pass(students: list[Student]) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            for batch in batches:
                validation_nll(model, batch.src, batch.prev_tgt, batch.target, students,
                               cfg.distill.reuse_prefix)

    for students in sets.values():
        one_pass(students)
    times: dict[str, list[float]] = {name: [] for name in sets}
    for _ in range(runs):
        for name, students in sets.items():
            times[name].append(timed(partial(one_pass, students), device))
    tokens = sum(b.tokens for b in batches)
    found: dict[str, Any] = {}
    for name, students in sets.items():
        seconds = statistics.median(times[name])
        flops = sum(forward_flops(cfg.model, b, students, cfg.distill.reuse_prefix)
                    for b in batches)
        found[name] = {"students": len(students), "s_median": seconds, "s": times[name],
                       "flops": flops, "tokens_per_s": tokens / seconds}
    found["ratio_all_vs_teacher"] = found["all_students"]["s_median"] / found["teacher"]["s_median"]
    found["batches"] = len(batches)
    return found


def format_validation(v: dict[str, Any]) -> list[str]:
    """One line: the teacher's time, all students' time and their ratio."""
    return [f"validation ({v['batches']} batches): teacher {v['teacher']['s_median'] * 1e3:.0f} "
            f"ms, all {v['all_students']['students']} students "
            f"{v['all_students']['s_median'] * 1e3:.0f} ms, ratio "
            f"{v['ratio_all_vs_teacher']:.2f}"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of this section."""
    p.add_argument("--valid-batches", type=int, default=None,
                   help="validation batches timed (default: all; speed.py --quick: 1)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Time validation on ``--preset`` in each precision of ``--amp``; print; write JSON."""
    p = base_parser(__doc__.split("\n\n")[0], "preset to measure (default: iwslt)")
    add_arguments(p)
    add_amp_argument(p)
    args = p.parse_args(argv)
    device = chosen_device(args)
    runs = args.runs or RUNS
    precisions = choose_precisions(args.amp, device)
    report = new_report(device, "speed_validation.py", argv, runs=runs, precisions=precisions)
    started = time.perf_counter()
    with workdir() as work:
        data_dir = prepared_data(args.data, work)
        report["data"] = str(data_dir) if args.data else "multi30k (prepared on the fly)"
        cfg = bench_config(args.preset, load_manifest(data_dir), args.overrides)
        batches = validation_batches(ParallelSplit.load(data_dir, "valid"), cfg,
                                     args.valid_batches or 0, device)
        figures = {}
        for precision in precisions:
            print(f"  {args.preset} {precision} validation ...", file=sys.stderr, flush=True)
            figures[precision] = {"validation": bench_validation(cfg, batches, runs, device,
                                                                 PRECISIONS[precision])}
        report["presets"] = {args.preset: {"precisions": figures}}

    def text(report: dict[str, Any]) -> str:
        lines = format_head(report)
        for preset, entry in report["presets"].items():
            for precision, figures in entry["precisions"].items():
                lines += ["", f"[{preset}, {precision}]", *format_validation(figures["validation"])]
        return "\n".join(lines)

    return finish(report, started, text, args.json)


if __name__ == "__main__":
    main()
