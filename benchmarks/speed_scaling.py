"""How a training step grows with the batch size and with the sentence length.

The teacher alone and AIO-KD stage 1 (K = 2), timed as ``speed_training.py`` times them, on
batches of each ``max_tokens`` of a sweep and on batches cut from one target-length bucket.

    python benchmarks/speed_scaling.py --json scaling.json

``speed.py`` runs this section with the others.  See ``benchmarks/README.md`` for the figures.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import Any

import numpy as np
import torch
from speed_common import (
    PRECISIONS,
    RUNS,
    add_amp_argument,
    add_warmup_argument,
    base_parser,
    choose_precisions,
    chosen_device,
    finish,
    format_head,
    int_list,
    new_report,
    prepared_data,
    training_batches,
    workdir,
)
from speed_training import TEACHER, Variant, bench_training, configured

from aiokd.config import Config
from aiokd.data.batching import Batch
from aiokd.data.corpus import ParallelSplit, load_manifest

TOKEN_SIZES = [1024, 2048, 4096, 8192]
"""Batch sizes of the sweep unless told otherwise."""


def length_buckets(lengths: np.ndarray, edges: list[int]) -> list[tuple[str, np.ndarray]]:
    """Pairs grouped by target length: ``(0, e1], (e1, e2], ..., (e_last, inf)``."""
    bounds = [0, *edges, math.inf]
    found = []
    for low, high in zip(bounds[:-1], bounds[1:], strict=True):
        chosen = np.flatnonzero((lengths > low) & (lengths <= high))
        if len(chosen):
            found.append((f"{low + 1}-{high}" if high != math.inf else f">{low}", chosen))
    return found


def scaling_variants(k: int) -> list[Variant]:
    """The teacher alone and stage 1 with ``k`` students."""
    return [TEACHER, Variant(f"stage1_k{k}", "aiokd", 1, k)]


def bench_scaling(variants: list[tuple[Variant, Config]], split: ParallelSplit,
                  token_sizes: list[int], edges: list[int], runs: int, warmup: int,
                  device: torch.device, dtype: torch.dtype | None) -> dict[str, Any]:
    """Step time against batch tokens (``max_tokens`` in ``token_sizes``) and against sentence
    length (batches of ``train.max_tokens`` tokens cut from one target-length bucket)."""
    found: dict[str, Any] = {"batch_tokens": {}, "length": {}}
    cfg = variants[0][1]
    for size in token_sizes:
        batches = training_batches(split, size, runs, cfg.train.seed, device)
        rows = bench_training(variants, batches, warmup, device, dtype)
        for name, row in rows.items():
            found["batch_tokens"].setdefault(name, []).append(
                {"max_tokens": size, **_scaling_row(row, batches)})
    for bucket, subset in length_buckets(split.tgt_lengths, edges):
        batches = training_batches(split, cfg.train.max_tokens, runs, cfg.train.seed, device,
                                   subset)
        rows = bench_training(variants, batches, warmup, device, dtype)
        for name, row in rows.items():
            found["length"].setdefault(name, []).append(
                {"target_length": bucket, **_scaling_row(row, batches)})
    return found


def _scaling_row(row: dict[str, Any], batches: list[Batch]) -> dict[str, Any]:
    return {"step_s_median": row["step_s_median"], "tokens_per_s": row["tokens_per_s"],
            "tokens_per_step": row["tokens_per_step"],
            "sentences_per_step": sum(len(b.src) for b in batches) / len(batches),
            "achieved_flops_per_s": row["achieved_flops_per_s"]}


def format_scaling(scaling: dict[str, Any]) -> list[str]:
    """One line per variant and axis: step time and tokens/s at each point."""
    lines = []
    for axis, key in (("batch_tokens", "max_tokens"), ("length", "target_length")):
        for name, rows in scaling.get(axis, {}).items():
            cells = ", ".join(f"{row[key]}: {row['step_s_median'] * 1e3:.0f} ms "
                              f"{row['tokens_per_s']:.0f} tok/s" for row in rows)
            lines.append(f"scaling by {axis} ({name}): {cells}")
    return lines


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of this section."""
    p.add_argument("--scaling-tokens", type=int_list, default=None,
                   help="batch sizes of the scaling sweep (default: 1024,2048,4096,8192)")
    p.add_argument("--length-edges", type=int_list, default=[10, 20, 30],
                   help="target-length bucket edges of the scaling sweep (default: 10,20,30)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the sweep on ``--preset`` in the first precision of ``--amp``; print; write JSON."""
    p = base_parser(__doc__.split("\n\n")[0], "preset to measure (default: iwslt)")
    add_arguments(p)
    add_amp_argument(p)
    add_warmup_argument(p)
    args = p.parse_args(argv)
    device = chosen_device(args)
    runs = args.runs or RUNS
    precision = choose_precisions(args.amp, device)[0]
    report = new_report(device, "speed_scaling.py", argv, runs=runs, warmup=args.warmup,
                        precisions=[precision], ks=[2])
    started = time.perf_counter()
    with workdir() as work:
        data_dir = prepared_data(args.data, work)
        report["data"] = str(data_dir) if args.data else "multi30k (prepared on the fly)"
        chosen = configured(scaling_variants(2), args.preset, load_manifest(data_dir),
                            args.overrides)
        scaling = bench_scaling(chosen, ParallelSplit.load(data_dir, "train"),
                                args.scaling_tokens or TOKEN_SIZES, args.length_edges, runs,
                                args.warmup, device, PRECISIONS[precision])
        report["presets"] = {args.preset: {"precisions": {precision: {"scaling": scaling}}}}

    def text(report: dict[str, Any]) -> str:
        lines = format_head(report)
        for preset, entry in report["presets"].items():
            for precision, figures in entry["precisions"].items():
                lines += ["", f"[{preset}, {precision}]", *format_scaling(figures["scaling"])]
        return "\n".join(lines)

    return finish(report, started, text, args.json)


if __name__ == "__main__":
    main()
