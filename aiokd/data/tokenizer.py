"""A model's tokenizer: text <-> the model's token ids, and the files it is stored as.

Two kinds, named by ``"tokenizer"`` in a model's ``config.json`` (absent: ``sentencepiece``):

* ``sentencepiece``: one joint SentencePiece model, ``spm.model``, whose ids are the model's ids
  (what ``aiokd prepare`` trains): :class:`SentencePieceTokenizer`, the one wrapper of a single
  SentencePiece model (a data directory's, checked against its manifest:
  :func:`aiokd.data.corpus.data_sentencepiece`).
* ``marian``: the tokenizer of a Marian (OPUS-MT) model (:class:`MarianTokenizer`),
  ``source.spm``, ``target.spm`` and ``vocab.json``.  A source line is split into pieces by the
  source SentencePiece model (a leading language tag such as ``>>fra<<`` stays one piece), and
  each piece is looked up in ``vocab.json``, ``<unk>`` when absent; target ids are looked up the
  other way and joined by the target SentencePiece model, special tokens (``<pad>``, ``</s>``,
  ``<unk>``) left out.  This is what Hugging Face's ``MarianTokenizer`` does.

Both give ids without EOS; the model appends it.  The files travel as bytes (model directories,
checkpoints, data directories): :class:`TokenizerFiles`.  Nothing is unpickled.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from aiokd.errors import UserError
from aiokd.io import atomic_write_bytes

SENTENCEPIECE = "sentencepiece"
MARIAN = "marian"
FILES = {SENTENCEPIECE: ("spm.model",), MARIAN: ("source.spm", "target.spm", "vocab.json")}
"""The files of each kind of tokenizer, by name."""
MARIAN_SPECIALS = ("<pad>", "</s>", "<unk>")


@dataclass(frozen=True)
class TokenizerFiles:
    """The files (name -> bytes) of a tokenizer of one of the kinds in :data:`FILES`."""

    kind: str
    files: dict[str, bytes]

    @classmethod
    def of(cls, value: bytes | TokenizerFiles) -> TokenizerFiles:
        """``value`` itself, or the joint SentencePiece model whose bytes ``value`` are."""
        if isinstance(value, TokenizerFiles):
            return value
        return cls(SENTENCEPIECE, {"spm.model": bytes(value)})

    @classmethod
    def read(cls, directory: str | os.PathLike, kind: str = SENTENCEPIECE) -> TokenizerFiles:
        """The files of a ``kind`` tokenizer from ``directory``.

        Raises:
            UserError: an unknown kind, or a missing file (named).
        """
        directory = Path(directory)
        if kind not in FILES:
            raise UserError(f"{directory}: unknown tokenizer kind {kind!r}; known: "
                            f"{', '.join(FILES)}")
        files = {}
        for name in FILES[kind]:
            path = directory / name
            if not path.is_file():
                raise UserError(f"{path}: missing ({kind} tokenizer file)")
            files[name] = path.read_bytes()
        return cls(kind, files)

    def write(self, directory: str | os.PathLike) -> None:
        """Write every file into ``directory``, each atomically."""
        for name, data in self.files.items():
            atomic_write_bytes(Path(directory) / name, data)

    @property
    def sha256(self) -> str:
        """Identity of the tokenizer: the SHA-256 of ``spm.model`` for the joint kind, else of
        each file's name, size and bytes in turn."""
        if self.kind == SENTENCEPIECE:
            return hashlib.sha256(self.files["spm.model"]).hexdigest()
        digest = hashlib.sha256(self.kind.encode())
        for name in FILES[self.kind]:
            data = self.files[name]
            digest.update(f"{name}:{len(data)}:".encode())
            digest.update(data)
        return digest.hexdigest()

    @property
    def identity(self) -> dict[str, str]:
        """How a model directory's ``config.json`` and a run's ``run.json`` name the tokenizer:
        ``spm_sha256`` for the joint kind, else its kind and ``tokenizer_sha256``."""
        if self.kind == SENTENCEPIECE:
            return {"spm_sha256": self.sha256}
        return {"tokenizer": self.kind, "tokenizer_sha256": self.sha256}

    def spm_bytes(self, where: str | os.PathLike) -> bytes:
        """The joint SentencePiece model; a UserError naming ``where`` for another kind."""
        if self.kind != SENTENCEPIECE:
            raise UserError(f"{where} has a {self.kind} tokenizer, not one joint SentencePiece "
                            "model, which this step needs")
        return self.files["spm.model"]

    def load(self, where: str | os.PathLike) -> SentencePieceTokenizer | MarianTokenizer:
        """The tokenizer to encode and decode with; UserError naming ``where`` if damaged."""
        if self.kind == SENTENCEPIECE:
            return SentencePieceTokenizer(_processor(self.files["spm.model"], where, "spm.model"))
        return MarianTokenizer(_processor(self.files["source.spm"], where, "source.spm"),
                               _processor(self.files["target.spm"], where, "target.spm"),
                               _marian_vocab(self.files["vocab.json"], where))


