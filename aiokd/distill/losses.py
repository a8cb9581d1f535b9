"""Cross-entropy and KL terms, each with its equation, for the single-student methods, validation
and :mod:`aiokd.distill.aiokd_loss`.

The functions take log-probabilities (or logits, where the name says so) ``(N, V)`` over the ``N``
non-pad target tokens of a batch and return sums over those tokens (the caller divides by the
token count).  Every Kullback-Leibler term is computed from log-probabilities (``log_softmax``),
never from ``log(softmax(x))``, which underflows to ``-inf`` in half precision.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from aiokd.model.kernels import at_least_float32, exp, logsumexp


def label_smoothing_weights(epsilon: float, vocab: int) -> tuple[float, float]:
    """The weights ``(c, eps_i)`` of label-smoothed cross-entropy over ``V = vocab`` tokens, as
    fairseq smooths: the target distribution gives ``1 - eps`` to the reference token and
    ``eps_i`` to each other token, so that

        eps_i = eps / (V - 1),   c = 1 - eps - eps_i
        CE_i  = c (-log p(y_i)) + eps_i (-sum_v log p(v))
    """
    eps_i = epsilon / (vocab - 1)
    return 1.0 - epsilon - eps_i, eps_i


def smoothed_ce_from_sums(nll: Tensor, lse: Tensor, logits: Tensor, epsilon: float,
                          vocab: int) -> Tensor:
    """Label-smoothed cross-entropy from sums over tokens of ``-lp[i, y_i]`` (``nll``), of
    ``lse_i = logsumexp_v x_iv`` (``lse``) and of the logits ``x_iv`` (``logits``), any matching
    shapes: with ``-sum_v lp_iv = V lse_i - sum_v x_iv``,

        CE = c nll + eps_i (V lse - logits)
    """
    c, eps_i = label_smoothing_weights(epsilon, vocab)
    return c * nll + eps_i * (vocab * lse - logits)


def subtract_smoothed_target(g: Tensor, gold: Tensor, c: float, eps_i: float) -> Tensor:
    """``g - eps_i - c 1[v = y_i]`` in place over a block ``g (n, V)`` of rows whose references
    are ``gold (n,)``: the cross-entropy's part of a gradient with respect to the logits, added
    to the ``p`` (or ``p`` plus other terms) already in ``g``."""
    g.sub_(eps_i)
    return g.scatter_add_(-1, gold[:, None], g.new_full((len(g), 1), -c))


class _LabelSmoothedNLL(torch.autograd.Function):
    """Forward and backward of :func:`label_smoothed_nll`; the gradient is built in one pass:

        dloss/dlprobs_iv = -eps_i - (1 - eps - eps_i) 1[v = y_i]
    """

    @staticmethod
    def forward(ctx, lprobs: Tensor, target: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
        nll = -lprobs.gather(-1, target[:, None]).squeeze(-1)
        smooth = -lprobs.sum(-1)
        on_target, everywhere = label_smoothing_weights(epsilon, lprobs.shape[-1])
        ctx.save_for_backward(target)
        ctx.shape, ctx.coefficients = lprobs.shape, (on_target, everywhere)
        nll_sum = nll.sum()
        ctx.mark_non_differentiable(nll_sum)
        return (on_target * nll_sum + everywhere * smooth.sum()), nll_sum

    @staticmethod
    def backward(ctx, grad: Tensor, _grad_nll: Tensor):
        (target,) = ctx.saved_tensors
        on_target, everywhere = ctx.coefficients
        lprobs_grad = (grad * -everywhere).expand(ctx.shape).contiguous()
        lprobs_grad.scatter_add_(-1, target[:, None], (grad * -on_target).expand(len(target), 1))
        return lprobs_grad, None, None


def label_smoothed_nll(lprobs: Tensor, target: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
    """Label-smoothed cross-entropy (Szegedy et al. 2016), as fairseq computes it.

        nll_i    = -log p(y_i)
        smooth_i = -sum_v log p(v)
        loss     = sum_i (1 - eps - eps/(V-1)) * nll_i + eps/(V-1) * smooth_i

    Args:
        lprobs: ``(N, V)`` log-probabilities.
        target: ``(N,)`` reference token ids.
    Returns:
        ``(loss, nll)``, both summed over the ``N`` tokens; ``nll`` is a statistic (no gradient).
    """
    return _LabelSmoothedNLL.apply(lprobs, target, epsilon)


CACHE_BLOCK_BYTES = 1 << 20
"""A block of a CPU's row loop: its full-vocabulary temporaries stay in a core's cache."""
DEVICE_BLOCK_BYTES = 256 << 20
"""A block of an accelerator's row loop: there the loop only bounds the temporaries' memory, and
every block costs kernel launches.  With the CPU's blocks an H200 took 380 ms per AIO-KD step of
the ``small`` preset; with the autograd loss over the whole batch at once, 41 ms
(``benchmarks/results/speed-gpu-h200.md``)."""


def row_blocks(rows: int, vocab: int, device: torch.device,
               block_bytes: int | None = None) -> list[slice]:
    """Consecutive blocks of the ``rows`` of an ``(N, V)`` float32 table on ``device``, each about
    ``block_bytes`` (at least one row; default :data:`CACHE_BLOCK_BYTES` on a CPU, where a
    full-vocabulary temporary of one block stays in the cache instead of costing a fresh
    ``(N, V)`` allocation, else :data:`DEVICE_BLOCK_BYTES`)."""
    if block_bytes is None:
        block_bytes = CACHE_BLOCK_BYTES if device.type == "cpu" else DEVICE_BLOCK_BYTES
    step = max(1, block_bytes // (4 * vocab))
    return [slice(start, start + step) for start in range(0, rows, step)]


def _logsumexp(logits: Tensor, with_sums: bool = False) -> tuple[Tensor, Tensor | None]:
    """``lse_i = logsumexp_v x_iv`` of ``(N, V)`` logits and, ``with_sums``, ``sum_v x_iv``, each
    ``(N,)`` in float32 at least, computed block by block (:func:`row_blocks`)."""
    lse = logits.new_empty(logits.shape[0], dtype=torch.promote_types(logits.dtype, torch.float32))
    sums = torch.empty_like(lse) if with_sums else None
    for rows in row_blocks(*logits.shape, logits.device):
        block = at_least_float32(logits[rows])
        logsumexp(block, out=lse[rows])
        if sums is not None:
            torch.sum(block, dim=-1, out=sums[rows])
    return lse, sums


class _LabelSmoothedNLLFromLogits(torch.autograd.Function):
    """Forward and backward of :func:`label_smoothed_nll_from_logits`.  With ``p = softmax(x)``
    and ``c = 1 - eps - eps_i`` (so that ``c + V eps_i = 1``):

        loss_i          = c (lse_i - x_iy) + eps_i (V lse_i - sum_v x_iv),  lse_i = logsumexp_v x_iv
        dloss_i/dx_iv   = p_iv - eps_i - c 1[v = y_i]

    The forward reads the logits block by block and writes no ``(N, V)`` tensor; the
    backward writes the gradient once, block by block, into a new tensor or, with
    ``overwrite``, over the logits themselves.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, epsilon: float,
                overwrite: bool) -> tuple[Tensor, Tensor]:
        vocab = logits.shape[-1]
        lse, sums = _logsumexp(logits, with_sums=True)
        gold = at_least_float32(logits.gather(-1, target[:, None]).squeeze(-1))
        nll_sum = (lse - gold).sum()
        ctx.save_for_backward(logits, target, lse)
        ctx.coefficients = label_smoothing_weights(epsilon, vocab)
        ctx.overwrite = overwrite
        ctx.mark_non_differentiable(nll_sum)
        return smoothed_ce_from_sums(nll_sum, lse.sum(), sums.sum(), epsilon, vocab), nll_sum

    @staticmethod
    def backward(ctx, grad: Tensor, _grad_nll: Tensor):
        logits, target, lse = ctx.saved_tensors
        on_target, everywhere = ctx.coefficients
        logits_grad = logits if ctx.overwrite else torch.empty_like(logits)
        for rows in row_blocks(*logits.shape, logits.device):
            x, out = at_least_float32(logits[rows]), logits_grad[rows]
            # float32: exp(x - lse) straight into the output block; else in the float32 copy
            # (a half-precision scatter would convert the whole table to float32 and back)
            p = torch.sub(x, lse[rows, None], out=out if x.dtype == out.dtype else x)
            subtract_smoothed_target(exp(p, out=p), target[rows], on_target, everywhere)
            p.mul_(grad)
            if p is not out:
                out.copy_(p)
        return logits_grad, None, None, None


