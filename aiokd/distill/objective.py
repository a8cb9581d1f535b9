"""The training objective of one batch, for AIO-KD and for the single-student baselines.

AIO-KD (Miao et al. 2023) trains the teacher ``T`` with ``K`` students ``S_1..S_K`` sampled for
the update on ``L = L_ce + alpha * L_kd + beta * L_ml``, ``L_ml`` from stage ``distill.ml_stage``
on (2 by default): the loss of :mod:`aiokd.distill.aiokd_loss`, fused or, with
``distill.loss=reference``, term by term.

With ``distill.reuse_prefix`` (the default) one encoder pass serves every model and a student
shares the teacher's dropout noise, so a sampled teacher-sized student, or a student drawn twice,
is the same tensor as its twin (its KD term is 0).  Without it, as the reference implementation,
the teacher and every sampled student run their own forward pass with their own dropout noise:
a sampled ``6-6`` then contributes a dropout-consistency term (R-Drop), and a repeated draw two.

Baselines train one fixed student ``S`` (the model *is* that student):

    scratch:       L = CE(S)
    word-kd:       L = CE(S) + alpha * KL(P_T || P_S)                 (frozen teacher)
    selective-kd:  as word-kd, KL only on the tokens where CE(S) is highest

(:mod:`aiokd.distill.word_kd_loss`, fused or, with ``distill.loss=reference``, with autograd).

Every loss is a sum over non-pad target tokens; the training loop divides by the token count.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from aiokd.config import Config
from aiokd.distill.aiokd_loss import LossSettings, aiokd_loss, aiokd_loss_reference
from aiokd.distill.losses import label_smoothed_nll_from_logits, token_nll_from_hidden
from aiokd.distill.word_kd_loss import word_kd_loss, word_kd_loss_reference
from aiokd.model.transformer import Transformer
from aiokd.students import Student


class Objective(nn.Module):
    """Wraps the model (and a frozen teacher for KD baselines) so that one ``forward`` computes the
    whole loss of a batch; this is the module that ``DistributedDataParallel`` wraps."""

    def __init__(self, model: Transformer, cfg: Config, frozen_teacher: Transformer | None = None):
        super().__init__()
        self.model = model
        self.cfg = cfg
        self.frozen_teacher = frozen_teacher
        if frozen_teacher is not None:
            frozen_teacher.requires_grad_(False).eval()

    def forward(self, src: Tensor, prev_tgt: Tensor, target: Tensor, students: list[Student],
                stage: int) -> tuple[Tensor, dict[str, Tensor]]:
        """Loss of one batch and detached statistics.

        Args:
            src: ``(B, S)`` source ids, ``prev_tgt``/``target``: ``(B, T)`` decoder input and
                reference (shifted by one).
            students: the sampled students (AIO-KD; ignored by the baselines).
            stage: 1 or 2; mutual learning from stage ``distill.ml_stage`` on.
        Returns:
            ``(loss, stats)``: the loss summed over tokens; ``stats`` holds sums of the teacher's
            (or the baseline student's) ``nll`` and label-smoothed ``ce``, ``kd``, ``ml``, and
            (AIO-KD) each sampled student's ``student_ces`` and detaching ``gates`` (``(K,)``).
        """
        mask = target != self.model.cfg.pad_id
        gold = target[mask]
        if self.cfg.distill.method == "aiokd":
            return self._aiokd(src, prev_tgt, mask, gold, students, stage)
        return self._single_student(src, prev_tgt, mask, gold)

    def _aiokd(self, src, prev_tgt, mask, gold, students, stage):
        d = self.cfg.distill
        models = [self.model.teacher, *students]
        if d.reuse_prefix:
            shared = self.model.forward_students(src, prev_tgt, models, select=mask)
            logits = [shared[s] for s in models]
        else:  # every model its own pass and dropout noise, a repeated draw included
            logits = [self.model(src, prev_tgt, *s, select=mask) for s in models]
        settings = LossSettings(epsilon=self.cfg.train.label_smoothing, alpha=d.alpha,
                                beta=d.beta if stage >= d.ml_stage else 0.0, eta=d.eta,
                                detach=d.detach, ml_mode=d.ml_mode)
        loss = aiokd_loss if d.loss == "fused" else aiokd_loss_reference
        # The projections' outputs feed this loss alone: their gradient may overwrite them.
        terms = loss(logits[0], logits[1:], gold, settings, overwrite=True)
        stats = {"nll": terms.teacher_nll, "ce": terms.ce[0], "student_ces": terms.ce[1:],
                 "kd": terms.kd, "ml": terms.ml, "gates": terms.gates}
        return terms.loss, stats

    def _single_student(self, src, prev_tgt, mask, gold):
        d, eps = self.cfg.distill, self.cfg.train.label_smoothing
        logits = self.model(src, prev_tgt, select=mask)
        if self.frozen_teacher is None:
            ce, nll = label_smoothed_nll_from_logits(logits, gold, eps, overwrite=True)
            kd = torch.zeros((), device=ce.device)
            return ce, {"nll": nll.detach(), "ce": ce.detach(), "kd": kd}
        with torch.no_grad():
            teacher_logits = self.frozen_teacher(src, prev_tgt, select=mask)
        ratio = d.selective_ratio if d.method == "selective-kd" else None
        loss = word_kd_loss if d.loss == "fused" else word_kd_loss_reference
        # The projection's output feeds this loss alone: its gradient may overwrite it.
        terms = loss(logits, teacher_logits, gold, eps, d.alpha, ratio, overwrite=True)
        return terms.loss, {"nll": terms.nll, "ce": terms.ce, "kd": terms.kd}


@torch.no_grad()
def validation_nll(model: Transformer, src: Tensor, prev_tgt: Tensor, target: Tensor,
                   students: list[Student], reuse_prefix: bool = True) -> Tensor:
    """Summed token NLL of every student on one batch, ``(len(students),)``, in one shared pass."""
    mask = target != model.cfg.pad_id
    gold = target[mask]
    hidden = model.forward_students(src, prev_tgt, students, reuse_prefix=reuse_prefix,
                                    select=mask, project=False)
    return torch.stack([token_nll_from_hidden(hidden[s], model.project, gold,
                                              model.cfg.vocab_size).sum() for s in students])
