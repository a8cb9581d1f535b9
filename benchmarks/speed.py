"""Speed of AIO-KD training, validation and decoding, side by side with plain Transformer training.

One process measures, on one device and with the same batches for every variant:

* the GEMM ceiling: float32 and bfloat16 matmul FLOP/s at the model's shapes (the yardstick);
* training steps (forward + backward + Adam) of the teacher alone (``scratch`` 6-6, i.e. plain
  Transformer training) and of AIO-KD stage 1 and stage 2 with K = 1..4 sampled students, and of
  stage 1 with ``distill.reuse_prefix=false`` (every student its own forward pass)
  (``speed_training.py``);
* validation of all candidate students against the teacher alone (``speed_validation.py``);
* how a training step grows with the batch size and with the sentence length
  (``speed_scaling.py``);
* decoding (greedy and beam 5, batch 1 and 64) in PyTorch (float32, and bfloat16 where the
  device computes in it natively) and through CTranslate2 (float32 and int8)
  (``speed_decoding.py``);
* optionally the fairseq peer (``--fairseq``): its training throughput and ``fairseq-generate``
  speed on the same model, data and thread count (see ``benchmarks/fairseq_peer.py``).

    python benchmarks/speed.py --quick --json speed.json
    python benchmarks/speed.py --presets tiny,iwslt --fairseq --json speed.json

Each section also runs on its own as the script named.  See ``benchmarks/README.md`` for what
every figure means.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fairseq_peer
import speed_decoding
import speed_scaling
import speed_training
import speed_validation
import torch
from speed_common import (
    PRECISIONS,
    RUNS,
    base_parser,
    bench_config,
    choose_precisions,
    chosen_device,
    finish,
    fmt,
    format_head,
    gemm_ceilings,
    new_report,
    prepared_data,
    training_batches,
    workdir,
)

from aiokd.data.corpus import ParallelSplit, load_manifest
from aiokd.model.probe import training_precision


@dataclass
class Plan:
    """What to measure and how often."""

    ks: list[int]
    runs: int
    warmup: int
    valid_batches: int
    token_sizes: list[int]
    length_edges: list[int]
    scaling: bool
    validation: bool
    decode_sentences: int
    batch1_sentences: int
    decode_students: list[str]
    fairseq_updates: int
    compiled: bool = False
    unfused: bool = False


def bench_preset(preset: str, data_dir: Path, overrides: list[str], plan: Plan,
                 precisions: list[str], device: torch.device,
                 gemm: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every training, validation and scaling figure of one preset, for each precision."""
    manifest = load_manifest(data_dir)
    train_split = ParallelSplit.load(data_dir, "train")
    variants = speed_training.configured(
        speed_training.variants(plan.ks, plan.compiled, plan.unfused), preset, manifest,
        overrides)
    base = variants[1][1]
    batches = training_batches(train_split, base.train.max_tokens, plan.runs, base.train.seed,
                               device)
    valid_batches = speed_validation.validation_batches(
        ParallelSplit.load(data_dir, "valid"), base, plan.valid_batches, device)
    result = speed_training.preset_summary(base, batches)
    if precisions == ["float32", "bfloat16"]:  # --amp auto on a CPU: what auto picks here
        choice = training_precision(base.model, device, base.train.max_tokens)
        result["auto_precision"] = {"chose": AUTO_NAMES[choice.value], "reason": choice.reason}
    scaled = {variant.name for variant in
              speed_scaling.scaling_variants(speed_training.headline_k(plan.ks))}
    for precision in precisions:
        dtype = PRECISIONS[precision]
        entry = speed_training.measure_training(preset, precision, variants, batches,
                                                plan.warmup, device, gemm)
        if plan.validation:
            print(f"  {preset} {precision} validation ...", file=sys.stderr, flush=True)
            entry["validation"] = speed_validation.bench_validation(base, valid_batches,
                                                                    plan.runs, device, dtype)
        if plan.scaling and precision == precisions[0]:
            print(f"  {preset} {precision} scaling ...", file=sys.stderr, flush=True)
            entry["scaling"] = speed_scaling.bench_scaling(
                [pair for pair in variants if pair[0].name in scaled], train_split,
                plan.token_sizes, plan.length_edges, plan.runs, plan.warmup, device, dtype)
        result["precisions"][precision] = entry
    if "auto_precision" in result:
        speeds = {p: result["precisions"][p]["training"]["teacher"]["tokens_per_s"]
                  for p in precisions}
        fastest = max(speeds, key=speeds.get)
        result["auto_precision"].update(teacher_tokens_per_s=speeds, fastest=fastest,
                                        auto_is_fastest=result["auto_precision"]["chose"]
                                        == fastest)
    return result


