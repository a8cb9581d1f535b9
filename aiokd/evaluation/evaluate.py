"""``aiokd evaluate``: BLEU, chrF, size and latency of every student of a model.

For each chosen student (default: every trained one), in the paper's order: the test set is
translated; sacreBLEU's BLEU and chrF are computed on the detokenized output (and, with
``tok_bleu``, the paper's tokenized BLEU, see :mod:`aiokd.evaluation.scoring`); its parameters and
its size as a standalone model are measured (:mod:`aiokd.evaluation.footprint`); and, unless
latency is skipped, its speed and peak memory on this machine (:mod:`aiokd.evaluation.latency`).

Outputs, each written atomically: ``results.json`` (:mod:`aiokd.evaluation.results`), a CSV beside
it, a heatmap of BLEU over the ``l_e x l_d`` grid, a plot of BLEU against latency (against
parameters when latency is skipped) with the Pareto front, and the directory
``results.translations/`` of every student's output (``STUDENT.txt``, one detokenized line per
source line) with the ``source.txt`` and ``reference.txt`` it was scored on, ready for
sacreBLEU's paired significance tests::

    cd results.translations && sacrebleu reference.txt -i 2-2.txt 6-6.txt --paired-bs -f text

A Markdown table goes to stdout.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import aiokd
from aiokd.data.corpus import ParallelSplit
from aiokd.data.text import encode_lines, read_lines
from aiokd.errors import UserError
from aiokd.evaluation import plots
from aiokd.evaluation.footprint import Footprint, ModelFacts, inspect_model
from aiokd.evaluation.latency import FamilyTimer, LatencySettings, PeakMemory, Timing
from aiokd.evaluation.results import (
    FORMAT,
    TABLE_HEADER,
    VERSION,
    csv_text,
    markdown_table,
    table_row,
)
from aiokd.evaluation.scoring import Score, TokenizedBleu, sacrebleu_scores
from aiokd.inference.api import Translator, load, set_threads
from aiokd.io import atomic_directory, atomic_write_bytes, atomic_write_json
from aiokd.model.probe import cpu_description
from aiokd.students import parse_student

DEFAULT_LATENCY = LatencySettings()


@dataclass
class EvalSet:
    """Source lines, one reference per line, and where they came from."""

    sources: list[str]
    references: list[str]
    description: dict[str, Any]


@dataclass
class Evaluation:
    """What :func:`evaluate` found: the results (:mod:`aiokd.evaluation.results`), and the
    test set with every student's translation of it."""

    results: dict[str, Any]
    test: EvalSet
    hypotheses: dict[str, list[str]]
    """Student name -> its translation of ``test.sources``, line by line."""


def read_test_set(data: str | None = None, split: str = "test", src: str | None = None,
                  ref: str | None = None) -> EvalSet:
    """A split of a prepared data directory, or a pair of raw files.

    Raises:
        UserError: neither or both kinds given, a file is unreadable, or the reference file has
            not as many lines as the source file.
    """
    if data and (src or ref):
        raise UserError("give either --data DIR (with --split) or --src FILE --ref FILE, not both")
    if data:
        test = ParallelSplit.load(data, split)
        manifest = test.manifest
        return EvalSet(test.source_lines(), test.target_lines(),
                       {"data": str(Path(data).resolve()), "split": split,
                        "src_lang": manifest["src_lang"], "tgt_lang": manifest["tgt_lang"]})
    if not (src and ref):
        raise UserError("give the test set: --data DIR (with --split), or --src FILE and "
                        "--ref FILE")
    sources, references = read_lines(src), read_lines(ref)
    if len(sources) != len(references):
        raise UserError(f"--ref {ref} has {len(references)} lines but --src {src} has "
                        f"{len(sources)}; they must have one reference per source line")
    return EvalSet(sources, references,
                   {"src": str(Path(src).resolve()), "ref": str(Path(ref).resolve())})


def choose_students(spec: str | list[str] | None, translator: Translator) -> list[str]:
    """The students named by ``spec`` (``all``/None: every one), in the model's order.

    Raises:
        UserError: a student the model was not trained for (the message lists the trained ones).
    """
    if spec is None or spec == "all":
        return list(translator.students)
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    wanted = {translator.check_student(name.strip()) for name in names if name.strip()}
    if not wanted:
        raise UserError("--students: no student given (use all, or a list like 6-2,4-4)")
    return [name for name in translator.students if parse_student(name) in wanted]


