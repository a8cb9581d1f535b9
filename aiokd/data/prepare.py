"""``aiokd prepare``: raw parallel text -> a cleaned, SentencePiece-encoded data directory.

Every line is stripped of surrounding whitespace.  Training and validation pairs with an empty side
are dropped, and so are pairs with more than ``max_len`` subword tokens on either side; training
pairs whose token counts differ by more than the factor ``max_ratio`` are dropped as well (the
validation set is a curated reference and keeps them).  Test sets are never reordered or filtered:
an empty source line stays, with its reference.

One joint SentencePiece model is trained on both sides of the training text and every split is
encoded with it; or, given an existing model (``--tokenizer MODEL``), every split is encoded with
that model's tokenizer (sources with its source side, targets with its target side), whose files
the data directory keeps.  The result is written as described in :mod:`aiokd.data.corpus`,
together with ``manifest.json``.  The directory is built under a temporary name and appears only
when complete.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiokd
from aiokd.data import iwslt14
from aiokd.data.corpus import FORMAT, MANIFEST, VERSION, ids_dtype, write_side
from aiokd.data.encoding import SPECIAL_IDS, Encoder, model_encoder, trained_encoder
from aiokd.data.text import find_side, read_parallel
from aiokd.data.tokenizer import ModelTokenizer, read_model_tokenizer
from aiokd.errors import UserError
from aiokd.io import atomic_directory, atomic_write_json, check_new_directory

Pair = tuple[list[str], list[str]]

DEFAULT_SRC_LANG = "de"
DEFAULT_TGT_LANG = "en"
DEFAULT_TEST_NAME = "test"
MULTI30K_DIR = Path(aiokd.__file__).parent / "datasets" / "multi30k"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_RESERVED_SPLITS = ("train", "valid")


@dataclass(frozen=True)
class Defaults:
    """Cleaning and vocabulary settings of a recipe, used where the user gives none."""

    vocab_size: int = 8000
    max_len: int | None = 250
    max_ratio: float | None = 2.0


# IWSLT'14 is already cleaned by the fairseq script (clean-corpus-n), whose split sizes are the
# standard ones; no further filtering by default.
RECIPE_DEFAULTS = {
    None: Defaults(),
    "multi30k": Defaults(),
    "iwslt14": Defaults(vocab_size=10000, max_len=None, max_ratio=None),
}


@dataclass
class _Split:
    """One split on its way to disk: text, ids and what cleaning removed."""

    kind: str
    src: list[str]
    tgt: list[str]
    source_files: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    src_ids: list[list[int]] = field(default_factory=list)
    tgt_ids: list[list[int]] = field(default_factory=list)

    def keep(self, mask: list[bool], reason: str) -> None:
        """Keep only the pairs where ``mask`` is true; count the others under ``reason``."""
        self.dropped[reason] = mask.count(False)
        if all(mask):
            return
        for column in (self.src, self.tgt, self.src_ids, self.tgt_ids):
            if column:  # the ids are empty until the split is encoded
                column[:] = itertools.compress(column, mask)


def _log(message: str) -> None:
    print(f"aiokd prepare: {message}", file=sys.stderr, flush=True)


def _check_name(value: str, what: str) -> None:
    if not _NAME.fullmatch(value):
        raise UserError(f"{what} {value!r}: use letters, digits, '_', '.' and '-' only")


def _check_options(
    src_lang: str, tgt_lang: str, tests: dict[str, Pair], vocab_size: int,
    max_len: int | None, max_ratio: float | None,
) -> None:
    _check_name(src_lang, "--src-lang")
    _check_name(tgt_lang, "--tgt-lang")
    if src_lang == tgt_lang:
        raise UserError(f"--src-lang and --tgt-lang are both {src_lang!r}")
    for name in tests:
        _check_name(name, "--test name")
        if name in _RESERVED_SPLITS:
            raise UserError(f"--test name {name!r} is reserved; choose another name")
    if vocab_size <= len(SPECIAL_IDS):
        raise UserError(f"--vocab-size {vocab_size}: must be more than {len(SPECIAL_IDS)}")
    if max_len is not None and max_len < 1:
        raise UserError(f"--max-len {max_len}: must be at least 1")
    if max_ratio is not None and max_ratio < 1:
        raise UserError(f"--max-ratio {max_ratio}: must be at least 1")


def _stripped(name: str, side: str, lines: list[str]) -> list[str]:
    """Lines without surrounding whitespace; a line may not hold a newline."""
    for number, line in enumerate(lines, 1):
        if "\n" in line:
            raise UserError(f"split {name!r}, {side} line {number}: holds a line break")
    return [line.strip() for line in lines]


def _new_split(name: str, kind: str, pair: Pair, source_files: list[str]) -> _Split:
    src, tgt = pair
    if len(src) != len(tgt):
        raise UserError(f"split {name!r}: {len(src)} source lines but {len(tgt)} target lines")
    return _Split(kind, _stripped(name, "source", src), _stripped(name, "target", tgt),
                  source_files=list(source_files))



def _token_counts(split: _Split) -> list[tuple[int, int]]:
    return list(zip(map(len, split.src_ids), map(len, split.tgt_ids), strict=True))


def _filter_lengths(split: _Split, max_len: int | None, max_ratio: float | None) -> None:
    """Drop the pairs that are too long, and (for training data) too unequal in length."""
    if max_len is not None:
        split.keep([max(a, b) <= max_len for a, b in _token_counts(split)], "too_long")
    if max_ratio is not None and split.kind == "train":
        split.keep([max(a, b) <= max_ratio * min(a, b) for a, b in _token_counts(split)],
                   "ratio")


def _collect_splits(train: Pair, valid: Pair, tests: dict[str, Pair],
                    source_files: dict[str, list[str]]) -> dict[str, _Split]:
    """All splits, stripped; training and validation pairs with an empty side are dropped."""
    named = {"train": ("train", train), "valid": ("valid", valid)}
    named.update({name: ("test", pair) for name, pair in tests.items()})
    splits = {name: _new_split(name, kind, pair, source_files.get(name, []))
              for name, (kind, pair) in named.items()}
    for name in _RESERVED_SPLITS:
        split = splits[name]
        split.keep([bool(a and b) for a, b in zip(split.src, split.tgt, strict=True)], "empty")
        if not split.src:
            raise UserError(f"the {name} set has no pair with text on both sides")
    return splits


def _encode_and_write(directory: Path, name: str, split: _Split, encoder: Encoder,
                      langs: tuple[str, str], max_len: int | None,
                      max_ratio: float | None) -> dict[str, Any]:
    """Encode a split, filter it by length unless it is a test set, write it; its manifest entry."""
    _log(f"encoding {name} ({len(split.src):,} pairs)")
    split.src_ids = encoder.source(split.src)
    split.tgt_ids = encoder.target(split.tgt)
    if split.kind != "test":
        _filter_lengths(split, max_len, max_ratio)
        if not split.src:
            raise UserError(f"no {name} pair is left after the --max-len/--max-ratio filters")
    dtype = ids_dtype(encoder.vocab_size)
    src_tokens = write_side(directory, name, langs[0], split.src, split.src_ids, dtype)
    tgt_tokens = write_side(directory, name, langs[1], split.tgt, split.tgt_ids, dtype)
    return {
        "kind": split.kind,
        "pairs": len(split.src),
        "src_tokens": src_tokens,
        "tgt_tokens": tgt_tokens,
        "dropped": dict(split.dropped),
        "source_files": split.source_files,
    }


def _print_summary(out: Path, manifest: dict[str, Any]) -> None:
    rows = [("split", "pairs", "src tokens", "tgt tokens", "dropped")]
    for name, entry in manifest["splits"].items():
        dropped = ", ".join(f"{count} {why}" for why, count in entry["dropped"].items() if count)
        rows.append((name, f"{entry['pairs']:,}", f"{entry['src_tokens']:,}",
                     f"{entry['tgt_tokens']:,}", dropped or "-"))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        numbers = [cell.rjust(width) for cell, width in zip(row[1:4], widths[1:], strict=True)]
        print("  ".join([row[0].ljust(widths[0]), *numbers, row[4]]).rstrip())
    print(f"wrote {out} (vocabulary {manifest['vocab_size']:,})")


def prepare(
    out: str | os.PathLike,
    src_lang: str,
    tgt_lang: str,
    train: Pair,
    valid: Pair,
    tests: dict[str, Pair],
    vocab_size: int,
    max_len: int | None = 250,
    max_ratio: float | None = 2.0,
    *,
    model_type: str = "unigram",
    overwrite: bool = False,
    recipe: dict[str, Any] | None = None,
    source_files: dict[str, list[str]] | None = None,
    tokenizer: ModelTokenizer | None = None,
) -> dict[str, Any]:
    """Clean, encode and write a data directory; return its manifest.

    Args:
        out: the data directory to create (atomically: on error nothing is left there).
        src_lang, tgt_lang: language suffixes, used in file names and the manifest.
        train, valid: (source lines, target lines); cleaned as the module describes.
        tests: test name -> (source lines, target lines); kept line for line.
        vocab_size: size of the joint SentencePiece vocabulary.
        max_len: longest pair kept (subword tokens on either side); None for no limit.
        max_ratio: largest token-count ratio of a kept training pair; None for no limit.
        model_type: ``unigram`` or ``bpe``.
        overwrite: replace an existing ``out``.
        recipe: recorded in the manifest (name and recipe-specific facts).
        source_files: split name -> the files it was read from, recorded in the manifest.
        tokenizer: encode with this model's tokenizer instead of training one (``vocab_size``
            and ``model_type`` are then unused).

    Raises:
        UserError: bad options, unequal sides, nothing left to train on, or a vocabulary size
            SentencePiece cannot build from the data.
    """
    _check_options(src_lang, tgt_lang, tests, vocab_size, max_len, max_ratio)
    splits = _collect_splits(train, valid, tests, source_files or {})
    langs = (src_lang, tgt_lang)
    with atomic_directory(out, overwrite=overwrite) as directory:
        if tokenizer is None:
            text = splits["train"].src + splits["train"].tgt
            _log(f"training SentencePiece ({model_type}, {vocab_size:,} pieces) on "
                 f"{len(text):,} lines")
            encoder, entries = trained_encoder(directory, text, vocab_size, model_type)
        else:
            _log(f"encoding with the tokenizer of {tokenizer.source}")
            encoder, entries = model_encoder(directory, tokenizer)
        split_entries = {name: _encode_and_write(directory, name, split, encoder, langs,
                                                 max_len, max_ratio)
                         for name, split in splits.items()}
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "src_lang": src_lang,
            "tgt_lang": tgt_lang,
            **entries,
            "ids_dtype": ids_dtype(encoder.vocab_size).name,
            "cleaning": {"strip": True, "max_len": max_len, "max_ratio": max_ratio},
            "splits": split_entries,
            "recipe": recipe,
            "created_with": f"aiokd {aiokd.__version__}",
        }
        atomic_write_json(directory / MANIFEST, manifest)
    _print_summary(Path(out), manifest)
    return manifest


# --- the command line -------------------------------------------------------------------------


@dataclass
class _Inputs:
    """What a recipe or the user's files provide to :func:`prepare`."""

    train: Pair
    valid: Pair
    tests: dict[str, Pair]
    source_files: dict[str, list[str]]
    recipe: dict[str, Any] | None = None


