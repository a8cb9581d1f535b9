"""Checkpoints and model directories: safetensors for tensors, JSON for everything else.

Nothing here ever unpickles: a file that is not a well-formed safetensors file carrying our JSON
header is refused with a one-line :class:`UserError` before any of its bytes is interpreted.

* A **checkpoint** is one ``.safetensors`` file: the model's tensors (``model.*``), Adam's moments
  (``optim.*``) and the tokenizer's files as bytes (the joint SentencePiece model as
  ``vocab.spm``; another kind, named by the header's ``tokenizer``, as ``tokenizer.<file>``),
  with a JSON header (``__metadata__["aiokd"]``) holding the config, the stage,
  the update, the data position, the validation history and the scheduler state.  It is written
  to a temporary file and renamed, so a crash never leaves a half-written checkpoint.
* A **model directory** holds ``config.json``, ``model.safetensors`` and the tokenizer's files
  (``spm.model``; or, where ``config.json`` says ``"tokenizer": "marian"``, ``source.spm``,
  ``target.spm`` and ``vocab.json``: :mod:`aiokd.data.tokenizer`): a run directory (its best
  model), an extracted student, an imported model, or any copy of those.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from aiokd.config import Config
from aiokd.data.tokenizer import SENTENCEPIECE, TokenizerFiles
from aiokd.errors import UserError
from aiokd.io import atomic_write_bytes, atomic_write_json
from aiokd.model.transformer import Transformer
from aiokd.students import CandidateSpace, Student, student_name

CHECKPOINT_FORMAT = "aiokd-checkpoint"
MODEL_FORMAT = "aiokd-model"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of a safetensors file; UserError for anything else."""
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    data = path.read_bytes()
    if len(data) < 8:
        raise UserError(f"{path}: not a safetensors file (truncated or empty)")
    try:
        header_size = int.from_bytes(data[:8], "little")
        if header_size > len(data) - 8:
            raise UserError(f"{path}: truncated safetensors file (header says {header_size} "
                            f"bytes, {len(data) - 8} present)")
        metadata = json.loads(data[8:8 + header_size]).get("__metadata__") or {}
        tensors = load_safetensors_bytes(data)
    except (SafetensorError, ValueError, UnicodeDecodeError, AttributeError):
        raise UserError(f"{path}: not a valid safetensors file (corrupted, truncated, or "
                        "another format such as a pickle)") from None
    return tensors, metadata


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
    return tensors, {"param_groups": state["param_groups"]}


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                    meta: dict, device: torch.device) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value.to(device) if key != "step" else value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


