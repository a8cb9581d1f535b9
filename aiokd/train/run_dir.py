"""The run directory of ``aiokd train``: what it holds, who may use it, and its log.

    run.json                 settings, data, tokenizer and initial model the run was started with
    checkpoints/             stage{0,1,2}-{last,best}.safetensors  (0: the teacher stage)
    log.jsonl, tensorboard/  training and validation figures
    model.safetensors, config.json, spm.model    the best model, once training ends (with the
                             data's tokenizer: spm.model, or a Marian model's files)
    run.lock                 held by the process training in the directory

Running ``aiokd train`` again on the directory resumes the run, provided every setting other than
:data:`RESUMABLE_CHANGES`, the tokenizer and the initial model (``--init-from``) are the same.
One process at a time trains in a run directory (with ``torchrun``, the main process holds the
lock for the whole job).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from aiokd import __version__
from aiokd.config import Config, DistillConfig
from aiokd.data.corpus import data_tokenizer, load_manifest
from aiokd.data.tokenizer import TokenizerFiles
from aiokd.errors import UserError
from aiokd.io import atomic_write_json, make_directories
from aiokd.lock import exclusive_lock

RESUMABLE_CHANGES = {"max_updates", "stage1_updates", "max_epochs", "max_minutes", "patience",
                     "validate_every", "save_every", "log_every", "threads", "max_bad_steps",
                     "compile", "keep_freed_memory"}
"""Training options that may differ when a run is resumed; any other change needs a new run,
except a baseline's ``distill`` settings that only AIO-KD reads (``DistillConfig.AIOKD_ONLY``)."""

LOCK = "run.lock"


@dataclass
class Run:
    """Paths of a run directory and what stays fixed across its stages; ``init_from``: the
    model the first stage starts from (None: random initialisation)."""

    root: Path
    cfg: Config
    data_dir: Path
    tokenizer: TokenizerFiles
    languages: dict[str, str]
    init_from: Path | None = None

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def last(self, stage: int) -> Path:
        return self.checkpoints / f"stage{stage}-last.safetensors"

    def best(self, stage: int) -> Path:
        return self.checkpoints / f"stage{stage}-best.safetensors"

    @property
    def stages(self) -> list[int]:
        """The stages to train in order: ``[1]`` for a baseline; AIO-KD's ``train.stages``,
        after the teacher stage 0 when ``train.teacher_updates`` asks for one, stage 1 is among
        them and no ``--init-from`` model is the teacher already."""
        if self.cfg.distill.method != "aiokd":
            return [1]
        stages = {"1": [1], "2": [2], "both": [1, 2]}[self.cfg.train.stages]
        if self.cfg.train.teacher_updates and self.init_from is None and stages[0] == 1:
            stages = [0, *stages]
        return stages

    @property
    def from_teacher(self) -> bool:
        """Whether the AIO-KD stages start from a trained teacher: the ``--init-from`` model or
        the teacher stage (``train.lr_from_teacher`` applies to them)."""
        return self.init_from is not None or 0 in self.stages

    def previous_stage(self, stage: int) -> int | None:
        """The stage whose best checkpoint ``stage`` starts from: stage 1 for stage 2, the
        teacher stage 0 for stage 1 of a run that has one; None for a first stage."""
        if stage == 2 or (stage == 1 and 0 in self.stages):
            return stage - 1
        return None


