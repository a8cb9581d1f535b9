"""Time of one attention call on CPU per kernel and precision, at sentence-length sizes: why
``aiokd.model.transformer.attention`` trains in half precision through two matrix products on a CPU.

    python benchmarks/attention_kernels.py [--threads 1] [--batch 215] [--length 19]

Queries, keys and values are views of one fused projection ``(B, T, 3C)`` split into heads, as
in the model.  Training: forward and backward (``F.scaled_dot_product_attention``'s math and
flash kernels against :func:`aiokd.model.kernels.attention_products`); inference: forward only,
under ``torch.no_grad`` (PyTorch's choice of kernel against the products).  Each figure is the
median of ``--repeats`` calls; every variant runs in the same process, one after the other.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from aiokd.model.kernels import attention_products

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def sdpa(backend: SDPBackend | None) -> Attention:
    """``F.scaled_dot_product_attention`` with ``backend`` (``None``: PyTorch's choice)."""
    def run(q, k, v, mask):
        if backend is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return run


def products(q, k, v, mask):
    return attention_products(q, k, v, mask, False, 0.0)


def time_attention(attention: Attention, dtype: torch.dtype, batch: int, heads: int,
                   length: int, head_dim: int, repeats: int, backward: bool) -> float:
    """Median milliseconds of ``attention`` (and its backward pass if ``backward``) on the heads
    of a fused ``(B, T, 3C)`` projection with a padding mask."""
    width = heads * head_dim
    fused = torch.randn(batch, length, 3 * width, dtype=dtype, requires_grad=backward)
    mask = torch.ones(batch, 1, 1, length, dtype=torch.bool)
    mask[: batch // 4, ..., length // 2:] = False
    weights = torch.randn(batch, heads, length, head_dim, dtype=dtype)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.set_grad_enabled(backward):
            q, k, v = (part.view(batch, length, heads, head_dim).transpose(1, 2)
                       for part in fused.chunk(3, dim=-1))
            y = attention(q, k, v, mask)
            if backward:
                y.backward(weights)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=215, help="sentences (iwslt batches: ~215)")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--length", type=int, default=19)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = (args.batch, args.heads, args.length, args.head_dim)
    print(f"CPU, shape (B, H, T, d) = {shape}, {args.threads} thread(s), "
          f"median of {args.repeats} calls, milliseconds")
    sections = {
        "training (forward + backward)": {"sdpa math": sdpa(SDPBackend.MATH),
                                          "sdpa flash": sdpa(SDPBackend.FLASH_ATTENTION),
                                          "products": products},
        "inference (forward)": {"sdpa": sdpa(None), "products": products},
    }
    for title, kernels in sections.items():
        print(title)
        backward = title.startswith("training")
        for dtype in (torch.float32, torch.bfloat16):
            times = {name: time_attention(kernel, dtype, *shape, args.repeats, backward)
                     for name, kernel in kernels.items()}
            fastest = min(times, key=times.get)
            cells = "   ".join(f"{name} {ms:7.1f}" for name, ms in times.items())
            print(f"  {str(dtype):15} {cells}   fastest: {fastest}")


if __name__ == "__main__":
    main()
