"""Forward + backward time of ``F.scaled_dot_product_attention`` on CPU per kernel and precision,
at sentence-length sizes: why ``aiokd.model.attention`` uses the math kernel on CPU.

    python benchmarks/attention_kernels.py [--threads 1] [--batch 200] [--length 20]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def time_kernel(backend: SDPBackend, dtype: torch.dtype, shape: tuple[int, ...],
                repeats: int) -> float:
    """Fastest of ``repeats`` forward + backward passes, in milliseconds."""
    q, k, v = (torch.randn(*shape, dtype=dtype, requires_grad=True) for _ in range(3))
    mask = torch.ones(shape[0], 1, 1, shape[2], dtype=torch.bool)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        with sdpa_kernel(backend):
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum().backward()
        times.append(time.perf_counter() - start)
    return min(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--length", type=int, default=20)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shape = (args.batch, args.heads, args.length, args.head_dim)
    print(f"shape (B, H, T, d) = {shape}, {args.threads} thread(s), best of {args.repeats}")
    for dtype in (torch.float32, torch.bfloat16):
        times = {b.name: time_kernel(b, dtype, shape, args.repeats)
                 for b in (SDPBackend.MATH, SDPBackend.FLASH_ATTENTION)}
        ratio = times["FLASH_ATTENTION"] / times["MATH"]
        print(f"{str(dtype):15} math {times['MATH']:7.1f} ms   flash "
              f"{times['FLASH_ATTENTION']:7.1f} ms   flash/math {ratio:.2f}")


if __name__ == "__main__":
    main()
