"""Starting from a model you already have: ``aiokd import`` of a tiny Marian model,
``aiokd prepare --tokenizer`` with its tokenizer, ``aiokd train --init-from`` (AIO-KD and a
baseline student), and the refusals of data, options and resumes that do not fit the model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import aiokd
from aiokd.cli import main as cli_main
from aiokd.config import ModelConfig
from aiokd.data.corpus import ParallelSplit, data_tokenizer, load_manifest
from aiokd.model.checkpoint import load_model_files
from aiokd.model.transformer import Transformer
from aiokd.train.init_from import start_from_model
from tests.conftest import assert_refused, files_under, make_corpus, run_cli
from tests.marian_model import make_marian_dir

pytest.importorskip("transformers")

FAST = ["train.max_tokens=256", "train.warmup_updates=5", "train.validate_every=2"]
"""Overrides that keep a run on the tiny Marian model short."""


def _write_split(root, name, pairs, seed):
    sources, targets = make_corpus(pairs, seed=seed)
    for lang, lines in (("de", sources), ("en", targets)):
        (root / f"{name}.{lang}").write_text("".join(line + "\n" for line in lines),
                                             encoding="utf-8")
    return str(root / name)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return {"train": _write_split(root, "train", 120, 50),
            "valid": _write_split(root, "valid", 12, 51),
            "test": _write_split(root, "test", 8, 52)}


def _cli(*argv) -> None:
    """``aiokd ARGV``, which must succeed."""
    with pytest.raises(SystemExit) as exit_:
        cli_main([str(arg) for arg in argv])
    assert exit_.value.code == 0


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("opus")
    _cli("import", make_marian_dir(root), "--out", root / "model")
    return root / "model"


def _prepare(corpus, out, tokenizer):
    _cli("prepare", "--train", corpus["train"], "--valid", corpus["valid"], "--test",
         corpus["test"], "--out", out, "--tokenizer", tokenizer)


@pytest.fixture(scope="module")
def marian_data(tmp_path_factory, corpus, imported):
    out = tmp_path_factory.mktemp("data") / "marian"
    _prepare(corpus, out, imported)
    return out


def test_prepare_encodes_with_the_models_tokenizer(marian_data, imported, corpus):
    manifest = load_manifest(marian_data)
    files = load_model_files(imported)
    cfg = files.model.cfg
    assert manifest["tokenizer"] == "marian" and "spm_model" not in manifest
    assert manifest["tokenizer_from"] == str(imported.resolve())
    assert [manifest[k] for k in ("vocab_size", "pad_id", "bos_id", "eos_id")] == [
        cfg.vocab_size, cfg.pad_id, cfg.bos_id, cfg.eos_id]
    assert data_tokenizer(marian_data) == files.tokenizer
    tokenizer = files.tokenizer.load(imported)
    split = ParallelSplit.load(marian_data, "test")
    sources = split.source_lines()
    targets = split.target_lines()
    assert [split.src(i).tolist() for i in range(len(split))] == tokenizer.encode_source(sources)
    assert [split.tgt(i).tolist() for i in range(len(split))] == tokenizer.encode_target(targets)


def test_prepare_with_a_sentencepiece_model_matches_its_data(tmp_path, tiny_model_dir,
                                                             tiny_data_dir, tiny_corpus):
    root = tmp_path / "corpus"
    root.mkdir()
    for lang, lines in zip(("de", "en"), tiny_corpus["train"], strict=True):
        (root / f"train.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "data"
    _prepare({"train": str(root / "train"), "valid": str(root / "train"),
              "test": str(root / "train")}, out, tiny_model_dir)
    manifest = load_manifest(out)
    assert manifest["spm_model"] == "spm.model" and "tokenizer" not in manifest
    assert (out / "spm.model").read_bytes() == (tiny_model_dir / "spm.model").read_bytes()
    for name in ("train.de.ids.npy", "train.en.ids.npy"):
        assert np.array_equal(np.load(out / name), np.load(tiny_data_dir / name))


def test_prepare_tokenizer_refusals(tmp_path, corpus, imported, capsys):
    out = tmp_path / "data"
    base = ["prepare", "--train", corpus["train"], "--valid", corpus["valid"], "--out", out]
    marian = tmp_path / "opus"
    marian.mkdir()
    (marian / "config.json").write_text(json.dumps({"model_type": "marian"}))
    assert_refused([*base, "--tokenizer", marian], capsys, str(marian), "aiokd import", out=out)
    assert_refused([*base, "--tokenizer", tmp_path], capsys, str(tmp_path),
                   "not an aiokd model directory", out=out)
    assert_refused([*base, "--tokenizer", imported, "--vocab-size", "100"], capsys,
                   "--vocab-size 100", out=out)


def _train(capsys, data, out, *extra):
    return run_cli(["train", "--data", data, "--out", out, "--max-updates", "2", *FAST, *extra],
                   capsys)


def test_aiokd_from_an_imported_model(tmp_path, marian_data, imported, corpus, capsys):
    run = tmp_path / "run"
    status, said, err = _train(capsys, marian_data, run, "--init-from", imported,
                               "model.dropout=0.1")
    assert status == 0, err
    assert f"stage 1 starts from {imported.resolve()}" in said
    assert "stage1-best.safetensors with a fresh optimizer" in said
    assert json.loads((run / "run.json").read_text())["init_from"] == str(imported.resolve())
    original, trained = load_model_files(imported), load_model_files(run)
    assert trained.tokenizer == original.tokenizer
    assert trained.model.cfg == ModelConfig(**{**original.config["model"], "dropout": 0.1})
    assert trained.students == original.students
    changed = [name for name, value in trained.model.state_dict().items()
               if not torch.equal(value, original.model.state_dict()[name])]
    assert changed and "logits_bias" not in changed
    status, out, err = run_cli(["score", "--model", run, "--src", corpus["test"] + ".de",
                                "--tgt", corpus["test"] + ".en"], capsys)
    assert status == 0 and len(out.splitlines()) == 8, err
    assert len(aiokd.load(run, device="cpu").translate(["Der hund läuft ."], student="3-2")) == 1
    # Running it again resumes (nothing left to do); another --init-from or none is refused.
    status, said, err = _train(capsys, marian_data, run, "--init-from", imported,
                               "model.dropout=0.1")
    assert status == 0 and "already finished" in said, err
    before = files_under(run)
    assert_refused(["train", "--data", marian_data, "--out", run, "--max-updates", "2", *FAST],
                   capsys, "without --init-from", str(imported.resolve()))
    assert_refused(["train", "--data", marian_data, "--out", run, "--max-updates", "2",
                    "--init-from", run, *FAST], capsys, str(run.resolve()), "--init-from")
    assert files_under(run) == before


def test_baseline_student_starts_from_the_first_layers(tmp_path, marian_data, imported, capsys):
    files = load_model_files(imported)
    small = Transformer(ModelConfig(**{**files.config["model"], "enc_layers": 2,
                                       "dec_layers": 2}))
    start_from_model(small, imported)
    theirs = files.model.state_dict()
    assert all(torch.equal(value, theirs[name]) for name, value in small.state_dict().items())
    status, _, err = _train(capsys, marian_data, tmp_path / "run", "--init-from", imported,
                            "--method", "scratch", "--student", "2-2")
    assert status == 0, err
    assert load_model_files(tmp_path / "run").model.cfg.enc_layers == 2


def test_init_from_refusals(tmp_path, marian_data, imported, tiny_data_dir, capsys):
    out = tmp_path / "run"
    refusals = [
        (tiny_data_dir, ["model.d_model=32"], ["model.d_model=32", str(imported), "16"]),
        (marian_data, ["model.pre_norm=true"], ["model.pre_norm=True"]),
        (tiny_data_dir, [], [str(tiny_data_dir), str(imported), "--tokenizer"]),
        (marian_data, ["--method", "scratch", "--student", "5-2"], ["--student 5-2", "4 encoder"]),
    ]
    for data, extra, names in refusals:
        assert_refused(["train", "--data", data, "--out", out, "--init-from", imported, *extra],
                       capsys, *names, out=out)
    assert_refused(["train", "--data", marian_data, "--out", out, "--init-from",
                    tmp_path / "nothing"], capsys, "nothing", out=out)


def test_distill_data_from_an_imported_model_keeps_its_tokenizer(tmp_path, marian_data,
                                                                  imported):
    out = tmp_path / "seqkd"
    _cli("distill-data", "--model", imported, "--data", marian_data, "--out", out, "--beam", "2")
    manifest = load_manifest(out)
    assert manifest["tokenizer"] == "marian" and data_tokenizer(out) == data_tokenizer(
        marian_data)
    tokenizer = load_model_files(imported).tokenizer.load(imported)
    split = ParallelSplit.load(out, "train")
    targets = split.target_lines()
    assert [split.tgt(i).tolist() for i in range(len(split))] == tokenizer.encode_target(targets)
    assert split.source_lines() == ParallelSplit.load(marian_data, "train").source_lines()
