"""Token-based batches bucketed by length, and their collation into padded tensors.

Sentences are sorted by (target length, source length) with a seeded random tie-break, cut into
batches whose padded size ``n_sentences * max_len`` stays within ``max_tokens``, and the batches are
shuffled with a generator seeded by (seed, epoch).  The order of an epoch is therefore a pure
function of the data, the seed and the epoch, and a position in it is just ``(epoch, index)``:
that is all a checkpoint needs to resume the data stream exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


def token_batches(src_lengths: np.ndarray, tgt_lengths: np.ndarray, max_tokens: int,
                  seed: int = 0, epoch: int = 0, shuffle: bool = True) -> list[np.ndarray]:
    """Indices of the sentences in each batch.

    Lengths count tokens without EOS/BOS; one is added for it.  A sentence longer than
    ``max_tokens`` forms a batch of its own.
    """
    src = np.asarray(src_lengths, dtype=np.int64) + 1
    tgt = np.asarray(tgt_lengths, dtype=np.int64) + 1
    rng = np.random.default_rng([seed, epoch])
    tie_break = rng.permutation(len(src)) if shuffle else np.arange(len(src))
    order = tie_break[np.lexsort((src[tie_break], tgt[tie_break]))]
    longest = np.maximum(src, tgt)[order]
    batches, start, running_max = [], 0, 0
    for i, length in enumerate(longest):
        running_max = max(running_max, int(length))
        if i > start and running_max * (i - start + 1) > max_tokens:
            batches.append(order[start:i])
            start, running_max = i, int(length)
    if start < len(order):
        batches.append(order[start:])
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


@dataclass
class Batch:
    """A padded batch. ``src (B, S)`` = x + EOS; ``prev_tgt (B, T)`` = BOS + y; ``target (B, T)`` =
    y + EOS; ``tokens`` the number of non-pad target tokens."""

    src: Tensor
    prev_tgt: Tensor
    target: Tensor
    tokens: int

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.src.to(device, non_blocking=True),
                     self.prev_tgt.to(device, non_blocking=True),
                     self.target.to(device, non_blocking=True), self.tokens)


def pad_sequences(sequences: list[np.ndarray], pad_id: int, prefix: int | None = None,
                  suffix: int | None = None) -> Tensor:
    """Right-padded ``(B, L)`` int64 tensor of ``[prefix] + sequence + [suffix]``."""
    extra = (prefix is not None) + (suffix is not None)
    width = max(len(s) for s in sequences) + extra
    out = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    for row, sequence in enumerate(sequences):
        values = np.asarray(sequence, dtype=np.int64)
        start = 0
        if prefix is not None:
            out[row, 0] = prefix
            start = 1
        out[row, start:start + len(values)] = torch.from_numpy(values)
        if suffix is not None:
            out[row, start + len(values)] = suffix
    return out


def collate(sources: list[np.ndarray], targets: list[np.ndarray], pad_id: int, bos_id: int,
            eos_id: int) -> Batch:
    src = pad_sequences(sources, pad_id, suffix=eos_id)
    prev_tgt = pad_sequences(targets, pad_id, prefix=bos_id)
    target = pad_sequences(targets, pad_id, suffix=eos_id)
    return Batch(src, prev_tgt, target, int(sum(len(t) + 1 for t in targets)))
