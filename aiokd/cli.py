"""The ``aiokd`` command: one verb per step of the workflow.

    prepare -> train -> evaluate -> select -> extract / export -> translate
                                   distill-data (sequence-level KD training data)
    import (a Marian / OPUS-MT model to start from), score (log-probabilities of translations)

Each verb parses its options here and calls one typed function of the module that owns the step,
the same function that Python code calls; heavy modules are imported only when their verb runs.
Bad input raises :class:`UserError`, and an output the file system refuses raises
:class:`OSError`; either is printed here as one line, and the command exits with status 2.
"""

from __future__ import annotations

import argparse
import errno
import sys

from aiokd.config import DEFAULT_PRESET, PRESETS
from aiokd.errors import UserError

# ----------------------------------------------------------------------------------------------
# One adapter per verb: the parsed options become a call of the step's function, imported only
# when its verb runs; each returns the exit status.


def _prepare(args: argparse.Namespace) -> int:
    from aiokd.data.prepare import prepare_data

    prepare_data(args.out, args.recipe, train=args.train, valid=args.valid, tests=args.test,
                 raw_dir=args.raw_dir, src_lang=args.src_lang, tgt_lang=args.tgt_lang,
                 vocab_size=args.vocab_size, max_len=args.max_len, max_ratio=args.max_ratio,
                 force=args.force, tokenizer=args.tokenizer)
    return 0


def _train(args: argparse.Namespace) -> int:
    from aiokd.train.api import train

    train(args.data, args.out, preset=args.preset, config_file=args.config,
          overrides=args.overrides, max_updates=args.max_updates,
          max_minutes=args.max_minutes, stage=args.stage, method=args.method,
          student=args.student, teacher=args.teacher, init_from=args.init_from)
    return 0


def _import(args: argparse.Namespace) -> int:
    from aiokd.formats.marian import import_marian

    import_marian(args.directory, args.out)
    return 0


def _score(args: argparse.Namespace) -> int:
    from aiokd.inference.score import score_files

    score_files(args.model, args.src, args.tgt, output_file=args.output, student=args.student,
                json_lines=args.json, dtype=args.dtype, max_tokens=args.max_tokens,
                threads=args.threads)
    return 0


def _translate(args: argparse.Namespace) -> int:
    from aiokd.inference.translate import translate_files

    translate_files(args.model, input_file=args.input, output_file=args.output,
                    student=args.student, beam=args.beam, engine=args.engine,
                    max_tokens=args.max_tokens, lenpen=args.lenpen, device=args.device,
                    dtype=args.dtype, threads=args.threads)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from aiokd.evaluation.evaluate import evaluate_model

    evaluate_model(args.model, args.out, data=args.data, split=args.split, src=args.src,
                   ref=args.ref, students=args.students, beam=args.beam, engine=args.engine,
                   tok_bleu=args.tok_bleu, latency=not args.no_latency,
                   latency_sample=args.latency_sample, latency_runs=args.latency_runs,
                   throughput_runs=args.throughput_runs,
                   device=args.device, dtype=args.dtype, threads=args.threads,
                   lenpen=args.lenpen)
    return 0


def _select(args: argparse.Namespace) -> int:
    """Exit status 1 when no student meets the budgets."""
    from aiokd.evaluation.select import select

    chosen = select(args.results, max_latency_ms=args.max_latency_ms,
                    max_params=args.max_params, max_size_mb=args.max_size_mb,
                    min_bleu=args.min_bleu)
    return 0 if chosen is not None else 1


def _extract(args: argparse.Namespace) -> int:
    from aiokd.formats.export import extract

    extract(args.model, args.out, args.student)
    return 0


def _export(args: argparse.Namespace) -> int:
    from aiokd.formats.export import export

    export(args.model, args.out, student=args.student, format=args.format,
           quantization=args.quantization)
    return 0


