"""Typed configuration: model, distillation and training settings.

A run's configuration comes from a preset (``tiny``, ``iwslt``, ``base``), then an optional YAML
file, then ``section.key=value`` overrides on the command line, in that order.  Every value is
checked when the dataclasses are built; a bad one raises :class:`UserError` naming the option.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from aiokd.errors import UserError
from aiokd.students import CandidateSpace


def _require(condition: bool, option: str, message: str) -> None:
    if not condition:
        raise UserError(f"option {option}: {message}")


ACTIVATIONS = ("relu", "gelu", "swish", "silu")
"""Feed-forward activations; ``silu`` is another name of ``swish``."""
POSITIONS = ("tensor2tensor", "marian")
"""Layouts of the sinusoidal position table."""


@dataclass
class ModelConfig:
    """An encoder-decoder Transformer with one joint vocabulary and all embeddings shared."""

    vocab_size: int = 8000
    d_model: int = 512
    ffn_dim: int = 1024
    heads: int = 4
    enc_layers: int = 6
    dec_layers: int = 6
    dropout: float = 0.3
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    pre_norm: bool = False
    """Post-norm (``x = LN(x + f(x))``) as in the paper, or pre-norm (``x = x + f(LN(x))``)."""
    max_positions: int = 1024
    pad_id: int = 0
    bos_id: int = 2
    """The first decoder input (Marian models start from the pad token)."""
    eos_id: int = 3
    activation: str = "relu"
    """Of the feed-forward layers: ``relu``, ``gelu`` (exact, erf) or ``swish`` (``silu``:
    ``x * sigmoid(x)``, as OPUS-MT models)."""
    positions: str = "tensor2tensor"
    """Sinusoidal table layout, sines in the first half of the channels and cosines in the second:
    ``tensor2tensor`` (frequencies ``10000^(-i / (C/2 - 1))``) or ``marian`` (frequencies
    ``10000^(-2i / C)``, as Marian and Hugging Face's ``MarianMTModel``)."""
    scale_embedding: bool = True
    """Multiply the token embeddings by ``sqrt(C)`` before adding the positions."""
    final_logits_bias: bool = False
    """A fixed (never trained) bias added to the output logits, as Marian models carry."""
    layer_norm_eps: float = 1e-5
    """Epsilon of every layer norm."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "d_model", "ffn_dim", "heads", "enc_layers", "dec_layers",
                     "max_positions"):
            _require(getattr(self, name) > 0, f"model.{name}", "must be positive")
        _require(self.d_model % self.heads == 0, "model.heads", "must divide model.d_model")
        for name in ("pad_id", "bos_id", "eos_id"):
            _require(0 <= getattr(self, name) < self.vocab_size, f"model.{name}",
                     "must be a token id of the vocabulary")
        for name in ("dropout", "attention_dropout", "activation_dropout"):
            _require(0.0 <= getattr(self, name) < 1.0, f"model.{name}", "must be in [0, 1)")
        _require(self.activation in ACTIVATIONS, "model.activation",
                 f"must be one of {', '.join(ACTIVATIONS)}")
        _require(self.positions in POSITIONS, "model.positions",
                 f"must be one of {', '.join(POSITIONS)}")
        _require(0 < self.layer_norm_eps < 1, "model.layer_norm_eps", "must be in (0, 1)")


@dataclass
class DistillConfig:
    """The AIO-KD objective ``L = L_ce + alpha * L_kd + beta * L_ml`` and its student sampling."""

    method: str = "aiokd"
    """``aiokd``; or a single-student baseline: ``scratch``, ``word-kd``, ``selective-kd``."""
    k: int = 2
    """Students sampled per update."""
    alpha: float = 5.5
    """Weight of word-level KD from the teacher."""
    beta: float = 0.5
    """Weight of mutual learning between students (from stage ``ml_stage`` on)."""
    ml_stage: int = 2
    """The stage from which mutual learning applies: 2, the paper's two-stage training, or 1,
    from the first update (with ``train.stages=1``: the paper's ablation without two stages)."""
    eta: float = 1.1
    """Dynamic gradient detaching: the teacher side of KD is detached when CE_S / CE_T > eta."""
    detach: bool = True
    """Dynamic gradient detaching on (``False``: the teacher always learns from every student)."""
    ml_mode: str = "no_weight"
    """Mutual learning: ``none``, ``no_weight`` (better teaches worse), ``full``, ``detaching``."""
    loss: str = "fused"
    """How the AIO-KD and the Word-KD / Selective-KD losses are computed: ``fused`` (block by
    block, the gradient written out: ``aiokd_loss``, ``word_kd_loss``) or ``reference`` (the same
    equations term by term with autograd, slower and heavier in memory), in
    :mod:`aiokd.distill.aiokd_loss` and :mod:`aiokd.distill.word_kd_loss`."""
    replacement: bool = True
    """Sample students with replacement (as the reference code does)."""
    sandwich: bool = False
    """Always include the smallest candidate among the K sampled students, the sandwich rule of
    BigNAS / Once-for-All."""
    min_enc: int = 2
    min_dec: int = 2
    dec_le_enc: bool = True
    include_teacher: bool = True
    reuse_prefix: bool = True
    """One encoder pass serves teacher and students, and students with the teacher's ``l_e`` read
    the teacher's decoder states; ``False`` runs every student separately (reference behaviour)."""
    student: str | None = None
    """Baselines: the one student trained, e.g. ``4-2``."""
    teacher: str | None = None
    """word-kd / selective-kd: the frozen teacher's run directory or checkpoint."""
    selective_ratio: float = 0.5
    """selective-kd: share of target tokens (highest student CE) that receive KD."""

    AIOKD_ONLY = ("k", "beta", "ml_stage", "eta", "detach", "ml_mode", "replacement", "sandwich",
                  "min_enc", "min_dec", "dec_le_enc", "include_teacher", "reuse_prefix")
    """The settings only the ``aiokd`` method reads: a baseline's training is the same whatever
    they are."""

    def __post_init__(self) -> None:
        methods = ("aiokd", "scratch", "word-kd", "selective-kd")
        _require(self.method in methods, "distill.method", f"must be one of {', '.join(methods)}")
        _require(self.k >= 1, "distill.k", "must be at least 1")
        _require(self.alpha >= 0, "distill.alpha", "must be >= 0")
        _require(self.beta >= 0, "distill.beta", "must be >= 0")
        _require(self.ml_stage in (1, 2), "distill.ml_stage", "must be 1 or 2")
        _require(self.eta > 0, "distill.eta", "must be > 0")
        modes = ("none", "no_weight", "full", "detaching")
        _require(self.ml_mode in modes, "distill.ml_mode", f"must be one of {', '.join(modes)}")
        _require(self.loss in ("fused", "reference"), "distill.loss",
                 "must be fused or reference")
        _require(self.min_enc >= 1, "distill.min_enc", "must be at least 1")
        _require(self.min_dec >= 1, "distill.min_dec", "must be at least 1")
        _require(0 < self.selective_ratio <= 1, "distill.selective_ratio", "must be in (0, 1]")
        if self.method != "aiokd":
            _require(self.student is not None, "--student", f"{self.method} needs --student")
        if self.method in ("word-kd", "selective-kd"):
            _require(self.teacher is not None, "--teacher", f"{self.method} needs --teacher")

    def space(self, model: ModelConfig) -> CandidateSpace:
        """The candidate students; a baseline's model is its one student."""
        if self.method != "aiokd":
            return CandidateSpace(model.enc_layers, model.dec_layers, model.enc_layers,
                                  model.dec_layers, dec_le_enc=False)
        space = CandidateSpace(model.enc_layers, model.dec_layers, self.min_enc, self.min_dec,
                               self.dec_le_enc, self.include_teacher)
        _require(self.min_enc <= model.enc_layers, "distill.min_enc", "exceeds model.enc_layers")
        _require(self.min_dec <= model.dec_layers, "distill.min_dec", "exceeds model.dec_layers")
        _require(len(space.candidates) > 0, "distill", "the candidate space is empty")
        if not self.replacement:
            _require(self.k <= len(space.candidates), "distill.k",
                     f"exceeds the {len(space.candidates)} candidates (sampling without "
                     "replacement)")
        return space


@dataclass
class TrainConfig:
    """Optimisation, batching, validation and checkpointing."""

    lr: float = 5e-4
    warmup_updates: int = 4000
    warmup_init_lr: float = 1e-7
    lr_from_teacher: float = 0.0
    """The constant learning rate of the stages of a run that starts from a trained teacher
    (after the teacher stage, or from an ``--init-from`` model): fine-tuning at about the rate a
    teacher ends its training with, instead of a new warm-up to ``lr``, which undoes part of what
    the teacher learnt.  0: ``lr`` with warm-up and decay, as from random weights."""
    adam_betas: tuple[float, float] = (0.9, 0.98)
    adam_eps: float = 1e-8
    weight_decay: float = 1e-4
    clip_norm: float = 0.0
    """Gradient clipping by global norm (0: off)."""
    label_smoothing: float = 0.1
    max_tokens: int = 4096
    """Tokens per batch on each process (source or target, whichever is larger, padded)."""
    update_freq: int = 1
    """Gradient accumulation: batches per update."""
    max_updates: int = 300_000
    """Updates per stage."""
    max_epochs: int = 0
    """Stop a stage after this many epochs (0: no limit)."""
    max_minutes: float = 0.0
    """Wall-clock budget of the training job in minutes (0: none): the stages share it in
    proportion to their work left, and a stage whose share is spent stops as at its cap
    (:mod:`aiokd.train.budget`); running the job again goes on with it."""
    validate_every: int = 1000
    patience: int = 0
    """Stop a stage after this many validations without improvement (0: never)."""
    save_every: int = 1000
    """Write the resumable ``last`` checkpoint every this many updates (and at each validation)."""
    seed: int = 1
    amp: str = "auto"
    """``none``, ``bf16``, ``fp16``, or ``auto`` (bf16 where the GPU or CPU does it natively)."""
    stages: str = "both"
    """``1``, ``2`` or ``both`` (AIO-KD); baselines run one stage."""
    teacher_updates: int = 0
    """AIO-KD: before stage 1, a *teacher stage* (stage 0) trains the full model alone on
    cross-entropy (the recipe of ``--method scratch`` for the teacher) for at most this many
    updates (and at most ``max_updates``), ``patience`` applying, and stage 1 starts from its best
    checkpoint.  0: none, the paper's joint training from random weights.  Skipped with
    ``--init-from``, whose model is the teacher."""
    stage1_updates: int = 0
    """AIO-KD: the cap of stage 1 (0: ``max_updates``, the cap of every stage).  A first stage
    of fixed length, as in the paper, after which stage 2 (mutual learning) runs on until
    ``patience`` stops it or ``max_updates`` is reached."""
    max_bad_steps: int = 5
    """Stop after this many consecutive updates with a non-finite loss."""
    log_every: int = 50
    valid_max_tokens: int = 0
    """Tokens per validation batch (0: same as max_tokens)."""
    threads: int = 0
    """CPU threads for PyTorch (0: leave PyTorch's default)."""
    keep_freed_memory: bool = True
    """On a CPU with glibc, keep freed memory for the next tensors instead of returning it to the
    system (:mod:`aiokd.train.allocator`): a step's largest tensors then reuse pages already mapped
    instead of new ones the kernel must zero (``benchmarks/freed_memory.py`` measures the steps
    both ways).  The process keeps its peak memory until it ends."""
    compile: bool = False
    """Compile every encoder and decoder layer with ``torch.compile`` (dynamic shapes) for
    training and validation.  Whether it pays depends on the machine: ``benchmarks/speed.py
    --compile`` measures it (on a 2-core CPU it makes a step slower)."""

    def __post_init__(self) -> None:
        self.adam_betas = tuple(self.adam_betas)
        _require(self.lr > 0 and math.isfinite(self.lr), "train.lr", "must be positive")
        _require(self.warmup_updates >= 0, "train.warmup_updates", "must be >= 0")
        _require(self.warmup_init_lr >= 0, "train.warmup_init_lr", "must be >= 0")
        _require(self.lr_from_teacher >= 0, "train.lr_from_teacher", "must be >= 0")
        _require(self.adam_eps > 0, "train.adam_eps", "must be positive")
        _require(len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas),
                 "train.adam_betas", "must be two numbers in [0, 1)")
        _require(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _require(self.clip_norm >= 0, "train.clip_norm", "must be >= 0")
        _require(0 <= self.label_smoothing < 1, "train.label_smoothing", "must be in [0, 1)")
        _require(self.max_tokens > 0, "train.max_tokens", "must be positive")
        _require(self.update_freq >= 1, "train.update_freq", "must be at least 1")
        _require(self.max_updates >= 1, "train.max_updates", "must be at least 1")
        _require(self.max_epochs >= 0, "train.max_epochs", "must be >= 0")
        _require(self.max_minutes >= 0, "train.max_minutes", "must be >= 0")
        _require(self.validate_every >= 1, "train.validate_every", "must be at least 1")
        _require(self.save_every >= 1, "train.save_every", "must be at least 1")
        _require(self.patience >= 0, "train.patience", "must be >= 0")
        _require(0 <= self.seed < 2**32, "train.seed", "must be in [0, 2**32)")
        _require(self.amp in ("auto", "none", "bf16", "fp16"), "train.amp",
                 "must be auto, none, bf16 or fp16")
        _require(self.stages in ("1", "2", "both"), "train.stages", "must be 1, 2 or both")
        _require(self.teacher_updates >= 0, "train.teacher_updates", "must be >= 0")
        _require(self.stage1_updates >= 0, "train.stage1_updates", "must be >= 0")
        _require(self.max_bad_steps >= 1, "train.max_bad_steps", "must be at least 1")
        _require(self.log_every >= 1, "train.log_every", "must be at least 1")
        _require(self.valid_max_tokens >= 0, "train.valid_max_tokens", "must be >= 0")
        _require(self.threads >= 0, "train.threads", "must be >= 0")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "config") -> Config:
        _check_keys(values, cls, where)
        sections = {}
        for name, section_class in SECTIONS.items():
            given = values.get(name, {}) or {}
            _check_keys(given, section_class, f"{where}: {name}")
            given = {key: _coerce(value, section_class, key, f"{name}.{key}")
                     for key, value in given.items()}
            try:
                sections[name] = section_class(**given)
            except TypeError as error:
                raise UserError(f"{where}: {name}: {error}") from None
        return cls(**sections)


SECTIONS = {"model": ModelConfig, "distill": DistillConfig, "train": TrainConfig}


def _coerce(value: Any, section_class: type, key: str, option: str) -> Any:
    """Give ``value`` the field's type (YAML reads ``1e-3`` as a string, ``5`` for a float...)."""
    wanted = typing.get_type_hints(section_class)[key]
    try:
        if wanted is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            number = float(value)
            if not math.isfinite(number):
                raise UserError(f"option {option}: must be a finite number, got {value!r}")
            return number
        if wanted is int and isinstance(value, (int, str)) and not isinstance(value, bool):
            return int(value)
        if wanted is bool and isinstance(value, str):
            return {"true": True, "false": False}[value.lower()]
    except (ValueError, KeyError):
        pass
    else:
        if wanted in (int, float, bool) and (
                not isinstance(value, wanted) or isinstance(value, bool) != (wanted is bool)):
            raise UserError(f"option {option}: expected {wanted.__name__}, got {value!r}")
        if wanted in (str, str | None) and value is not None and not isinstance(value, str):
            return str(value)
        return value
    raise UserError(f"option {option}: expected {wanted.__name__}, got {value!r}")


def _check_keys(values: Any, cls: type, where: str) -> None:
    if not isinstance(values, dict):
        raise UserError(f"{where}: expected a mapping, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(f"{where}: unknown option {unknown[0]!r}; "
                        f"known: {', '.join(sorted(known))}")


DEFAULT_PRESET = "quickstart"
"""The preset of a run that names none: the README's main command."""


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = {key: dict(value) for key, value in base.items()}
    for section, values in extra.items():
        if isinstance(values, dict):
            merged.setdefault(section, {}).update(values)
        else:
            merged[section] = values
    return merged


TINY = {
    "model": {"d_model": 256, "ffn_dim": 512, "heads": 4, "dropout": 0.1, "pre_norm": True},
    "train": {"lr": 3e-3, "warmup_updates": 100, "max_tokens": 2048, "max_updates": 500,
              "validate_every": 250, "save_every": 100, "clip_norm": 1.0, "log_every": 10},
}
SMALL = {  # the paper's post-norm model and dropout at a width a CPU trains to convergence
    "model": {"d_model": 256, "ffn_dim": 1024, "heads": 4, "positions": "marian"},
    "train": {"lr": 1e-3, "warmup_updates": 1000, "max_updates": 8000, "validate_every": 250,
              "save_every": 250, "patience": 5, "log_every": 50},
}

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": TINY,
    # the README's main command: tiny at half the width, trained longer, so that its family's
    # depth shows within minutes on a CPU; the teacher first, then the family from it, with a
    # short stage 1 and a long stage 2 (625 + 1,875 beat 1,250 + 1,250 on validation, every
    # student); on a 2-core CPU too slow for its updates within 23 minutes, as many as fit;
    # uniform sampling, since sandwich sampling lifts its 2-2 but leaves its 6-6 only 0.02 nats
    # below the 2-2
    "quickstart": _merge(TINY, {"model": {"d_model": 128},
                                "train": {"max_updates": 1875, "stage1_updates": 625,
                                          "save_every": 250, "teacher_updates": 1250,
                                          "lr_from_teacher": 8e-4, "max_minutes": 23}}),
    "small": SMALL,
    # small at half the width: on Multi30k its from-scratch 6-6 beats its 2-2; the family
    # starts from a converged teacher (a teacher stage), which at this width beats training
    # teacher and students together from random weights, and every update samples the 2-2
    # (sandwich), which beat uniform sampling on validation; stage 1 lasts 6,000 updates and
    # stage 2 runs on to patience (stopped at 6,000 too, its validation CE was still falling)
    "narrow": _merge(SMALL, {"model": {"d_model": 128, "ffn_dim": 512},
                             "train": {"max_updates": 12000, "teacher_updates": 12000,
                                       "stage1_updates": 6000, "lr_from_teacher": 3e-4},
                             "distill": {"sandwich": True}}),
    "iwslt": {},  # the defaults above are the paper's IWSLT14 settings
    "base": {
        "model": {"d_model": 512, "ffn_dim": 2048, "heads": 8, "dropout": 0.1},
        "train": {"lr": 7e-4, "warmup_updates": 4000, "max_tokens": 8192},
        "distill": {"alpha": 4.5, "beta": 0.1, "eta": 1.01},
    },
}