def _check_is_directory(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise UserError(f"{root}: exists and is not a directory; use a new --out")


@contextmanager
def locked_run(root: Path) -> Iterator[None]:
    """Create ``root`` if needed and hold its lock for the block.

    Raises:
        UserError: ``root`` is not a directory, or another process trains in it (the message
            names its process ID and host).
    """
    _check_is_directory(root)
    make_directories(root)
    with exclusive_lock(root / LOCK, str(root)):
        yield


def open_run(root: Path, cfg: Config, data_dir: Path, main: bool,
             init_from: Path | None = None) -> Run:
    """Create ``root`` or check that it was made with the same settings, tokenizer and initial
    model (``init_from``, resolved)."""
    manifest = load_manifest(data_dir)
    tokenizer = data_tokenizer(data_dir)
    if manifest["vocab_size"] != cfg.model.vocab_size:
        raise UserError(f"{data_dir}: vocabulary of {manifest['vocab_size']} does not match "
                        f"model.vocab_size={cfg.model.vocab_size}")
    languages = {"src_lang": manifest["src_lang"], "tgt_lang": manifest["tgt_lang"]}
    run_file = root / "run.json"
    _check_is_directory(root)
    if run_file.is_file():
        try:
            saved = json.loads(run_file.read_text(encoding="utf-8"))
            saved_cfg = Config.from_dict(saved["config"], where=str(run_file))
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
            raise UserError(f"{run_file}: damaged run description") from None
        if {key: saved.get(key) for key in tokenizer.identity} != tokenizer.identity:
            raise UserError(f"{root} was trained with another vocabulary than {data_dir}; "
                            "use a new --out")
        if saved.get("init_from") != (None if init_from is None else str(init_from)):
            raise UserError(f"{root} was started {_init_words(saved.get('init_from'))}, now "
                            f"{_init_words(init_from)}; resume with the same --init-from or use "
                            "a new --out")
        check_same_settings(saved_cfg, cfg, root)
    elif main and _holds_foreign_files(root):
        raise UserError(f"{root}: exists and is not an aiokd run directory; use a new --out")
    if main:
        atomic_write_json(run_file, {
            "aiokd_version": __version__, "config": cfg.to_dict(), "data": str(data_dir),
            **tokenizer.identity, **languages,
            **({} if init_from is None else {"init_from": str(init_from)}),
        })
    return Run(root, cfg, data_dir, tokenizer, languages, init_from)


def _init_words(init_from: str | Path | None) -> str:
    return "without --init-from" if init_from is None else f"with --init-from {init_from}"


def _holds_foreign_files(root: Path) -> bool:
    """Whether ``root`` holds files, besides its lock, but no checkpoints folder."""
    if not root.exists() or (root / "checkpoints").exists():
        return False
    return any(path.name != LOCK for path in root.iterdir())


def check_same_settings(saved: Config, new: Config, root: Path) -> None:
    """UserError naming the first setting of ``new`` that differs from ``saved``, the settings
    ``root`` was started with, other than :data:`RESUMABLE_CHANGES` (and, for a baseline, the
    settings only AIO-KD reads)."""
    old_values, new_values = saved.to_dict(), new.to_dict()
    baseline = saved.distill.method != "aiokd" and new.distill.method == saved.distill.method
    for section, values in new_values.items():
        for key, value in values.items():
            if ((section == "train" and key in RESUMABLE_CHANGES)
                    or (baseline and section == "distill" and key in DistillConfig.AIOKD_ONLY)):
                continue
            old = old_values[section][key]
            if (list(old) if isinstance(old, tuple) else old) != (
                    list(value) if isinstance(value, tuple) else value):
                raise UserError(f"{root} was started with {section}.{key}={old!r}, now "
                                f"{value!r}; resume with the same settings or use a new --out")


class Logger:
    """JSON lines (``log.jsonl``), TensorBoard (``tensorboard/``) and stdout; main process only."""

    def __init__(self, run: Run, enabled: bool):
        self.enabled = enabled
        self.root = run.root
        self.file = self.writer = None

    def record(self, kind: str, stage: int, update: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        if self.file is None:  # opened on the first record: a run that fails early adds no file
            from torch.utils.tensorboard import SummaryWriter

            self.file = open(self.root / "log.jsonl", "a", encoding="utf-8")  # noqa: SIM115
            self.writer = SummaryWriter(str(self.root / "tensorboard"))
        entry = {"kind": kind, "stage": stage, "update": update, "time": round(time.time(), 3),
                 **values}
        self.file.write(json.dumps(entry) + "\n")
        self.file.flush()
        for key, value in values.items():
            if isinstance(value, (int, float)):
                self.writer.add_scalar(f"stage{stage}/{kind}/{key}", value, update)

    def say(self, message: str) -> None:
        if self.enabled:
            tqdm.write(message)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.writer.close()
            self.file = self.writer = None