def _distill_data(args: argparse.Namespace) -> int:
    from aiokd.inference.distill_data import distill_data

    distill_data(args.model, args.data, args.out, student=args.student, beam=args.beam,
                 device=args.device, overwrite=args.force, dtype=args.dtype,
                 threads=args.threads)
    return 0


# ----------------------------------------------------------------------------------------------
# The parser


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare",
        help="raw parallel text -> cleaned, SentencePiece-encoded data directory",
        description="Prepare a data directory. Either a recipe (multi30k, iwslt14) or your own "
        "files: --train/--valid/--test PREFIX, where PREFIX.<src-lang> and PREFIX.<tgt-lang> "
        "(optionally .gz) are the two sides.",
    )
    p.add_argument("recipe", nargs="?", choices=["multi30k", "iwslt14"], help="built-in recipe")
    p.add_argument("--out", required=True, help="output data directory")
    p.add_argument("--src-lang", default=None, help="source language suffix (default: de)")
    p.add_argument("--tgt-lang", default=None, help="target language suffix (default: en)")
    p.add_argument("--train", help="training PREFIX")
    p.add_argument("--valid", help="validation PREFIX")
    p.add_argument("--test", action="append", default=[], metavar="NAME=PREFIX",
                   help="a named test set (repeatable)")
    p.add_argument("--raw-dir", help="iwslt14: folder with train.tags.de-en.* and the XML files")
    p.add_argument("--vocab-size", type=int, default=None,
                   help="joint SentencePiece vocabulary size (default: 8000; iwslt14: 10000)")
    p.add_argument("--max-len", type=int, default=None,
                   help="drop training pairs with more tokens than this on either side")
    p.add_argument("--max-ratio", type=float, default=None,
                   help="drop training pairs whose length ratio exceeds this")
    p.add_argument("--tokenizer", metavar="MODEL",
                   help="encode with the tokenizer of this aiokd model directory (e.g. one made "
                   "by `aiokd import`) instead of training a SentencePiece model")
    p.add_argument("--force", action="store_true", help="overwrite an existing data directory")
    p.set_defaults(run=_prepare)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train an AIO-KD family (or a baseline) and keep the best checkpoint",
        description="Train. Running the same command again resumes an interrupted run. Settings "
        "come from --preset, then --config YAML, then key=value overrides "
        "(e.g. train.lr=7e-4 distill.alpha=4.5 model.dropout=0.1).",
    )
    p.add_argument("--data", required=True, help="data directory made by `aiokd prepare`")
    p.add_argument("--out", required=True, help="run directory (created, or resumed)")
    p.add_argument("--preset", default=DEFAULT_PRESET,
                   help=f"{' | '.join(PRESETS)} (default: {DEFAULT_PRESET}; see aiokd/config.py)")
    p.add_argument("--config", help="YAML file with overrides of the preset")
    p.add_argument("--max-updates", type=int, help="cap the number of updates of each stage")
    p.add_argument("--max-minutes", type=float,
                   help="train for at most about this many minutes, shared by the stages in "
                   "proportion to their work; running the command again goes on (0: no limit; "
                   "train.max_minutes)")
    p.add_argument("--stage", choices=["1", "2", "both"], default=None,
                   help="run only stage 1, only stage 2, or both (default: both for aiokd)")
    p.add_argument("--method", choices=["aiokd", "scratch", "word-kd", "selective-kd"],
                   default=None, help="AIO-KD (default) or a single-student baseline")
    p.add_argument("--student", help="baselines: the student l_e-l_d to train, e.g. 4-2")
    p.add_argument("--teacher", help="word-kd / selective-kd: teacher run directory or checkpoint")
    p.add_argument("--init-from", metavar="MODEL",
                   help="start from this model's network and weights (model directory, e.g. "
                   "from `aiokd import`, run directory or checkpoint); model.* options may only "
                   "set the dropout rates")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(run=_train)


def _add_dtype(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"],
                   default=None, help="precision to translate in (default auto: what was "
                   "measured fastest on this machine, bfloat16 only where clearly faster than "
                   "float32; with --engine ctranslate2 the export's own)")