def label_smoothed_nll_from_logits(logits: Tensor, target: Tensor, epsilon: float,
                                   overwrite: bool = False) -> tuple[Tensor, Tensor]:
    """:func:`label_smoothed_nll` of ``log_softmax(logits)`` (in float32 at least), fused:
    neither the log-probabilities nor their gradient are materialised.  For a model trained on
    the cross-entropy alone.

    Args:
        logits: ``(N, V)`` scores, any float dtype.
        target: ``(N,)`` reference token ids.
        overwrite: the backward writes the gradient over ``logits`` (no new ``(N, V)`` tensor);
            only for logits that nothing else reads afterwards (e.g. a projection's output used
            by this loss alone).
    Returns:
        ``(loss, nll)``, both summed over the ``N`` tokens; ``nll`` is a statistic (no gradient).
    """
    return _LabelSmoothedNLLFromLogits.apply(logits, target, epsilon, overwrite)


def token_nll_from_logits(logits: Tensor, target: Tensor) -> Tensor:
    """``-log p(y_i) = logsumexp_v x_iv - x_iy`` per token from ``(N, V)`` logits, ``(N,)``,
    in float32 at least, without the ``(N, V)`` log-probabilities."""
    lse, _ = _logsumexp(logits)
    return lse - at_least_float32(logits.gather(-1, target[:, None]).squeeze(-1))


def token_nll_from_hidden(hidden: Tensor, project: Callable[[Tensor], Tensor], target: Tensor,
                          vocab: int) -> Tensor:
    """:func:`token_nll_from_logits` of ``project(hidden)``, ``(N,)``: the final hidden states
    ``hidden (N, C)`` are projected to their ``(n, V)`` logits by ``project`` a block of rows at a
    time (about 8 MB of logits each), so that no ``(N, V)`` tensor is made."""
    blocks = row_blocks(len(hidden), vocab, hidden.device, block_bytes=8 << 20)
    return torch.cat([token_nll_from_logits(project(hidden[rows]), target[rows])
                      for rows in blocks])


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


def selective_kd_mask(student_nll: Tensor, ratio: float) -> Tensor:
    """Selective KD (Wang et al. 2021, batch-level): KD only on the ``ratio`` share of tokens
    where the student's cross-entropy is highest. Returns a boolean mask ``(N,)``."""
    n = student_nll.numel()
    keep = max(1, int(round(ratio * n)))
    threshold = student_nll.detach().topk(keep).values[-1]
    return student_nll.detach() >= threshold
