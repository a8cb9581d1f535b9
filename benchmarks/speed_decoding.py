"""Speed of decoding in PyTorch and through CTranslate2, side by side.

Greedy and beam 5, batch 1 and 64, for the teacher and students 2-2, 4-2 and 6-2: our PyTorch
search (float32, and bfloat16 where the device computes in it natively) and the student's
CTranslate2 export (float32 and int8).  Token ids in, token ids out.

    python benchmarks/speed_decoding.py --json decoding.json

``speed.py`` runs this section with the others.  See ``benchmarks/README.md`` for the figures.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from speed_common import (
    RUNS,
    base_parser,
    bench_config,
    chosen_device,
    finish,
    format_head,
    new_report,
    prepared_data,
    workdir,
)

from aiokd.config import Config, ModelConfig
from aiokd.data.corpus import ParallelSplit, load_manifest
from aiokd.evaluation.latency import timed
from aiokd.model.probe import bf16_is_native
from aiokd.model.transformer import Transformer
from aiokd.students import Student, parse_student, student_name

STUDENTS = ["teacher", "2-2", "4-2", "6-2"]
"""Students decoded unless told otherwise (``speed.py --quick``: the teacher)."""


def decoding_available() -> str | None:
    """``None`` if the decoding modules are installed, else why the section is skipped."""
    for name in ("aiokd.inference.generate", "aiokd.inference.api", "aiokd.formats.export",
                 "ctranslate2"):
        if importlib.util.find_spec(name) is None:
            return f"{name} is not available in this installation"
    return None


def decoding_model(model_path: str | None, cfg: Config, data_dir: Path):
    """The model to decode with: ``model_path`` loaded, or the preset's model at its seeded
    random initialisation.  Returns ``(ModelFiles, description)``."""
    from aiokd.model.checkpoint import ModelFiles, load_model_files, model_config_json

    if model_path is not None:
        return load_model_files(model_path), f"trained model {model_path}"
    manifest = load_manifest(data_dir)
    torch.manual_seed(cfg.train.seed)
    model = Transformer(cfg.model).eval()
    languages = {"src_lang": manifest["src_lang"], "tgt_lang": manifest["tgt_lang"]}
    config = model_config_json(cfg, cfg.distill.space(cfg.model), languages)
    spm_bytes = (data_dir / manifest["spm_model"]).read_bytes()
    return ModelFiles(model, config, spm_bytes, data_dir), "random initialisation (seeded)"


def decoding_sources(data_dir: Path, count: int) -> tuple[list[list[int]], int]:
    """The first ``count`` validation sources, and their mean reference length with the
    end-of-sentence token, rounded: the fixed decoder steps of an untrained model."""
    valid = ParallelSplit.load(data_dir, "valid")
    count = min(count, len(valid))
    sources = [valid.src(i).tolist() for i in range(count)]
    length = round(float(np.mean(valid.tgt_lengths[:count])) + 1)
    return sources, length


def decoding_dtypes(device: torch.device) -> list[str]:
    """float32, and bfloat16 where the device computes in it natively (GPUs, CPUs with AMX or
    AVX512-BF16)."""
    return ["float32", "bfloat16"] if bf16_is_native(device) else ["float32"]


def decoding_batches(sources: list[list[int]], batch_size: int) -> list[list[int]]:
    """Indices of ``sources`` sorted by length and cut into batches of ``batch_size`` (as
    ``fairseq-generate --batch-size`` does)."""
    order = sorted(range(len(sources)), key=lambda i: (len(sources[i]), i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@dataclass(frozen=True)
class Search:
    """The search of every engine: beam size and the output limit ``int(a * S + b)`` (decoder
    steps, the end-of-sentence token included)."""

    beam: int
    max_len_a: float
    max_len_b: int

    def options(self):
        from aiokd.inference.generate import SearchOptions

        return SearchOptions(beam=self.beam, lenpen=1.0, max_len_a=self.max_len_a,
                             max_len_b=self.max_len_b)


def time_decoding(run: Callable[[list[list[int]]], list[list[int]]], sources: list[list[int]],
                  batch_size: int, limit: Callable[[list[int]], int],
                  runs: int) -> dict[str, Any]:
    """Decode ``sources`` in length-sorted batches of ``batch_size`` with ``run``: the median
    over ``runs`` passes (after decoding the first batch once) and its sentences and tokens per
    second.

    Tokens are the decoder steps: the output tokens plus the end-of-sentence token for each
    output that stopped before its limit, which is how ``fairseq-generate`` counts them."""
    batches = [[sources[i] for i in batch] for batch in decoding_batches(sources, batch_size)]
    run(batches[0])
    outputs: list[list[int]] = []

    def decode_all() -> None:
        outputs[:] = [out for batch in batches for out in run(batch)]

    times = [timed(decode_all) for _ in range(runs)]
    ordered = [source for batch in batches for source in batch]
    tokens = sum(len(out) + (len(out) < limit(source))
                 for out, source in zip(outputs, ordered, strict=True))
    seconds = statistics.median(times)
    return {"sentences": len(sources), "s_median": seconds,
            "sentences_per_s": len(sources) / seconds, "tokens_per_s": tokens / seconds,
            "tokens_per_sentence": tokens / len(sources)}


def torch_decoder(model: Transformer, student: Student,
                  search: Search) -> Callable[[list[list[int]]], list[list[int]]]:
    """One batch through :func:`aiokd.inference.generate.generate`."""
    from aiokd.inference.generate import generate

    options = search.options()
    return lambda batch: generate(model, batch, student, options)


def ctranslate2_decoder(translator, pieces: list[str], cfg: ModelConfig,
                        search: Search) -> Callable[[list[list[int]]], list[list[int]]]:
    """One batch through ``ctranslate2.Translator.translate_batch`` under the search rules of
    :mod:`aiokd.inference.api` (pad and BOS suppressed, at least one token), with the limit of
    the batch's longest source."""
    ids = {piece: i for i, piece in enumerate(pieces)}
    suppressed = [[pieces[cfg.pad_id]], [pieces[cfg.bos_id]]]
    options = search.options()

    def run(batch: list[list[int]]) -> list[list[int]]:
        limit = max(options.max_length(len(s), cfg.max_positions) for s in batch)
        results = translator.translate_batch(
            [[pieces[t] for t in s] for s in batch], beam_size=search.beam, length_penalty=1.0,
            max_input_length=0, max_batch_size=0, max_decoding_length=limit,
            min_decoding_length=1, suppress_sequences=suppressed, return_scores=False)
        return [[ids[p] for p in result.hypotheses[0]] for result in results]

    return run


