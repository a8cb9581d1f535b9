"""Marian (OPUS-MT) models: import, scoring, decoding and export against Hugging Face's
``MarianMTModel`` on a tiny randomly initialised model built here (nothing is downloaded)."""

from __future__ import annotations

import json
import shutil

import pytest
import sentencepiece as spm
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
from tests.conftest import make_corpus

transformers = pytest.importorskip("transformers")

SOURCES, TARGETS = make_corpus(12, seed=41)


def _train_spm(lines: list[str], prefix) -> None:
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(prefix),
                                   vocab_size=60, character_coverage=1.0, minloglevel=2,
                                   pad_id=-1, unk_id=0, bos_id=-1, eos_id=1)


@pytest.fixture(scope="module")
def marian_dir(tmp_path_factory):
    """A Marian directory: 4 encoder and 3 decoder layers, d_model 16, swish, a random
    final_logits_bias, separate source and target SentencePiece models, one vocab.json."""
    root = tmp_path_factory.mktemp("marian")
    src, tgt = make_corpus(300, seed=40)
    _train_spm(src, root / "source")
    _train_spm(tgt, root / "target")
    out = root / "opus-mt-de-en"
    out.mkdir()
    pieces = []
    for side in ("source", "target"):
        processor = spm.SentencePieceProcessor(model_file=str(root / f"{side}.model"))
        pieces += [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
        shutil.copy(root / f"{side}.model", out / f"{side}.spm")
    ordered = ["</s>", "<unk>"] + sorted(set(pieces) - {"</s>", "<unk>"}) + ["<pad>"]
    vocab = {piece: i for i, piece in enumerate(ordered)}
    (out / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"source_lang": "de", "target_lang": "en", "separate_vocabs": False}), encoding="utf-8")
    pad = len(vocab) - 1
    cfg = transformers.MarianConfig(
        vocab_size=len(vocab), d_model=16, encoder_layers=4, decoder_layers=3,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
        decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=pad, eos_token_id=0,
        decoder_start_token_id=pad, forced_eos_token_id=0, scale_embedding=True,
        activation_function="swish", dropout=0.0, init_std=0.3)
    torch.manual_seed(0)
    model = transformers.MarianMTModel(cfg)
    with torch.no_grad():
        model.final_logits_bias.normal_()
    model.save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def imported(tmp_path_factory, marian_dir):
    return import_marian(marian_dir, tmp_path_factory.mktemp("imported") / "model")


def hf_log_probs(directory, sources: list[str], targets: list[str]) -> list[tuple[float, int]]:
    """Total log-probability and token count of each target under transformers' model."""
    tokenizer = transformers.MarianTokenizer.from_pretrained(directory)
    model = transformers.MarianMTModel.from_pretrained(directory).eval()
    results = []
    for source, target in zip(sources, targets, strict=True):
        batch = tokenizer([source], text_target=[target], return_tensors="pt")
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"], labels=batch["labels"]).logits
        picked = torch.log_softmax(logits.double(), -1).gather(-1, batch["labels"][..., None])
        results.append((picked.sum().item(), batch["labels"].shape[1]))
    return results


def assert_close_scores(ours, theirs):
    assert [count for _, count in ours] == [count for _, count in theirs]
    for (a, _), (b, _) in zip(ours, theirs, strict=True):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-4)


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
