"""The AIO-KD loss of a batch from the logits of the teacher and the sampled students, twice:
:func:`aiokd_loss`, fused, block by block over the tokens, with its gradient written out (no
full-vocabulary tensor is made besides the logits themselves), which training uses; and
:func:`aiokd_loss_reference`, the same equations transcribed with autograd, to read and to check
the fused one against (``distill.loss=reference`` trains with it).  The rules they share, the
detaching gates and the pair weights of mutual learning, are here too.

With ``M = K + 1`` models (``m = 0`` the teacher ``T``, ``m = 1..K`` the students), logits
``x_m (N, V)`` over the ``N`` non-pad target tokens, ``lp_m = x_m - logsumexp_v x_m`` and
``p_m = exp(lp_m)``:

    L     = sum_m CE_m + alpha * L_kd + beta * L_ml
    CE_m  = sum_i c (-lp_m[i, y_i]) + eps_i (-sum_v lp_m[i, v])     eps_i = eps/(V-1),
                                                                    c = 1 - eps - eps_i
                                                                    (label_smoothing_weights)
    L_kd  = (1/K) sum_k KL(P_T || P_k)                              KL(P || Q) = <p, lp - lq>
    L_ml  = (1/n_ml) sum_{i<j} w_ij KL(P_i || P_j) + w_ji KL(P_j || P_i)
            n_ml = the number of KL terms the mode can use (ml_terms): |pairs| = K(K-1)/2 when
            one direction per pair counts, 2 |pairs| = K(K-1) in ``full`` mode

Dynamic gradient detaching scales the teacher side of ``KL(P_T || P_k)`` by the gate
``g_k = 1[CE_k <= eta CE_T]`` (:func:`detaching_gates`); in ``L_ml`` the weights ``w`` pick the
better student of each pair as the target and gates ``h`` may detach it (:func:`pair_weights`).
The fused loss computes gates and weights as 0-dim tensors from the cross-entropies inside its
forward pass: the step never waits for the device to report a number.

The fused loss's gradient with respect to the log-probabilities, ``G_m = dL/dlp_m``:

    G_m  = -eps_i - c 1[v = y]                                           (CE)
    G_k += -(alpha/K) p_T                                                (KD, student side)
    G_T += alpha p_T (g_mean (lp_T + 1) - (1/K) sum_k g_k lp_k)          (KD, gated teacher side)
    G_i += b (w_ij h_i p_i (d + 1) - w_ji p_j),  d = lp_i - lp_j,  b = beta / n_ml
    G_j += b (w_ji h_j p_j (1 - d) - w_ij p_i)

and through the log-softmax ``dL/dx_m = G_m - p_m sum_v G_m``.  The CE part of ``G_m`` sums to
``-1`` over ``v``, so ``dL/dx_m = p_m - eps_i - c 1[v = y] + H_m - p_m sum_v H_m`` with ``H_m`` the
KD and mutual-learning part.

Both passes work a block of rows at a time (on a CPU the temporaries of a block stay in the
cache; on a GPU a block is most or all of the batch: :func:`aiokd.distill.losses.row_blocks`).  The
forward pass keeps only ``logsumexp`` per token and model; the backward pass recomputes ``lp`` and
``p`` from it and writes ``dL/dx`` over the logits (``overwrite``) or into new tensors.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from aiokd.distill.losses import (
    kl_divergence,
    label_smoothing_weights,
    row_blocks,
    smoothed_ce_from_sums,
    subtract_smoothed_target,
)
from aiokd.model.kernels import at_least_float32, exp, logsumexp


@dataclass(frozen=True)
class LossSettings:
    """The weights of the objective (``distill`` and ``train.label_smoothing`` options).

    Attributes:
        epsilon: label smoothing.
        alpha: weight of ``L_kd``.
        beta: weight of ``L_ml`` (0: no mutual learning, as in stage 1).
        eta: detaching threshold on cross-entropy ratios.
        detach: dynamic gradient detaching of the teacher side of ``L_kd``.
        ml_mode: ``no_weight``, ``full``, ``detaching`` or ``none`` (see :func:`pair_weights`).
    """

    epsilon: float
    alpha: float
    beta: float
    eta: float
    detach: bool = True
    ml_mode: str = "no_weight"


@dataclass
class LossTerms:
    """The loss and its detached parts, each summed over the tokens.

    Attributes:
        loss: ``L`` (differentiable).
        ce: ``(M,)`` label-smoothed cross-entropy of the teacher, then of each student.
        teacher_nll: the teacher's ``sum_i -lp_T[i, y_i]``.
        kd: ``L_kd``.
        ml: ``L_ml`` (0 when ``beta`` is 0 or ``K < 2``).
        gates: ``(K,)`` the detaching gates ``g_k``.
    """

    loss: Tensor
    ce: Tensor
    teacher_nll: Tensor
    kd: Tensor
    ml: Tensor
    gates: Tensor


def detaching_gates(student_ce: Tensor, teacher_ce: Tensor, eta: float) -> Tensor:
    """Dynamic gradient detaching: ``g_k = 1[CE(S_k) / CE(T) <= eta]``, shape ``(K,)``, in the
    cross-entropies' dtype.

    A student much worse than the teacher (ratio above ``eta``) must not pull the teacher's
    distribution towards itself; a good one may teach the teacher too.
    """
    return (student_ce <= eta * teacher_ce).to(student_ce.dtype)


def pair_weights(ce_i: Tensor, ce_j: Tensor, mode: str, eta: float) -> Tensor:
    """``(w_ij, w_ji, h_i, h_j)`` of the pair ``(i, j)`` in ``L_ml`` (the modes of the reference
    implementation), ``(4,)``:

        no_weight:  w_ij = 1[CE_i <= CE_j], w_ji = 1 - w_ij, h = 1    (the better one is the target)
        full:       w = 1, h = 1                                     (both directions)
        detaching:  as no_weight, the better side detached when CE_worse / CE_better >= eta:
                    h_i = 1[CE_j < eta CE_i], h_j = 1[CE_i < eta CE_j]
    """
    one = torch.ones_like(ce_i)
    if mode == "full":
        return torch.stack([one, one, one, one])
    i_better = (ce_i <= ce_j).to(one.dtype)
    if mode == "detaching":
        return torch.stack([i_better, 1.0 - i_better, (ce_j < eta * ce_i).to(one.dtype),
                            (ce_i < eta * ce_j).to(one.dtype)])
    return torch.stack([i_better, 1.0 - i_better, one, one])


def ml_terms(pairs: int, mode: str) -> int:
    """``n_ml``, the number of KL terms ``L_ml`` averages: one per pair of students (the better
    one teaches the worse), two in ``full`` mode (both directions: ``K(K-1)`` ordered pairs, as
    the reference implementation divides)."""
    return 2 * pairs if mode == "full" else pairs


def _log_probs(logits: list[Tensor], lse: Tensor, rows: slice) -> list[Tensor]:
    """``lp_m = x_m - lse_m`` of the block ``rows`` of every model, new float32 tensors."""
    return [torch.sub(at_least_float32(x[rows]), lse[m, rows, None])
            for m, x in enumerate(logits)]


def _kl(p: Tensor, lp: Tensor, lq: Tensor) -> Tensor:
    """``<p, lp - lq>`` summed over a block."""
    return torch.dot(p.reshape(-1), (lp - lq).reshape(-1))


class _AIOKDLoss(torch.autograd.Function):
    """Forward and backward of :func:`aiokd_loss`; see the module docstring."""

    @staticmethod
    def forward(ctx, gold: Tensor, settings: LossSettings, overwrite: bool,
                *logits: Tensor) -> tuple[Tensor, ...]:
        models, (n, vocab) = len(logits), logits[0].shape
        k = models - 1
        with_ml = settings.beta > 0 and settings.ml_mode != "none"
        pairs = list(itertools.combinations(range(1, models), 2)) if with_ml else []
        float_type = torch.promote_types(logits[0].dtype, torch.float32)
        lse = logits[0].new_empty((models, n), dtype=float_type)
        row_sums = logits[0].new_zeros(models, dtype=float_type)
        kl = logits[0].new_zeros((models, models), dtype=float_type)  # kl[a, b] = KL(P_a || P_b)
        for rows in row_blocks(n, vocab * models, logits[0].device):
            blocks = [at_least_float32(x[rows]) for x in logits]
            for m, block in enumerate(blocks):
                logsumexp(block, out=lse[m, rows])
                row_sums[m] += block.sum()
            lp = [torch.sub(block, lse[m, rows, None]) for m, block in enumerate(blocks)]
            p = [exp(x) for x in (lp if pairs else lp[:1])]
            for s in range(1, models):
                kl[0, s] += _kl(p[0], lp[0], lp[s])
            for i, j in pairs:
                kl[i, j] += _kl(p[i], lp[i], lp[j])
                kl[j, i] += _kl(p[j], lp[j], lp[i])
        gold_logits = torch.stack([at_least_float32(x.gather(-1, gold[:, None]).squeeze(-1))
                                   for x in logits])
        nll = (lse - gold_logits).sum(dim=1)
        ce = smoothed_ce_from_sums(nll, lse.sum(dim=1), row_sums, settings.epsilon, vocab)
        if settings.detach:
            gates = detaching_gates(ce[1:], ce[0], settings.eta)
        else:
            gates = ce.new_ones(k)
        kd = kl[0, 1:].sum() / k if k else ce.new_zeros(())
        weights = (torch.stack([pair_weights(ce[i], ce[j], settings.ml_mode, settings.eta)
                                for i, j in pairs]) if pairs else ce.new_zeros((0, 4)))
        ml = ce.new_zeros(())
        for (i, j), (w_ij, w_ji, _, _) in zip(pairs, weights, strict=True):
            ml = ml + (w_ij * kl[i, j] + w_ji * kl[j, i]) / ml_terms(len(pairs),
                                                                      settings.ml_mode)
        loss = ce.sum() + settings.alpha * kd + settings.beta * ml
        ctx.save_for_backward(gold, lse, gates, weights, *logits)
        ctx.settings, ctx.overwrite, ctx.pairs = settings, overwrite, pairs
        stats = (ce, nll[0], kd, ml, gates)
        ctx.mark_non_differentiable(*stats)
        return loss, *stats

    @staticmethod
    def backward(ctx, grad: Tensor, *_unused: Tensor):
        gold, lse, gates, weights, *logits = ctx.saved_tensors
        settings, pairs = ctx.settings, ctx.pairs
        models, (n, vocab) = len(logits), logits[0].shape
        k = models - 1
        c, eps_i = label_smoothing_weights(settings.epsilon, vocab)
        distinct = len({x.data_ptr() for x in logits}) == models
        grads = [x if ctx.overwrite and distinct else torch.empty_like(x) for x in logits]
        alpha_k = settings.alpha / max(k, 1)
        b = settings.beta / max(ml_terms(len(pairs), settings.ml_mode), 1)
        for rows in row_blocks(n, vocab * models, logits[0].device):
            lp = _log_probs(logits, lse, rows)
            p = [exp(x) for x in lp]
            if k:  # KD: the students' side, and the teacher's side gated by g_k
                teacher_side = (lp[0] + 1.0).mul_(gates.mean())
                for s in range(1, models):
                    teacher_side.addcmul_(lp[s], gates[s - 1], value=-1.0 / k)
                h = [teacher_side.mul_(p[0]).mul_(settings.alpha)]
                h += [p[0] * -alpha_k for _ in range(k)]
            else:
                h = [torch.zeros_like(lp[0])]
            for (i, j), (w_ij, w_ji, gate_i, gate_j) in zip(pairs, weights, strict=True):
                d = lp[i] - lp[j]
                h[i].addcmul_(p[i], (d + 1.0).mul_(w_ij * gate_i * b)).addcmul_(p[j], -w_ji * b)
                h[j].addcmul_(p[j], (1.0 - d).mul_(w_ji * gate_j * b)).addcmul_(p[i], -w_ij * b)
            for m in range(models):
                # dL/dx = p - eps_i - c 1[v = y] + h - p sum_v h
                g = h[m].addcmul_(p[m], 1.0 - h[m].sum(dim=-1, keepdim=True))
                subtract_smoothed_target(g, gold[rows], c, eps_i)
                torch.mul(g, grad, out=grads[m][rows])
        return None, None, None, *grads


def aiokd_loss(teacher_logits: Tensor, student_logits: list[Tensor], gold: Tensor,
               settings: LossSettings, overwrite: bool = False) -> LossTerms:
    """``L = sum_m CE_m + alpha L_kd + beta L_ml`` of one batch (see the module docstring).

    Args:
        teacher_logits: ``(N, V)`` the teacher's logits at the non-pad target tokens.
        student_logits: ``K`` tensors ``(N, V)``, one per sampled student (a student drawn twice
            appears twice).
        gold: ``(N,)`` reference token ids.
        overwrite: the backward pass writes each gradient over its logits (no new ``(N, V)``
            tensor); only for logits that nothing else reads afterwards.
    """
    loss, ce, teacher_nll, kd, ml, gates = _AIOKDLoss.apply(
        gold, settings, overwrite, teacher_logits, *student_logits)
    return LossTerms(loss, ce, teacher_nll, kd, ml, gates)


def aiokd_loss_reference(teacher_logits: Tensor, student_logits: list[Tensor], gold: Tensor,
                         settings: LossSettings, overwrite: bool = False) -> LossTerms:
    """:func:`aiokd_loss` transcribed from the equations of the module docstring with autograd:
    the same value, the same gradient up to rounding, the same terms.

    Every model's ``lp_m = log_softmax(x_m)`` over the ``N`` non-pad tokens is an ``(N, V)``
    table in float32 at least, and each CE and KL term is a sum over one or two of those tables.
    A gate ``g_k`` or ``h`` that is 0 turns into ``.detach()`` of its KL term's target side, a
    pair weight ``w`` that is 0 leaves its term out (both decided on the host, which waits for
    the device).  Arguments and result as for :func:`aiokd_loss`; ``overwrite`` has no effect
    (autograd makes new gradient tensors).
    """
    lp = [F.log_softmax(x, dim=-1, dtype=torch.promote_types(x.dtype, torch.float32))
          for x in [teacher_logits, *student_logits]]
    k = len(student_logits)
    c, eps_i = label_smoothing_weights(settings.epsilon, lp[0].shape[-1])
    nll = torch.stack([-x.gather(-1, gold[:, None]).sum() for x in lp])  # (M,)
    ce = c * nll + eps_i * torch.stack([-x.sum() for x in lp])
    zero = ce.new_zeros(())
    if settings.detach:
        gates = detaching_gates(ce[1:].detach(), ce[0].detach(), settings.eta)
    else:
        gates = ce.new_ones(k)
    kd = sum((kl_divergence(lp[0] if gate else lp[0].detach(), lp[m])
              for m, gate in enumerate(gates.tolist(), start=1)), zero) / max(k, 1)
    with_ml = settings.beta > 0 and settings.ml_mode != "none"
    pairs = list(itertools.combinations(range(1, k + 1), 2)) if with_ml else []
    ml = zero
    for i, j in pairs:
        w_ij, w_ji, h_i, h_j = pair_weights(ce[i].detach(), ce[j].detach(), settings.ml_mode,
                                            settings.eta).tolist()
        for target, other, weight, gate in ((i, j, w_ij, h_i), (j, i, w_ji, h_j)):
            if weight:
                target_lp = lp[target] if gate else lp[target].detach()
                ml = ml + kl_divergence(target_lp, lp[other]) / ml_terms(len(pairs),
                                                                         settings.ml_mode)
    loss = ce.sum() + settings.alpha * kd + settings.beta * ml
    return LossTerms(loss, ce.detach(), nll[0].detach(), kd.detach(), ml.detach(), gates)