def _check_languages(test: EvalSet, facts: ModelFacts) -> None:
    for side in ("src_lang", "tgt_lang"):
        data_lang, model_lang = test.description.get(side), facts.languages.get(side)
        if data_lang and model_lang and data_lang != model_lang:
            raise UserError(f"the test set's {side} is {data_lang} but the model's is "
                            f"{model_lang}")


def _resolve_device(engine: str, device: str | None) -> str:
    if device:
        return device
    if engine == "ctranslate2":
        import ctranslate2

        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def _hardware(device: str) -> str:
    """The name of the GPU, or the CPU as :func:`aiokd.model.probe.cpu_description` tells it
    (model name, family and model, widest vector extension, cores): latency depends on them."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_description()


def _work_per_student(count: int, latency: LatencySettings | None) -> int:
    """Sentences one student translates, for the progress bar."""
    if latency is None:
        return count
    return (min(latency.warmup, count) + latency.runs * min(latency.sample, count)
            + latency.batched_runs * count)


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _entry(name: str, scores: tuple[Score, Score, Score | None], footprint: Footprint,
           timing: Timing | None) -> dict[str, Any]:
    """The results entry of one student (see :mod:`aiokd.evaluation.results`)."""
    le, ld = parse_student(name)
    bleu, chrf, tok = scores
    return {
        "student": name, "enc_layers": le, "dec_layers": ld,
        "bleu": _round(bleu.score), "chrf": _round(chrf.score),
        "tok_bleu": _round(tok.score) if tok else None,
        "length_ratio": _round(bleu.length_ratio),
        "params": footprint.params,
        "params_no_embeddings": footprint.params_no_embeddings,
        "size_bytes": footprint.size_bytes,
        "size_mb": _round(footprint.size_bytes / 1e6, 3),
        "ms_per_sentence": _round(timing.ms_per_sentence, 3) if timing else None,
        "sentences_per_second": _round(timing.sentences_per_second, 2) if timing else None,
        "peak_memory_mb": _round(timing.peak_memory_mb, 1) if timing else None,
    }


def evaluate(model: str | os.PathLike, test: EvalSet, students: str | list[str] | None = None,
             beam: int = 5, engine: str = "torch", device: str | None = None,
             tok_bleu: bool = False, latency: LatencySettings | None = DEFAULT_LATENCY,
             progress: bool = True, dtype: str | None = None,
             threads: int | None = None, lenpen: float = 1.0) -> Evaluation:
    """Evaluate students of ``model`` on ``test``, translating with beam ``beam`` and length
    penalty ``lenpen`` (a hypothesis scores ``log p / n^lenpen``) in precision ``dtype`` with
    CTranslate2 ``threads`` (see :func:`aiokd.inference.api.load`).  ``latency=None`` skips
    timing."""
    if beam < 1:
        raise UserError(f"--beam {beam}: must be at least 1")
    if latency is not None and min(latency.sample, latency.runs, latency.batched_runs) < 1:
        raise UserError("--latency-sample, --latency-runs and --throughput-runs must be at "
                        "least 1")
    translator = load(model, device=device, engine=engine, dtype=dtype, threads=threads)
    names = choose_students(students, translator)
    facts = inspect_model(model, [parse_student(name) for name in names], engine)
    _check_languages(test, facts)
    tgt_lang = facts.languages.get("tgt_lang") or test.description.get("tgt_lang")
    tokenized = TokenizedBleu(test.references, tgt_lang) if tok_bleu else None
    device_name = _resolve_device(engine, device)
    memory = PeakMemory(torch.device(device_name), engine)
    signatures, translations, scores = {}, {}, {}
    timer = FamilyTimer(test.sources, latency, memory) if latency else None
    bar = tqdm(total=len(names) * _work_per_student(len(test.sources), latency), unit="sent",
               desc="evaluate", disable=not progress, dynamic_ncols=True)
    with bar:
        for name in names:
            bar.set_description(f"evaluate {name}")

            def translate(lines: list[str], name: str = name) -> list[str]:
                return translator.translate(lines, student=name, beam=beam, lenpen=lenpen,
                                            progress=bar.update)

            hypotheses = (timer.scored_pass(name, translate) if timer
                          else translate(test.sources))
            translations[name] = hypotheses
            bleu, chrf = sacrebleu_scores(hypotheses, test.references, tgt_lang)
            tok = tokenized.score(hypotheses) if tokenized else None
            signatures.update(bleu=bleu.signature, chrf=chrf.signature,
                              **({"tok_bleu": tok.signature} if tok else {}))
            scores[name] = (bleu, chrf, tok)
        timings = {}
        if timer:
            bar.set_description("evaluate: latency rounds")
            timings = timer.rounds()
    entries = [_entry(name, scores[name], facts.footprints[name], timings.get(name))
               for name in names]
    results = {
        "format": FORMAT,
        "version": VERSION,
        "aiokd_version": aiokd.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": str(Path(model).resolve()),
        "test_set": {**test.description, "sentences": len(test.sources)},
        "beam": beam,
        "lenpen": lenpen,
        "engine": engine,
        **translator.settings,
        "device": device_name,
        "hardware": _hardware(device_name),
        "threads": torch.get_num_threads(),
        "signatures": signatures,
        "tok_bleu": tokenized.description if tokenized else None,
        "size": "size_mb is 10^6 bytes on disk, " + facts.size_method,
        "latency": ({**latency.describe(), "memory": memory.description}
                    if latency else None),
        "students": entries,
    }
    return Evaluation(results, test, translations)


def output_paths(out: str | os.PathLike) -> dict[str, Path]:
    """Where the results file and the files beside it go."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix == ".json" else out
    return {"json": out, "csv": stem.with_name(stem.name + ".csv"),
            "heatmap": stem.with_name(stem.name + ".bleu_grid.png"),
            "tradeoff": stem.with_name(stem.name + ".bleu_latency.png"),
            "translations": stem.with_name(stem.name + ".translations")}


