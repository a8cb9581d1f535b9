"""``aiokd prepare``: cleaning, encoding, the written directory, and its errors."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aiokd.cli import main as cli_main
from aiokd.data.corpus import ParallelSplit, data_sentencepiece, load_manifest
from aiokd.data.prepare import prepare
from aiokd.errors import UserError
from tests.conftest import (
    TINY_VOCAB,
    assert_one_line_error,
    assert_process_error,
    assert_refused,
    files_under,
    make_corpus,
    run_aiokd,
    run_cli,
)

LONG_LINE = ("der hund läuft schnell " * 5000)[:100_000]


def write_pair(prefix, src, tgt, compress=False):
    """Write ``PREFIX.de`` and ``PREFIX.en`` (``.gz`` when ``compress``)."""
    for lang, lines in (("de", src), ("en", tgt)):
        data = ("\n".join(lines) + "\n").encode()
        if compress:
            prefix.with_name(f"{prefix.name}.{lang}.gz").write_bytes(gzip.compress(data))
        else:
            prefix.with_name(f"{prefix.name}.{lang}").write_bytes(data)


def cli_status(*args):
    """``aiokd ARGS`` in-process; returns the exit status."""
    with pytest.raises(SystemExit) as exit_:
        cli_main([str(arg) for arg in args])
    return exit_.value.code


def run_subprocess(*args):
    return subprocess.run([sys.executable, "-m", "aiokd", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def leftovers(folder):
    return sorted(path.name for path in folder.iterdir())


def test_directory_layout_and_manifest(tiny_data_dir, tiny_corpus):
    manifest = json.loads((tiny_data_dir / "manifest.json").read_text())
    assert manifest["format"] == "aiokd-data" and manifest["version"] == 1
    assert (manifest["src_lang"], manifest["tgt_lang"]) == ("de", "en")
    assert manifest["vocab_size"] == TINY_VOCAB
    assert [manifest[k] for k in ("pad_id", "unk_id", "bos_id", "eos_id")] == [0, 1, 2, 3]
    assert list(manifest["splits"]) == ["train", "valid", "test"]
    assert manifest["splits"]["train"]["pairs"] == 300
    assert manifest["created_with"].startswith("aiokd ")
    for split in manifest["splits"]:
        for lang in ("de", "en"):
            ids = np.load(tiny_data_dir / f"{split}.{lang}.ids.npy")
            offsets = np.load(tiny_data_dir / f"{split}.{lang}.offsets.npy")
            assert ids.dtype == np.uint16 and offsets.dtype == np.int64
            assert len(offsets) == manifest["splits"][split]["pairs"] + 1
            assert offsets[-1] == len(ids)
    assert (tiny_data_dir / "test.en.txt").read_text().splitlines() == tiny_corpus["test"][1]


def test_ids_match_the_sentencepiece_model(tiny_data_dir, tiny_corpus):
    tokenizer = data_sentencepiece(tiny_data_dir)
    split = ParallelSplit.load(tiny_data_dir, "valid")
    for i in (0, 7, len(split) - 1):
        assert split.src(i).tolist() == tokenizer.encode(tiny_corpus["valid"][0][i])
        assert split.tgt(i).tolist() == tokenizer.encode(tiny_corpus["valid"][1][i])


def test_cleaning_counts_and_test_lines_kept(tmp_path, tiny_corpus):
    src, tgt = (list(side) for side in tiny_corpus["train"])
    src += ["", "Ein hund .", "   ", LONG_LINE, "Der hund ."]
    tgt += ["The dog .", "", "  ", "The dog runs .", " ".join(["the dog runs fast"] * 10)]
    test_src = ["", "  Der hund läuft .  ", LONG_LINE, "Ein mann ."]
    test_tgt = ["The reference of an empty source .", "The dog runs .", "Long .", ""]
    manifest = prepare(tmp_path / "data", "de", "en", (src, tgt), tiny_corpus["valid"],
                       {"test": (test_src, test_tgt)}, vocab_size=TINY_VOCAB, max_len=100)

    train = manifest["splits"]["train"]
    assert train["dropped"]["empty"] == 3
    assert train["dropped"]["too_long"] == 1
    assert train["dropped"]["ratio"] >= 1
    assert train["pairs"] == len(src) - sum(train["dropped"].values())
    train_text = (tmp_path / "data" / "train.de.txt").read_text().splitlines()
    assert LONG_LINE not in train_text and "Der hund ." not in train_text

    test = ParallelSplit.load(tmp_path / "data", "test")
    assert test.source_lines() == ["", "Der hund läuft .", LONG_LINE, "Ein mann ."]
    assert test.target_lines() == test_tgt
    assert test.src_lengths[0] == 0 and test.src_lengths[2] > 10_000
    assert test.tgt_lengths[3] == 0


def test_validation_keeps_unequal_lengths(tmp_path, tiny_corpus):
    src, tgt = (list(side) for side in tiny_corpus["valid"])
    src.append("Hund .")
    tgt.append(" ".join(["the dog runs fast"] * 5))
    manifest = prepare(tmp_path / "data", "de", "en", tiny_corpus["train"], (src, tgt), {},
                       vocab_size=TINY_VOCAB)
    assert manifest["splits"]["valid"]["pairs"] == len(src)


def test_unequal_sides(tmp_path, tiny_corpus):
    src, tgt = tiny_corpus["test"]
    with pytest.raises(UserError, match="split 'test': 30 source lines but 29 target lines"):
        prepare(tmp_path / "data", "de", "en", tiny_corpus["train"], tiny_corpus["valid"],
                {"test": (src, tgt[:-1])}, vocab_size=TINY_VOCAB)
    assert leftovers(tmp_path) == []


def test_vocab_too_large_leaves_nothing(tmp_path, tiny_corpus):
    with pytest.raises(UserError, match=r"--vocab-size 5000 is too large .* at most \d+"):
        prepare(tmp_path / "data", "de", "en", tiny_corpus["train"], tiny_corpus["valid"], {},
                vocab_size=5000)
    assert leftovers(tmp_path) == []


def test_everything_filtered_leaves_nothing(tmp_path, tiny_corpus):
    with pytest.raises(UserError, match="no train pair is left"):
        prepare(tmp_path / "data", "de", "en", tiny_corpus["train"], tiny_corpus["valid"], {},
                vocab_size=TINY_VOCAB, max_len=1)
    assert leftovers(tmp_path) == []


def test_existing_directory_needs_overwrite(tmp_path, tiny_corpus):
    out = tmp_path / "data"
    out.mkdir()
    (out / "old.txt").write_text("old")
    args = ("de", "en", tiny_corpus["train"], tiny_corpus["valid"], {})
    with pytest.raises(UserError, match=r"data exists; pass --force"):
        prepare(out, *args, vocab_size=TINY_VOCAB)
    assert leftovers(out) == ["old.txt"]
    prepare(out, *args, vocab_size=TINY_VOCAB, overwrite=True)
    assert "old.txt" not in leftovers(out) and "manifest.json" in leftovers(out)
    assert leftovers(tmp_path) == ["data"]


@pytest.mark.parametrize(("option", "value", "message"), [
    ("src_lang", "en", "both 'en'"),
    ("src_lang", "d/e", "--src-lang 'd/e'"),
    ("max_len", 0, "--max-len 0"),
    ("max_ratio", 0.5, "--max-ratio 0.5"),
    ("vocab_size", 4, "--vocab-size 4"),
])
def test_bad_options(tmp_path, tiny_corpus, option, value, message):
    options = {"src_lang": "de", "max_len": 250, "max_ratio": 2.0, "vocab_size": TINY_VOCAB}
    options[option] = value
    with pytest.raises(UserError, match=message):
        prepare(tmp_path / "data", options["src_lang"], "en", tiny_corpus["train"],
                tiny_corpus["valid"], {}, options["vocab_size"], options["max_len"],
                options["max_ratio"])


def test_cli_with_own_files(tmp_path, tiny_corpus):
    write_pair(tmp_path / "train", *tiny_corpus["train"], compress=True)
    write_pair(tmp_path / "valid", *tiny_corpus["valid"])
    write_pair(tmp_path / "test", *tiny_corpus["test"])
    write_pair(tmp_path / "other", *make_corpus(10, seed=9))
    out = tmp_path / "data"
    status = cli_status("prepare", "--train", tmp_path / "train", "--valid", tmp_path / "valid",
                     "--test", tmp_path / "test", "--test", f"other={tmp_path / 'other'}",
                     "--out", out, "--vocab-size", TINY_VOCAB)
    assert status == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["splits"]) == ["train", "valid", "test", "other"]
    assert manifest["splits"]["other"]["pairs"] == 10
    assert manifest["splits"]["train"]["source_files"] == [
        str(tmp_path / "train.de.gz"), str(tmp_path / "train.en.gz")]


def test_cli_missing_file(tmp_path):
    result = run_subprocess("prepare", "--train", tmp_path / "nope", "--valid", tmp_path / "nope",
                            "--out", tmp_path / "data")
    assert_process_error(result, "nope.de: no such file")
    assert not (tmp_path / "data").exists()


def test_cli_invalid_utf8(tmp_path, tiny_corpus):
    write_pair(tmp_path / "train", *tiny_corpus["train"])
    write_pair(tmp_path / "valid", *tiny_corpus["valid"])
    for lang, line in (("de", b"Kaffee\n"), ("en", b"caf\xe9\n")):
        with open(tmp_path / f"valid.{lang}", "ab") as handle:
            handle.write(line)
    result = run_subprocess("prepare", "--train", tmp_path / "train", "--valid",
                            tmp_path / "valid", "--out", tmp_path / "data")
    assert_process_error(result, f"{tmp_path / 'valid.en'}:31: not valid UTF-8")
    assert leftovers(tmp_path) == ["train.de", "train.en", "valid.de", "valid.en"]


def test_cli_existing_output(tmp_path):
    (tmp_path / "data").mkdir()
    result = run_subprocess("prepare", "multi30k", "--out", tmp_path / "data")
    assert_process_error(result, "exists; pass --force")


def test_cli_recipe_conflicts(tmp_path, tiny_corpus, capsys):
    assert_process_error(run_subprocess("prepare", "iwslt14", "--out", tmp_path / "data"),
                          "--raw-dir")
    assert_process_error(run_subprocess("prepare", "--out", tmp_path / "data"), "--train")
    write_pair(tmp_path / "extra", *tiny_corpus["test"])
    assert cli_status("prepare", "multi30k", "--test", tmp_path / "extra", "--out",
                   tmp_path / "data") == 2
    assert "a split named 'test' is given twice" in capsys.readouterr().err
    assert leftovers(tmp_path) == ["extra.de", "extra.en"]


def test_multi30k_recipe(tmp_path):
    out = tmp_path / "m30k"
    assert cli_status("prepare", "multi30k", "--out", out) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    splits = manifest["splits"]
    assert manifest["vocab_size"] == 8000 and manifest["recipe"]["name"] == "multi30k"
    assert 28_800 <= splits["train"]["pairs"] <= 29_000
    assert splits["valid"]["pairs"] == 1014
    assert splits["test"]["pairs"] == 1000
    assert splits["train"]["dropped"]["empty"] == 0
    test = ParallelSplit.load(out, "test")
    assert test.source_lines()[0] == "Ein Mann mit einem orangefarbenen Hut, der etwas anstarrt."


# ----------------------------------------------------------------------------------------------
# Bad input: one line naming the file or the option, no output left behind


@pytest.fixture
def corpus_files(tmp_path):
    """``good.{de,en}`` (40 pairs) and ``valid.{de,en}`` (10 pairs) in ``tmp_path``."""
    for name, (src, tgt) in (("good", make_corpus(40, 3)), ("valid", make_corpus(10, 4))):
        (tmp_path / f"{name}.de").write_text("\n".join(src) + "\n", encoding="utf-8")
        (tmp_path / f"{name}.en").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    return tmp_path


def prepare_argv(directory: Path, train: str, *extra) -> list:
    return ["prepare", "--src-lang", "de", "--tgt-lang", "en", "--train", directory / train,
            "--valid", directory / "valid", "--vocab-size", "60", "--out", directory / "out",
            *extra]


def damage(directory: Path, how: str) -> tuple[str, list]:
    """Write ``bad.{de,en}`` damaged as ``how``; returns the prefix name and what the error
    message must name."""
    good_de = (directory / "good.de").read_bytes()
    good_en = (directory / "good.en").read_bytes()
    de, en = directory / "bad.de", directory / "bad.en"
    de.write_bytes(good_de)
    en.write_bytes(good_en)
    if how == "mismatched":
        en.write_bytes(b"".join(good_en.splitlines(keepends=True)[:-3]))
        return "bad", [de, en, "37", "40"]
    if how == "non_utf8":
        de.write_bytes(good_de + b"caf\xe9\n")
        en.write_bytes(good_en + b"cafe\n")
        return "bad", [f"{de}:41", "UTF-8"]
    if how == "empty":
        de.write_bytes(b"")
        return "bad", [de, "empty"]
    if how == "missing":
        de.unlink()
        return "bad", [de]
    if how == "binary":
        de.write_bytes(np.random.default_rng(0).bytes(4096) + b"\0")
        return "bad", [de]
    if how == "directory":
        de.unlink()
        de.mkdir()
        return "bad", [de, "directory"]
    if how == "bad_gzip":
        de.unlink()
        (directory / "bad.de.gz").write_bytes(b"\x1f\x8b" + b"\0" * 20)
        return "bad", ["bad.de.gz"]
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["mismatched", "non_utf8", "empty", "missing", "binary",
                                 "directory", "bad_gzip"])
def test_prepare_refuses_bad_text(corpus_files, capsys, how):
    prefix, names = damage(corpus_files, how)
    assert_refused(prepare_argv(corpus_files, prefix), capsys, *names,
                   out=corpus_files / "out")


@pytest.mark.parametrize("option, value", [("--vocab-size", "3"), ("--max-len", "0"),
                                           ("--max-ratio", "0.5"), ("--src-lang", "d/e")])
def test_prepare_refuses_bad_options(corpus_files, capsys, option, value):
    assert_refused(prepare_argv(corpus_files, "good", option, value), capsys, option,
                   out=corpus_files / "out")


def test_prepare_never_overwrites_without_force(corpus_files, capsys):
    out = corpus_files / "out"
    out.mkdir()
    (out / "keep").write_text("mine")
    assert_refused(prepare_argv(corpus_files, "good"), capsys, out, "--force")
    assert files_under(out) == {"keep": hashlib.sha256(b"mine").hexdigest()}


def test_prepare_drops_a_100000_character_line(corpus_files, capsys):
    """Not an error: the pair is dropped as too long, and the summary says so."""
    with open(corpus_files / "good.de", "a", encoding="utf-8") as handle:
        handle.write("a" * 100_000 + "\n")
    with open(corpus_files / "good.en", "a", encoding="utf-8") as handle:
        handle.write("a long line .\n")
    status, stdout, stderr = run_cli(prepare_argv(corpus_files, "good"), capsys)
    assert status == 0, stderr
    assert "1 too_long" in stdout
    assert load_manifest(corpus_files / "out")["splits"]["train"]["pairs"] == 40


@pytest.mark.slow
def test_prepare_subprocess_exit_status_and_stderr(corpus_files):
    """The installed command itself: status 2 and exactly one stderr line."""
    prefix, names = damage(corpus_files, "non_utf8")
    done = run_aiokd(*prepare_argv(corpus_files, prefix))
    assert_one_line_error(done.returncode, done.stderr, *names)
    assert not (corpus_files / "out").exists()