def bench_decoding(files, sources: list[list[int]], students: list[Student], beams: list[int],
                   batch_sizes: list[int], dtypes: list[str], quantizations: list[str],
                   search: Search, runs: int, device: torch.device, workdir: Path,
                   batch1_sentences: int) -> dict[str, Any]:
    """Sentences/s and tokens/s of :func:`aiokd.inference.generate.generate` with the model in
    each of ``dtypes`` (engine ``torch`` for float32, ``torch_<dtype>`` otherwise, as ``aiokd
    translate --dtype`` casts it) and of the CTranslate2 export of each student (in each
    quantization) for every beam size and batch size.

    Batch 1 decodes the first ``batch1_sentences`` sources one by one; larger batches decode all
    of them.  ``search`` gives the output limit; its beam is replaced by each of ``beams``.
    """
    import ctranslate2

    from aiokd.formats.export import sentencepiece_pieces, write_ctranslate2
    from aiokd.inference.api import DTYPES

    models = {("torch" if dtype == "float32" else f"torch_{dtype}"):
              copy.deepcopy(files.model).to(device, DTYPES[dtype]).eval() for dtype in dtypes}
    cfg = files.model.cfg
    pieces = sentencepiece_pieces(files.spm_bytes)[0]
    found: dict[str, Any] = {}
    for student in students:
        name = student_name(student)
        engines: dict[str, Any] = dict(models)
        for quantization in quantizations:
            directory = workdir / f"ct2-{name}-{quantization}"
            if not directory.exists():
                directory.mkdir()
                write_ctranslate2(directory, files, student, quantization)
            engine = f"ctranslate2_{'float32' if quantization == 'none' else quantization}"
            engines[engine] = ctranslate2.Translator(
                str(directory), device=device.type, intra_threads=torch.get_num_threads())
        for engine, decoder in engines.items():
            for beam in beams:
                chosen = Search(beam, search.max_len_a, search.max_len_b)
                run = (torch_decoder(decoder, student, chosen) if engine.startswith("torch")
                       else ctranslate2_decoder(decoder, pieces, cfg, chosen))
                options = chosen.options()
                for batch_size in batch_sizes:
                    print(f"  decoding {name} {engine} beam {beam} batch {batch_size} ...",
                          file=sys.stderr, flush=True)
                    row = time_decoding(
                        run, sources[:batch1_sentences] if batch_size == 1 else sources,
                        batch_size, lambda s, o=options: o.max_length(len(s), cfg.max_positions),
                        runs)
                    found.setdefault(name, {}).setdefault(engine, {})[
                        f"beam{beam}_batch{batch_size}"] = row
        del engines
    return found


def decoding_ratios(found: dict[str, Any]) -> dict[str, float]:
    """Each CTranslate2 engine's tokens/s over PyTorch's, per student and setting."""
    ratios = {}
    for name, engines in found.items():
        for engine, rows in engines.items():
            if engine == "torch":
                continue
            for setting, row in rows.items():
                ratios[f"{name}_{engine}_vs_torch_{setting}"] = (
                    row["tokens_per_s"] / engines["torch"][setting]["tokens_per_s"])
    return ratios


