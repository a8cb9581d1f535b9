"""Starting a run from a model you already have: ``aiokd train --init-from MODEL``.

``MODEL`` is an aiokd model directory (one made by ``aiokd import`` from an OPUS-MT model, an
extracted student), a run directory or a checkpoint.  It gives the run

* its network: the model's :class:`~aiokd.config.ModelConfig` replaces the preset's ``model``
  section.  A ``model.*`` option of ``--config`` or of a ``key=value`` override that differs from
  the model is refused, except the dropout rates (:data:`TRAINING_ONLY`), which only act in
  training and may be set;
* its first weights: the first stage starts from the model's weights (AIO-KD: the teacher is the
  whole model and every student its prefix); a single-student baseline ``l_e-l_d`` starts from
  the model's embeddings, first ``l_e`` encoder and first ``l_d`` decoder layers.  Stage 2 still
  starts from stage 1's best checkpoint where the run has one.

The data directory must be encoded with the model's tokenizer (``aiokd prepare --tokenizer``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from aiokd.config import ModelConfig
from aiokd.data.corpus import data_tokenizer, load_manifest
from aiokd.errors import UserError
from aiokd.model.checkpoint import ModelFiles, load_model_files, load_weights
from aiokd.model.transformer import Transformer
from aiokd.students import Student, student_name

TRAINING_ONLY = ("dropout", "attention_dropout", "activation_dropout")
"""``model.*`` options that may differ from the ``--init-from`` model."""


def check_model_options(chosen: ModelConfig, files: ModelFiles) -> None:
    """UserError naming the first ``model.*`` option of ``chosen`` (the options applied over
    the model's config) that changes the network of ``files``."""
    model = files.model.cfg
    for field in dataclasses.fields(ModelConfig):
        ours, theirs = getattr(chosen, field.name), getattr(model, field.name)
        if field.name not in TRAINING_ONLY and ours != theirs:
            raise UserError(f"model.{field.name}={ours!r}: --init-from {files.source} has "
                            f"model.{field.name}={theirs!r}; the network comes from the model "
                            f"(only {', '.join(f'model.{n}' for n in TRAINING_ONLY)} may be set)")


def check_student_fits(student: Student, files: ModelFiles) -> None:
    """UserError unless the baseline ``student`` is a prefix of the model of ``files``."""
    model = files.model.cfg
    if student[0] > model.enc_layers or student[1] > model.dec_layers:
        raise UserError(f"--student {student_name(student)}: --init-from {files.source} has "
                        f"only {model.enc_layers} encoder and {model.dec_layers} decoder layers")


def check_data_tokenizer(files: ModelFiles, data_dir: str | Path) -> None:
    """UserError, naming both, unless ``data_dir`` is encoded with the tokenizer of ``files``
    and the same special ids."""
    manifest = load_manifest(data_dir)
    model = files.model.cfg
    same_ids = all(manifest[key] == getattr(model, key)
                   for key in ("vocab_size", "pad_id", "bos_id", "eos_id"))
    if data_tokenizer(data_dir).sha256 != files.tokenizer.sha256 or not same_ids:
        raise UserError(f"{data_dir} is encoded with another tokenizer than --init-from "
                        f"{files.source}; prepare the data with `aiokd prepare ... --tokenizer "
                        f"{files.source}`")


def initial_state(model: Transformer, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The weights of ``model`` for a network of config ``cfg``: all of them, or, for fewer
    layers, the embeddings, the final norms and the first ``cfg.enc_layers`` encoder and
    ``cfg.dec_layers`` decoder layers."""
    def kept(name: str) -> bool:
        side, _, rest = name.partition(".")
        if side not in ("encoder", "decoder") or not rest.split(".")[0].isdigit():
            return True
        layers = cfg.enc_layers if side == "encoder" else cfg.dec_layers
        return int(rest.split(".")[0]) < layers

    return {name: value for name, value in model.state_dict().items() if kept(name)}


def start_from_model(model: Transformer, path: str | Path) -> None:
    """Load the weights of the model ``path`` (or its first layers: :func:`initial_state`) into
    ``model``, in place."""
    files = load_model_files(path)
    load_weights(model, initial_state(files.model, model.cfg), Path(path))