def _parse_test(spec: str) -> tuple[str, str]:
    """``NAME=PREFIX`` -> (NAME, PREFIX); a bare ``PREFIX`` is named ``test``."""
    name, sep, prefix = spec.partition("=")
    if sep and _NAME.fullmatch(name):
        return name, prefix
    return DEFAULT_TEST_NAME, spec


def _read_split(prefix: str, src_lang: str, tgt_lang: str) -> tuple[Pair, list[str]]:
    """Both sides of ``PREFIX`` and the two files they came from."""
    pair = read_parallel(prefix, src_lang, tgt_lang)
    return pair, [str(find_side(prefix, lang)) for lang in (src_lang, tgt_lang)]


def _user_tests(specs: list[str], src_lang: str, tgt_lang: str,
                taken: tuple[str, ...]) -> tuple[dict[str, Pair], dict[str, list[str]]]:
    """The ``--test`` sets and their files; names must differ from each other and from ``taken``."""
    tests, files = {}, {}
    for spec in specs:
        name, prefix = _parse_test(spec)
        if name in tests or name in taken:
            raise UserError(f"--test {spec}: a split named {name!r} is given twice")
        tests[name], files[name] = _read_split(prefix, src_lang, tgt_lang)
    return tests, files


def _custom_inputs(train: str | None, valid: str | None, tests: list[str], raw_dir: str | None,
                   src_lang: str, tgt_lang: str) -> _Inputs:
    if not train or not valid:
        raise UserError("give a recipe (multi30k or iwslt14) or both --train and --valid PREFIX")
    if raw_dir:
        raise UserError("--raw-dir is only used by the iwslt14 recipe")
    test_pairs, files = _user_tests(tests, src_lang, tgt_lang, taken=_RESERVED_SPLITS)
    train_pair, files["train"] = _read_split(train, src_lang, tgt_lang)
    valid_pair, files["valid"] = _read_split(valid, src_lang, tgt_lang)
    return _Inputs(train_pair, valid_pair, test_pairs, files)