def _add_lenpen(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lenpen", type=float, default=1.0,
                   help="length penalty: hypotheses score log p / length^lenpen (default 1)")


def _add_beam(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beam", type=int, default=5, help="beam size (default: 5)")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")


def _add_engine(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", choices=["torch", "ctranslate2"], default="torch",
                   help="torch, or ctranslate2: a CTranslate2 export as it is, any other model "
                   "exported student by student on the fly (default: torch)")


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads of PyTorch and CTranslate2 (default: PyTorch's, one per "
                   "core; CTranslate2: that or 1, whichever was measured faster here)")


def _add_translate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("translate", help="translate text with any student of a model")
    p.add_argument("--model", required=True,
                   help="run directory, checkpoint, extracted student or exported model")
    p.add_argument("--student", default=None, help="l_e-l_d (default: the full model)")
    _add_beam(p)
    _add_engine(p)
    p.add_argument("-i", "--input", default="-", help="input file (default: stdin)")
    p.add_argument("-o", "--output", default="-", help="output file (default: stdout)")
    p.add_argument("--max-tokens", type=int, default=4096, help="tokens per batch")
    _add_lenpen(p)
    _add_device(p)
    _add_dtype(p)
    _add_threads(p)
    p.set_defaults(run=_translate)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="BLEU, chrF, size and latency of every student")
    p.add_argument("--model", required=True,
                   help="run directory, checkpoint, extracted student or exported model")
    p.add_argument("--data", help="prepared data directory")
    p.add_argument("--split", default="test", help="split of --data (default: test)")
    p.add_argument("--src", help="raw source file (instead of --data)")
    p.add_argument("--ref", help="raw reference file (with --src)")
    p.add_argument("--students", default="all", help="all, or a list like 6-2,4-4")
    _add_beam(p)
    _add_lenpen(p)
    _add_engine(p)
    p.add_argument("--tok-bleu", action="store_true",
                   help="also report the paper's tokenized BLEU")
    p.add_argument("--no-latency", action="store_true", help="skip latency measurement")
    p.add_argument("--latency-sample", type=int, default=50,
                   help="sentences timed one at a time (default: 50)")
    p.add_argument("--latency-runs", type=int, default=3,
                   help="timed runs of the sample; the fastest and the slowest are dropped "
                   "from the mean (default: 3)")
    p.add_argument("--throughput-runs", type=int, default=1,
                   help="timed translations of the whole set batched, the first of which is "
                   "scored; from 3 on, the fastest and the slowest are dropped from the mean "
                   "(default: 1)")
    p.add_argument("--out", required=True, help="results.json (CSV and PNGs are written beside)")
    _add_device(p)
    _add_dtype(p)
    _add_threads(p)
    p.set_defaults(run=_evaluate)


def _add_import(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("import", help="a Hugging Face Marian (OPUS-MT) model -> an aiokd model",
                       description="Read a local Marian directory (config.json, "
                       "model.safetensors, source.spm, target.spm, vocab.json) into a new aiokd "
                       "model directory: the teacher is the whole model, its prefixes students.")
    p.add_argument("directory", metavar="DIR", help="the Marian model directory")
    p.add_argument("--out", required=True, help="the aiokd model directory to write (new)")
    p.set_defaults(run=_import)


def _add_score(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score", help="log-probability of given translations under a student",
                       description="One line per pair: the total natural-log probability of "
                       "the target (every target token and the end of sentence), a tab, its "
                       "token count; --json writes {\"log_prob\": ..., \"tokens\": ...} "
                       "per line.")
    p.add_argument("--model", required=True, help="run directory, checkpoint or model directory")
    p.add_argument("--student", default=None, help="l_e-l_d (default: the full model)")
    p.add_argument("--src", required=True, help="source file, one sentence per line")
    p.add_argument("--tgt", required=True, help="target file, one translation per source line")
    p.add_argument("-o", "--output", default="-", help="output file (default: stdout)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--max-tokens", type=int, default=4096, help="tokens per batch")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="precision of the model (default: float32; the sums are float64)")
    _add_threads(p)
    p.set_defaults(run=_score)