def _processor(data: bytes, where: str | os.PathLike, name: str) -> spm.SentencePieceProcessor:
    try:
        return spm.SentencePieceProcessor(model_proto=data)
    except RuntimeError:
        raise UserError(f"{Path(where) / name}: damaged SentencePiece model") from None


def _marian_vocab(data: bytes, where: str | os.PathLike) -> list[str]:
    """The pieces of ``vocab.json`` by id, checked: ids ``0..V-1``, each once."""
    path = Path(where) / "vocab.json"
    try:
        vocab = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{path}: not valid JSON") from None
    if not isinstance(vocab, dict) or not all(type(i) is int for i in vocab.values()):
        raise UserError(f"{path}: expected a JSON object mapping pieces to integer ids")
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise UserError(f"{path}: the ids are not 0..{len(vocab) - 1}, each used once")
    missing = [token for token in MARIAN_SPECIALS if token not in vocab]
    if missing:
        raise UserError(f"{path}: no {missing[0]} token")
    pieces = [""] * len(vocab)
    for piece, index in vocab.items():
        pieces[index] = piece
    return pieces


class SentencePieceTokenizer:
    """One joint SentencePiece model: its ids are the model's ids.  ``path`` is the file it was
    loaded from (None when it came from bytes)."""

    def __init__(self, processor: spm.SentencePieceProcessor, path: Path | None = None):
        self._sp = processor
        self.path = path

    @classmethod
    def load(cls, path: str | os.PathLike) -> SentencePieceTokenizer:
        """The SentencePiece model of the ``.model`` file ``path``.

        Raises:
            UserError: the file is missing or not a SentencePiece model.
        """
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such SentencePiece model")
        processor = spm.SentencePieceProcessor()
        try:
            processor.LoadFromSerializedProto(path.read_bytes())
        except (RuntimeError, OSError) as error:
            raise UserError(f"{path}: not a SentencePiece model ({error})") from error
        return cls(processor, path)

    @functools.cached_property
    def pieces(self) -> list[str]:
        """The piece of each id: ``pieces[i]`` is the piece of id ``i``."""
        return [self._sp.id_to_piece(i) for i in range(self._sp.get_piece_size())]

    @property
    def vocab_size(self) -> int:
        """The number of pieces."""
        return self._sp.get_piece_size()

    @property
    def pad_id(self) -> int:
        """The id of the padding piece (-1 when the model has none)."""
        return self._sp.pad_id()

    @property
    def unk_id(self) -> int:
        """The id of the unknown piece."""
        return self._sp.unk_id()

    @property
    def bos_id(self) -> int:
        """The id of the beginning-of-sentence piece (-1 when the model has none)."""
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        """The id of the end-of-sentence piece (-1 when the model has none)."""
        return self._sp.eos_id()

    def encode(self, text: str) -> list[int]:
        """The ids of one line, without BOS/EOS."""
        return self._sp.encode(text)

    def encode_batch(self, lines: list[str], num_threads: int = 1) -> list[list[int]]:
        """The ids of each line, without BOS/EOS (much faster than one :meth:`encode` per
        line)."""
        return self._sp.encode(lines, num_threads=num_threads)

    def encode_source(self, lines: list[str]) -> list[list[int]]:
        """The ids of each line, without EOS."""
        return self._sp.encode(lines)

    encode_target = encode_source

    def decode(self, ids) -> str:
        """The text of target ids; pad, BOS and EOS are left out."""
        return self._sp.decode([int(token) for token in ids])