def _multi30k_inputs(src_lang: str, tgt_lang: str) -> _Inputs:
    """The shipped Multi30k task 1: train, valid = val, test = test_2016_flickr."""
    if {src_lang, tgt_lang} != {"de", "en"}:
        raise UserError(f"--src-lang {src_lang} --tgt-lang {tgt_lang}: the shipped multi30k "
                        "data is German-English; use de and en (either direction)")
    pairs, files = {}, {}
    for split, stem in (("train", "train"), ("valid", "val"), ("test", "test_2016_flickr")):
        pairs[split], files[split] = _read_split(str(MULTI30K_DIR / stem), src_lang, tgt_lang)
    return _Inputs(pairs["train"], pairs["valid"], {"test": pairs["test"]}, files,
                   recipe={"name": "multi30k", "test": "test_2016_flickr"})


def _iwslt14_inputs(raw_dir: str | None, src_lang: str, tgt_lang: str) -> _Inputs:
    if not raw_dir:
        raise UserError("the iwslt14 recipe needs --raw-dir, the folder extracted from the "
                        "IWSLT'14 release de-en.tgz")
    _log(f"reading IWSLT'14 from {raw_dir} (fairseq prepare-iwslt14.sh steps)")
    corpus = iwslt14.load(raw_dir, src_lang, tgt_lang)
    recipe = {"name": "iwslt14", "steps": "fairseq examples/translation/prepare-iwslt14.sh",
              **corpus.stats}
    return _Inputs(corpus.splits["train"], corpus.splits["valid"],
                   {"test": corpus.splits["test"]}, corpus.source_files, recipe=recipe)


