"""The precision a run trains in: ``train.amp`` as given, or, for ``auto``, what is fastest on
this machine at this model's shape (:func:`aiokd.model.probe.training_precision`: bf16 only where
it was measured clearly faster than float32).  Every process of a job trains in the main
process's choice, and the run log says what was chosen and why.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from aiokd.config import Config
from aiokd.model.probe import Choice, training_precision
from aiokd.train.distributed import Distributed

DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISION_NAMES = {"none": "float32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}


def amp_dtype(cfg: Config) -> torch.dtype | None:
    """The autocast dtype of a resolved ``train.amp`` (None: float32)."""
    return DTYPES[cfg.train.amp]


def resolve_precision(cfg: Config, dist_: Distributed) -> tuple[Config, Choice]:
    """``cfg`` with ``train.amp=auto`` replaced by the measured choice (the main process
    measures, the others follow), and the choice; other values are kept as given."""
    if cfg.train.amp != "auto":
        return cfg, Choice(cfg.train.amp, "train.amp as given")
    choice = training_precision(cfg.model, dist_.device, cfg.train.max_tokens) if dist_.main \
        else None
    if dist_.world > 1:
        shared = [choice]
        dist.broadcast_object_list(shared, src=0)
        choice = shared[0]
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, amp=choice.value)), choice


def precision_record(cfg: Config, choice: Choice) -> dict[str, object]:
    """The log entry of the precision a stage trains in: ``amp``, a line saying what and why,
    and the measured seconds per candidate step."""
    return {"amp": cfg.train.amp,
            "precision": f"{PRECISION_NAMES[cfg.train.amp]} ({choice.reason})",
            **{f"seconds_{name}": value for name, value in choice.seconds.items()}}