class MarianTokenizer:
    """Source and target SentencePiece models joined by one vocabulary (see the module
    docstring); ``pieces[i]`` is the piece of id ``i``."""

    def __init__(self, source: spm.SentencePieceProcessor, target: spm.SentencePieceProcessor,
                 pieces: list[str]):
        self._source, self._target = source, target
        self.pieces = pieces
        self.ids = {piece: i for i, piece in enumerate(pieces)}
        self.unk_id = self.ids["<unk>"]
        self._specials = {self.ids[token] for token in MARIAN_SPECIALS}

    def _encode(self, processor: spm.SentencePieceProcessor, lines: list[str]) -> list[list[int]]:
        tags, texts = zip(*map(_language_tag, lines), strict=True) if lines else ((), ())
        encoded = processor.encode(list(texts), out_type=str)
        return [[self.ids.get(piece, self.unk_id) for piece in tag + pieces]
                for tag, pieces in zip(tags, encoded, strict=True)]

    def encode_source(self, lines: list[str]) -> list[list[int]]:
        """Ids of each source line, without EOS."""
        return self._encode(self._source, lines)

    def encode_target(self, lines: list[str]) -> list[list[int]]:
        """Ids of each target line (the target SentencePiece model), without EOS."""
        return self._encode(self._target, lines)

    def decode(self, ids) -> str:
        """Text of target ids, special tokens left out."""
        pieces = [self.pieces[int(i)] for i in ids if int(i) not in self._specials]
        return self._target.decode_pieces(pieces)


def _language_tag(line: str) -> tuple[list[str], str]:
    """``">>fra<< text"`` -> ``([">>fra<<"], " text")``; a line without a tag: ``([], line)``."""
    end = line.find("<<") if line.startswith(">>") else -1
    if end == -1:
        return [], line
    return [line[:end + 2]], line[end + 2:]


@dataclass(frozen=True)
class ModelTokenizer:
    """The tokenizer of an aiokd model directory and the ids the model gives its special
    tokens: what ``aiokd prepare --tokenizer MODEL`` encodes with."""

    files: TokenizerFiles
    source: Path
    vocab_size: int
    pad_id: int
    unk_id: int
    bos_id: int
    eos_id: int

    @property
    def special_ids(self) -> dict[str, int]:
        return {"pad_id": self.pad_id, "unk_id": self.unk_id, "bos_id": self.bos_id,
                "eos_id": self.eos_id}


def read_model_tokenizer(directory: str | os.PathLike) -> ModelTokenizer:
    """The tokenizer of the aiokd model directory ``directory`` (a run directory, an extracted
    student, an imported model), checked against its ``config.json``.

    Raises:
        UserError: not a model directory (a Marian directory is named as such: import it first),
            a missing or damaged tokenizer file, or a vocabulary that does not fit the model.
    """
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise UserError(f"--tokenizer {directory}: not an aiokd model directory (no "
                        "config.json)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{config_path}: not valid JSON") from None
    if isinstance(config, dict) and config.get("model_type") == "marian":
        raise UserError(f"--tokenizer {directory}: a Marian directory, not an aiokd model; "
                        f"import it first: aiokd import {directory} --out MODEL")
    model = config.get("model") if isinstance(config, dict) else None
    ids = ({key: model.get(key) for key in ("vocab_size", "pad_id", "bos_id", "eos_id")}
           if isinstance(model, dict) and config.get("format") == "aiokd-model" else {})
    if not ids or not all(type(value) is int for value in ids.values()):
        raise UserError(f"{config_path}: not a valid aiokd model config")
    files = TokenizerFiles.read(directory, config.get("tokenizer", SENTENCEPIECE))
    tokenizer = files.load(directory)
    if len(tokenizer.pieces) != ids["vocab_size"]:
        raise UserError(f"{directory}: the tokenizer has {len(tokenizer.pieces)} pieces but "
                        f"{config_path} says model.vocab_size {ids['vocab_size']}")
    return ModelTokenizer(files, directory, unk_id=tokenizer.unk_id, **ids)
