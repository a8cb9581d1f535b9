"""Validation of a family: the per-token cross-entropy of every student on the validation set.

With several processes each takes every ``world``-th batch and the sums are added up, so every
process gets the same figures.
"""

from __future__ import annotations

import torch

from aiokd.config import Config
from aiokd.data.batching import token_batches
from aiokd.data.corpus import ParallelSplit
from aiokd.distill.objective import validation_nll
from aiokd.model.transformer import Transformer
from aiokd.students import Student, student_name
from aiokd.train.distributed import Distributed
from aiokd.train.precision import amp_dtype
from aiokd.train.report import with_spread
from aiokd.train.stream import make_batch


def validate(model: Transformer, split: ParallelSplit, students: list[Student], cfg: Config,
             dist_: Distributed) -> dict[str, float]:
    """Per-token validation cross-entropy (nats) of every student, and their ``mean``."""
    was_training = model.training
    model.eval()
    max_tokens = cfg.train.valid_max_tokens or cfg.train.max_tokens
    batches = token_batches(split.src_lengths, split.tgt_lengths, max_tokens, shuffle=False)
    sums = torch.zeros(len(students) + 1, dtype=torch.float64, device=dist_.device)
    dtype = amp_dtype(cfg)
    for indices in batches[dist_.rank::dist_.world]:
        batch = make_batch(split, indices, dist_.device)
        with torch.autocast(dist_.device.type, dtype=dtype, enabled=dtype is not None):
            nll = validation_nll(model, batch.src, batch.prev_tgt, batch.target, students,
                                 cfg.distill.reuse_prefix)
        sums[:-1] += nll.double()
        sums[-1] += batch.tokens
    sums = dist_.all_sum(sums).tolist()
    model.train(was_training)
    totals, tokens = sums[:-1], sums[-1]
    losses = {student_name(s): t / tokens for s, t in zip(students, totals, strict=True)}
    losses["mean"] = sum(totals) / tokens / len(students)
    return with_spread(losses, students)
