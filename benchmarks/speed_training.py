"""Speed of AIO-KD training steps, side by side with plain Transformer training.

On the same batches, training steps (forward + backward + Adam) of the teacher alone
(``scratch`` 6-6, i.e. plain Transformer training) and of AIO-KD stage 1 and stage 2 with K
sampled students, and of stage 1 with ``distill.reuse_prefix=false`` (every student its own
forward pass); optionally with the layers compiled (``--compile``) and with the loss computed
term by term (``--unfused``).  Each against the GEMM ceiling of its precision.

    python benchmarks/speed_training.py --ks 2 --json training.json

``speed.py`` runs this section with the others.  See ``benchmarks/README.md`` for the figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from speed_common import (
    PRECISIONS,
    RUNS,
    AddedMemory,
    add_amp_argument,
    add_warmup_argument,
    base_parser,
    bench_config,
    choose_precisions,
    chosen_device,
    finish,
    fmt,
    format_head,
    gemm_ceilings,
    int_list,
    mib,
    minor_page_faults,
    new_report,
    prepared_data,
    training_batches,
    training_flops,
    workdir,
)

from aiokd.config import Config, load_config
from aiokd.data.batching import Batch
from aiokd.data.corpus import ParallelSplit, load_manifest
from aiokd.distill.objective import Objective
from aiokd.evaluation.latency import timed
from aiokd.model.transformer import Transformer
from aiokd.students import Student, sample_students, student_name
from aiokd.train.loop import build_model
from aiokd.train.optimizer import make_optimizer, scale_and_clip_gradients

KS = [1, 2, 3, 4]
"""Numbers of sampled students K measured unless told otherwise."""


@dataclass(frozen=True)
class Variant:
    """One way to train: ``scratch`` (the teacher alone) or AIO-KD at a stage with K students;
    ``compiled``: with ``train.compile`` (the layers through ``torch.compile``); ``unfused``: the
    loss term by term (``distill.loss=reference``) instead of :mod:`aiokd.distill.aiokd_loss`."""

    name: str
    method: str
    stage: int = 1
    k: int = 0
    reuse_prefix: bool = True
    compiled: bool = False
    unfused: bool = False

    def config(self, preset: str, manifest: dict[str, Any], overrides: list[str]) -> Config:
        if self.compiled:
            overrides = [*overrides, "train.compile=true"]
        if self.method == "scratch":
            base = load_config(preset, overrides=overrides).model
            return bench_config(preset, manifest, overrides, method="scratch",
                                student=f"{base.enc_layers}-{base.dec_layers}")
        return bench_config(preset, manifest, overrides, method="aiokd", k=self.k,
                            reuse_prefix=str(self.reuse_prefix).lower())


TEACHER = Variant("teacher", "scratch")


def headline_k(ks: list[int]) -> int:
    """The K of the headline ratios: 2 (the paper's setting) if measured."""
    return 2 if 2 in ks else ks[0]


def variants(ks: list[int], compiled: bool = False, unfused: bool = False) -> list[Variant]:
    """Teacher alone, stage 1 and stage 2 for every K, and stage 1 without prefix reuse; with
    ``compiled`` also the teacher and stage 1 with their layers compiled, with ``unfused`` stage
    1 and 2 with the loss computed term by term."""
    found = [TEACHER]
    for stage in (1, 2):
        found += [Variant(f"stage{stage}_k{k}", "aiokd", stage, k) for k in ks]
    k = headline_k(ks)
    found.append(Variant(f"stage1_k{k}_no_reuse", "aiokd", 1, k, reuse_prefix=False))
    if compiled:
        found += [Variant("teacher_compiled", "scratch", compiled=True),
                  Variant(f"stage1_k{k}_compiled", "aiokd", 1, k, compiled=True)]
    if unfused:
        found += [Variant(f"stage{stage}_k{k}_unfused", "aiokd", stage, k, unfused=True)
                  for stage in (1, 2)]
    return found


def configured(chosen: list[Variant], preset: str, manifest: dict[str, Any],
               overrides: list[str]) -> list[tuple[Variant, Config]]:
    """Each variant with its config of ``preset`` on the data of ``manifest``."""
    return [(variant, variant.config(preset, manifest, overrides)) for variant in chosen]


def sampled_students(cfg: Config, k: int, steps: int) -> list[list[Student]]:
    """The students of steps ``0..steps-1`` from the training sampler (stage 1's draws, so that
    stage 1 and stage 2 variants train the same students)."""
    if k == 0:
        return [[] for _ in range(steps)]
    candidates = cfg.distill.space(cfg.model).candidates
    return [sample_students(candidates, cfg.distill, cfg.train.seed, 1, step)
            for step in range(steps)]


class Trainer:
    """A fresh model, Adam and objective for one variant; :meth:`step` is one training update as
    the training loop does it (autocast forward, backward, gradient / tokens, clipping, Adam)."""

    def __init__(self, cfg: Config, device: torch.device, dtype: torch.dtype | None,
                 unfused: bool = False):
        self.cfg, self.device, self.dtype = cfg, device, dtype
        self.model = build_model(cfg, device).train()
        self.optimizer = make_optimizer(self.model, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.train.lr
        if unfused:
            cfg = dataclasses.replace(cfg, distill=dataclasses.replace(cfg.distill,
                                                                       loss="reference"))
        self.objective = Objective(self.model, cfg)

    def step(self, batch: Batch, students: list[Student], stage: int) -> None:
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            loss, _ = self.objective(batch.src, batch.prev_tgt, batch.target, students, stage)
        loss.backward()
        scale_and_clip_gradients(self.model, 1.0 / batch.tokens, self.cfg.train.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def bench_training(variants: list[tuple[Variant, Config]], batches: list[Batch], warmup: int,
                   device: torch.device, dtype: torch.dtype | None,
                   gemm_ceiling: float | None = None) -> dict[str, dict[str, Any]]:
    """Time training steps of every variant on the same ``batches``.

    Each variant gets a fresh model and optimizer and makes ``warmup`` untimed steps (a compiled
    one at least one on each batch, so that no timed step compiles); its peak memory is measured
    over these (:class:`AddedMemory`: the weights, Adam's moments, and a step's gradients and
    activations) and their time is ``warmup_s``.  Then, for each batch ``i`` in turn, every
    variant makes one timed step on it with the sampler's students of step ``i``; interleaving
    the variants so spreads a slow spell of a shared machine over all of them.

    Returns, per variant name: the median step time, the warm-up time, target tokens per second
    over the timed steps, the analytic FLOPs per step (mean), the achieved FLOP/s and its
    fraction of ``gemm_ceiling``, the peak memory in MiB, and the minor page faults of each
    timed step.
    """
    runs = len(batches)
    trainers, students, memory, warmup_s = {}, {}, {}, {}
    for variant, cfg in variants:
        steps = max(warmup, runs) if cfg.train.compile else warmup
        started = time.perf_counter()
        with AddedMemory(device) as added:
            trainer = Trainer(cfg, device, dtype, variant.unfused)
            chosen = sampled_students(cfg, variant.k, runs)
            for i in range(steps):
                trainer.step(batches[i % runs], chosen[i % runs], variant.stage)
        trainers[variant], students[variant], memory[variant] = trainer, chosen, added.peak
        warmup_s[variant] = time.perf_counter() - started
    times: dict[Variant, list[float]] = {variant: [] for variant, _ in variants}
    faults: dict[Variant, list[int | None]] = {variant: [] for variant, _ in variants}
    for i, batch in enumerate(batches):
        for variant, _ in variants:
            step = partial(trainers[variant].step, batch, students[variant][i], variant.stage)
            before = minor_page_faults()
            times[variant].append(timed(step, device))
            after = minor_page_faults()
            faults[variant].append(None if before is None else after - before)
    found = {}
    tokens = sum(batch.tokens for batch in batches)
    for variant, cfg in variants:
        teacher = trainers[variant].model.teacher
        flops = [training_flops(cfg.model, batch, [teacher, *chosen], variant.reuse_prefix)
                 for batch, chosen in zip(batches, students[variant], strict=True)]
        achieved = sum(flops) / sum(times[variant])
        found[variant.name] = {
            "method": variant.method, "stage": variant.stage, "k": variant.k,
            "reuse_prefix": variant.reuse_prefix, "compiled": variant.compiled,
            "unfused": variant.unfused,
            "warmup_s": warmup_s[variant],
            "students": [[student_name(s) for s in chosen] for chosen in students[variant]],
            "step_s_median": statistics.median(times[variant]), "step_s": times[variant],
            "tokens_per_s": tokens / sum(times[variant]), "tokens_per_step": tokens / runs,
            "flops_per_step": sum(flops) / runs, "achieved_flops_per_s": achieved,
            "fraction_of_gemm_ceiling": achieved / gemm_ceiling if gemm_ceiling else None,
            "peak_memory_mb": mib(memory[variant]),
            "minor_page_faults": faults[variant],
        }
    return found


def measure_training(preset: str, precision: str, variants: list[tuple[Variant, Config]],
                     batches: list[Batch], warmup: int, device: torch.device,
                     gemm: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """:func:`bench_training` in ``precision`` against its GEMM ceiling, and each variant's
    step time over the teacher's (``ratios``)."""
    print(f"  {preset} {precision} training: {', '.join(v.name for v, _ in variants)} ...",
          file=sys.stderr, flush=True)
    training = bench_training(variants, batches, warmup, device, PRECISIONS[precision],
                              gemm[precision]["ceiling_flops_per_s"])
    teacher = training["teacher"]["step_s_median"]
    ratios = {f"{name}_vs_teacher": row["step_s_median"] / teacher
              for name, row in training.items() if name != "teacher"}
    return {"training": training, "ratios": ratios}


def preset_summary(cfg: Config, batches: list[Batch]) -> dict[str, Any]:
    """The model, its size, the batch size and the timed batches of a preset."""
    return {
        "model": {key: getattr(cfg.model, key) for key in
                  ("vocab_size", "d_model", "ffn_dim", "heads", "enc_layers", "dec_layers",
                   "dropout", "pre_norm")},
        "parameters": Transformer(cfg.model).num_parameters(),
        "max_tokens": cfg.train.max_tokens,
        "batches": {"count": len(batches),
                    "target_tokens": [b.tokens for b in batches],
                    "shapes": [[*b.src.shape, b.target.shape[1]] for b in batches]},
        "precisions": {},
    }


def format_training(preset: str, precision: str, entry: dict[str, Any],
                    figures: dict[str, Any]) -> list[str]:
    """The training table of one preset in one precision."""
    lines = ["", f"[{preset}, {precision}] training, {entry['parameters'] / 1e6:.1f}M "
             f"parameters, max_tokens {entry['max_tokens']}",
             f"{'variant':<22}{'step ms':>9}{'tok/s':>9}{'x teacher':>10}"
             f"{'GFLOP/s':>9}{'% GEMM':>8}{'peak MiB':>10}{'warm-up s':>11}"]
    for name, row in figures["training"].items():
        ratio = figures["ratios"].get(f"{name}_vs_teacher", 1.0)
        fraction = row["fraction_of_gemm_ceiling"]
        lines.append(
            f"{name:<22}{row['step_s_median'] * 1e3:>9.0f}{row['tokens_per_s']:>9.0f}"
            f"{ratio:>10.2f}{row['achieved_flops_per_s'] / 1e9:>9.1f}"
            f"{fmt(fraction and 100 * fraction, '.0f'):>8}"
            f"{fmt(row['peak_memory_mb'], '.0f'):>10}{row['warmup_s']:>11.1f}")
    return lines


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of this section."""
    p.add_argument("--ks", type=int_list, default=None,
                   help="numbers of students K (default: 1,2,3,4; speed.py --quick: 2)")
    add_amp_argument(p)
    add_warmup_argument(p)
    p.add_argument("--compile", action="store_true",
                   help="also time the teacher and stage 1 with train.compile=true (every layer "
                   "through torch.compile), after warm-up steps on every timed batch")
    p.add_argument("--unfused", action="store_true",
                   help="also time stage 1 and 2 with the loss computed term by term with "
                   "autograd (distill.loss=reference), as a direct implementation does")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Time the training steps of ``--preset``; print the tables; write ``--json``."""
    p = base_parser(__doc__.split("\n\n")[0], "preset to measure (default: iwslt)")
    add_arguments(p)
    args = p.parse_args(argv)
    device = chosen_device(args)
    ks, runs = args.ks or KS, args.runs or RUNS
    precisions = choose_precisions(args.amp, device)
    report = new_report(device, "speed_training.py", argv, runs=runs, warmup=args.warmup,
                        precisions=precisions, ks=ks)
    started = time.perf_counter()
    with workdir() as work:
        data_dir = prepared_data(args.data, work)
        report["data"] = str(data_dir) if args.data else "multi30k (prepared on the fly)"
        manifest = load_manifest(data_dir)
        chosen = configured(variants(ks, args.compile, args.unfused), args.preset, manifest,
                            args.overrides)
        base = chosen[1][1]
        report["gemm"] = gemm_ceilings([base], device)
        batches = training_batches(ParallelSplit.load(data_dir, "train"), base.train.max_tokens,
                                   runs, base.train.seed, device)
        entry = preset_summary(base, batches)
        for precision in precisions:
            entry["precisions"][precision] = measure_training(
                args.preset, precision, chosen, batches, args.warmup, device, report["gemm"])
        report["presets"] = {args.preset: entry}

    def text(report: dict[str, Any]) -> str:
        lines = format_head(report)
        for preset, entry in report["presets"].items():
            for precision, figures in entry["precisions"].items():
                lines += format_training(preset, precision, entry, figures)
        return "\n".join(lines)

    return finish(report, started, text, args.json)


if __name__ == "__main__":
    main()