def _title(results: dict[str, Any]) -> str:
    test = results["test_set"]
    where = f"{Path(test['data']).name}/{test['split']}" if "data" in test else Path(
        test["src"]).name
    return f"{Path(results['model']).name} on {where} ({_search(results)})"


def _search(results: dict[str, Any]) -> str:
    """``beam 5``, with the length penalty where it is not 1 (results before it was recorded:
    1)."""
    lenpen = results.get("lenpen", 1.0)
    return f"beam {results['beam']}" + (f", lenpen {lenpen:g}" if lenpen != 1.0 else "")


def write_translations(evaluation: Evaluation, directory: Path) -> None:
    """``directory``/STUDENT.txt for every student, with the ``source.txt`` and
    ``reference.txt`` they were scored on (the whole directory replaced atomically)."""
    with atomic_directory(directory, overwrite=True) as building:
        (building / "source.txt").write_bytes(encode_lines(evaluation.test.sources))
        (building / "reference.txt").write_bytes(encode_lines(evaluation.test.references))
        for name, hypotheses in evaluation.hypotheses.items():
            (building / f"{name}.txt").write_bytes(encode_lines(hypotheses))


def write_outputs(evaluation: Evaluation, out: str | os.PathLike) -> list[Path]:
    """Write the JSON, CSV, both figures and the translations of ``evaluation`` (the JSON last,
    naming the translations directory); return their paths."""
    paths = output_paths(out)
    results = {**evaluation.results, "translations": paths["translations"].name}
    entries = results["students"]
    title = _title(results)
    if results["latency"]:
        tradeoff = plots.bleu_latency_plot(entries, title, "ms per sentence (batch 1, "
                                           f"{results['device']}, threads: {results['threads']})")
    else:
        tradeoff = plots.bleu_latency_plot(entries, title, "parameters (millions)", x="params",
                                           scale=1e6)
        paths["tradeoff"] = paths["tradeoff"].with_name(
            paths["tradeoff"].name.replace("bleu_latency", "bleu_params"))
    atomic_write_bytes(paths["heatmap"], plots.bleu_heatmap(entries, "BLEU: " + title))
    atomic_write_bytes(paths["tradeoff"], tradeoff)
    atomic_write_bytes(paths["csv"], csv_text(entries).encode("utf-8"))
    write_translations(evaluation, paths["translations"])
    atomic_write_json(paths["json"], results)
    return list(paths.values())


