"""The AIO-KD objective with its loss computed term by term with autograd, as a direct PyTorch
implementation (and the reference code) computes it: ``distill.loss=reference``, i.e.
:func:`aiokd.distill.aiokd_loss.aiokd_loss_reference`.  The speed benchmark's ``--unfused``
variants train with it, to measure the fused :func:`aiokd.distill.aiokd_loss.aiokd_loss` against
it."""

from __future__ import annotations

import dataclasses

from aiokd.config import Config
from aiokd.distill.objective import Objective
from aiokd.model.transformer import Transformer


class UnfusedObjective(Objective):
    """:class:`~aiokd.distill.objective.Objective` of ``cfg`` with ``distill.loss=reference``."""

    def __init__(self, model: Transformer, cfg: Config):
        reference = dataclasses.replace(cfg.distill, loss="reference")
        super().__init__(model, dataclasses.replace(cfg, distill=reference))