def parse_override(text: str) -> tuple[str, str, Any]:
    """``"train.lr=7e-4"`` -> ``("train", "lr", 0.0007)``; values are parsed as YAML scalars."""
    key, sep, raw = text.partition("=")
    section, dot, name = key.strip().partition(".")
    if not sep or not dot or not name:
        raise UserError(f"override {text!r} is not of the form section.key=value, "
                        "e.g. train.lr=7e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise UserError(f"override {text!r}: cannot parse the value {raw!r}") from None
    return section, name, value


def load_config(
    preset: str = DEFAULT_PRESET,
    config_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    extra: dict[str, dict[str, Any]] | None = None,
    model: dict[str, Any] | None = None,
) -> Config:
    """Preset, then YAML file, then ``extra`` (CLI flags), then ``key=value`` overrides;
    ``model``: the model section to start from instead of the preset's (``--init-from``)."""
    if preset not in PRESETS:
        raise UserError(f"option --preset: unknown preset {preset!r}; "
                        f"known: {', '.join(PRESETS)}")
    values = _merge({}, PRESETS[preset])
    if model is not None:
        values["model"] = dict(model)
    if config_file is not None:
        path = Path(config_file)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise UserError(f"{path}: no such config file") from None
        except OSError as error:
            raise UserError(f"{path}: cannot read the config file ({error.strerror})") from None
        except (yaml.YAMLError, UnicodeDecodeError) as error:
            line = getattr(getattr(error, "problem_mark", None), "line", None)
            at = f":{line + 1}" if line is not None else ""
            raise UserError(f"{path}{at}: not a valid YAML config") from None
        _check_keys(loaded, Config, str(path))
        loaded = {name: {} if section is None else section for name, section in loaded.items()}
        for name, section in loaded.items():
            _check_keys(section, SECTIONS[name], f"{path}: {name}")
        values = _merge(values, loaded)
    values = _merge(values, extra or {})
    for text in overrides:
        section, name, value = parse_override(text)
        values = _merge(values, {section: {name: value}})
    return Config.from_dict(values)