@dataclass
class Checkpoint:
    """What :func:`read_checkpoint` returns."""

    path: Path
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor] = field(repr=False)

    @property
    def config(self) -> Config:
        return Config.from_dict(self.meta["config"], where=str(self.path))

    @property
    def tokenizer(self) -> TokenizerFiles:
        kind = self.meta.get("tokenizer", SENTENCEPIECE)
        if kind == SENTENCEPIECE:
            return TokenizerFiles.of(self.tensors["vocab.spm"].numpy().tobytes())
        return TokenizerFiles(kind, {name[len("tokenizer."):]: value.numpy().tobytes()
                                     for name, value in self.tensors.items()
                                     if name.startswith("tokenizer.")})

    @property
    def spm_bytes(self) -> bytes:
        return self.tokenizer.spm_bytes(self.path)

    def model_state(self) -> dict[str, torch.Tensor]:
        return {k[len("model."):]: v for k, v in self.tensors.items() if k.startswith("model.")}

    def restore(self, model: Transformer, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Load the weights and, given an optimizer, Adam's state."""
        load_weights(model, self.model_state(), self.path)
        if optimizer is not None and "optimizer" in self.meta:
            _load_optimizer(optimizer, self.tensors, self.meta["optimizer"],
                            next(model.parameters()).device)


def save_checkpoint(path: Path, model: Transformer, meta: dict[str, Any],
                    tokenizer: bytes | TokenizerFiles,
                    optimizer: torch.optim.Optimizer | None = None) -> None:
    """Write a checkpoint atomically (see the module docstring); ``tokenizer``: its files, or the
    bytes of a joint SentencePiece model."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"format": CHECKPOINT_FORMAT, "version": 1, **meta}
    if optimizer is not None:
        optim_tensors, optim_meta = _optimizer_tensors(optimizer)
        tensors.update(optim_tensors)
        meta["optimizer"] = optim_meta
    tokenizer = TokenizerFiles.of(tokenizer)
    if tokenizer.kind == SENTENCEPIECE:
        tensors["vocab.spm"] = _bytes_tensor(tokenizer.files["spm.model"])
    else:
        meta["tokenizer"] = tokenizer.kind
        tensors.update({f"tokenizer.{name}": _bytes_tensor(data)
                        for name, data in tokenizer.files.items()})
    data = save_safetensors_bytes(tensors, metadata={"aiokd": json.dumps(meta)})
    atomic_write_bytes(path, data)


def _bytes_tensor(data: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def read_checkpoint(path: str | Path) -> Checkpoint:
    path = Path(path)
    tensors, metadata = _read_safetensors(path)
    try:
        meta = json.loads(metadata["aiokd"])
        has_tokenizer = ("vocab.spm" in tensors
                         or meta.get("tokenizer", SENTENCEPIECE) != SENTENCEPIECE)
        if meta["format"] != CHECKPOINT_FORMAT or not has_tokenizer:
            raise ValueError("not an aiokd checkpoint")
    except (KeyError, ValueError, TypeError):
        raise UserError(f"{path}: not an aiokd checkpoint (no aiokd header)") from None
    return Checkpoint(path, meta, tensors)


def load_weights(model: Transformer, state: dict[str, torch.Tensor], path: Path) -> None:
    """Copy ``state`` into ``model``; a UserError names the file when the tensors do not fit."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        name = (missing or unexpected)[0]
        raise UserError(f"{path}: tensors do not match the model config "
                        f"({'missing' if missing else 'unexpected'} {name!r})")
    for name, value in state.items():
        if value.shape != expected[name].shape:
            raise UserError(f"{path}: tensor {name!r} has shape {tuple(value.shape)}, the config "
                            f"needs {tuple(expected[name].shape)}")
    model.load_state_dict(state)


# ----------------------------------------------------------------------------------------------
# Model directories


@dataclass
class ModelFiles:
    """A model ready to use: the network, its config, its tokenizer's files (given as such, or
    as the bytes of a joint SentencePiece model) and what students it has."""

    model: Transformer
    config: dict[str, Any]
    tokenizer: TokenizerFiles
    source: Path

    def __post_init__(self) -> None:
        self.tokenizer = TokenizerFiles.of(self.tokenizer)

    @property
    def spm_bytes(self) -> bytes:
        """The joint SentencePiece model; UserError for another kind of tokenizer."""
        return self.tokenizer.spm_bytes(self.source)

    @property
    def space(self) -> CandidateSpace:
        return CandidateSpace(**self.config["space"])

    @property
    def students(self) -> list[Student]:
        return self.space.evaluated


def model_config_json(cfg: Config, space: CandidateSpace, languages: dict[str, str],
                      extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``config.json`` of a model directory."""
    return {
        "format": MODEL_FORMAT,
        "version": 1,
        "model": cfg.to_dict()["model"],
        "space": space.__dict__,
        "students": [student_name(s) for s in space.evaluated],
        **languages,
        **(extra or {}),
    }


def save_model_dir(directory: Path, model: Transformer, config_json: dict[str, Any],
                   tokenizer: bytes | TokenizerFiles) -> None:
    """Write ``model.safetensors``, the tokenizer's files (``tokenizer``: its files, or the bytes
    of a joint SentencePiece model) and ``config.json`` (last), each atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = TokenizerFiles.of(tokenizer)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(directory / "model.safetensors", save_safetensors_bytes(
        state, metadata={"format": MODEL_FORMAT}))
    tokenizer.write(directory)
    identity = ({"spm_sha256": tokenizer.sha256} if tokenizer.kind == SENTENCEPIECE else
                {"tokenizer": tokenizer.kind, "tokenizer_sha256": tokenizer.sha256})
    atomic_write_json(directory / "config.json", {**config_json, **identity})


def _read_model_dir(directory: Path) -> ModelFiles:
    config_path = directory / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if config["format"] != MODEL_FORMAT:
            raise ValueError("not an aiokd model")
        model_cfg = Config.from_dict({"model": config["model"]}, where=str(config_path)).model
        space = CandidateSpace(**config["space"])
        depths = (space.enc_layers, space.dec_layers, space.min_enc, space.min_dec)
        if (not all(type(depth) is int and depth >= 1 for depth in depths)
                or space.teacher != (model_cfg.enc_layers, model_cfg.dec_layers)):
            raise ValueError("the candidate space does not fit the model")
    except FileNotFoundError:
        raise UserError(f"{directory}: no config.json: not an aiokd model directory") from None
    except (ValueError, KeyError, TypeError):  # JSON and UTF-8 errors are ValueErrors
        raise UserError(f"{config_path}: not a valid aiokd model config") from None
    except UserError as error:  # a bad value: name the file as well as the option
        if str(error).startswith(str(config_path)):
            raise
        raise UserError(f"{config_path}: {error}") from None
    kind = config.get("tokenizer", SENTENCEPIECE)
    if kind == SENTENCEPIECE and not (directory / "spm.model").is_file():
        raise UserError(f"{directory / 'spm.model'}: missing SentencePiece model")
    tokenizer = TokenizerFiles.read(directory, kind)
    weights_path = directory / "model.safetensors"
    state, _ = _read_safetensors(weights_path)
    model = Transformer(model_cfg)
    load_weights(model, state, weights_path)
    return ModelFiles(model.eval(), config, tokenizer, directory)


def load_model_files(path: str | Path) -> ModelFiles:
    """Load a model from a run directory, a model directory or a checkpoint file."""
    path = Path(path)
    if path.is_dir():
        return _read_model_dir(path)
    if not path.exists():
        raise UserError(f"{path}: no such model (expected a run or model directory or a "
                        ".safetensors checkpoint)")
    if path.name == "model.safetensors" and (path.parent / "config.json").is_file():
        return _read_model_dir(path.parent)
    checkpoint = read_checkpoint(path)
    cfg = checkpoint.config
    model = Transformer(cfg.model)
    load_weights(model, checkpoint.model_state(), path)
    space = cfg.distill.space(cfg.model)
    config = model_config_json(cfg, space, checkpoint.meta.get("languages", {}))
    return ModelFiles(model.eval(), config, checkpoint.tokenizer, path)
