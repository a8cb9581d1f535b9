"""Training step of a Word-KD student with the fused loss against the autograd loss, side by side,
with the from-scratch step of the same student and the frozen teacher's forward pass for scale.

    python benchmarks/word_kd_step.py [--preset narrow] [--student 2-2] [--tokens 3840] \\
        [--threads 1] [--amp bf16|none] [--repeats 6]

Random weights and a random batch of ``--tokens`` target tokens (128 sentences); one step =
forward (under autocast with ``--amp bf16``) and backward of
:class:`aiokd.distill.objective.Objective`; the variants alternate, the first call of each is
discarded, the median of the rest is printed.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from aiokd.config import load_config
from aiokd.distill.objective import Objective
from aiokd.evaluation.latency import timed
from aiokd.model.transformer import Transformer
from aiokd.students import parse_student

SENTENCES = 128


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="narrow")
    parser.add_argument("--student", default="2-2")
    parser.add_argument("--tokens", type=int, default=3840)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--amp", choices=["bf16", "none"], default="bf16")
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    le, ld = parse_student(args.student)
    layers = [f"model.enc_layers={le}", f"model.dec_layers={ld}", f"distill.student={le}-{ld}"]
    teacher_cfg = load_config(args.preset)
    torch.manual_seed(0)
    teacher = Transformer(teacher_cfg.model)
    configs = {name: load_config(args.preset, overrides=[*layers, *extra]) for name, extra in {
        "scratch": ["distill.method=scratch"],
        "word-kd, fused loss": ["distill.method=word-kd", "distill.teacher=-"],
        "word-kd, autograd loss": ["distill.method=word-kd", "distill.teacher=-",
                                   "distill.loss=reference"]}.items()}
    student = Transformer(next(iter(configs.values())).model)
    objectives = {name: Objective(student, cfg, None if name == "scratch" else teacher)
                  for name, cfg in configs.items()}
    length = args.tokens // SENTENCES
    vocab = teacher_cfg.model.vocab_size
    src = torch.randint(4, vocab, (SENTENCES, length))
    tgt = torch.randint(4, vocab, (SENTENCES, length + 1))
    prev, target = tgt[:, :-1], tgt[:, 1:]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.amp == "bf16")

    def step(objective: Objective) -> None:
        with autocast:
            loss, _ = objective(src, prev, target, [], 1)
        loss.backward()
        student.zero_grad(set_to_none=True)

    def teacher_forward() -> None:
        with torch.no_grad(), autocast:
            teacher(src, prev, select=target != teacher_cfg.model.pad_id)

    calls = {name: (lambda o=objective: step(o)) for name, objective in objectives.items()}
    calls["teacher 6-6 forward (no gradient)"] = teacher_forward
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.repeats + 1):
        for name, fn in calls.items():
            times[name].append(timed(fn))
    print(f"CPU, preset {args.preset}, student {args.student}, {SENTENCES * length} target "
          f"tokens, {args.threads} thread(s), amp {args.amp}: forward + backward, median of "
          f"{args.repeats} calls (the first discarded), milliseconds")
    medians = {name: statistics.median(found[1:]) * 1000 for name, found in times.items()}
    for name, ms in medians.items():
        print(f"  {name:36} {ms:8.1f}")
    fused, reference = medians["word-kd, fused loss"], medians["word-kd, autograd loss"]
    print(f"  autograd / fused: {reference / fused:.2f}x")


if __name__ == "__main__":
    main()
