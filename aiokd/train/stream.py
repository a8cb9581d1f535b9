"""The training data of one process: a resumable stream of its batches, and the check that
every sentence fits the model's positions."""

from __future__ import annotations

import numpy as np
import torch

from aiokd.config import Config, ModelConfig
from aiokd.data.batching import Batch, collate, token_batches
from aiokd.data.corpus import ParallelSplit
from aiokd.errors import UserError
from aiokd.train.distributed import Distributed


def check_lengths(model: ModelConfig, *splits: ParallelSplit) -> None:
    """UserError if a sentence of ``splits`` (with its BOS or EOS) exceeds the model's positions."""
    for split in splits:
        longest = int(max(split.src_lengths.max(initial=0), split.tgt_lengths.max(initial=0)))
        if longest + 1 > model.max_positions:
            raise UserError(f"{split.data_dir}: the {split.name} split has a sentence of {longest} "
                            f"tokens, more than model.max_positions={model.max_positions} allows; "
                            "prepare the data with a lower --max-len")


class BatchStream:
    """The training batches of one process as a resumable stream at position ``(epoch, index)``.

    Each update takes ``world * update_freq`` consecutive batches of the epoch; process ``r``
    computes batches ``r, r + world, ...`` of them.  The tail of an epoch too short for a whole
    update is skipped, so every process always does the same number of forward passes.
    """

    def __init__(self, split: ParallelSplit, cfg: Config, dist_: Distributed):
        self.split, self.cfg, self.dist = split, cfg, dist_
        self.per_update = dist_.world * cfg.train.update_freq
        self._epoch_batches: tuple[int, list[np.ndarray]] | None = None
        self._check_enough(0)  # before training starts, not at its first update

    def _check_enough(self, epoch: int) -> None:
        if self.per_update > len(self.batches(epoch)):
            raise UserError(f"{self.split.data_dir}: the training set has fewer batches "
                            f"({len(self.batches(epoch))}) than one update needs "
                            f"({self.per_update}); lower train.update_freq")

    def batches(self, epoch: int) -> list[np.ndarray]:
        if self._epoch_batches is None or self._epoch_batches[0] != epoch:
            found = token_batches(self.split.src_lengths, self.split.tgt_lengths,
                                  self.cfg.train.max_tokens, self.cfg.train.seed, epoch)
            self._epoch_batches = (epoch, found)
        return self._epoch_batches[1]

    def next_update(self, epoch: int, index: int) -> tuple[list[np.ndarray], int, int]:
        """This process's batches for one update, and the position after it."""
        if index + self.per_update > len(self.batches(epoch)):
            epoch, index = epoch + 1, 0
            self._check_enough(epoch)
        chosen = self.batches(epoch)[index:index + self.per_update]
        return chosen[self.dist.rank::self.dist.world], epoch, index + self.per_update

    def collate(self, indices: np.ndarray) -> Batch:
        return make_batch(self.split, indices, self.dist.device)


def make_batch(split: ParallelSplit, indices: np.ndarray, device: torch.device) -> Batch:
    m = split.manifest
    batch = collate([split.src(i) for i in indices], [split.tgt(i) for i in indices],
                    m["pad_id"], m["bos_id"], m["eos_id"])
    return batch.to(device)
