"""Marian (OPUS-MT) models: import, scoring, decoding and export against Hugging Face's
``MarianMTModel`` on a tiny randomly initialised model (:mod:`tests.marian_model`; nothing is
downloaded), from Python and through the command line (``aiokd import``, ``aiokd score``,
``aiokd export --format hf``)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import aiokd
from aiokd.config import Config, ModelConfig
from aiokd.errors import UserError
from aiokd.formats.export import write_ctranslate2
from aiokd.formats.marian import export_marian, import_marian, read_marian
from aiokd.inference.generate import SearchOptions, generate
from aiokd.inference.score import score
from aiokd.model.checkpoint import (
    load_model_files,
    model_config_json,
    read_checkpoint,
    save_checkpoint,
    save_model_dir,
)
from aiokd.model.transformer import Transformer
from aiokd.students import CandidateSpace
from tests.conftest import assert_refused, make_corpus, run_cli
from tests.marian_model import assert_close_scores, hf_log_probs, make_marian_dir

transformers = pytest.importorskip("transformers")

SOURCES, TARGETS = make_corpus(12, seed=41)


@pytest.fixture(scope="module")
def marian_dir(tmp_path_factory):
    return make_marian_dir(tmp_path_factory.mktemp("marian"))


@pytest.fixture(scope="module")
def imported(tmp_path_factory, marian_dir):
    return import_marian(marian_dir, tmp_path_factory.mktemp("imported") / "model")


def test_teacher_scores_equal_transformers(imported, marian_dir):
    files = load_model_files(imported)
    assert files.tokenizer.kind == "marian"
    assert files.students == [(2, 2), (3, 2), (4, 2), (3, 3), (4, 3)]
    assert_close_scores(score(files, None, SOURCES, TARGETS),
                        hf_log_probs(marian_dir, SOURCES, TARGETS))
    assert_close_scores(score(files, None, SOURCES, TARGETS, dtype="float64"),
                        score(files, None, SOURCES, TARGETS))


def test_tokenizer_equals_marian_tokenizer(imported, marian_dir):
    hf = transformers.MarianTokenizer.from_pretrained(marian_dir)
    ours = load_model_files(imported).tokenizer.load(imported)
    lines = SOURCES + ["Ein ☃ und ü ."]
    assert [ids + [0] for ids in ours.encode_source(lines)] == hf(lines)["input_ids"]
    targets = hf(text_target=TARGETS)["input_ids"]
    assert [ids + [0] for ids in ours.encode_target(TARGETS)] == targets
    assert [ours.decode(ids) for ids in targets] == hf.batch_decode(
        targets, skip_special_tokens=True, use_source_tokenizer=False)


@pytest.mark.parametrize("student", ["4-2", "2-2"])
def test_exported_student_scores_equal_transformers(tmp_path, imported, student):
    out = export_marian(imported, tmp_path / student, student)
    config = json.loads((out / "config.json").read_text())
    assert (config["encoder_layers"], config["decoder_layers"]) == tuple(
        int(n) for n in student.split("-"))
    assert_close_scores(score(load_model_files(imported), student, SOURCES, TARGETS),
                        hf_log_probs(out, SOURCES, TARGETS))


def test_greedy_outputs_equal_transformers(imported, marian_dir):
    files = load_model_files(imported)
    hf_tokenizer = transformers.MarianTokenizer.from_pretrained(marian_dir)
    hf_model = transformers.MarianMTModel.from_pretrained(marian_dir).eval()
    tokenizer = files.tokenizer.load(imported)
    options = SearchOptions(beam=1)
    for source, ids in zip(SOURCES, tokenizer.encode_source(SOURCES), strict=True):
        ours = generate(files.model, [ids], None, options)[0]
        limit = options.max_length(len(ids), files.model.cfg.max_positions)
        with torch.no_grad():
            theirs = hf_model.generate(**hf_tokenizer([source], return_tensors="pt"),
                                       num_beams=1, do_sample=False, max_new_tokens=limit,
                                       min_new_tokens=1, forced_eos_token_id=None)[0].tolist()
        assert ours == [t for t in theirs[1:] if t != files.model.cfg.eos_id]
        assert (aiokd.load(imported, device="cpu").translate([source], beam=1)[0]
                == hf_tokenizer.decode(theirs, skip_special_tokens=True))


def test_ctranslate2_export_decodes_like_torch(tmp_path, imported):
    files = load_model_files(imported)
    write_ctranslate2(tmp_path, files, (4, 2), "none")
    ours = aiokd.load(imported, device="cpu").translate(SOURCES, student="4-2", beam=2)
    assert aiokd.load(tmp_path, device="cpu").translate(SOURCES, beam=2) == ours


def test_import_export_round_trip_is_identical(tmp_path, imported, marian_dir):
    out = export_marian(imported, tmp_path / "back")
    original, back = (load_file(d / "model.safetensors") for d in (marian_dir, out))
    assert sorted(original) == sorted(back)
    assert all(torch.equal(original[name], back[name]) for name in original)
    for name in ("source.spm", "target.spm", "vocab.json"):
        assert (out / name).read_bytes() == (marian_dir / name).read_bytes()
    assert read_marian(out).config["model"] == load_model_files(imported).config["model"]


def test_checkpoint_keeps_the_marian_tokenizer(tmp_path, imported):
    files = load_model_files(imported)
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, files.model, {"config": Config(model=files.model.cfg).to_dict()},
                    files.tokenizer)
    assert read_checkpoint(path).tokenizer == files.tokenizer
    assert load_model_files(path).tokenizer == files.tokenizer


def test_joint_sentencepiece_model_exports_to_transformers(tmp_path, tiny_data_dir):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=100, d_model=16, ffn_dim=32, heads=2, enc_layers=3,
                      dec_layers=2, dropout=0.0, max_positions=64, positions="marian",
                      final_logits_bias=True)
    model = Transformer(cfg).eval()
    config = model_config_json(Config(model=cfg), CandidateSpace(3, 2, 2, 2),
                               {"src_lang": "de", "tgt_lang": "en"})
    save_model_dir(tmp_path / "ours", model, config, (tiny_data_dir / "spm.model").read_bytes())
    out = export_marian(tmp_path / "ours", tmp_path / "hf", "3-2")
    assert (out / "source.spm").read_bytes() == (tiny_data_dir / "spm.model").read_bytes()
    assert_close_scores(score(load_model_files(tmp_path / "ours"), None, SOURCES, TARGETS),
                        hf_log_probs(out, SOURCES, TARGETS))


def test_default_model_has_no_new_tensors():
    assert "logits_bias" not in Transformer(ModelConfig(vocab_size=50)).state_dict()
    for option, value in (("activation", "tanh"), ("positions", "fairseq"),
                          ("layer_norm_eps", 0.0)):
        with pytest.raises(UserError, match=f"model.{option}"):
            ModelConfig(**{option: value})


def _copy(marian_dir, tmp_path, edit_config=None, remove=()):
    out = tmp_path / "edited"
    shutil.copytree(marian_dir, out)
    if edit_config:
        config = json.loads((out / "config.json").read_text())
        config.update(edit_config)
        (out / "config.json").write_text(json.dumps(config))
    for name in remove:
        (out / name).unlink()
    return out


@pytest.mark.parametrize("edit,remove,message", [
    ({"model_type": "bart"}, (), "config.json: not a Marian model"),
    ({"normalize_before": True}, (), "unsupported Marian variant (normalize_before=true)"),
    ({"add_bias_logits": True}, (), "unsupported Marian variant (add_bias_logits=true)"),
    ({"decoder_ffn_dim": 64}, (), "encoder_ffn_dim differs"),
    ({"share_encoder_decoder_embeddings": False}, (), "share_encoder_decoder_embeddings"),
    ({"activation_function": "tanh"}, (), "activation_function 'tanh'"),
    ({"vocab_size": 999, "decoder_vocab_size": 999}, (), "says vocab_size 999"),
    (None, ("target.spm",), "target.spm: missing"),
    (None, ("config.json",), "config.json: missing"),
    (None, ("model.safetensors",), "model.safetensors: missing"),
])
def test_bad_marian_directories_are_one_line(tmp_path, marian_dir, edit, remove, message):
    with pytest.raises(UserError) as error:
        read_marian(_copy(marian_dir, tmp_path, edit, remove))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_pickle_weights_are_refused(tmp_path, marian_dir):
    out = _copy(marian_dir, tmp_path, remove=("model.safetensors",))
    (out / "pytorch_model.bin").write_bytes(b"\x80\x04 not read")
    with pytest.raises(UserError, match="pytorch_model.bin: a pickle.*safe_serialization=True"):
        read_marian(out)


def test_unmappable_models_are_refused(tmp_path, tiny_model_dir):
    with pytest.raises(UserError, match="model.positions=tensor2tensor does not map"):
        export_marian(tiny_model_dir, tmp_path / "hf")
    files = load_model_files(tiny_model_dir)
    cfg = ModelConfig(**{**files.config["model"], "pre_norm": True, "positions": "marian"})
    save_model_dir(tmp_path / "pre", Transformer(cfg),
                   model_config_json(Config(model=cfg), files.space, {}), files.tokenizer)
    with pytest.raises(UserError, match="pre-norm model does not map"):
        export_marian(tmp_path / "pre", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


# ----------------------------------------------------------------------------------------------
# The command line


def _text_files(tmp_path, sources, targets):
    src, tgt = tmp_path / "input.de", tmp_path / "input.en"
    src.write_text("".join(line + "\n" for line in sources), encoding="utf-8")
    tgt.write_text("".join(line + "\n" for line in targets), encoding="utf-8")
    return src, tgt


def _cli_scores(capsys, *argv):
    status, out, err = run_cli(["score", *argv], capsys)
    assert status == 0, err
    return [(float(total), int(count)) for total, count in
            (line.split("\t") for line in out.splitlines())]


def test_cli_import_then_score_equals_transformers(tmp_path, marian_dir, capsys):
    model = tmp_path / "model"
    status, _, err = run_cli(["import", marian_dir, "--out", model], capsys)
    assert status == 0 and "students 2-2 3-2 4-2 3-3 4-3" in err
    src, tgt = _text_files(tmp_path, SOURCES, TARGETS)
    theirs = hf_log_probs(marian_dir, SOURCES, TARGETS)
    assert_close_scores(_cli_scores(capsys, "--model", model, "--src", src, "--tgt", tgt), theirs)
    status, out, _ = run_cli(["score", "--model", model, "--src", src, "--tgt", tgt, "--json",
                              "--dtype", "float64", "--threads", "1"], capsys)
    rows = [json.loads(line) for line in out.splitlines()]
    assert status == 0 and sorted(rows[0]) == ["log_prob", "tokens"]
    assert_close_scores([(row["log_prob"], row["tokens"]) for row in rows], theirs)


@pytest.mark.parametrize("student", ["4-2", "2-2"])
def test_cli_exported_student_scores_equal_transformers(tmp_path, imported, capsys, student):
    out = tmp_path / "hf"
    status, _, err = run_cli(["export", "--model", imported, "--student", student, "--format",
                              "hf", "--out", out], capsys)
    assert status == 0, err
    assert transformers.MarianMTModel.from_pretrained(out).config.encoder_layers == int(
        student[0])
    src, tgt = _text_files(tmp_path, SOURCES, TARGETS)
    ours = _cli_scores(capsys, "--model", imported, "--student", student, "--src", src,
                       "--tgt", tgt)
    assert_close_scores(ours, hf_log_probs(out, SOURCES, TARGETS))


def test_cli_score_refuses_unequal_files(tmp_path, imported, capsys):
    src, tgt = _text_files(tmp_path, SOURCES, TARGETS[:-1])
    assert_refused(["score", "--model", imported, "--src", src, "--tgt", tgt], capsys, src, tgt,
                   "12 lines", "11")
    assert_refused(["score", "--model", imported, "--student", "4-4", "--src", src, "--tgt",
                    src], capsys, "4-4")


def _pickled(marian_dir, tmp_path):
    out = _copy(marian_dir, tmp_path, remove=("model.safetensors",))
    (out / "pytorch_model.bin").write_bytes(b"\x80\x04 not read")
    return out


@pytest.mark.parametrize("make, names", [
    (lambda m, t: t / "nowhere", ["nowhere", "no such directory"]),
    (lambda m, t: _copy(m, t, {"model_type": "bart"}), ["config.json", "not a Marian model"]),
    (lambda m, t: _copy(m, t, {"normalize_before": True}), ["config.json", "normalize_before"]),
    (_pickled, ["pytorch_model.bin", "pickle"]),
    (lambda m, t: _copy(m, t, remove=("source.spm",)), ["source.spm", "missing"]),
    (lambda m, t: _copy(m, t, remove=("vocab.json",)), ["vocab.json", "missing"]),
])
def test_cli_import_refuses_bad_directories(tmp_path, marian_dir, capsys, make, names):
    out = tmp_path / "model"
    assert_refused(["import", make(marian_dir, tmp_path), "--out", out], capsys, *names, out=out)


def test_cli_export_hf_refuses_what_does_not_map(tmp_path, tiny_model_dir, imported, capsys):
    out = tmp_path / "hf"
    assert_refused(["export", "--model", tiny_model_dir, "--format", "hf", "--out", out], capsys,
                   "model.positions=tensor2tensor", "train with model.positions=marian", out=out)
    assert_refused(["export", "--model", imported, "--format", "hf", "--quantization", "int8",
                    "--out", out], capsys, "--quantization int8", out=out)