def run_decoding(preset: str, overrides: list[str], model: str | None,
                 decode_dtypes: list[str] | None, student_names: list[str], sentences: int,
                 batch1_sentences: int, runs: int, data_dir: Path, workdir: Path,
                 device: torch.device) -> dict[str, Any]:
    """The decoding section: ``model`` if given, else the preset's model untrained, decoding
    ``student_names`` (``teacher`` or ``l_e-l_d``) on ``sentences`` validation sources."""
    cfg = bench_config(preset, load_manifest(data_dir), overrides)
    files, description = decoding_model(model, cfg, data_dir)
    sources, length = decoding_sources(data_dir, sentences)
    if model is None:
        search, rule = Search(5, 0.0, length), (
            f"exactly {length} decoder steps per sentence (max_len_a=0, max_len_b={length}: the "
            "mean reference length with EOS; an untrained model never stops earlier)")
    else:
        search, rule = Search(5, 1.2, 10), "until EOS, at most int(1.2 S + 10) decoder steps"
    teacher = max(files.students)
    wanted = [teacher if name == "teacher" else parse_student(name) for name in student_names]
    students = [s for s in dict.fromkeys(wanted) if s in files.students]
    dtypes = list(dict.fromkeys(["float32", *(decode_dtypes or decoding_dtypes(device))]))
    found = bench_decoding(files, sources, students, [5, 1], [1, 64], dtypes, ["none", "int8"],
                           search, runs, device, workdir, batch1_sentences)
    return {"model": description, "length_rule": rule, "sentences": len(sources),
            "batch1_sentences": min(batch1_sentences, len(sources)), "results": found,
            "ratios": decoding_ratios(found)}


def format_decoding(decoding: dict[str, Any]) -> list[str]:
    """The decoding table: one row per student, engine and setting."""
    if not decoding:
        return []
    if "skipped" in decoding:
        return ["", f"decoding: skipped ({decoding['skipped']})"]
    lines = ["", f"decoding: {decoding['model']}; {decoding['length_rule']}; "
             f"{decoding['sentences']} sentences ({decoding['batch1_sentences']} at batch 1)",
             f"{'student':<8}{'engine':<22}{'setting':<16}{'sent/s':>9}{'tok/s':>9}"
             f"{'tok/sent':>9}{'x torch':>9}"]
    for name, engines in decoding["results"].items():
        for engine, rows in engines.items():
            for setting, row in rows.items():
                ratio = decoding["ratios"].get(f"{name}_{engine}_vs_torch_{setting}", 1.0)
                lines.append(f"{name:<8}{engine:<22}{setting:<16}{row['sentences_per_s']:>9.1f}"
                             f"{row['tokens_per_s']:>9.0f}{row['tokens_per_sentence']:>9.1f}"
                             f"{ratio:>9.2f}")
    return lines


def _dtypes(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in ("float32", "bfloat16", "float16")]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected float32, bfloat16 or float16, got {text!r}")
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of this section."""
    p.add_argument("--model", default=None,
                   help="trained model (run or model directory) to decode with (default: the "
                   "preset's model at its seeded random initialisation)")
    p.add_argument("--decode-dtypes", type=_dtypes, default=None,
                   help="precisions of our PyTorch decoding besides float32 (the reference), "
                   "from bfloat16, float16 (default: bfloat16 where the device computes in it "
                   "natively)")
    p.add_argument("--decode-sentences", type=int, default=None,
                   help="validation sentences decoded at batch 64 (default: 256; speed.py "
                   "--quick: 64)")
    p.add_argument("--batch1-sentences", type=int, default=None,
                   help="of those, decoded one at a time at batch 1 (default: 32; speed.py "
                   "--quick: 8)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Time decoding with the ``--preset`` model (or ``--model``); print; write JSON."""
    p = base_parser(__doc__.split("\n\n")[0], "preset of the model (default: iwslt)")
    add_arguments(p)
    args = p.parse_args(argv)
    device = chosen_device(args)
    runs = args.runs or RUNS
    report = new_report(device, "speed_decoding.py", argv, runs=runs)
    started = time.perf_counter()
    with workdir() as work:
        data_dir = prepared_data(args.data, work)
        report["data"] = str(data_dir) if args.data else "multi30k (prepared on the fly)"
        reason = decoding_available()
        report["decoding"] = {"skipped": reason} if reason else run_decoding(
            args.preset, args.overrides, args.model, args.decode_dtypes, STUDENTS,
            args.decode_sentences or 256, args.batch1_sentences or 32, runs, data_dir, work,
            device)

    def text(report: dict[str, Any]) -> str:
        return "\n".join(format_head(report) + format_decoding(report["decoding"]))

    return finish(report, started, text, args.json)


if __name__ == "__main__":
    main()