AUTO_NAMES = {"none": "float32", "bf16": "bfloat16"}
"""``train.amp`` values by the benchmark's precision names."""


def format_report(report: dict[str, Any]) -> str:
    """The figures of ``report`` as plain-text tables."""
    lines = format_head(report)
    for preset, entry in report.get("presets", {}).items():
        if "auto_precision" in entry:
            auto = entry["auto_precision"]
            speeds = ", ".join(f"{p} {s:.0f}" for p, s in auto["teacher_tokens_per_s"].items())
            lines.append(f"{preset}: train.amp=auto chose {auto['chose']} ({auto['reason']}); "
                         f"teacher tok/s measured here: {speeds}; fastest {auto['fastest']}")
        for precision, figures in entry["precisions"].items():
            lines += speed_training.format_training(preset, precision, entry, figures)
            if "validation" in figures:
                lines += speed_validation.format_validation(figures["validation"])
            lines += speed_scaling.format_scaling(figures.get("scaling", {}))
    lines += speed_decoding.format_decoding(report.get("decoding", {}))
    lines += fairseq_peer.format_comparison(report.get("fairseq", {}))
    lines.append("")
    lines.append(f"ratio_stage1_vs_teacher {fmt(report.get('ratio_stage1_vs_teacher'), '.3f')}, "
                 f"ratio_stage2_vs_teacher {fmt(report.get('ratio_stage2_vs_teacher'), '.3f')}, "
                 f"ratio_validation_vs_teacher "
                 f"{fmt(report.get('ratio_validation_vs_teacher'), '.3f')}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The options of every section, and which sections and presets to run."""
    p = base_parser(__doc__.split("\n\n")[0],
                    "preset whose K=2 ratios go to the top of the JSON (default: iwslt)")
    p.add_argument("--presets", default=None,
                   help="comma-separated presets to measure (default: --preset)")
    p.add_argument("--quick", action="store_true",
                   help="K=2 only, one timed repetition, one precision, one validation batch, "
                   "no scaling sweep (unless --scaling-tokens), decoding of the teacher only")
    p.add_argument("--skip", default="",
                   help="comma-separated sections to leave out: validation, scaling, decoding")
    speed_training.add_arguments(p)
    speed_validation.add_arguments(p)
    speed_scaling.add_arguments(p)
    speed_decoding.add_arguments(p)
    p.add_argument("--fairseq", action="store_true",
                   help="also measure the fairseq peer (see benchmarks/peers/install_fairseq.sh)")
    p.add_argument("--fairseq-venv", default=str(Path(__file__).parent / ".peers"
                                                 / "fairseq-venv"),
                   help="virtual environment holding fairseq (default: benchmarks/.peers/"
                   "fairseq-venv)")
    p.add_argument("--fairseq-updates", type=int, default=None,
                   help="fairseq-train updates, the first two untimed (default: 12; --quick: 5)")
    return p


def make_plan(args: argparse.Namespace, skip: set[str]) -> Plan:
    """The sections' settings from the command line, ``--quick`` choosing the small ones."""
    quick = args.quick
    return Plan(
        ks=args.ks or ([2] if quick else speed_training.KS),
        runs=args.runs or (1 if quick else RUNS),
        warmup=args.warmup,
        valid_batches=args.valid_batches if args.valid_batches is not None else (
            1 if quick else 0),
        token_sizes=args.scaling_tokens or speed_scaling.TOKEN_SIZES,
        length_edges=args.length_edges,
        scaling="scaling" not in skip and not (quick and args.scaling_tokens is None),
        validation="validation" not in skip,
        decode_sentences=args.decode_sentences or (64 if quick else 256),
        batch1_sentences=args.batch1_sentences or (8 if quick else 32),
        decode_students=(["teacher"] if quick else speed_decoding.STUDENTS),
        fairseq_updates=args.fairseq_updates or (5 if quick else 12),
        compiled=args.compile,
        unfused=args.unfused,
    )


def top_level_ratios(report: dict[str, Any], preset: str, k: int) -> dict[str, float | None]:
    """The three headline ratios of ``preset`` at K students in the first precision."""
    entry = report["presets"][preset]
    figures = next(iter(entry["precisions"].values()))
    ratios = figures["ratios"]
    validation = figures.get("validation")
    return {
        "ratio_stage1_vs_teacher": ratios.get(f"stage1_k{k}_vs_teacher"),
        "ratio_stage2_vs_teacher": ratios.get(f"stage2_k{k}_vs_teacher"),
        "ratio_validation_vs_teacher": validation and validation["ratio_all_vs_teacher"],
    }


def _teacher_fp32(report: dict[str, Any]) -> dict[str, Any] | None:
    """Our ``iwslt`` teacher's float32 training row, if this run measured it."""
    figures = report["presets"].get("iwslt", {}).get("precisions", {}).get("float32")
    return figures and figures["training"]["teacher"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the tables; write ``--json``; return the report."""
    args = build_parser().parse_args(argv)
    device = chosen_device(args)
    skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    plan = make_plan(args, skip)
    presets = [p.strip() for p in (args.presets or args.preset).split(",") if p.strip()]
    if args.preset not in presets:
        presets.append(args.preset)
    precisions = choose_precisions(args.amp, device, args.quick)
    report: dict[str, Any] = {
        "ratio_stage1_vs_teacher": None, "ratio_stage2_vs_teacher": None,
        "ratio_validation_vs_teacher": None,
        **new_report(device, "speed.py", argv, runs=plan.runs, warmup=plan.warmup,
                     quick=args.quick, precisions=precisions, ks=plan.ks),
    }
    started = time.perf_counter()
    with workdir() as work:
        data_dir = prepared_data(args.data, work)
        report["data"] = str(data_dir) if args.data else "multi30k (prepared on the fly)"
        manifest = load_manifest(data_dir)
        print("GEMM ceiling ...", file=sys.stderr, flush=True)
        report["gemm"] = gemm_ceilings(
            [bench_config(preset, manifest, args.overrides) for preset in presets], device)
        report["presets"] = {}
        for preset in presets:
            print(f"preset {preset} ...", file=sys.stderr, flush=True)
            report["presets"][preset] = bench_preset(preset, data_dir, args.overrides, plan,
                                                     precisions, device, report["gemm"])
        report.update(top_level_ratios(report, args.preset,
                                       speed_training.headline_k(plan.ks)))
        reason = ("--skip decoding" if "decoding" in skip
                  else speed_decoding.decoding_available())
        report["decoding"] = {"skipped": reason} if reason else speed_decoding.run_decoding(
            args.preset, args.overrides, args.model, args.decode_dtypes, plan.decode_students,
            plan.decode_sentences, plan.batch1_sentences, plan.runs, data_dir, work, device)
        if args.fairseq:
            report["fairseq"] = fairseq_peer.compare(
                Path(args.fairseq_venv), data_dir, work, device, plan.runs, plan.warmup,
                plan.decode_sentences, plan.fairseq_updates,
                None if args.overrides else _teacher_fp32(report))
    return finish(report, started, format_report, args.json)


if __name__ == "__main__":
    main()
