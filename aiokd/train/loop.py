"""The training loop: AIO-KD's two stages and the single-student baselines, in one loop.

    [stage 0: the teacher alone, CE only]     # train.teacher_updates > 0: a teacher stage first
    for stage in (1, 2):                      # each starts from the previous stage's best
        for update in range(max_updates):     # or until its share of train.max_minutes is spent
            students = sample K from C        # seeded by (seed, stage, update): same on every rank
            loss = Objective(batch, students) # teacher CE + students' CE + alpha KD (+ beta ML)
            step Adam on grad / target_tokens
            every validate_every: mean valid CE over all candidates -> keep best, patience
            every save_every: resumable checkpoint (atomic)
            on SIGINT / SIGTERM: checkpoint here, then stop  # aiokd.train.interrupt

Everything random in an update (students, dropout) is a function of (seed, stage, update, rank) and
the data order a function of (seed, epoch), so a checkpoint holds only weights, Adam's moments, the
update counter and the data position; a resumed run continues bit for bit as if never stopped.
Multi-process training goes through ``torchrun``: each process reads its share of every update's
batches and ``DistributedDataParallel`` averages the gradients.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from aiokd import __version__
from aiokd.config import Config
from aiokd.data.corpus import ParallelSplit
from aiokd.distill.objective import Objective
from aiokd.errors import UserError
from aiokd.io import remove_temporaries
from aiokd.model.checkpoint import (
    load_model_files,
    model_config_json,
    read_checkpoint,
    save_checkpoint,
    save_model_dir,
)
from aiokd.model.transformer import Transformer
from aiokd.students import Student, sample_students
from aiokd.train.allocator import keep_freed_memory
from aiokd.train.budget import TimeBudget, stage_work
from aiokd.train.distributed import Distributed, setup_distributed
from aiokd.train.init_from import start_from_model
from aiokd.train.interrupt import StopRequest, TrainingInterrupted
from aiokd.train.optimizer import learning_rate, make_optimizer, scale_and_clip_gradients
from aiokd.train.precision import amp_dtype, precision_record, resolve_precision
from aiokd.train.report import (
    COUNTS,
    VECTORS,
    detached_line,
    format_losses,
    student_statistics,
)
from aiokd.train.run_dir import Logger, Run, locked_run, open_run
from aiokd.train.stream import BatchStream, check_lengths
from aiokd.train.validation import validate

# ----------------------------------------------------------------------------------------------
# One stage


@dataclass
class StageState:
    """Everything besides tensors that a resumed stage needs."""

    update: int = 0
    epoch: int = 0
    index: int = 0
    best: float = math.inf
    best_update: int = 0
    stale_validations: int = 0
    bad_steps: int = 0
    finished: str = ""
    kd_terms: float = 0.0
    kd_detached: float = 0.0
    best_losses: dict[str, float] | None = None
    validated_at: int = -1


def _seed_update(cfg: Config, stage: int, update: int, rank: int) -> None:
    """Dropout noise of an update as a function of (seed, stage, update, rank)."""
    torch.manual_seed((cfg.train.seed * 1_000_003 + stage * 7_919 + update) * 64 + rank)


def build_model(cfg: Config, device: torch.device) -> Transformer:
    """The seeded model on ``device``, its layers compiled if ``train.compile``."""
    torch.manual_seed(cfg.train.seed)
    model = Transformer(cfg.model).to(device)
    if cfg.train.compile:
        model.compile_layers()
    return model


def stage_config(cfg: Config, stage: int) -> Config:
    """The settings of ``stage``: the run's, except that AIO-KD's stage 1 stops at
    ``train.stage1_updates`` where set, and the teacher stage 0 trains the full model alone, as
    ``--method scratch --student L_E-L_D`` would, for ``train.teacher_updates``; each at most
    ``train.max_updates``, the cap of every stage (a baseline's one stage is stage 1)."""
    m, t = cfg.model, cfg.train
    if stage == 1 and t.stage1_updates and cfg.distill.method == "aiokd":
        return dataclasses.replace(
            cfg, train=dataclasses.replace(t, max_updates=min(t.stage1_updates, t.max_updates)))
    if stage != 0:
        return cfg
    return dataclasses.replace(
        cfg, distill=dataclasses.replace(cfg.distill, method="scratch",
                                         student=f"{m.enc_layers}-{m.dec_layers}"),
        train=dataclasses.replace(t, max_updates=min(t.teacher_updates, t.max_updates)))


def stage_label(stage: int) -> str:
    return "teacher stage" if stage == 0 else f"stage {stage}"


class Stage:
    """Trains one stage to its end, resuming from its ``last`` checkpoint if there is one."""

    def __init__(self, run: Run, stage: int, dist_: Distributed, train_split: ParallelSplit,
                 valid_split: ParallelSplit, logger: Logger, budget: TimeBudget,
                 stop: StopRequest):
        self.run, self.stage, self.dist, self.logger = run, stage, dist_, logger
        self.budget, self.deadline, self.stop = budget, None, stop
        self.label = stage_label(stage)
        self.cfg = cfg = stage_config(run.cfg, stage)
        self.from_teacher = stage >= 1 and run.from_teacher
        self.space = cfg.distill.space(cfg.model)
        self.model = build_model(cfg, dist_.device)
        self.optimizer = make_optimizer(self.model, cfg)
        self.state = StageState()
        self.train_split, self.valid_split = train_split, valid_split
        self.stream = BatchStream(train_split, cfg, dist_)
        self.dtype = amp_dtype(cfg)
        self.scaler = torch.amp.GradScaler(dist_.device.type, enabled=self.dtype == torch.float16)
        objective = Objective(self.model, cfg, self._frozen_teacher())
        self.objective = objective
        if dist_.world > 1:
            self.objective = torch.nn.parallel.DistributedDataParallel(
                objective, device_ids=[dist_.device.index] if dist_.device.type == "cuda" else None)

    def _frozen_teacher(self) -> Transformer | None:
        if self.cfg.distill.method not in ("word-kd", "selective-kd"):
            return None
        files = load_model_files(self.cfg.distill.teacher)
        if files.tokenizer.sha256 != self.run.tokenizer.sha256:
            raise UserError(f"{self.cfg.distill.teacher}: the teacher's vocabulary does not match "
                            f"{self.run.data_dir}")
        return files.model.to(self.dist.device)

    def start(self) -> None:
        """Resume from ``last``; or start from the previous stage's best (stage 2 from stage 1,
        stage 1 from the teacher stage), or from the ``--init-from`` model, or from random
        weights."""
        last = self.run.last(self.stage)
        if last.is_file():
            checkpoint = read_checkpoint(last)
            checkpoint.restore(self.model, self.optimizer)
            self.state = StageState(**checkpoint.meta["state"])
            self._reopen_if_stopped_short()
            if not self.state.finished:
                self.logger.say(f"resuming {self.label} at update {self.state.update} "
                                f"from {last}")
            return
        previous = self.run.previous_stage(self.stage)
        if previous is not None and (self.run.init_from is None
                                     or self.run.best(previous).is_file()):
            self._start_from_stage(previous)
        elif self.run.init_from is not None:
            start_from_model(self.model, self.run.init_from)
            self.logger.say(f"{self.label} starts from {self.run.init_from}{self._schedule()}")

    def _start_from_stage(self, previous: int) -> None:
        best = self.run.best(previous)
        if not best.is_file():
            hint = " (train.stages=1 or both)" if self.stage == 2 else ""
            raise UserError(f"{self.label} starts from {stage_label(previous)}'s best checkpoint, "
                            f"and {best} does not exist; run {stage_label(previous)} first{hint}")
        read_checkpoint(best).restore(self.model)
        self.logger.say(f"{self.label} starts from {best} with a fresh optimizer"
                        f"{self._schedule() or ' and warm-up'}")

    def _schedule(self) -> str:
        lr = self.cfg.train.lr_from_teacher
        if not (self.from_teacher and lr):
            return ""
        return f" at the constant learning rate {lr:g} (train.lr_from_teacher)"

    def _reopen_if_stopped_short(self) -> None:
        """A stage that stopped at ``train.max_updates`` continues when the cap has been raised
        since, and one that stopped when its time ran out (``train.max_minutes``) continues,
        unless a later stage has already started from it."""
        s = self.state
        if (s.finished in ("max_updates", "max_minutes") and s.update < self.cfg.train.max_updates
                and not self.run.last(self.stage + 1).is_file()):
            why = ("at the cap of" if s.finished == "max_updates"
                   else "when its time ran out, after")
            self.logger.say(f"{self.label} stopped {why} {s.update} updates; "
                            f"continuing to {self.cfg.train.max_updates}")
            s.finished = ""

    def share_budget(self, later_work: float) -> None:
        """Set this stage's deadline: its share of the time left (:mod:`aiokd.train.budget`),
        beside ``later_work``, the work of the stages after it."""
        if self.state.finished:
            return
        self.deadline = self.budget.stage_deadline(stage_work(self.cfg, self.state.update),
                                                   later_work)
        if self.deadline is not None:
            share, left = map(self.budget.minutes_left, (self.deadline, self.budget.end))
            self.logger.say(f"{self.label} may take {share:.1f} of the {left:.1f} minutes left"
                            f" (train.max_minutes={self.cfg.train.max_minutes:g})")
            self.logger.record("budget", self.stage, self.state.update, {"minutes": share})

    def _stop_reason(self) -> str:
        """Why every process stops before the next update: ``max_minutes`` once the stage's
        deadline has passed, ``interrupted`` once a signal asked to (:mod:`.interrupt`), on any
        process; else ``""``.  Processes without a deadline agree on it at logged updates only,
        not to wait for each other at every update."""
        flags = [float(self.budget.expired(self.deadline)), float(self.stop.asked)]
        if self.dist.world > 1:
            if self.deadline is None and self.state.update % self.cfg.train.log_every:
                return ""
            flags = self.dist.all_sum(torch.tensor(flags, device=self.dist.device)).tolist()
        return "max_minutes" if flags[0] else "interrupted" if flags[1] else ""

    def save(self, path: Path, with_optimizer: bool = True) -> None:
        if not self.dist.main:
            return
        meta = {"config": self.cfg.to_dict(), "stage": self.stage, "languages": self.run.languages,
                "state": self.state.__dict__, "aiokd_version": __version__}
        save_checkpoint(path, self.model, meta, self.run.tokenizer,
                        self.optimizer if with_optimizer else None)

    def _students(self) -> list[Student]:
        if self.cfg.distill.method != "aiokd":
            return []
        d = self.cfg.distill
        return sample_students(self.space.candidates, d, self.cfg.train.seed, self.stage,
                               self.state.update)

    def _validate(self) -> None:
        students = self.space.evaluated
        losses = validate(self.model, self.valid_split, students, self.cfg, self.dist)
        s = self.state
        s.validated_at = s.update
        improved = losses["mean"] < s.best
        if improved:
            s.best, s.best_update, s.stale_validations, s.best_losses = (
                losses["mean"], s.update, 0, losses)
        else:
            s.stale_validations += 1
        self.logger.record("valid", self.stage, s.update, losses)
        mark = " (best)" if improved else f" (best {s.best:.4f} at update {s.best_update})"
        self.logger.say(f"{self.label} update {s.update}: validation{mark}\n"
                        + format_losses(losses, students))
        if improved:
            self.save(self.run.best(self.stage), with_optimizer=False)

    def train_update(self, batches: list[np.ndarray]) -> tuple[dict[str, Any], list[Student]]:
        """Forward and backward over this process's batches of one update; returns ``tokens``,
        ``batches``, ``loss``, ``nll``... summed over all processes (the update's one
        synchronisation; :data:`~aiokd.train.report.VECTORS` per student), and the students."""
        students = self._students()
        _seed_update(self.cfg, self.stage, self.state.update, self.dist.rank)
        totals, names = None, []
        for i, indices in enumerate(batches):
            batch = self.stream.collate(indices)
            last = i == len(batches) - 1
            sync = contextlib.nullcontext() if last or self.dist.world == 1 else (
                self.objective.no_sync())
            with sync:
                with torch.autocast(self.dist.device.type, dtype=self.dtype,
                                    enabled=self.dtype is not None):
                    loss, stats = self.objective(batch.src, batch.prev_tgt, batch.target,
                                                 students, self.stage)
                self.scaler.scale(loss).backward()
            parts = {"tokens": float(batch.tokens), "batches": 1.0, "loss": loss, **stats}
            values = torch.cat([torch.as_tensor(v, device=loss.device).detach().float().reshape(-1)
                                for v in parts.values()])
            totals = values if totals is None else totals + values
            names, sizes = list(parts), [torch.as_tensor(v).numel() for v in parts.values()]
        summed = iter(self.dist.all_sum(totals.double()).tolist())
        found = {name: [next(summed) for _ in range(size)]
                 for name, size in zip(names, sizes, strict=True)}
        return ({name: v if name in VECTORS else v[0] for name, v in found.items()}, students)

    def step(self, total_tokens: float) -> None:
        """Adam step on the gradient of ``loss_sum / total_tokens`` (over all processes)."""
        self.scaler.unscale_(self.optimizer)
        scale_and_clip_gradients(self.model, self.dist.world / total_tokens,
                                 self.cfg.train.clip_norm)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(self.cfg, self.state.update + 1, self.from_teacher)
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def run_to_end(self, max_updates: int) -> StageState:
        s = self.state
        if s.finished:
            return s
        self.model.train()
        bar = tqdm(total=max_updates, initial=s.update, desc=self.label,
                   unit="upd", disable=not self.dist.main, dynamic_ncols=True,
                   mininterval=1.0 if sys.stderr.isatty() else 30.0)
        try:
            self._updates(max_updates, bar)
        finally:
            bar.close()  # also before an error message, which then starts its own line
        if not s.finished:
            s.finished = "max_updates"
        if s.validated_at != s.update:
            self._validate()
        self.save(self.run.last(self.stage))
        self.logger.record("finished", self.stage, s.update, {"why": s.finished, "best_ce": s.best,
                           "kd_terms": s.kd_terms, "kd_detached": s.kd_detached})
        return s

    def _updates(self, max_updates: int, bar: tqdm) -> None:
        """The updates of :meth:`run_to_end`, each with its logging, validation and saving."""
        s, t = self.state, self.cfg.train
        started, tokens_done = time.perf_counter(), 0.0
        while s.update < max_updates and not s.finished:
            stop = self._stop_reason()
            if stop == "interrupted":
                self.save(self.run.last(self.stage))
                raise TrainingInterrupted(f"{self.label} stopped at update {s.update}, its "
                                          "checkpoint saved: run the same command to go on")
            if stop:
                s.finished = "max_minutes"
                self.logger.say(f"{self.label}: its share of train.max_minutes is spent at "
                                f"update {s.update} of {max_updates}")
                break
            batches, epoch, index = self.stream.next_update(s.epoch, s.index)
            if t.max_epochs and epoch >= t.max_epochs:
                s.finished = "max_epochs"
                break
            totals, students = self.train_update(batches)
            s.epoch, s.index = epoch, index
            tokens = totals["tokens"]
            if not math.isfinite(totals["loss"]):
                self._skip_bad_update(totals)
                continue
            s.bad_steps = 0
            self.step(tokens)
            self.optimizer.zero_grad(set_to_none=True)
            s.update += 1
            tokens_done += tokens
            speed = tokens_done / (time.perf_counter() - started)
            per_student = student_statistics(students, totals)
            s.kd_terms += len(students)
            s.kd_detached += per_student.get("detached", 0.0)
            bar.update(1)
            bar.set_postfix(loss=f"{totals['loss'] / tokens:.3f}",
                            nll=f"{totals['nll'] / tokens:.3f}", tok_s=f"{speed:.0f}",
                            **({"ratio": f"{per_student['ratio_max']:.3f}",
                                "detached": f"{s.kd_detached:g}/{s.kd_terms:g}"}
                               if students else {}))
            if s.update % t.log_every == 0:
                self.logger.record("train", self.stage, s.update, {
                    "lr": self.optimizer.param_groups[0]["lr"], "tokens_per_s": speed,
                    **{k: v / tokens for k, v in totals.items() if k not in (*COUNTS, "tokens")},
                    "tokens": tokens, **per_student})
            at_end = s.update == max_updates
            if s.update % t.validate_every == 0 or at_end:
                self._validate()
                if t.patience and s.stale_validations >= t.patience:
                    s.finished = "patience"
            if s.update % t.save_every == 0 or s.update % t.validate_every == 0 or at_end:
                self.save(self.run.last(self.stage))

    def _skip_bad_update(self, totals: dict[str, float]) -> None:
        s = self.state
        self.optimizer.zero_grad(set_to_none=True)
        s.bad_steps += 1
        self.logger.record("skip", self.stage, s.update, {"loss": totals["loss"]})
        self.logger.say(f"{self.label} update {s.update}: non-finite loss, update skipped "
                        f"({s.bad_steps} in a row)")
        if s.bad_steps >= self.cfg.train.max_bad_steps:
            raise UserError(
                f"training stopped: {s.bad_steps} consecutive updates with a non-finite loss at "
                f"stage {self.stage} update {s.update} (train.max_bad_steps); the last good "
                f"checkpoint is {self.run.last(self.stage)}; try a lower train.lr")


# ----------------------------------------------------------------------------------------------
# Entry points


def run_training(data_dir: str | Path, out: str | Path, cfg: Config,
                 init_from: str | Path | None = None) -> dict[str, Any]:
    """Train every stage of ``cfg`` into run directory ``out``, the first from the weights of
    the model ``init_from`` if given; returns the final validation losses of the best model.
    Resumes whatever an earlier call left unfinished.

    Raises:
        UserError: bad data or settings, or another process trains in ``out``.
    """
    dist_ = setup_distributed()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    train_split = ParallelSplit.load(data_dir, "train")
    valid_split = ParallelSplit.load(data_dir, "valid")
    check_lengths(cfg.model, train_split, valid_split)
    root = Path(out)
    fresh = not root.exists()
    with locked_run(root) if dist_.main else contextlib.nullcontext():
        try:
            run = open_run(root, cfg, Path(data_dir), dist_.main,
                           None if init_from is None else Path(init_from).resolve())
            with StopRequest().installed() as stop:
                return _train_stages(run, dist_, train_split, valid_split, stop)
        except (UserError, OSError):
            checkpoints = root / "checkpoints"
            if fresh and dist_.main and not (checkpoints.is_dir() and any(checkpoints.iterdir())):
                shutil.rmtree(root, ignore_errors=True)  # nothing to resume: leave nothing behind
            raise


def _train_stages(run: Run, dist_: Distributed, train_split: ParallelSplit,
                  valid_split: ParallelSplit, stop: StopRequest) -> dict[str, Any]:
    """The stages of :func:`run_training` in the opened ``run`` (until ``stop`` is asked),
    then the best model written beside them; returns its validation losses."""
    cfg = run.cfg
    if dist_.main:
        run.checkpoints.mkdir(parents=True, exist_ok=True)
        remove_temporaries(run.root)
        remove_temporaries(run.checkpoints)
    logger = Logger(run, dist_.main)
    budget = TimeBudget(cfg.train.max_minutes)
    run.cfg, precision = resolve_precision(run.cfg, dist_)
    cfg = run.cfg
    logger.say(f"precision: {precision_record(cfg, precision)['precision']}")
    if cfg.train.keep_freed_memory and dist_.device.type == "cpu" and keep_freed_memory():
        logger.say("memory: freed memory kept for the next tensors (train.keep_freed_memory)")
    try:
        for position, stage_number in enumerate(run.stages):
            stage = Stage(run, stage_number, dist_, train_split, valid_split, logger, budget,
                          stop)
            stage.start()
            stage.share_budget(sum(stage_work(stage_config(cfg, later))
                                   for later in run.stages[position + 1:]))
            if stage.state.finished:
                logger.say(f"{stage.label} already finished ({stage.state.finished})")
            else:
                logger.record("precision", stage_number, stage.state.update,
                              precision_record(cfg, precision))
            state = stage.run_to_end(stage.cfg.train.max_updates)
            if dist_.world > 1:
                dist.barrier()  # the next stage reads the best checkpoint the main process wrote
            logger.say(f"{stage.label} finished ({state.finished}); best mean valid CE "
                       f"{state.best:.4f} at update {state.best_update}"
                       + (f"; {detached_line(state.kd_detached, state.kd_terms)}"
                          if state.kd_terms else ""))
        if dist_.world > 1:
            dist.barrier()  # the main process may still be writing the best checkpoint
        final = read_checkpoint(run.best(run.stages[-1]))
        best_losses = final.meta["state"]["best_losses"]
        if dist_.main:
            model = Transformer(cfg.model)
            final.restore(model)
            config_json = model_config_json(cfg, cfg.distill.space(cfg.model), run.languages,
                                            {"valid_ce": best_losses})
            save_model_dir(run.root, model, config_json, run.tokenizer)
            space = cfg.distill.space(cfg.model)
            files = ", ".join(["model.safetensors", "config.json", *run.tokenizer.files])
            logger.say(f"best model written to {run.root} ({files})\n"
                       + format_losses(best_losses, space.evaluated))
    finally:
        logger.close()
    return best_losses