def _runs(count: int) -> str:
    return f"{count} run" + ("" if count == 1 else "s")


def summary(results: dict[str, Any]) -> str:
    """The Markdown table of every student, and how the figures were obtained."""
    entries = results["students"]
    header, rows = TABLE_HEADER, [table_row(e) for e in entries]
    if results["tok_bleu"]:
        header = (*header[:3], "tok BLEU", *header[3:])
        rows = [(*row[:3], f"{e['tok_bleu']:.2f}", *row[3:])
                for row, e in zip(rows, entries, strict=True)]
    lines = [markdown_table(header, rows), "", f"search: {_search(results)}"]
    lines += [f"{metric}: {signature}" for metric, signature in results["signatures"].items()]
    if results["tok_bleu"]:
        lines.append(f"tok BLEU = {results['tok_bleu']}")
    lines.append(f"size: {results['size']}")
    device = (f"{results['engine']} in {results.get('dtype', 'float32')} on {results['device']} "
              f"({results['hardware']}), torch threads: {results['threads']}")
    if "ctranslate2_threads" in results:
        device += f", CTranslate2 threads: {results['ctranslate2_threads']}"
    for setting in ("dtype", "ctranslate2_threads"):
        if results.get(f"{setting}_reason", "as given") != "as given":
            lines.append(f"{setting}: {results[setting]}, {results[f'{setting}_reason']}")
    latency = results["latency"]
    if latency:
        batched = latency["batched_runs"]
        lines.append(f"latency: {device}; ms/sent = {latency['batch1_sample_sentences']} "
                     f"sentences one at a time, {_runs(latency['runs'])} {latency['order']}; "
                     f"sent/s = all {results['test_set']['sentences']} batched, "
                     + ("the scored pass" if batched == 1 else _runs(batched))
                     + f"; {latency['statistic']}")
        lines.append(f"memory: {latency['memory']}")
    else:
        lines.append(f"latency: not measured (--no-latency); {device}")
    return "\n".join(lines)


def _check_out(out: Path) -> None:
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name such as results.json")


def evaluate_model(model: str | os.PathLike, out: str | os.PathLike, *, data: str | None = None,
                   split: str = "test", src: str | None = None, ref: str | None = None,
                   students: str | list[str] | None = "all", beam: int = 5,
                   engine: str = "torch", tok_bleu: bool = False, latency: bool = True,
                   latency_sample: int = DEFAULT_LATENCY.sample,
                   latency_runs: int = DEFAULT_LATENCY.runs,
                   throughput_runs: int = DEFAULT_LATENCY.batched_runs, device: str | None = None,
                   dtype: str | None = None, threads: int | None = None,
                   lenpen: float = 1.0) -> dict[str, Any]:
    """``aiokd evaluate``: evaluate ``students`` of ``model`` on a test set, write the results to
    ``out`` and the files beside it, and print their table; returns the results.

    Args:
        data, split: a split of a prepared data directory; or
        src, ref: a raw source file and its reference file.
        latency: time the students, on ``latency_sample`` sentences one at a time
            ``latency_runs`` times, and on the whole set ``throughput_runs`` times.
        The others: as :func:`evaluate`; ``threads`` as :func:`aiokd.inference.api.set_threads`.

    Raises:
        UserError: an unreadable model or test set, an untrained student, bad options, or an
            ``out`` that is a directory.
    """
    out = Path(out)
    _check_out(out)
    set_threads(threads)
    test = read_test_set(data, split, src, ref)
    settings = (LatencySettings(latency_sample, latency_runs, batched_runs=throughput_runs)
                if latency else None)
    evaluation = evaluate(model, test, students, beam=beam, engine=engine, device=device,
                          tok_bleu=tok_bleu, latency=settings, dtype=dtype, threads=threads,
                          lenpen=lenpen)
    written = write_outputs(evaluation, out)
    print(summary(evaluation.results))
    print("\nwrote " + ", ".join(str(path) for path in written))
    return evaluation.results
