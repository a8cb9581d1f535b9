"""Translating in float32 and in half precision, side by side: BLEU, chrF and speed of each.

For every student, each precision translates the test set once (beam 5) for its sacreBLEU
scores; then ``--runs`` rounds time, for each precision in turn (the order rotating from round
to round), the whole test set batched (``aiokd translate``'s batching) and a sample of sentences
one at a time.  Text in, text out, as ``aiokd translate --dtype`` runs it.

    python benchmarks/decoding_precision.py --model RUN --data DATA --threads 1 \\
        --json benchmarks/results/decoding-precision-cpu.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

import torch
from speed_common import device_name

import aiokd
from aiokd.evaluation.evaluate import read_test_set
from aiokd.evaluation.latency import sample_indices, timed
from aiokd.evaluation.scoring import sacrebleu_scores
from aiokd.inference.api import Translator


def compare(models: dict[str, Translator], student: str, sources: list[str],
            references: list[str], tgt_lang: str | None, beam: int, runs: int,
            sample: int) -> dict[str, object]:
    """Scores and speed of ``student`` in every precision of ``models``."""
    dtypes = list(models)
    outputs = {dtype: models[dtype].translate(sources, student=student, beam=beam)
               for dtype in dtypes}
    picked = [sources[i] for i in sample_indices(len(sources), sample)]
    batched: dict[str, list[float]] = {dtype: [] for dtype in dtypes}
    one_by_one: dict[str, list[float]] = {dtype: [] for dtype in dtypes}
    for round_ in range(runs):
        for dtype in dtypes[round_ % len(dtypes):] + dtypes[:round_ % len(dtypes)]:
            translate = models[dtype].translate
            batched[dtype].append(timed(lambda t=translate: t(sources, student=student,
                                                               beam=beam)))
            one_by_one[dtype].append(timed(lambda t=translate: [
                t([line], student=student, beam=beam) for line in picked]))
    found: dict[str, object] = {}
    for dtype in dtypes:
        bleu, chrf = sacrebleu_scores(outputs[dtype], references, tgt_lang)
        found[dtype] = {
            "bleu": bleu.score, "chrf": chrf.score,
            "sentences_per_s": len(sources) / statistics.median(batched[dtype]),
            "ms_per_sentence_batch1": 1000 * statistics.median(one_by_one[dtype]) / len(picked),
            "batched_s": batched[dtype], "batch1_s": one_by_one[dtype],
        }
    reference = dtypes[0]
    for dtype in dtypes[1:]:
        found[f"{dtype}_vs_{reference}"] = {
            "bleu_difference": found[dtype]["bleu"] - found[reference]["bleu"],
            "same_output_fraction": sum(a == b for a, b in zip(
                outputs[dtype], outputs[reference], strict=True)) / len(sources),
            "speedup_batched": found[dtype]["sentences_per_s"]
            / found[reference]["sentences_per_s"],
            "speedup_batch1": found[reference]["ms_per_sentence_batch1"]
            / found[dtype]["ms_per_sentence_batch1"],
        }
    return found


def table(results: dict[str, dict[str, object]], dtypes: list[str]) -> str:
    lines = [f"{'student':<8}{'dtype':<10}{'BLEU':>7}{'chrF':>7}{'sent/s':>9}{'ms/sent b1':>12}"
             f"{'x batched':>11}{'x b1':>7}{'same out':>10}"]
    for student, found in results.items():
        for dtype in dtypes:
            row = found[dtype]
            versus = found.get(f"{dtype}_vs_{dtypes[0]}")
            extra = (f"{versus['speedup_batched']:>11.2f}{versus['speedup_batch1']:>7.2f}"
                     f"{versus['same_output_fraction']:>10.1%}" if versus else "")
            lines.append(f"{student:<8}{dtype:<10}{row['bleu']:>7.2f}{row['chrf']:>7.2f}"
                         f"{row['sentences_per_s']:>9.1f}{row['ms_per_sentence_batch1']:>12.1f}"
                         + extra)
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="trained run directory or extracted student")
    p.add_argument("--data", required=True, help="prepared data directory")
    p.add_argument("--split", default="test")
    p.add_argument("--students", default="2-2,4-2,6-2,4-4,6-6")
    p.add_argument("--dtypes", default="float32,bfloat16",
                   help="precisions, the first the reference (default: float32,bfloat16)")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--runs", type=int, default=3, help="timed rounds (default: 3)")
    p.add_argument("--sample", type=int, default=50, help="sentences timed at batch 1")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="PyTorch CPU threads (default: all)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    test = read_test_set(args.data, args.split)
    dtypes = args.dtypes.split(",")
    models = {dtype: aiokd.load(args.model, device=args.device, engine="torch", dtype=dtype)
              for dtype in dtypes}
    students = [name for name in args.students.split(",") if name in models[dtypes[0]].students]
    results = {}
    for student in students:
        print(f"  {student} ...", file=sys.stderr, flush=True)
        results[student] = compare(models, student, test.sources, test.references,
                                   test.description.get("tgt_lang"), args.beam, args.runs,
                                   args.sample)
    report = {
        "command": shlex.join(["python", "benchmarks/decoding_precision.py", *sys.argv[1:]]),
        "model": args.model,
        "test_set": {**test.description, "sentences": len(test.sources)},
        "device": args.device, "device_name": device_name(torch.device(args.device)),
        "threads": torch.get_num_threads(), "torch_version": torch.__version__,
        "beam": args.beam, "runs": args.runs, "batch1_sample": args.sample,
        "statistic": "median over the runs", "students": results,
    }
    print(table(results, dtypes))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
