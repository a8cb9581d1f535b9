"""Reading a data directory made by ``aiokd prepare``.

Layout (all files of one directory)::

    manifest.json                  what is here (see :func:`load_manifest`)
    spm.model, spm.vocab           the joint SentencePiece model (:func:`data_sentencepiece`), or
                                   another model's tokenizer (``"tokenizer"`` in the manifest:
                                   see :func:`data_tokenizer`)
    {split}.{lang}.ids.npy         token ids of all lines of one side, concatenated (no BOS/EOS)
    {split}.{lang}.offsets.npy     int64, n + 1 entries: line i is ids[offsets[i]:offsets[i + 1]]
    {split}.{lang}.txt             the cleaned raw text, one line per pair

Token ids are stored as ``uint16`` when the vocabulary fits, else ``int32``.  Arrays are
memory-mapped, so opening a split costs little memory whatever its size.
"""

from __future__ import annotations

import itertools
import json
import operator
import os
from pathlib import Path
from typing import Any

import numpy as np

from aiokd.data.text import read_lines
from aiokd.data.tokenizer import FILES, SENTENCEPIECE, SentencePieceTokenizer, TokenizerFiles
from aiokd.errors import UserError

FORMAT = "aiokd-data"
VERSION = 1
MANIFEST = "manifest.json"
_REQUIRED_KEYS = ("src_lang", "tgt_lang", "vocab_size", "pad_id", "unk_id", "bos_id", "eos_id",
                  "splits")


def ids_dtype(vocab_size: int) -> np.dtype:
    """The smallest stored id type: ``uint16`` for vocabularies up to 65,536 pieces, else int32."""
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.int32)


def side_files(split: str, lang: str) -> dict[str, str]:
    """File names of one side of one split: ``ids``, ``offsets`` and ``text``."""
    return {
        "ids": f"{split}.{lang}.ids.npy",
        "offsets": f"{split}.{lang}.offsets.npy",
        "text": f"{split}.{lang}.txt",
    }


