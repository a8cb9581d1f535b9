"""The Transformer's own kernels where they beat PyTorch's general ones on a CPU (the numbers:
``benchmarks/attention_kernels.py``, ``benchmarks/dropout_masks.py``), and the float32 upcast
that they and the losses share.

* :func:`attention_products`: attention as two batched matrix products around a float32 softmax,
  for training in half precision on a CPU;
* :func:`dropout`: inverted dropout whose CPU mask takes four 15-bit integers from each 64-bit
  random draw;
* :func:`at_least_float32`: the float32 upcast of half-precision tensors that the softmax and the
  losses compute in;
* :func:`exp` and :func:`logsumexp`: the losses' exponentials, with the faster of two kernels
  on this machine (:func:`aiokd.model.probe.exponential_kernel`).

Shapes: ``B`` batch, ``H`` heads, ``T`` query length, ``S`` key length, ``d`` head width.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor


def at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32 if it is in a half-precision type, else as it is."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


LOG2_E = 1.0 / math.log(2.0)


@functools.cache
def _exp2_is_faster(device_type: str) -> bool:
    from aiokd.model.probe import exponential_kernel

    return exponential_kernel(torch.device(device_type)).value == "exp2"


def exp(x: Tensor, out: Tensor | None = None) -> Tensor:
    """``exp(x)`` of ``x`` in float32 (or wider), into ``out`` (``x`` itself: in place) or a new
    tensor: ``torch.exp`` or, where it is faster (measured once per machine), ``exp2(x log2 e)``,
    whose relative error grows with ``|x|`` (the product is rounded): about ``(1 + |x|) 1e-7`` in
    float32, at most 2e-6 for the probabilities above 1e-9 that a loss's sums are made of."""
    if _exp2_is_faster(x.device.type):
        return torch.mul(x, LOG2_E, out=out).exp2_()
    return torch.exp(x, out=out)


def logsumexp(x: Tensor, out: Tensor) -> Tensor:
    """``out_i = m_i + log sum_v exp(x_iv - m_i)``, ``m_i = max_v x_iv``, of finite ``x (n, V)``
    in float32 (or wider) into ``out (n,)``, with :func:`exp`'s kernel."""
    if not _exp2_is_faster(x.device.type):
        return torch.logsumexp(x, dim=-1, out=out)
    top = x.amax(dim=-1, keepdim=True)
    shifted = x - top
    torch.sum(exp(shifted, out=shifted), dim=-1, out=out)
    return out.log_().add_(top.squeeze(-1))


def attention_products(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool,
                       dropout_p: float) -> Tensor:
    """:func:`aiokd.model.transformer.attention` as ``P = softmax(q k^T / sqrt(d))`` in (at least)
    float32, with masked keys and, if ``causal``, key positions after the query's at ``-inf``;
    dropout on ``P``; then ``P v`` in ``v``'s dtype: ``q (B, H, T, d)``, ``k``/``v (B, H, S, d)``,
    ``mask (B, 1, 1, S)`` True where allowed.

    The scores ``(B, H, T, S)`` are its only float32 temporary."""
    scores = at_least_float32(torch.matmul(q, k.transpose(-1, -2))).mul_(q.shape[-1] ** -0.5)
    if mask is not None:
        scores.masked_fill_(~mask, float("-inf"))
    if causal:
        later = torch.ones(scores.shape[-2:], dtype=torch.bool, device=q.device).triu_(1)
        scores.masked_fill_(later, float("-inf"))
    probabilities = dropout(torch.softmax(scores, dim=-1), dropout_p, True)
    return torch.matmul(probabilities.to(v.dtype), v)


DROPOUT_BITS = 15  # bits of each uniform integer of a CPU dropout mask


def dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """Inverted dropout ``x * m / (1 - p)``, ``m_i ~ Bernoulli(1 - p)``.

    On a CPU, ``F.dropout``'s Bernoulli sampler and ``torch.rand`` draw one random number per
    element; here each 64-bit draw of the generator gives four 15-bit uniform integers ``u`` and
    ``m = [u >= round(p 2^15)]``, so ``p`` is rounded to a multiple of ``2^-15`` and the scale
    uses the rounded rate (``E[output] = x`` exactly).  Elsewhere ``F.dropout``'s fused kernel.
    """
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    levels = 1 << DROPOUT_BITS
    threshold = round(p * levels)
    if threshold >= levels:
        return x * 0.0
    words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device).random_()
    uniform = words.view(torch.int16)[:x.numel()].view(x.shape).bitwise_and_(levels - 1)
    keep = uniform.ge_(threshold).to(x.dtype).mul_(levels / (levels - threshold))
    return x * keep
