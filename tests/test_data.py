"""Loading a prepared data directory: manifest, splits, tokenizer, and damaged files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from aiokd.data.corpus import ParallelSplit, data_sentencepiece, load_manifest
from aiokd.data.tokenizer import SentencePieceTokenizer
from aiokd.errors import UserError
from tests.conftest import TINY_VOCAB


@pytest.fixture
def data_copy(tmp_path, tiny_data_dir):
    """A copy of the tiny data directory that a test may damage."""
    return shutil.copytree(tiny_data_dir, tmp_path / "data")


def test_split_access(tiny_data_dir, tiny_corpus):
    split = ParallelSplit.load(tiny_data_dir, "train")
    assert len(split) == 300
    assert split.src_lengths.dtype == np.int64 and split.tgt_lengths.shape == (300,)
    assert split.src(0).dtype == np.int64
    assert len(split.src(5)) == split.src_lengths[5]
    assert np.array_equal(split.tgt(-1), split.tgt(299))
    assert split.source_lines() == tiny_corpus["train"][0]
    assert split.target_lines() == tiny_corpus["train"][1]
    with pytest.raises(IndexError):
        split.src(300)


def test_ids_hold_no_bos_or_eos(tiny_data_dir):
    split = ParallelSplit.load(tiny_data_dir, "valid")
    ids = np.concatenate([split.src(i) for i in range(len(split))])
    assert not np.isin(ids, [0, 2, 3]).any()


def test_unknown_split_lists_available(tiny_data_dir):
    with pytest.raises(UserError, match="no split 'dev'; available: train, valid, test"):
        ParallelSplit.load(tiny_data_dir, "dev")


def test_tokenizer(tiny_data_dir):
    tokenizer = data_sentencepiece(tiny_data_dir)
    assert tokenizer.vocab_size == TINY_VOCAB
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2, 3)
    ids = tokenizer.encode("Der hund läuft schnell .")
    assert tokenizer.decode(ids) == "Der hund läuft schnell ."
    assert tokenizer.decode(np.array([2, *ids, 3, 0, 0])) == "Der hund läuft schnell ."
    assert tokenizer.encode_batch(["Der hund .", "Ein ball ."])[0] == tokenizer.encode("Der hund .")


def test_tokenizer_errors(tmp_path):
    with pytest.raises(UserError, match="no such SentencePiece model"):
        SentencePieceTokenizer.load(tmp_path / "spm.model")
    (tmp_path / "spm.model").write_bytes(b"not a model")
    with pytest.raises(UserError, match="spm.model: not a SentencePiece model"):
        SentencePieceTokenizer.load(tmp_path / "spm.model")


def test_manifest_errors(tmp_path, data_copy):
    with pytest.raises(UserError, match="no such data directory"):
        load_manifest(tmp_path / "nowhere")
    with pytest.raises(UserError, match="not a prepared data directory"):
        load_manifest(tmp_path)
    manifest_path = data_copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(UserError, match="unsupported aiokd-data version 99"):
        load_manifest(data_copy)
    manifest_path.write_text(json.dumps({**manifest, "format": "other"}))
    with pytest.raises(UserError, match="not an aiokd-data manifest"):
        load_manifest(data_copy)
    manifest_path.write_text('{"format": ')
    with pytest.raises(UserError, match=r"manifest\.json: damaged manifest"):
        load_manifest(data_copy)


def test_truncated_ids(data_copy):
    path = data_copy / "train.de.ids.npy"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match=r"train\.de\.ids\.npy: truncated"):
        ParallelSplit.load(data_copy, "train")


def test_missing_array(data_copy):
    (data_copy / "valid.en.offsets.npy").unlink()
    with pytest.raises(UserError, match=r"valid\.en\.offsets\.npy: missing"):
        ParallelSplit.load(data_copy, "valid")


def test_inconsistent_offsets(data_copy):
    path = data_copy / "test.en.offsets.npy"
    offsets = np.load(path)
    offsets[-1] += 1
    np.save(path, offsets)
    with pytest.raises(UserError, match=r"test\.en\.offsets\.npy: offsets inconsistent"):
        ParallelSplit.load(data_copy, "test")


def test_ids_outside_vocabulary(data_copy):
    path = data_copy / "test.de.ids.npy"
    ids = np.load(path)
    ids[3] = TINY_VOCAB
    np.save(path, ids)
    with pytest.raises(UserError, match=r"test\.de\.ids\.npy: ids outside the vocabulary"):
        ParallelSplit.load(data_copy, "test")


def test_text_with_wrong_line_count(data_copy):
    path = data_copy / "valid.en.txt"
    path.write_text("only one line\n")
    split = ParallelSplit.load(data_copy, "valid")
    with pytest.raises(UserError, match=r"valid\.en\.txt: 1 lines but the split has 30 pairs"):
        split.target_lines()
