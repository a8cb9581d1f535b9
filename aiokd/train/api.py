"""Training from Python, as ``aiokd train`` does it: options in, a trained run directory out.

    aiokd.train.api.train("data/multi30k", "runs/aiokd", overrides=["train.lr=7e-4"])

The options become a :class:`~aiokd.config.Config` (preset, then YAML file, then the options, then
``key=value`` overrides), fitted to the data directory's vocabulary, and
:func:`aiokd.train.loop.run_training` trains or resumes the run.  With ``init_from`` the model
section and the first weights come from an existing model (:mod:`aiokd.train.init_from`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiokd.config import DEFAULT_PRESET, Config, load_config
from aiokd.data.corpus import load_manifest
from aiokd.errors import UserError
from aiokd.model.checkpoint import ModelFiles, load_model_files
from aiokd.students import parse_student
from aiokd.train.init_from import check_data_tokenizer, check_model_options, check_student_fits
from aiokd.train.loop import run_training


def build_config(preset: str = DEFAULT_PRESET, config_file: str | Path | None = None,
                 overrides: list[str] | tuple[str, ...] = (), max_updates: int | None = None,
                 stage: str | None = None, method: str | None = None,
                 student: str | None = None, teacher: str | Path | None = None,
                 init_model: ModelFiles | None = None,
                 max_minutes: float | None = None) -> Config:
    """The run's config: preset, YAML file, the options, then ``key=value`` overrides (the
    parameters of :func:`train`); with ``init_model``, its model section instead of the
    preset's, and options that change its network refused."""
    extra: dict[str, dict[str, Any]] = {"distill": {}, "train": {}, "model": {}}
    if method:
        extra["distill"]["method"] = method
    if teacher:
        extra["distill"]["teacher"] = str(Path(teacher).resolve())
    if student:
        le, ld = parse_student(student)
        if le < 1 or ld < 1:
            raise UserError(f"option --student: {student} needs at least one layer on each side")
        extra["distill"]["student"] = student
    if max_updates is not None:
        extra["train"]["max_updates"] = max_updates
    if max_minutes is not None:
        extra["train"]["max_minutes"] = max_minutes
    if stage:
        extra["train"]["stages"] = stage
    base_model = None if init_model is None else init_model.config["model"]
    cfg = load_config(preset, config_file, overrides, extra, base_model)
    if init_model is not None:
        check_model_options(cfg.model, init_model)
    if cfg.distill.method != "aiokd":
        if cfg.distill.student is None:
            raise UserError(f"option --student: --method {cfg.distill.method} trains one "
                            "student; name it, e.g. --student 4-2")
        # A baseline's model is its one student.
        cfg.model.enc_layers, cfg.model.dec_layers = parse_student(cfg.distill.student)
        if init_model is not None:
            check_student_fits((cfg.model.enc_layers, cfg.model.dec_layers), init_model)
    return cfg


def train(data: str | Path, out: str | Path, *, preset: str = DEFAULT_PRESET,
          config_file: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
          max_updates: int | None = None, max_minutes: float | None = None,
          stage: str | None = None, method: str | None = None,
          student: str | None = None, teacher: str | Path | None = None,
          init_from: str | Path | None = None) -> dict[str, Any]:
    """``aiokd train``: train on data directory ``data`` into run directory ``out``, or resume
    the run there; returns the validation losses of the best model.

    Args:
        data: a data directory made by ``aiokd prepare``.
        out: the run directory (created, or resumed).
        preset: a preset of :data:`aiokd.config.PRESETS`.
        config_file: a YAML file with overrides of the preset.
        overrides: ``section.key=value`` settings, applied last.
        max_updates: cap on the number of updates of each stage.
        max_minutes: the job's time budget, shared by its stages (``train.max_minutes``).
        stage: ``1``, ``2`` or ``both`` (default: both for AIO-KD).
        method: ``aiokd`` (default), ``scratch``, ``word-kd`` or ``selective-kd``.
        student: baselines: the one student ``l_e-l_d`` to train.
        teacher: word-kd / selective-kd: the teacher's run directory or checkpoint.
        init_from: a model directory, run directory or checkpoint to start from (its network
            and weights; see :mod:`aiokd.train.init_from`).

    Raises:
        UserError: bad settings or data, a ``model.*`` option that differs from the
            ``init_from`` model, data encoded with another tokenizer than that model's, or a
            run directory that cannot be resumed with them.
    """
    init_model = None if init_from is None else load_model_files(init_from)
    cfg = build_config(preset, config_file, overrides, max_updates, stage, method, student,
                       teacher, init_model, max_minutes)
    if init_model is not None:
        check_data_tokenizer(init_model, data)
    manifest = load_manifest(data)
    if cfg.model.vocab_size != manifest["vocab_size"]:
        cfg.model.vocab_size = manifest["vocab_size"]
    for key in ("pad_id", "bos_id", "eos_id"):
        setattr(cfg.model, key, manifest[key])
    cfg.distill.space(cfg.model)
    return run_training(data, out, cfg, init_from)
