"""A tiny randomly initialised Hugging Face Marian (OPUS-MT) model built with ``transformers``
(nothing is downloaded), and transformers' log-probabilities to compare aiokd's with."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import sentencepiece as spm
import torch

from tests.conftest import make_corpus


def _train_spm(lines: list[str], prefix: Path) -> None:
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(prefix),
                                   vocab_size=60, character_coverage=1.0, minloglevel=2,
                                   pad_id=-1, unk_id=0, bos_id=-1, eos_id=1)


def make_marian_dir(root: Path) -> Path:
    """``root/opus-mt-de-en``: 4 encoder and 3 decoder layers, d_model 16, swish, a random
    final_logits_bias, separate source and target SentencePiece models, one vocab.json."""
    import transformers

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


def hf_log_probs(directory: Path, sources: list[str],
                 targets: list[str]) -> list[tuple[float, int]]:
    """Total log-probability and token count of each target under transformers' model."""
    import transformers

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


def assert_close_scores(ours: list[tuple[float, int]], theirs: list[tuple[float, int]]) -> None:
    assert [count for _, count in ours] == [count for _, count in theirs]
    for (a, _), (b, _) in zip(ours, theirs, strict=True):
        assert a == pytest.approx(b, rel=1e-4, abs=1e-4)
