"""CTranslate2 decoding speed against its number of threads (``intra_threads``), side by side.

One student of a model is exported to CTranslate2 and loaded once per thread count; then
``--runs`` rounds time, for each thread count in turn (the order rotating from round to round), a
sample of sentences translated one at a time and the whole set in batches of 64 (beam 5).

    python benchmarks/ctranslate2_threads.py --model RUN --data DATA --student 6-6 \\
        --quantization int8 --threads 1,2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import ctranslate2
import sentencepiece as spm

from aiokd.evaluation.evaluate import read_test_set
from aiokd.evaluation.latency import sample_indices, timed
from aiokd.formats.export import write_ctranslate2
from aiokd.model.checkpoint import load_model_files
from aiokd.students import parse_student


def timed_rounds(translators: dict[int, ctranslate2.Translator], batches: list[list[list[str]]],
                 runs: int, beam: int) -> dict[int, list[float]]:
    """Seconds per run of translating ``batches`` with each translator, rounds interleaved."""
    times: dict[int, list[float]] = {threads: [] for threads in translators}
    order = list(translators)
    for round_ in range(runs):
        for threads in order[round_ % len(order):] + order[:round_ % len(order)]:
            translate = translators[threads].translate_batch
            times[threads].append(timed(lambda t=translate: [t(batch, beam_size=beam)
                                                             for batch in batches]))
    return times


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="run directory, checkpoint or extracted student")
    p.add_argument("--data", required=True, help="prepared data directory (its test split)")
    p.add_argument("--student", default=None, help="l_e-l_d (default: the full model)")
    p.add_argument("--quantization", default="int8", choices=["none", "int8", "int8_float32"])
    p.add_argument("--threads", default=None,
                   help="comma-separated intra_threads (default: 1 up to the CPU count)")
    p.add_argument("--sample", type=int, default=30, help="sentences timed one at a time")
    p.add_argument("--sentences", type=int, default=256, help="sentences timed in batches of 64")
    p.add_argument("--beam", type=int, default=5)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    counts = ([int(t) for t in args.threads.split(",")] if args.threads
              else list(range(1, (os.cpu_count() or 1) + 1)))
    files = load_model_files(args.model)
    student = parse_student(args.student) if args.student else max(files.students)
    processor = spm.SentencePieceProcessor(model_proto=files.spm_bytes)
    sources = read_test_set(args.data, "test").sources[:args.sentences]
    pieces = [processor.encode(line, out_type=str) for line in sources]
    one_by_one = [[pieces[i]] for i in sample_indices(len(pieces), args.sample)]
    batched = [pieces[i:i + 64] for i in range(0, len(pieces), 64)]
    with tempfile.TemporaryDirectory(prefix="aiokd-ct2-threads-") as directory:
        write_ctranslate2(Path(directory), files, student, args.quantization)
        translators = {threads: ctranslate2.Translator(directory, device="cpu",
                                                       intra_threads=threads)
                       for threads in counts}
        for translator in translators.values():
            translator.translate_batch(batched[0][:8], beam_size=args.beam)
        print(f"  timing {len(one_by_one)} sentences one at a time ...", file=sys.stderr)
        single = timed_rounds(translators, one_by_one, args.runs, args.beam)
        print(f"  timing {len(pieces)} sentences in batches of 64 ...", file=sys.stderr)
        many = timed_rounds(translators, batched, args.runs, args.beam)
    print(f"CTranslate2 {ctranslate2.__version__}, {args.quantization}, student "
          f"{student[0]}-{student[1]}, beam {args.beam}, {os.cpu_count()} CPUs, medians of "
          f"{args.runs} interleaved runs")
    print(f"{'threads':>8}{'ms/sent at batch 1':>20}{'sent/s at batch 64':>20}")
    for threads in counts:
        print(f"{threads:>8}{1000 * statistics.median(single[threads]) / len(one_by_one):>20.1f}"
              f"{len(pieces) / statistics.median(many[threads]):>20.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