def load_manifest(data_dir: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``manifest.json`` of a prepared data directory.

    Raises:
        UserError: the directory or its manifest is missing, the manifest is not valid JSON, or
            it does not describe an ``aiokd-data`` directory of a supported version.
    """
    data_dir = Path(data_dir)
    path = data_dir / MANIFEST
    if not data_dir.is_dir():
        raise UserError(f"{data_dir}: no such data directory")
    if not path.is_file():
        raise UserError(f"{data_dir}: not a prepared data directory (no {MANIFEST}); "
                        "make one with `aiokd prepare`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"{path}: damaged manifest ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path}: not an {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise UserError(f"{path}: unsupported {FORMAT} version {manifest.get('version')!r} "
                        f"(this aiokd reads version {VERSION})")
    kind = manifest.get("tokenizer", SENTENCEPIECE)
    if kind not in FILES:
        raise UserError(f"{path}: unknown tokenizer kind {kind!r}; known: {', '.join(FILES)}")
    required = (*_REQUIRED_KEYS, "spm_model") if kind == SENTENCEPIECE else _REQUIRED_KEYS
    missing = [key for key in required if key not in manifest]
    if missing:
        raise UserError(f"{path}: damaged manifest (missing {', '.join(missing)})")
    if not isinstance(manifest["splits"], dict):
        raise UserError(f"{path}: damaged manifest (splits is not a mapping)")
    return manifest


def data_tokenizer(data_dir: str | os.PathLike) -> TokenizerFiles:
    """The files of the tokenizer ``data_dir`` is encoded with: the joint SentencePiece model
    the manifest names (``spm_model``), or, where the manifest says ``"tokenizer": KIND``, the
    files of that kind (:mod:`aiokd.data.tokenizer`) taken from a model by
    ``aiokd prepare --tokenizer``.

    Raises:
        UserError: a damaged manifest or a missing tokenizer file (named).
    """
    manifest = load_manifest(data_dir)
    kind = manifest.get("tokenizer", SENTENCEPIECE)
    if kind != SENTENCEPIECE:
        return TokenizerFiles.read(data_dir, kind)
    path = Path(data_dir) / manifest["spm_model"]
    if not path.is_file():
        raise UserError(f"{path}: missing from the data directory; run `aiokd prepare` again")
    return TokenizerFiles.of(path.read_bytes())


def data_sentencepiece(data_dir: str | os.PathLike) -> SentencePieceTokenizer:
    """The joint SentencePiece model named by the manifest of ``data_dir``, checked against it
    (vocabulary size and special ids).

    Raises:
        UserError: the manifest or the model is missing, the directory is encoded with another
            kind of tokenizer, or the model and the manifest disagree.
    """
    manifest = load_manifest(data_dir)
    if manifest.get("tokenizer", SENTENCEPIECE) != SENTENCEPIECE:
        raise UserError(f"{data_dir} is encoded with a {manifest['tokenizer']} tokenizer, "
                        "not one joint SentencePiece model")
    tokenizer = SentencePieceTokenizer.load(Path(data_dir) / manifest["spm_model"])
    for key in ("vocab_size", "pad_id", "unk_id", "bos_id", "eos_id"):
        if getattr(tokenizer, key) != manifest[key]:
            raise UserError(f"{tokenizer.path}: {key} is {getattr(tokenizer, key)} but "
                            f"{Path(data_dir) / MANIFEST} says {manifest[key]}")
    return tokenizer


def _load_array(path: Path) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"{path}: missing from the data directory; run `aiokd prepare` again")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise UserError(f"{path}: truncated or not a .npy array ({error})") from error
    if array.ndim != 1 or array.dtype.kind not in "iu":
        raise UserError(f"{path}: expected a 1-D integer array, found {array.dtype} "
                        f"with shape {array.shape}")
    return array


def _check_offsets(path: Path, offsets: np.ndarray, pairs: int, num_ids: int) -> None:
    if len(offsets) != pairs + 1:
        raise UserError(f"{path}: {len(offsets) - 1} lines but the manifest says {pairs}")
    if offsets[0] != 0 or offsets[-1] != num_ids or np.any(np.diff(offsets) < 0):
        raise UserError(f"{path}: offsets inconsistent with the ids file "
                        f"({num_ids} ids); the data directory is damaged")


def _check_ids(path: Path, ids: np.ndarray, vocab_size: int, expected: int | None) -> None:
    if expected is not None and len(ids) != expected:
        raise UserError(f"{path}: {len(ids)} ids but the manifest says {expected}")
    if len(ids) and (int(ids.max()) >= vocab_size or int(ids.min()) < 0):
        raise UserError(f"{path}: ids outside the vocabulary of {vocab_size}")


class _Side:
    """The ids, offsets and text file of one language of one split, validated."""

    def __init__(self, data_dir: Path, split: str, side: str, manifest: dict):
        entry = manifest["splits"][split]
        files = side_files(split, manifest[f"{side}_lang"])
        ids_path, offsets_path = data_dir / files["ids"], data_dir / files["offsets"]
        self.ids = _load_array(ids_path)
        self.offsets = _load_array(offsets_path)
        _check_ids(ids_path, self.ids, manifest["vocab_size"], entry.get(f"{side}_tokens"))
        _check_offsets(offsets_path, self.offsets, entry["pairs"], len(self.ids))
        self.lengths = np.diff(self.offsets).astype(np.int64)
        self.text_path = data_dir / files["text"]

    def __getitem__(self, index: int) -> np.ndarray:
        return np.asarray(self.ids[self.offsets[index]:self.offsets[index + 1]], dtype=np.int64)

    def lines(self) -> list[str]:
        lines = read_lines(self.text_path)
        if len(lines) != len(self.lengths):
            raise UserError(f"{self.text_path}: {len(lines)} lines but the split has "
                            f"{len(self.lengths)} pairs; the data directory is damaged")
        return lines


class ParallelSplit:
    """One split (``train``, ``valid`` or a test set) of a prepared data directory.

    ``src(i)`` / ``tgt(i)`` are the token ids of pair ``i`` as int64 arrays without BOS/EOS;
    ``src_lengths`` / ``tgt_lengths`` their lengths for all pairs.
    """

    def __init__(self, data_dir: Path, name: str, manifest: dict, src: _Side, tgt: _Side):
        self.data_dir = data_dir
        self.name = name
        self.manifest = manifest
        self._src = src
        self._tgt = tgt

    @classmethod
    def load(cls, data_dir: str | os.PathLike, split: str) -> ParallelSplit:
        """Open ``split`` of ``data_dir`` (memory-mapped) after checking its files.

        Raises:
            UserError: unknown split (the message lists the available ones), or a missing,
                truncated or inconsistent file (the message names it).
        """
        data_dir = Path(data_dir)
        manifest = load_manifest(data_dir)
        splits = manifest["splits"]
        if split not in splits:
            raise UserError(f"{data_dir}: no split {split!r}; available: {', '.join(splits)}")
        if not isinstance(splits[split], dict) or not isinstance(splits[split].get("pairs"), int):
            raise UserError(f"{data_dir / MANIFEST}: damaged manifest (split {split!r})")
        src = _Side(data_dir, split, "src", manifest)
        tgt = _Side(data_dir, split, "tgt", manifest)
        return cls(data_dir, split, manifest, src, tgt)

    def __len__(self) -> int:
        return len(self._src.lengths)

    @property
    def src_lengths(self) -> np.ndarray:
        """Source token counts (without EOS) of all pairs, int64."""
        return self._src.lengths

    @property
    def tgt_lengths(self) -> np.ndarray:
        """Target token counts (without EOS) of all pairs, int64."""
        return self._tgt.lengths

    def _index(self, i: int) -> int:
        index = operator.index(i)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"pair {i} out of range for split {self.name!r} of {len(self)} pairs")
        return index

    def src(self, i: int) -> np.ndarray:
        """Source token ids of pair ``i`` (int64, no BOS/EOS)."""
        return self._src[self._index(i)]

    def tgt(self, i: int) -> np.ndarray:
        """Target token ids of pair ``i`` (int64, no BOS/EOS)."""
        return self._tgt[self._index(i)]

    def source_lines(self) -> list[str]:
        """The cleaned raw source text of the split, one string per pair."""
        return self._src.lines()

    def target_lines(self) -> list[str]:
        """The cleaned raw target text (the references of a test set), one string per pair."""
        return self._tgt.lines()


def write_side(directory: Path, name: str, lang: str, lines: list[str],
                ids: list[list[int]], dtype: np.dtype) -> int:
    """Write ids, offsets and text of one side of a split (the layout above); return its number
    of tokens."""
    files = side_files(name, lang)
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)), out=offsets[1:])
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=dtype, count=int(offsets[-1]))
    np.save(directory / files["ids"], flat)
    np.save(directory / files["offsets"], offsets)
    with open(directory / files["text"], "w", encoding="utf-8", newline="\n") as handle:
        handle.writelines(line + "\n" for line in lines)
    return int(offsets[-1])
