"""Time of the fused AIO-KD loss alone, stage 1 against stage 2 (mutual learning), on logits of
one training step's size: what stage 2 adds to a step, without the step-to-step spread of whole
training steps.

    python benchmarks/loss_stages.py [--threads 1] [--tokens 3848] [--vocab 8000] [--k 2]

Random logits of the teacher and ``K`` students; forward and backward of
:func:`aiokd.distill.aiokd_loss.aiokd_loss` with ``beta = 0`` (stage 1) and ``beta = 1`` (stage 2),
the two alternating, the median of ``--repeats`` calls each.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from aiokd.distill.aiokd_loss import LossSettings, aiokd_loss
from aiokd.evaluation.latency import timed


def time_loss(beta: float, tokens: int, vocab: int, k: int, dtype: torch.dtype) -> float:
    """Seconds of one forward and backward pass of the loss on fresh random logits."""
    logits = [torch.randn(tokens, vocab, dtype=dtype, requires_grad=True) for _ in range(k + 1)]
    gold = torch.randint(0, vocab, (tokens,))
    settings = LossSettings(epsilon=0.1, alpha=1.0, beta=beta, eta=1.1)
    return timed(lambda: aiokd_loss(logits[0], logits[1:], gold, settings,
                                    overwrite=True).loss.backward())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tokens", type=int, default=3848, help="iwslt steps: 3,848 on average")
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--k", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"CPU, {args.tokens} tokens x {args.vocab} vocabulary, K = {args.k}, {args.threads} "
          f"thread(s), forward + backward, median of {args.repeats} calls, milliseconds")
    for dtype in (torch.float32, torch.bfloat16):
        times: dict[str, list[float]] = {"stage 1": [], "stage 2": []}
        for _ in range(args.repeats):
            for stage, beta in (("stage 1", 0.0), ("stage 2", 1.0)):
                times[stage].append(time_loss(beta, args.tokens, args.vocab, args.k, dtype))
        one, two = (statistics.median(times[stage]) * 1000 for stage in times)
        print(f"  {str(dtype):15} stage 1 {one:7.1f}   stage 2 {two:7.1f}   "
              f"stage 2 adds {two - one:6.1f}")


if __name__ == "__main__":
    main()
