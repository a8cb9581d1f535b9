"""IWSLT'14 German-English exactly as fairseq's ``prepare-iwslt14.sh`` makes it.

The script, step by step, and the function here that does each step:

* training text ``train.tags.de-en.{de,en}``: drop the lines holding ``<url>``, ``<talkid>`` or
  ``<keywords>``, delete the ``<title>``/``<description>`` tags but keep their text
  (:func:`strip_train_tags`), Moses-tokenize (:func:`tokenize`), keep the pairs of 1 to 175 words
  whose word-count ratio is at most 1.5 (Moses ``clean-corpus-n.perl``, :func:`clean_corpus`),
  lowercase (:func:`lowercase`);
* every 23rd line of that text is validation data, the rest is training data
  (:func:`split_every_23rd`);
* dev/test XML ``IWSLT14.TED*.xml``: the text of each ``<seg>`` with ``’`` replaced by ``'``
  (:func:`xml_segments`), Moses-tokenized and lowercased; the test set is dev2010, TEDX.dev2012,
  tst2010, tst2011 and tst2012 concatenated in that order.

The script is ``examples/translation/prepare-iwslt14.sh`` of fairseq.  Its last step, subword
segmentation with BPE, is not done here: ``aiokd prepare`` trains its joint SentencePiece model on
the result instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sacremoses import MosesTokenizer
from tqdm import tqdm

from aiokd.data.text import read_lines
from aiokd.errors import UserError

LANGS = ("de", "en")
PAIR = "de-en"
TEST_SETS = ("TED.dev2010", "TEDX.dev2012", "TED.tst2010", "TED.tst2011", "TED.tst2012")

_DROPPED_LINE_TAGS = ("<url>", "<talkid>", "<keywords>")
_DELETED_TAGS = ("<title>", "</title>", "<description>", "</description>")
_SEG_OPEN = re.compile(r'<seg id="[0-9]*">\s*')
_SEG_CLOSE = re.compile(r"\s*</seg>\s*")
_FINAL_PERIOD = re.compile(r"(\S+)\.")

CLEAN_RATIO = 1.5
CLEAN_MIN_WORDS = 1
CLEAN_MAX_WORDS = 175
_CLEAN_MAX_WORD_CHARS = 1000
_LONG_WORD = re.compile(rf"[^\s|]{{{_CLEAN_MAX_WORD_CHARS + 1}}}")
VALID_EVERY = 23


class _ScriptMosesTokenizer(MosesTokenizer):
    """sacremoses' port of ``tokenizer.perl``, plus the Perl script's rule for the last word.

    The current ``tokenizer.perl`` always splits the period off the last word of a line ("split
    last words independently as they are unlikely to be non-breaking prefixes": ``u.s.a.`` ->
    ``u.s.a .``); sacremoses keeps the older behaviour, which leaves such words whole.
    """

    def handles_nonbreaking_prefixes(self, text: str) -> str:
        text = super().handles_nonbreaking_prefixes(text)
        head, _, last = text.rpartition(" ")
        match = _FINAL_PERIOD.fullmatch(last)
        if match is None:
            return text
        split = f"{match.group(1)} ."
        return f"{head} {split}" if head else split


def moses_tokenizer(lang: str) -> Callable[[str], str]:
    """``tokenizer.perl -l LANG`` (XML escaping on, no aggressive hyphen splitting) for one line.

    Lines that are empty or all whitespace are returned unchanged, as the Perl script prints them.
    """
    moses = _ScriptMosesTokenizer(lang)

    def tokenize(line: str) -> str:
        if not line.strip():
            return line
        return moses.tokenize(line, return_str=True, escape=True)

    return tokenize


def tokenize(lines: Iterable[str], lang: str, desc: str | None = None) -> list[str]:
    """Moses-tokenize every line (a progress bar is shown when ``desc`` is given)."""
    tokenize_line = moses_tokenizer(lang)
    lines = list(lines)
    progress = tqdm(lines, desc=desc, unit=" lines", disable=desc is None, leave=False)
    return [tokenize_line(line) for line in progress]


def lowercase(line: str) -> str:
    """``lowercase.perl``: Perl's ``lc``, which maps every capital sigma to ``σ``.

    ``str.lower`` differs only there: it writes ``ς`` at the end of a word.
    """
    if "Σ" in line:
        return "".join(char.lower() for char in line)
    return line.lower()


def strip_train_tags(lines: Iterable[str]) -> list[str]:
    """The script's ``grep -v`` / ``sed`` filter of ``train.tags`` files.

    Lines holding ``<url>``, ``<talkid>`` or ``<keywords>`` are dropped; ``<title>``,
    ``</title>``, ``<description>`` and ``</description>`` are deleted from the others (their
    text stays, and so do lines with other tags such as ``<speaker>``).
    """
    kept = []
    for line in lines:
        if any(tag in line for tag in _DROPPED_LINE_TAGS):
            continue
        for tag in _DELETED_TAGS:
            line = line.replace(tag, "")
        kept.append(line)
    return kept


def xml_segments(lines: Iterable[str]) -> list[str]:
    """The text of every ``<seg id="N">`` line of an IWSLT XML file, with ``’`` made ``'``."""
    return [
        _SEG_CLOSE.sub("", _SEG_OPEN.sub("", line)).replace("\u2019", "'")
        for line in lines
        if "<seg id" in line
    ]


