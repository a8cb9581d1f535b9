"""The AIO-KD objective written term by term with autograd, as a direct PyTorch implementation
(and the reference code) computes it: a float32 log-softmax table per model, each CE and KL term
on those tables, detaching and the better student decided on the host.  The speed benchmark's
``--unfused`` variants train with it, to measure :mod:`aiokd.distill.aiokd_loss` against it."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from aiokd.distill.objective import Objective, log_probs


def smoothed_ce(lprobs: Tensor, gold: Tensor, epsilon: float) -> Tensor:
    """``sum_i (1 - eps - eps_i) (-lp[i, y_i]) + eps_i (-sum_v lp[i, v])``, with
    ``eps_i = eps / (V - 1)``."""
    eps_i = epsilon / (lprobs.shape[-1] - 1)
    nll = -lprobs.gather(-1, gold[:, None]).sum()
    return (1.0 - epsilon - eps_i) * nll - eps_i * lprobs.sum()


def kl(target: Tensor, lprobs: Tensor) -> Tensor:
    """``KL(P_target || P)`` summed over tokens, from log-probabilities."""
    return F.kl_div(lprobs, target, log_target=True, reduction="sum")


class UnfusedObjective(Objective):
    """:class:`~aiokd.distill.objective.Objective` with the AIO-KD loss computed term by term
    (mutual
    learning as the paper sets it: ``KL(P_better || P_worse)``)."""

    def _aiokd(self, src, prev_tgt, mask, gold, students, stage):
        d, eps = self.cfg.distill, self.cfg.train.label_smoothing
        if d.ml_mode != "no_weight":
            raise ValueError("the unfused objective has the paper's mutual learning only "
                             "(distill.ml_mode=no_weight)")
        teacher = self.model.teacher
        logits = self.model.forward_students(src, prev_tgt, [teacher, *students],
                                             reuse_prefix=d.reuse_prefix, select=mask)
        lprobs = {s: log_probs(x) for s, x in logits.items()}
        teacher_ce = smoothed_ce(lprobs[teacher], gold, eps)
        student_ce = [smoothed_ce(lprobs[s], gold, eps) for s in students]
        kd = sum(kl(lprobs[teacher] if not d.detach or ce.item() <= d.eta * teacher_ce.item()
                    else lprobs[teacher].detach(), lprobs[s])
                 for s, ce in zip(students, student_ce, strict=True)) / len(students)
        loss = teacher_ce + sum(student_ce) + d.alpha * kd
        pairs = [(i, j) for i in range(len(students)) for j in range(i + 1, len(students))]
        if stage == 2 and d.beta > 0 and pairs:
            ml = 0
            for i, j in pairs:
                better, worse = (i, j) if student_ce[i].item() <= student_ce[j].item() else (j, i)
                ml = ml + kl(lprobs[students[better]], lprobs[students[worse]])
            loss = loss + d.beta * ml / len(pairs)
        return loss, {}
