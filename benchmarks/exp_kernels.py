"""Training steps with each exponential kernel of the fused losses, ``torch.exp`` against
``exp2(x log2 e)``: what :func:`aiokd.model.probe.exponential_kernel` chooses between.

    python benchmarks/exp_kernels.py --preset narrow --amp bf16 --threads 1 --runs 8

On the same batches, the teacher alone (``scratch`` 6-6, the label-smoothed cross-entropy) and
AIO-KD stage 1 and stage 2 with K = 2, each with a model per kernel; for each batch in turn every
variant steps once with each kernel, so a slow spell of a shared machine falls on both.  Prints
the median step times, their ratio, and the kernel this machine's probe chooses.
"""

from __future__ import annotations

import statistics
import sys
import time
from functools import partial
from typing import Any
from unittest import mock

import torch
from speed_common import (
    PRECISIONS,
    RUNS,
    add_amp_argument,
    base_parser,
    choose_precisions,
    chosen_device,
    finish,
    format_head,
    new_report,
    prepared_data,
    training_batches,
    workdir,
)
from speed_training import TEACHER, Trainer, Variant, configured, sampled_students

from aiokd.data.corpus import ParallelSplit, load_manifest
from aiokd.evaluation.latency import timed
from aiokd.model import kernels
from aiokd.model.probe import exponential_kernel

KERNELS = ("exp", "exp2")
VARIANTS = [TEACHER, Variant("stage1_k2", "aiokd", 1, 2), Variant("stage2_k2", "aiokd", 2, 2)]


def kernel(name: str) -> mock._patch:
    """The fused losses' exponentials forced to ``name`` (instead of this machine's choice)."""
    return mock.patch.object(kernels, "_exp2_is_faster", lambda _device_type: name == "exp2")


def bench(chosen: list[tuple[Variant, Any]], batches: list, device: torch.device,
          dtype: torch.dtype | None) -> dict[str, dict[str, Any]]:
    """Median step seconds per variant and kernel, after one untimed step of each."""
    trainers, students = {}, {}
    for variant, cfg in chosen:
        students[variant] = sampled_students(cfg, variant.k, len(batches))
        for name in KERNELS:
            trainers[variant, name] = Trainer(cfg, device, dtype)
            with kernel(name):
                trainers[variant, name].step(batches[0], students[variant][0], variant.stage)
    times: dict[tuple[Variant, str], list[float]] = {key: [] for key in trainers}
    for i, batch in enumerate(batches):
        for (variant, name), trainer in trainers.items():
            with kernel(name):
                step = partial(trainer.step, batch, students[variant][i], variant.stage)
                times[variant, name].append(timed(step, device))
    found = {}
    for variant, _ in chosen:
        median = {name: statistics.median(times[variant, name]) for name in KERNELS}
        found[variant.name] = {"step_s_median": median,
                               "step_s": {name: times[variant, name] for name in KERNELS},
                               "exp_vs_exp2": median["exp"] / median["exp2"]}
    return found


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = base_parser(__doc__.split("\n\n")[0], "preset to measure (default: narrow)")
    p.set_defaults(preset="narrow")
    add_amp_argument(p)
    args = p.parse_args(argv)
    device = chosen_device(args)
    runs = args.runs or RUNS
    precisions = choose_precisions(args.amp, device)
    probe = exponential_kernel(device)
    report = new_report(device, "exp_kernels.py", argv, runs=runs, precisions=precisions,
                        probe=probe.to_json())
    started = time.perf_counter()
    with workdir() as work:
        data_dir = prepared_data(args.data, work)
        chosen = configured(VARIANTS, args.preset, load_manifest(data_dir), args.overrides)
        base = chosen[1][1]
        batches = training_batches(ParallelSplit.load(data_dir, "train"), base.train.max_tokens,
                                   runs, base.train.seed, device)
        report["precisions"] = {}
        for precision in precisions:
            print(f"  {args.preset} {precision} ...", file=sys.stderr, flush=True)
            report["precisions"][precision] = bench(chosen, batches, device,
                                                    PRECISIONS[precision])

    def text(report: dict[str, Any]) -> str:
        lines = format_head(report)
        lines.append(f"probe: {report['probe']['value']} ({report['probe']['reason']})")
        for precision, rows in report["precisions"].items():
            lines += ["", f"[{args.preset}, {precision}] median step ms",
                      f"{'variant':<12}{'exp':>9}{'exp2':>9}{'exp / exp2':>12}"]
            for name, row in rows.items():
                median = row["step_s_median"]
                lines.append(f"{name:<12}{median['exp'] * 1e3:>9.0f}"
                             f"{median['exp2'] * 1e3:>9.0f}{row['exp_vs_exp2']:>12.2f}")
        return "\n".join(lines)

    return finish(report, started, text, args.json)


if __name__ == "__main__":
    main()
