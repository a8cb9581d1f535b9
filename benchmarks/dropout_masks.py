"""Time of one dropout call on CPU per way of drawing the mask: why ``aiokd.model.kernels.dropout``
cuts four mask draws out of each 64-bit random number there.

    python benchmarks/dropout_masks.py [--threads 1] [--shape 215 19 512] [--p 0.3]

Forward and backward of ``F.dropout`` (a Bernoulli draw per element), of ``u >= p`` with ``u``
from ``torch.rand`` (a float draw per element) and of :func:`aiokd.model.kernels.dropout`; the
median of ``--repeats`` calls each, every variant in the same process, one after the other.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from aiokd.model.kernels import dropout


def uniform_mask(x: torch.Tensor, p: float) -> torch.Tensor:
    keep = torch.rand_like(x, dtype=torch.float32).ge_(p).mul_(1.0 / (1.0 - p))
    return x * keep.to(x.dtype)


def time_dropout(drop: Callable[[torch.Tensor, float], torch.Tensor], dtype: torch.dtype,
                 shape: list[int], p: float, repeats: int) -> float:
    """Median milliseconds of ``drop(x, p)`` and its backward pass."""
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    weights = torch.randn(shape, dtype=dtype)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        drop(x, p).backward(weights)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shape", type=int, nargs="+", default=[215, 19, 512])
    parser.add_argument("--p", type=float, default=0.3)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ways = {"F.dropout": lambda x, p: F.dropout(x, p, training=True),
            "torch.rand": uniform_mask,
            "aiokd": lambda x, p: dropout(x, p, training=True)}
    print(f"CPU, shape {tuple(args.shape)}, p = {args.p}, {args.threads} thread(s), forward + "
          f"backward, median of {args.repeats} calls, milliseconds")
    for dtype in (torch.float32, torch.bfloat16):
        times = {name: time_dropout(way, dtype, args.shape, args.p, args.repeats)
                 for name, way in ways.items()}
        cells = "   ".join(f"{name} {ms:6.2f}" for name, ms in times.items())
        print(f"  {str(dtype):15} {cells}   aiokd / torch.rand "
              f"{times['aiokd'] / times['torch.rand']:.2f}")


if __name__ == "__main__":
    main()