def _add_select(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("select", help="pick the best student that meets a device budget")
    p.add_argument("--results", required=True, help="results.json from `aiokd evaluate`")
    p.add_argument("--max-latency-ms", type=float,
                   help="at most this many ms per sentence at batch 1, as evaluated")
    p.add_argument("--max-params", type=float, help="at most this many parameters")
    p.add_argument("--max-size-mb", type=float, help="at most this many MB (10^6 bytes) on disk")
    p.add_argument("--min-bleu", type=float, help="at least this BLEU, as evaluated")
    p.set_defaults(run=_select)


def _add_extract(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("extract", help="save one student as a standalone small model")
    p.add_argument("--model", required=True, help="run directory, checkpoint or model directory")
    p.add_argument("--student", required=True, help="l_e-l_d, e.g. 6-2")
    p.add_argument("--out", required=True, help="the model directory to write (new)")
    p.set_defaults(run=_extract)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export",
                       help="export one student for deployment (CTranslate2, Hugging Face)")
    p.add_argument("--model", required=True,
                   help="run directory, checkpoint, model directory or extracted student")
    p.add_argument("--student", default=None, help="l_e-l_d (default: the full model)")
    p.add_argument("--format", choices=["ctranslate2", "hf"], default="ctranslate2",
                   help="ctranslate2, or hf: a Marian directory for transformers' MarianMTModel "
                   "(post-norm models with model.positions=marian)")
    p.add_argument("--quantization", choices=["none", "int8", "int8_float32", "float16"],
                   default="none", help="ctranslate2 only")
    p.add_argument("--out", required=True, help="the directory to write (new)")
    p.set_defaults(run=_export)


def _add_distill_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill-data",
                       help="translate the training source to make sequence-level KD data")
    p.add_argument("--model", required=True,
                   help="the teacher: run directory, checkpoint or model directory")
    p.add_argument("--data", required=True, help="prepared data directory to translate")
    p.add_argument("--out", required=True, help="the data directory to write")
    p.add_argument("--student", default=None,
                   help="l_e-l_d that translates (default: the full model)")
    _add_beam(p)
    _add_device(p)
    _add_dtype(p)
    _add_threads(p)
    p.add_argument("--force", action="store_true", help="overwrite an existing --out directory")
    p.set_defaults(run=_distill_data)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aiokd",
        description="All-In-One Knowledge Distillation for NMT: one run, every depth student.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_import, _add_prepare, _add_train, _add_translate, _add_score, _add_evaluate,
                _add_select, _add_extract, _add_export, _add_distill_data):
        add(sub)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args``, except that ``key=value`` overrides may stand anywhere among a
    command's options (``... key=value --max-updates 5 key=value``), not only in one run."""
    args, extra = parser.parse_known_args(argv)
    overrides = [word for word in extra if "=" in word and not word.startswith("-")]
    if extra and (overrides != extra or getattr(args, "overrides", None) is None):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    return args


CANNOT_WRITE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG,
                errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG}
"""Errors of the file system that mean an output cannot be written where the user asked."""


def main(argv: list[str] | None = None) -> None:
    """Run ``aiokd ARGV``; bad input and outputs that cannot be written end in one line on
    stderr and exit status 2."""
    args = parse_args(build_parser(), argv)
    try:
        status = args.run(args)
    except UserError as error:
        print(f"aiokd: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as interrupt:
        print(f"aiokd: interrupted{f': {interrupt}' if str(interrupt) else ''}", file=sys.stderr)
        sys.exit(130)
    except OSError as error:
        if error.errno not in CANNOT_WRITE:
            raise
        where = f"{error.filename}: " if error.filename is not None else ""
        print(f"aiokd: error: {where}cannot write ({error.strerror})", file=sys.stderr)
        sys.exit(2)
    sys.exit(status)