def _normalize_space(line: str) -> str:
    return " ".join(line.split())


def clean_corpus(
    first: list[str],
    second: list[str],
    ratio: float = CLEAN_RATIO,
    min_words: int = CLEAN_MIN_WORDS,
    max_words: int = CLEAN_MAX_WORDS,
) -> tuple[list[str], list[str]]:
    """Moses ``clean-corpus-n.perl -ratio RATIO ... MIN MAX`` on two tokenized sides.

    Whitespace runs become one space and the ends are trimmed; a pair is kept when both sides have
    ``min_words`` to ``max_words`` space-separated words, neither side has ``ratio`` times as many
    words as the other, and no word is longer than 1000 characters.  The input is Moses-escaped
    text, which holds no factor separator ``|``, so the script's factored-corpus handling never
    applies.
    """
    kept_first, kept_second = [], []
    for line_a, line_b in zip(first, second, strict=True):
        line_a, line_b = _normalize_space(line_a), _normalize_space(line_b)
        if not line_a or not line_b:
            continue
        count_a, count_b = line_a.count(" ") + 1, line_b.count(" ") + 1
        if not (min_words <= count_a <= max_words and min_words <= count_b <= max_words):
            continue
        if count_a / count_b > ratio or count_b / count_a > ratio:
            continue
        if _LONG_WORD.search(line_a) or _LONG_WORD.search(line_b):
            continue
        kept_first.append(line_a)
        kept_second.append(line_b)
    return kept_first, kept_second


def split_every_23rd(lines: list[str]) -> tuple[list[str], list[str]]:
    """(train, valid): lines 23, 46, ... (1-based) are validation data, the others training data."""
    train = [line for number, line in enumerate(lines, 1) if number % VALID_EVERY != 0]
    valid = [line for number, line in enumerate(lines, 1) if number % VALID_EVERY == 0]
    return train, valid


def prepare_xml(path: str | Path, lang: str) -> list[str]:
    """One dev/test XML file -> its segments, tokenized and lowercased (one line per segment)."""
    return [lowercase(line) for line in tokenize(xml_segments(read_lines(path)), lang)]


@dataclass
class Corpus:
    """The three splits in the order (src_lang, tgt_lang), and where they came from."""

    splits: dict[str, tuple[list[str], list[str]]]
    source_files: dict[str, list[str]]
    stats: dict[str, int] = field(default_factory=dict)


