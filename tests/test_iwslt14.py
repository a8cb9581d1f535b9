"""IWSLT'14 preparation against fairseq's prepare-iwslt14.sh output, and its training-text steps."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from aiokd.cli import main as cli_main
from aiokd.data import iwslt14
from aiokd.data.text import read_lines
from aiokd.errors import UserError
from tests.conftest import make_corpus

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "iwslt14-de-en"
needs_shared = pytest.mark.skipif(
    not (SHARED / "orig").is_dir(),
    reason=f"reference data {SHARED} not found (CI checks out shared/ beside the repository)",
)


@needs_shared
def test_xml_sets_match_fairseq_reference():
    """All 13,500 lines (5 sets x 2 languages) are identical to fairseq-tok/ (measured: 100%)."""
    identical = total = 0
    for lang in iwslt14.LANGS:
        concatenated = []
        for name in iwslt14.TEST_SETS:
            stem = f"IWSLT14.{name}.de-en.{lang}"
            ours = iwslt14.prepare_xml(SHARED / "orig" / f"{stem}.xml.gz", lang)
            reference = read_lines(SHARED / "fairseq-tok" / f"{stem}.gz")
            assert len(ours) == len(reference), name
            identical += sum(a == b for a, b in zip(ours, reference, strict=True))
            total += len(reference)
            concatenated += ours
        assert concatenated == read_lines(SHARED / "fairseq-tok" / f"test.{lang}.gz")
    assert total == 13_500
    assert identical / total == 1.0


def test_last_word_period_is_split_like_tokenizer_perl():
    tokenize = iwslt14.moses_tokenizer("en")
    assert tokenize("I moved to the U.S.") == "I moved to the U.S ."
    assert tokenize("Dr. Smith came.") == "Dr. Smith came ."
    assert tokenize("It's \"fine\"...") == "It &apos;s &quot; fine &quot; ..."


def test_blank_lines_pass_through_the_tokenizer():
    tokenize = iwslt14.moses_tokenizer("de")
    assert tokenize("") == ""
    assert tokenize("  \t") == "  \t"


def test_lowercase_is_perl_lc():
    assert iwslt14.lowercase("ÄRGER ÜBER ΟΔΟΣ") == "ärger über οδοσ"


def test_xml_segments():
    lines = [
        '<refset setid="iwslt2014-dev2010" srclang="en" trglang="de">',
        '<seg id="1"> Das ist Peter’s Idee. </seg>',
        "<description>not a segment</description>",
        '<seg id="2"></seg>',
    ]
    assert iwslt14.xml_segments(lines) == ["Das ist Peter's Idee.", ""]


def test_train_tags_are_dropped_or_stripped():
    lines = [
        "<url>http://www.ted.com/talks/x.html</url>",
        "<keywords>talks, science</keywords>",
        "<speaker>Jane Doe</speaker>",
        "<talkid>42</talkid>",
        "<title>Jane Doe: A title</title>",
        "<description>TED Talk: a talk</description>",
        "Plain text with <b>tags</b> inside.",
    ]
    assert iwslt14.strip_train_tags(lines) == [
        "<speaker>Jane Doe</speaker>",
        "Jane Doe: A title",
        "TED Talk: a talk",
        "Plain text with <b>tags</b> inside.",
    ]


def test_clean_corpus_like_clean_corpus_n():
    first = ["a  b\tc ", "", "a b", "a b c d", " ".join(["w"] * 176), "x" * 1001, "a b"]
    second = ["A B C", "A", "", "A B", "W", "X", "A B C"]
    assert iwslt14.clean_corpus(first, second) == (["a b c", "a b"], ["A B C", "A B C"])


def test_every_23rd_line_is_validation():
    lines = [str(number) for number in range(1, 51)]
    train, valid = iwslt14.split_every_23rd(lines)
    assert valid == ["23", "46"]
    assert len(train) == 48 and "22" in train and "24" in train


def _write_release(folder: Path, pairs: int) -> None:
    """A miniature de-en release: tagged training text and five one-talk XML test sets."""
    folder.mkdir()
    corpus = dict(zip(iwslt14.LANGS, make_corpus(pairs, seed=3), strict=True))
    for lang, lines in corpus.items():
        header = ["<url>http://www.ted.com/talks/1.html</url>", "<talkid>1</talkid>",
                  "<keywords>talks</keywords>", "<title>A title</title>"]
        text = "\n".join(header + lines) + "\n"
        (folder / f"train.tags.de-en.{lang}").write_text(text, encoding="utf-8")
        for name in iwslt14.TEST_SETS:
            segs = [f'<seg id="{i}"> {line} </seg>' for i, line in enumerate(lines[:5], 1)]
            xml = "\n".join(["<mteval>", *segs, "</mteval>"]) + "\n"
            path = folder / f"IWSLT14.{name}.de-en.{lang}.xml.gz"
            path.write_bytes(gzip.compress(xml.encode()))


def test_load_synthetic_release(tmp_path):
    _write_release(tmp_path / "de-en", pairs=100)
    corpus = iwslt14.load(tmp_path)  # the parent of de-en/ is accepted too
    assert corpus.stats == {"train_tags_text_lines": 101, "after_clean_corpus": 101}
    assert len(corpus.splits["valid"][0]) == 101 // 23
    assert len(corpus.splits["train"][0]) == 101 - 101 // 23
    assert corpus.splits["train"][0][0] == "a title"
    assert len(corpus.splits["test"][1]) == 25
    assert all(line == line.lower() for line in corpus.splits["test"][1])


def test_missing_release_files(tmp_path):
    with pytest.raises(UserError, match="train.tags.de-en.de not found"):
        iwslt14.load(tmp_path)
    with pytest.raises(UserError, match="the iwslt14 recipe is German-English"):
        iwslt14.load(tmp_path, "fr", "en")


def test_prepare_iwslt14_recipe(tmp_path):
    _write_release(tmp_path / "raw", pairs=300)
    out = tmp_path / "data"
    with pytest.raises(SystemExit) as exit_:
        cli_main(["prepare", "iwslt14", "--raw-dir", str(tmp_path / "raw"), "--out", str(out),
                  "--vocab-size", "60"])
    assert exit_.value.code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["name"] == "iwslt14"
    assert manifest["cleaning"]["max_len"] is None and manifest["cleaning"]["max_ratio"] is None
    assert manifest["splits"]["valid"]["pairs"] == 301 // 23
    assert manifest["splits"]["test"]["pairs"] == 25
