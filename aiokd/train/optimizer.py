"""The optimisation of a training stage: the learning-rate schedule, Adam, and the scaling and
clipping of the summed gradients."""

from __future__ import annotations

import math

import torch

from aiokd.config import Config
from aiokd.model.transformer import Transformer


def inverse_sqrt_lr(cfg: Config, update: int) -> float:
    """Linear warm-up from ``warmup_init_lr`` to ``lr`` over ``warmup_updates``, then
    ``lr * sqrt(warmup_updates / update)`` (Vaswani et al. 2017, as fairseq's inverse_sqrt)."""
    t = cfg.train
    if update < t.warmup_updates:
        return t.warmup_init_lr + (t.lr - t.warmup_init_lr) * update / t.warmup_updates
    return t.lr * math.sqrt(max(t.warmup_updates, 1) / max(update, 1))


def learning_rate(cfg: Config, update: int, from_teacher: bool) -> float:
    """The learning rate of ``update`` (counted from 1) of a stage: ``train.lr_from_teacher``
    throughout if set and the stage ``from_teacher`` (its run starts from a trained teacher),
    else :func:`inverse_sqrt_lr`."""
    if from_teacher and cfg.train.lr_from_teacher:
        return cfg.train.lr_from_teacher
    return inverse_sqrt_lr(cfg, update)


def make_optimizer(model: Transformer, cfg: Config) -> torch.optim.AdamW:
    """Adam with decoupled weight decay (as fairseq's Adam), one fused kernel over all
    parameters."""
    t = cfg.train
    return torch.optim.AdamW(model.parameters(), lr=t.warmup_init_lr, betas=t.adam_betas,
                             eps=t.adam_eps, weight_decay=t.weight_decay, fused=True)


def scale_and_clip_gradients(model: Transformer, factor: float, max_norm: float) -> None:
    """``g <- c * factor * g`` with ``c = min(1, max_norm / (||factor * g|| + 1e-6))`` (no
    clipping when ``max_norm <= 0``), as ``g *= factor`` then ``clip_grad_norm_`` would do, in one
    pass over the gradients after one read for the norm."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if max_norm > 0:
        norm = torch.nn.utils.get_total_norm(grads) * factor
        torch._foreach_mul_(grads, (max_norm / (norm + 1e-6)).clamp(max=1.0) * factor)
    else:
        torch._foreach_mul_(grads, factor)
