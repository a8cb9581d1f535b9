"""How ``aiokd prepare`` turns text into token ids: a new joint SentencePiece model trained on
the training text, or the tokenizer of an existing model (``--tokenizer MODEL``).

Either way the result is an :class:`Encoder` (sources and targets to ids, without EOS) and the
entries of ``manifest.json`` that name the tokenizer (:func:`aiokd.data.corpus.data_tokenizer`
reads them back): ``spm_model`` for a joint SentencePiece model; ``tokenizer`` (its kind) for
another kind; ``tokenizer_from`` for a model's tokenizer; and the vocabulary size and special ids.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sentencepiece as spm

from aiokd.data.tokenizer import SENTENCEPIECE, ModelTokenizer, SentencePieceTokenizer
from aiokd.errors import UserError

SPM_MODEL = "spm.model"
SPECIAL_IDS = {"pad_id": 0, "unk_id": 1, "bos_id": 2, "eos_id": 3}
"""The ids of the special pieces of a SentencePiece model trained here."""
SPM_INPUT_SENTENCE_SIZE = 2_000_000
SPM_SEED = 1
_THREADS = min(4, os.cpu_count() or 1)
_VOCAB_TOO_HIGH = re.compile(r"Please set it to a value <= (\d+)")
_VOCAB_TOO_LOW = re.compile(r"smaller than required_chars\. \d+ vs (\d+)")


@dataclass(frozen=True)
class Encoder:
    """How the sides of a split become ids, and the size of the vocabulary they index."""

    source: Callable[[list[str]], list[list[int]]]
    target: Callable[[list[str]], list[list[int]]]
    vocab_size: int


def train_sentencepiece(
    lines: list[str], vocab_size: int, prefix: Path, model_type: str = "unigram"
) -> SentencePieceTokenizer:
    """Train the joint SentencePiece model ``PREFIX.model`` (and ``.vocab``) on ``lines``;
    the model, loaded from ``PREFIX.model``.

    Raises:
        UserError: ``vocab_size`` does not suit the data (naming ``--vocab-size`` and the bound
            SentencePiece reports).
    """
    spm.set_random_generator_seed(SPM_SEED)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines),
            model_prefix=str(prefix),
            model_type=model_type,
            vocab_size=vocab_size,
            character_coverage=1.0,
            input_sentence_size=SPM_INPUT_SENTENCE_SIZE,
            shuffle_input_sentence=True,
            num_threads=_THREADS,
            minloglevel=2,
            **SPECIAL_IDS,
        )
    except RuntimeError as error:
        raise _vocab_error(vocab_size, str(error)) from error
    return SentencePieceTokenizer.load(prefix.with_suffix(".model"))


def _vocab_error(vocab_size: int, message: str) -> UserError:
    """A one-line explanation of a failed SentencePiece training."""
    too_high, too_low = _VOCAB_TOO_HIGH.search(message), _VOCAB_TOO_LOW.search(message)
    if too_high:
        return UserError(f"--vocab-size {vocab_size} is too large for this training data; "
                         f"SentencePiece allows at most {too_high.group(1)}")
    if too_low:
        return UserError(f"--vocab-size {vocab_size} is too small for this training data: it "
                         f"has {too_low.group(1)} distinct characters and special pieces")
    return UserError(f"SentencePiece training failed with --vocab-size {vocab_size}: "
                     f"{message.splitlines()[0] if message else 'no reason given'}")



def trained_encoder(directory: Path, text: list[str], vocab_size: int,
                    model_type: str) -> tuple[Encoder, dict[str, Any]]:
    """Train the joint SentencePiece model ``spm.model`` on ``text`` (both sides of the
    training data) into ``directory``; the encoder and the manifest's entries for it."""
    tokenizer = train_sentencepiece(text, vocab_size, directory / Path(SPM_MODEL).stem, model_type)
    encode = functools.partial(tokenizer.encode_batch, num_threads=_THREADS)
    return Encoder(encode, encode, tokenizer.vocab_size), {
        "spm_model": SPM_MODEL, "spm_type": model_type, "vocab_size": tokenizer.vocab_size,
        **SPECIAL_IDS}


def model_encoder(directory: Path, model: ModelTokenizer) -> tuple[Encoder, dict[str, Any]]:
    """Copy the tokenizer of ``model`` into ``directory``; the encoder (sources with its source
    side, targets with its target side) and the manifest's entries for it."""
    model.files.write(directory)
    tokenizer = model.files.load(model.source)
    kind = ({"spm_model": SPM_MODEL} if model.files.kind == SENTENCEPIECE else
            {"tokenizer": model.files.kind})
    return Encoder(tokenizer.encode_source, tokenizer.encode_target, model.vocab_size), {
        **kind, "tokenizer_from": str(model.source.resolve()), "vocab_size": model.vocab_size,
        **model.special_ids}