def _raw_file(raw_dir: Path, name: str) -> Path:
    """``raw_dir/name`` or ``raw_dir/name.gz``."""
    for candidate in (raw_dir / name, raw_dir / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise UserError(f"--raw-dir {raw_dir}: {name} (or {name}.gz) not found")


def resolve_raw_dir(raw_dir: str | Path) -> Path:
    """The folder holding the release files: ``raw_dir`` itself or its ``de-en`` subfolder.

    Raises:
        UserError: neither holds ``train.tags.de-en.de`` (plain or gzip).
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise UserError(f"--raw-dir {raw_dir}: no such directory")
    marker = f"train.tags.{PAIR}.{LANGS[0]}"
    for candidate in (raw_dir, raw_dir / PAIR):
        if (candidate / marker).is_file() or (candidate / f"{marker}.gz").is_file():
            return candidate
    raise UserError(
        f"--raw-dir {raw_dir}: {marker} not found; pass the folder extracted from the IWSLT'14 "
        f"release de-en.tgz (train.tags.{PAIR}.* and IWSLT14.TED*.xml)"
    )


def _check_langs(src_lang: str, tgt_lang: str) -> None:
    if {src_lang, tgt_lang} != set(LANGS):
        raise UserError(
            f"--src-lang {src_lang} --tgt-lang {tgt_lang}: the iwslt14 recipe is German-English; "
            "use de and en (either direction)"
        )


def _train_valid(raw_dir: Path, langs: tuple[str, str]) -> tuple[dict, list[str], dict]:
    """Training text of both languages -> ({"train": pair, "valid": pair}, files, counts)."""
    paths = [_raw_file(raw_dir, f"train.tags.{PAIR}.{lang}") for lang in langs]
    sides = []
    for path, lang in zip(paths, langs, strict=True):
        text = strip_train_tags(read_lines(path))
        sides.append(tokenize(text, lang, desc=f"tokenizing {path.name}"))
    if len(sides[0]) != len(sides[1]):
        raise UserError(
            f"{paths[0]} has {len(sides[0])} text lines but {paths[1]} has {len(sides[1])} "
            "after removing the tag lines; the two sides must be parallel"
        )
    cleaned = clean_corpus(sides[0], sides[1])
    lowered = [[lowercase(line) for line in side] for side in cleaned]
    (train_a, valid_a), (train_b, valid_b) = (split_every_23rd(side) for side in lowered)
    splits = {"train": (train_a, train_b), "valid": (valid_a, valid_b)}
    stats = {"train_tags_text_lines": len(sides[0]), "after_clean_corpus": len(cleaned[0])}
    return splits, [str(path) for path in paths], stats


def _test(raw_dir: Path, langs: tuple[str, str]) -> tuple[tuple[list[str], list[str]], list[str]]:
    """The concatenated test set of both languages, and the XML files it came from."""
    sides, files = [], []
    for lang in langs:
        lines = []
        for name in TEST_SETS:
            path = _raw_file(raw_dir, f"IWSLT14.{name}.{PAIR}.{lang}.xml")
            lines += prepare_xml(path, lang)
            files.append(str(path))
        sides.append(lines)
    if len(sides[0]) != len(sides[1]):
        raise UserError(
            f"--raw-dir {raw_dir}: the {langs[0]} test XML files hold {len(sides[0])} segments "
            f"but the {langs[1]} ones hold {len(sides[1])}"
        )
    return (sides[0], sides[1]), files


def load(raw_dir: str | Path, src_lang: str = "de", tgt_lang: str = "en") -> Corpus:
    """Train, valid and test of IWSLT'14 de-en from the extracted release, tokenized and cleaned.

    Raises:
        UserError: a release file is missing or unreadable, the two sides are not parallel, or
            the languages are not de and en.
    """
    _check_langs(src_lang, tgt_lang)
    raw_dir = resolve_raw_dir(raw_dir)
    langs = (src_lang, tgt_lang)
    splits, train_files, stats = _train_valid(raw_dir, langs)
    splits["test"], test_files = _test(raw_dir, langs)
    source_files = {"train": train_files, "valid": train_files, "test": test_files}
    return Corpus(splits=splits, source_files=source_files, stats=stats)
