"""The terms of the AIO-KD objective, each with its equation.

All functions take log-probabilities ``(N, V)`` in float32 over the ``N`` non-pad target tokens of a
batch and return sums over those tokens (the caller divides by the token count).  Every
Kullback-Leibler term is computed from log-probabilities (``log_softmax``), never from
``log(softmax(x))``, which underflows to ``-inf`` in half precision.

The weights decided from cross-entropy ratios (dynamic gradient detaching, the better student of a
pair) are 0-dim tensors used inside the graph, so the step never waits for the device to report a
number.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``scale``."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor) -> Tensor:
        ctx.save_for_backward(scale)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (scale,) = ctx.saved_tensors
        return grad * scale.to(grad.dtype), None


def scale_gradient(x: Tensor, scale: Tensor) -> Tensor:
    """``x`` unchanged in value, its gradient multiplied by the 0-dim tensor ``scale``.

    With ``scale`` 0 or 1 this is a detach decided on the device: no copy, no synchronisation.
    """
    return _ScaleGradient.apply(x, scale)


def label_smoothed_nll(lprobs: Tensor, target: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
    """Label-smoothed cross-entropy (Szegedy et al. 2016), as fairseq computes it.

        nll_i    = -log p(y_i)
        smooth_i = -sum_v log p(v)
        loss     = sum_i (1 - eps - eps/(V-1)) * nll_i + eps/(V-1) * smooth_i

    Args:
        lprobs: ``(N, V)`` log-probabilities.
        target: ``(N,)`` reference token ids.
    Returns:
        ``(loss, nll)``, both summed over the ``N`` tokens.
    """
    nll = -lprobs.gather(-1, target[:, None]).squeeze(-1)
    smooth = -lprobs.sum(-1)
    eps_i = epsilon / (lprobs.shape[-1] - 1)
    loss = (1.0 - epsilon - eps_i) * nll + eps_i * smooth
    return loss.sum(), nll.sum()


def token_nll(lprobs: Tensor, target: Tensor) -> Tensor:
    """``-log p(y_i)`` per token, ``(N,)``."""
    return -lprobs.gather(-1, target[:, None]).squeeze(-1)


def kl_divergence(target_lprobs: Tensor, lprobs: Tensor) -> Tensor:
    """``KL(P || Q) = sum_i sum_v P_iv (log P_iv - log Q_iv)`` with ``P`` the target.

    Args:
        target_lprobs: ``(N, V)`` log P.
        lprobs: ``(N, V)`` log Q.
    Returns:
        the sum over tokens, a 0-dim tensor.
    """
    return torch.nn.functional.kl_div(lprobs, target_lprobs, log_target=True, reduction="sum")


def detaching_gates(student_ce: Tensor, teacher_ce: Tensor, eta: float) -> Tensor:
    """Dynamic gradient detaching: ``g_k = 1[CE(S_k) / CE(T) <= eta]``, shape ``(K,)``.

    A student much worse than the teacher (ratio above ``eta``) must not pull the teacher's
    distribution towards itself; a good one may teach the teacher too.
    """
    return (student_ce <= eta * teacher_ce).float()


def word_kd(teacher_lprobs: Tensor, student_lprobs: list[Tensor], gates: Tensor) -> Tensor:
    """``L_kd = (1/K) sum_k KL(P_T || P_Sk)``, the teacher's side gated by ``gates (K,)``.

    The student side always receives gradient; the teacher side of term ``k`` receives
    ``gates[k]`` times its gradient (0: detached).  Computed as

        KL(P_T || P_S) = sum P_T log P_T  -  sum P_T log P_S,

    the first term once for all students (its teacher gradient scaled by the mean gate), the
    second as a dot product per student, so no ``(N, V)`` difference tensor is built per student.
    """
    k = len(student_lprobs)
    teacher_probs = teacher_lprobs.exp()
    negative_entropy = torch.einsum(
        "nv,nv->", scale_gradient(teacher_probs, gates.mean()), teacher_lprobs
    )
    cross = sum(
        torch.einsum("nv,nv->", scale_gradient(teacher_probs, gates[i]), student_lprobs[i])
        for i in range(k)
    )
    return negative_entropy - cross / k


def mutual_learning(student_lprobs: list[Tensor], student_ce: Tensor, mode: str,
                    eta: float) -> Tensor:
    """``L_ml``: KL between every pair of sampled students, averaged over the K(K-1)/2 pairs.

    Modes (those of the reference implementation):
        ``no_weight``: the student with the lower CE is the target, ``KL(P_better || P_worse)``,
            both sides receive gradient (the paper's setting).
        ``full``: ``KL(P_i || P_j) + KL(P_j || P_i)``.
        ``detaching``: as ``no_weight``, the better side detached when
            ``CE_worse / CE_better >= eta``.
        ``none``: 0.

    Which student is better is a 0-dim weight ``w = 1[CE_i <= CE_j]`` in the graph:
    ``w KL(P_i || P_j) + (1 - w) KL(P_j || P_i)``.
    """
    k = len(student_lprobs)
    zero = student_ce.new_zeros(())
    if mode == "none" or k < 2:
        return zero
    total = zero
    for i in range(k):
        for j in range(i + 1, k):
            lp_i, lp_j = student_lprobs[i], student_lprobs[j]
            ce_i, ce_j = student_ce[i], student_ce[j]
            if mode == "full":
                total = total + kl_divergence(lp_i, lp_j) + kl_divergence(lp_j, lp_i)
                continue
            i_better = (ce_i <= ce_j).float()
            if mode == "detaching":
                # The better side keeps its gradient only while the worse is within eta of it.
                gate_i = (ce_j < eta * ce_i).float()
                gate_j = (ce_i < eta * ce_j).float()
                lp_i_target, lp_j_target = scale_gradient(lp_i, gate_i), scale_gradient(lp_j, gate_j)
            else:
                lp_i_target, lp_j_target = lp_i, lp_j
            total = total + i_better * kl_divergence(lp_i_target, lp_j) + (
                1.0 - i_better
            ) * kl_divergence(lp_j_target, lp_i)
    return total / (k * (k - 1) / 2)


def selective_kd_mask(student_nll: Tensor, ratio: float) -> Tensor:
    """Selective KD (Wang et al. 2021, batch-level): KD only on the ``ratio`` share of tokens
    where the student's cross-entropy is highest. Returns a boolean mask ``(N,)``."""
    n = student_nll.numel()
    keep = max(1, int(round(ratio * n)))
    threshold = student_nll.detach().topk(keep).values[-1]
    return student_nll.detach() >= threshold
