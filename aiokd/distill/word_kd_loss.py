"""The loss of a student distilled from a frozen teacher (Word-KD, Selective-KD), twice:
:func:`word_kd_loss`, fused, block by block over the tokens, with its gradient written out, which
training uses; and :func:`word_kd_loss_reference`, the same equations with autograd, to read and
to check the fused one against (``distill.loss=reference`` trains with it).

With the student's logits ``x (N, V)`` and the teacher's ``t (N, V)`` over the ``N`` non-pad
target tokens, ``lp = x - logsumexp_v x``, ``p = exp(lp)``, ``lq = t - logsumexp_v t``,
``q = exp(lq)``:

    L     = CE + alpha * sum_i m_i KL_i
    CE    = sum_i c (-lp[i, y_i]) + eps_i (-sum_v lp[i, v])    (label_smoothing_weights)
    KL_i  = <q_i, lq_i - lp_i>                                 KL(P_T || P_S) of token i
    m_i   = 1 (Word-KD, Kim and Rush 2016), or 1 on the tokens where the student's
            -lp[i, y_i] is highest (Selective-KD, Wang et al. 2021: selective_kd_mask)

The teacher is frozen, so only the student has a gradient:

    dL/dx_iv = (1 + alpha m_i) p_iv - alpha m_i q_iv - eps_i - c 1[v = y_i]

The forward pass keeps ``logsumexp`` per token of both models; the backward pass recomputes ``p``
and ``q`` from it, a block of rows at a time (:func:`aiokd.distill.losses.row_blocks`), and
writes the gradient over the student's logits (``overwrite``) or into a new tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from aiokd.distill.losses import (
    kl_divergence,
    label_smoothed_nll,
    label_smoothing_weights,
    row_blocks,
    selective_kd_mask,
    smoothed_ce_from_sums,
    subtract_smoothed_target,
    token_nll,
)
from aiokd.model.kernels import at_least_float32, exp, logsumexp


@dataclass
class WordKDTerms:
    """The loss and its detached parts, each summed over the tokens: ``loss`` (differentiable),
    the student's label-smoothed ``ce`` and ``nll``, and ``kd = sum_i m_i KL_i``."""

    loss: Tensor
    ce: Tensor
    nll: Tensor
    kd: Tensor


class _WordKDLoss(torch.autograd.Function):
    """Forward and backward of :func:`word_kd_loss`; see the module docstring."""

    @staticmethod
    def forward(ctx, logits: Tensor, teacher_logits: Tensor, gold: Tensor, epsilon: float,
                alpha: float, selective_ratio: float | None,
                overwrite: bool) -> tuple[Tensor, ...]:
        n, vocab = logits.shape
        float_type = torch.promote_types(logits.dtype, torch.float32)
        lse, teacher_lse, row_sums, kl = (logits.new_empty(n, dtype=float_type)
                                          for _ in range(4))
        for rows in row_blocks(n, 2 * vocab, logits.device):
            x, t = at_least_float32(logits[rows]), at_least_float32(teacher_logits[rows])
            logsumexp(x, out=lse[rows])
            torch.sum(x, dim=-1, out=row_sums[rows])
            logsumexp(t, out=teacher_lse[rows])
            lq = t - teacher_lse[rows, None]
            lq_minus_lp = (lq - x).add_(lse[rows, None])
            torch.sum(exp(lq, out=lq).mul_(lq_minus_lp), dim=-1, out=kl[rows])
        nll = lse - at_least_float32(logits.gather(-1, gold[:, None]).squeeze(-1))
        kd_rows = (selective_kd_mask(nll, selective_ratio).to(float_type)
                   if selective_ratio is not None else torch.ones_like(nll))
        ce = smoothed_ce_from_sums(nll.sum(), lse.sum(), row_sums.sum(), epsilon, vocab)
        kd = torch.dot(kd_rows, kl)
        ctx.save_for_backward(logits, teacher_logits, gold, lse, teacher_lse, kd_rows)
        ctx.coefficients = (*label_smoothing_weights(epsilon, vocab), alpha)
        ctx.overwrite = overwrite
        stats = (ce, nll.sum(), kd)
        ctx.mark_non_differentiable(*stats)
        return ce + alpha * kd, *stats

    @staticmethod
    def backward(ctx, grad: Tensor, *_unused: Tensor):
        logits, teacher_logits, gold, lse, teacher_lse, kd_rows = ctx.saved_tensors
        c, eps_i, alpha = ctx.coefficients
        logits_grad = logits if ctx.overwrite else torch.empty_like(logits)
        for rows in row_blocks(*logits.shape, logits.device):
            m = kd_rows[rows, None] * alpha
            lp = torch.sub(at_least_float32(logits[rows]), lse[rows, None])
            lq = torch.sub(at_least_float32(teacher_logits[rows]), teacher_lse[rows, None])
            p, q = exp(lp, out=lp), exp(lq, out=lq)
            g = subtract_smoothed_target(p.mul_(m + 1.0).sub_(q.mul_(m)), gold[rows], c, eps_i)
            torch.mul(g, grad, out=logits_grad[rows])
        return logits_grad, None, None, None, None, None, None


def word_kd_loss(logits: Tensor, teacher_logits: Tensor, gold: Tensor, epsilon: float,
                 alpha: float, selective_ratio: float | None = None,
                 overwrite: bool = False) -> WordKDTerms:
    """``L = CE + alpha sum_i m_i KL(P_T || P_S)_i`` of one batch (see the module docstring).

    Args:
        logits: ``(N, V)`` the student's logits at the non-pad target tokens, any float dtype.
        teacher_logits: ``(N, V)`` the frozen teacher's (no gradient is returned for them).
        gold: ``(N,)`` reference token ids.
        selective_ratio: None for Word-KD; Selective-KD's share of tokens that get the KL term.
        overwrite: the backward pass writes the gradient over ``logits`` (no new ``(N, V)``
            tensor); only for logits that nothing else reads afterwards.
    """
    return WordKDTerms(*_WordKDLoss.apply(logits, teacher_logits.detach(), gold, epsilon, alpha,
                                          selective_ratio, overwrite))


def word_kd_loss_reference(logits: Tensor, teacher_logits: Tensor, gold: Tensor, epsilon: float,
                           alpha: float, selective_ratio: float | None = None,
                           overwrite: bool = False) -> WordKDTerms:
    """:func:`word_kd_loss` with autograd over ``(N, V)`` float32 log-probability tables: the same
    value, the same gradient up to rounding.  ``overwrite`` has no effect."""
    lprobs = F.log_softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))
    teacher_lprobs = F.log_softmax(teacher_logits.detach(), dim=-1, dtype=lprobs.dtype)
    ce, nll = label_smoothed_nll(lprobs, gold, epsilon)
    if selective_ratio is None:
        kd = kl_divergence(teacher_lprobs, lprobs)
    else:
        chosen = selective_kd_mask(token_nll(lprobs, gold), selective_ratio)
        kd = kl_divergence(teacher_lprobs[chosen], lprobs[chosen])
    return WordKDTerms(ce + alpha * kd, ce.detach(), nll.detach(), kd.detach())