def _recipe_inputs(recipe: str, train: str | None, valid: str | None, tests: list[str],
                   raw_dir: str | None, src_lang: str, tgt_lang: str) -> _Inputs:
    """A recipe's splits, plus any ``--test`` sets of the user (read first: they fail fast)."""
    if train or valid:
        raise UserError(f"--train/--valid cannot be combined with the {recipe} recipe")
    if recipe == "multi30k" and raw_dir:
        raise UserError("--raw-dir is only used by the iwslt14 recipe")
    test_pairs, files = _user_tests(tests, src_lang, tgt_lang,
                                    taken=(*_RESERVED_SPLITS, DEFAULT_TEST_NAME))
    if recipe == "multi30k":
        inputs = _multi30k_inputs(src_lang, tgt_lang)
    else:
        inputs = _iwslt14_inputs(raw_dir, src_lang, tgt_lang)
    inputs.tests.update(test_pairs)
    inputs.source_files.update(files)
    return inputs


def prepare_data(out: str | os.PathLike, recipe: str | None = None, *,
                 train: str | None = None, valid: str | None = None,
                 tests: list[str] | tuple[str, ...] = (), raw_dir: str | None = None,
                 src_lang: str | None = None, tgt_lang: str | None = None,
                 vocab_size: int | None = None, max_len: int | None = None,
                 max_ratio: float | None = None, force: bool = False,
                 tokenizer: str | os.PathLike | None = None) -> dict[str, Any]:
    """``aiokd prepare``: a data directory from a recipe or from the user's files; returns its
    manifest.

    Args:
        out: the data directory to create.
        recipe: ``multi30k``, ``iwslt14``, or None for ``train`` and ``valid``.
        train, valid: file PREFIXes whose sides are ``PREFIX.<lang>`` (optionally ``.gz``).
        tests: test sets as ``NAME=PREFIX`` (a bare ``PREFIX`` is named ``test``).
        raw_dir: iwslt14: the folder extracted from the IWSLT'14 release.
        src_lang, tgt_lang: language suffixes (default: de, en).
        vocab_size, max_len, max_ratio: as :func:`prepare`; None takes the recipe's default.
        force: overwrite an existing ``out``.
        tokenizer: an aiokd model directory (e.g. made by ``aiokd import``) whose tokenizer
            encodes the data instead of a new SentencePiece model.

    Raises:
        UserError: bad options or input files, ``out`` exists and ``force`` is false, or
            ``tokenizer`` is not a model directory with a usable tokenizer.
    """
    if recipe not in RECIPE_DEFAULTS:
        raise UserError(f"unknown recipe {recipe!r}; known: multi30k, iwslt14")
    if tokenizer is not None and vocab_size is not None:
        raise UserError(f"--vocab-size {vocab_size}: the vocabulary is that of --tokenizer "
                        f"{tokenizer}; leave --vocab-size out")
    src_lang = src_lang or DEFAULT_SRC_LANG
    tgt_lang = tgt_lang or DEFAULT_TGT_LANG
    defaults = RECIPE_DEFAULTS[recipe]
    vocab_size = vocab_size if vocab_size is not None else defaults.vocab_size
    max_len = max_len if max_len is not None else defaults.max_len
    max_ratio = max_ratio if max_ratio is not None else defaults.max_ratio
    _check_options(src_lang, tgt_lang, {}, vocab_size, max_len, max_ratio)
    check_new_directory(out, overwrite=force)
    model_tokenizer = None if tokenizer is None else read_model_tokenizer(tokenizer)
    if recipe is None:
        inputs = _custom_inputs(train, valid, list(tests), raw_dir, src_lang, tgt_lang)
    else:
        inputs = _recipe_inputs(recipe, train, valid, list(tests), raw_dir, src_lang, tgt_lang)
    return prepare(out, src_lang, tgt_lang, inputs.train, inputs.valid, inputs.tests, vocab_size,
                   max_len, max_ratio, overwrite=force, recipe=inputs.recipe,
                   source_files=inputs.source_files, tokenizer=model_tokenizer)
