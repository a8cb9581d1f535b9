"""Speed of AIO-KD training, validation and decoding, side by side with plain Transformer training.

One process measures, on one device and with the same batches for every variant:

* the GEMM ceiling: float32 and bfloat16 matmul FLOP/s at the model's shapes (the yardstick);
* training steps (forward + backward + Adam) of the teacher alone (``scratch`` 6-6, i.e. plain
  Transformer training) and of AIO-KD stage 1 and stage 2 with K = 1..4 sampled students, and of
  stage 1 with ``distill.reuse_prefix=false`` (every student its own forward pass);
* validation of all candidate students against the teacher alone;
* how a training step grows with the batch size and with the sentence length;
* decoding (greedy and beam 5, batch 1 and 64) in PyTorch (float32, and bfloat16 where the
  device computes in it natively) and through CTranslate2 (float32 and int8);
* optionally the fairseq peer (``--fairseq``): its training throughput and ``fairseq-generate``
  speed on the same model, data and thread count (see ``benchmarks/fairseq_peer.py``).

    python benchmarks/speed.py --quick --json speed.json
    python benchmarks/speed.py --presets tiny,iwslt --fairseq --json speed.json

See ``benchmarks/README.md`` for what every figure means.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import datetime
import importlib.util
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from unfused_objective import UnfusedObjective

from aiokd.config import Config, ModelConfig, load_config
from aiokd.data.batching import Batch, token_batches
from aiokd.data.corpus import ParallelSplit, load_manifest
from aiokd.distill.objective import Objective, validation_nll
from aiokd.distill.students import Student, parse_student, sample_students, student_name
from aiokd.model.transformer import Transformer
from aiokd.train.loop import (
    bf16_is_native,
    build_model,
    make_batch,
    make_optimizer,
    scale_and_clip_gradients,
)

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}
"""Precision name -> autocast dtype (``None``: no autocast)."""


# ----------------------------------------------------------------------------------------------
# Devices, timing and memory


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU, where every op is synchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _high_water_rss() -> int | None:
    """Peak resident set size of this process since the last :func:`_reset_high_water_rss`, in
    bytes (``VmHWM`` of ``/proc/self/status``; ``None`` where the platform has none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _reset_high_water_rss() -> int | None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``), so that the resident set
    is the live memory and not what an earlier step left cached, then reset the peak to the
    current resident set size (Linux ``clear_refs``); returns that size (``None``: unavailable).
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _high_water_rss()


class PeakMemory:
    """Peak memory a block of work adds, in bytes (``peak`` after the block; ``None`` if unknown).

    GPU: ``torch.cuda.max_memory_allocated`` minus the allocation before the block.  CPU: the
    peak resident set size during the block minus the resident set size before it (after
    returning freed heap to the OS), so it counts every allocation: tensors, the allocator's and
    the runtime's.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak: int | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            self._base = _reset_high_water_rss()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        elif self._base is not None:
            self.peak = (_high_water_rss() or self._base) - self._base


def timed(device: torch.device, work: Callable[[], Any]) -> float:
    """Seconds that ``work()`` takes, device work included."""
    synchronize(device)
    start = time.perf_counter()
    work()
    synchronize(device)
    return time.perf_counter() - start


def _mib(value: int | None) -> float | None:
    return None if value is None else value / 2**20


# ----------------------------------------------------------------------------------------------
# The GEMM ceiling


def gemm_shapes(cfg: ModelConfig, tokens: int) -> list[tuple[int, int, int]]:
    """``(m, k, n)`` of the model's main matmuls over a batch of ``tokens`` positions: the fused
    query/key/value projection, the output projection, both feed-forward layers and the
    vocabulary projection."""
    d, f, v = cfg.d_model, cfg.ffn_dim, cfg.vocab_size
    return [(tokens, d, 3 * d), (tokens, d, d), (tokens, d, f), (tokens, f, d), (tokens, d, v)]


def measure_gemm(shapes: list[tuple[int, int, int]], dtype: torch.dtype, device: torch.device,
                 repetitions: int = 7, min_seconds: float = 0.05) -> dict[str, Any]:
    """FLOP/s of ``(m, k) @ (k, n)`` (2 m k n FLOPs) for each shape: the best of ``repetitions``
    timings, each of enough back-to-back products to last ``min_seconds``; and their maximum as
    ``ceiling_flops_per_s``, the best a matmul of the model's sizes reaches on this device."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    found = []
    for m, k, n in shapes:
        a = torch.randn(m, k, generator=generator).to(device, dtype)
        b = torch.randn(k, n, generator=generator).to(device, dtype)
        once = timed(device, lambda a=a, b=b: torch.matmul(a, b))
        count = max(1, math.ceil(min_seconds / max(once, 1e-6)))

        def products(a=a, b=b, count=count) -> None:
            for _ in range(count):
                torch.matmul(a, b)

        best = min(timed(device, products) for _ in range(repetitions)) / count
        found.append({"m": m, "k": k, "n": n, "flops_per_s": 2 * m * k * n / best})
    return {"shapes": found, "ceiling_flops_per_s": max(s["flops_per_s"] for s in found)}


# ----------------------------------------------------------------------------------------------
# Analytic FLOPs


def forward_flops(cfg: ModelConfig, batch: Batch, students: list[Student],
                  reuse_prefix: bool) -> int:
    """Matmul FLOPs of one forward pass giving the logits of ``students`` on ``batch``.

    With ``d`` the width, ``f`` the feed-forward width, ``V`` the vocabulary, a batch of ``B``
    sentences padded to ``S`` source and ``T`` target positions and ``N`` target tokens (the
    logits are computed only there):

        encoder layer:  2 (4d^2 + 2df) BS  +  4 B S^2 d                 (projections, attention)
        decoder layer:  2 (6d^2 + 2df) BT  +  2 (2d^2) BS               (cross-attention keys and
                        +  4 B T^2 d  +  4 B T S d                       values over the memory)
        output layer:   2 d V N  per student

    i.e. ``2 x parameters x positions`` plus the attention score and value products, which count
    the causal self-attention as a full ``T x T`` square.  Students are run as
    :meth:`Transformer.forward_students` runs them: with ``reuse_prefix`` one encoder pass and one
    decoder pass per distinct ``l_e``; without it one full pass per distinct student.
    """
    d, f, v = cfg.d_model, cfg.ffn_dim, cfg.vocab_size
    b, s = batch.src.shape
    t = batch.target.shape[1]
    n = batch.tokens
    enc_layer = 2 * (4 * d * d + 2 * d * f) * b * s + 4 * b * s * s * d
    dec_layer = (2 * (6 * d * d + 2 * d * f) * b * t + 2 * 2 * d * d * b * s
                 + 4 * b * t * t * d + 4 * b * t * s * d)
    wanted = list(dict.fromkeys(students))
    if reuse_prefix:
        encoders = max(le for le, _ in wanted)
        decoders = sum(max(ld for e, ld in wanted if e == le) for le in {le for le, _ in wanted})
    else:
        encoders = sum(le for le, _ in wanted)
        decoders = sum(ld for _, ld in wanted)
    return encoders * enc_layer + decoders * dec_layer + len(wanted) * 2 * d * v * n


def training_flops(cfg: ModelConfig, batch: Batch, students: list[Student],
                   reuse_prefix: bool) -> int:
    """Forward and backward: three times the forward FLOPs (the backward pass computes the
    gradient with respect to both the input and the weight of every matmul), the usual
    ``6 x parameters x tokens`` approximation plus attention."""
    return 3 * forward_flops(cfg, batch, students, reuse_prefix)


# ----------------------------------------------------------------------------------------------
# Data


def prepared_data(data: str | None, workdir: Path) -> Path:
    """``data`` if given, else a Multi30k data directory prepared into ``workdir``."""
    if data is not None:
        load_manifest(data)
        return Path(data)
    out = workdir / "multi30k"
    print(f"preparing Multi30k into {out} ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "aiokd", "prepare", "multi30k", "--out", str(out)],
                   check=True, stdout=subprocess.DEVNULL)
    return out


def bench_config(preset: str, manifest: dict[str, Any], overrides: list[str],
                 **distill: Any) -> Config:
    """The preset's config with the data's vocabulary, ``overrides`` and ``distill`` settings."""
    extra = [f"distill.{key}={value}" for key, value in distill.items()]
    cfg = load_config(preset, overrides=[*overrides, *extra])
    cfg.model.vocab_size = manifest["vocab_size"]
    for key in ("pad_id", "bos_id", "eos_id"):
        setattr(cfg.model, key, manifest[key])
    return cfg


def training_batches(split: ParallelSplit, max_tokens: int, count: int, seed: int,
                     device: torch.device, subset: np.ndarray | None = None) -> list[Batch]:
    """The first ``count`` batches of an epoch of ``max_tokens`` tokens (as the training loop
    cuts them), repeated if the split has fewer; ``subset`` restricts them to those pairs."""
    src, tgt = split.src_lengths, split.tgt_lengths
    index = np.arange(len(split)) if subset is None else subset
    found = token_batches(src[index], tgt[index], max_tokens, seed=seed, epoch=0)
    return [make_batch(split, index[found[i % len(found)]], device) for i in range(count)]


# ----------------------------------------------------------------------------------------------
# Training steps


@dataclass(frozen=True)
class Variant:
    """One way to train: ``scratch`` (the teacher alone) or AIO-KD at a stage with K students;
    ``compiled``: with ``train.compile`` (the layers through ``torch.compile``); ``unfused``: the
    loss term by term (:mod:`unfused_objective`) instead of :mod:`aiokd.distill.aiokd_loss`."""

    name: str
    method: str
    stage: int = 1
    k: int = 0
    reuse_prefix: bool = True
    compiled: bool = False
    unfused: bool = False

    def config(self, preset: str, manifest: dict[str, Any], overrides: list[str]) -> Config:
        if self.compiled:
            overrides = [*overrides, "train.compile=true"]
        if self.method == "scratch":
            base = load_config(preset, overrides=overrides).model
            return bench_config(preset, manifest, overrides, method="scratch",
                                student=f"{base.enc_layers}-{base.dec_layers}")
        return bench_config(preset, manifest, overrides, method="aiokd", k=self.k,
                            reuse_prefix=str(self.reuse_prefix).lower())


def headline_k(ks: list[int]) -> int:
    """The K of the headline ratios: 2 (the paper's setting) if measured."""
    return 2 if 2 in ks else ks[0]


def variants(ks: list[int], compiled: bool = False, unfused: bool = False) -> list[Variant]:
    """Teacher alone, stage 1 and stage 2 for every K, and stage 1 without prefix reuse; with
    ``compiled`` also the teacher and stage 1 with their layers compiled, with ``unfused`` stage
    1 and 2 with the loss computed term by term."""
    found = [Variant("teacher", "scratch")]
    for stage in (1, 2):
        found += [Variant(f"stage{stage}_k{k}", "aiokd", stage, k) for k in ks]
    k = headline_k(ks)
    found.append(Variant(f"stage1_k{k}_no_reuse", "aiokd", 1, k, reuse_prefix=False))
    if compiled:
        found += [Variant("teacher_compiled", "scratch", compiled=True),
                  Variant(f"stage1_k{k}_compiled", "aiokd", 1, k, compiled=True)]
    if unfused:
        found += [Variant(f"stage{stage}_k{k}_unfused", "aiokd", stage, k, unfused=True)
                  for stage in (1, 2)]
    return found


def sampled_students(cfg: Config, k: int, steps: int) -> list[list[Student]]:
    """The students of steps ``0..steps-1`` from the training sampler (stage 1's draws, so that
    stage 1 and stage 2 variants train the same students)."""
    if k == 0:
        return [[] for _ in range(steps)]
    d = cfg.distill
    candidates = d.space(cfg.model).candidates
    return [sample_students(candidates, k, cfg.train.seed, 1, step, d.replacement)
            for step in range(steps)]


class Trainer:
    """A fresh model, Adam and objective for one variant; :meth:`step` is one training update as
    the training loop does it (autocast forward, backward, gradient / tokens, clipping, Adam)."""

    def __init__(self, cfg: Config, device: torch.device, dtype: torch.dtype | None,
                 unfused: bool = False):
        self.cfg, self.device, self.dtype = cfg, device, dtype
        self.model = build_model(cfg, device).train()
        self.optimizer = make_optimizer(self.model, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = cfg.train.lr
        self.objective = (UnfusedObjective if unfused else Objective)(self.model, cfg)

    def step(self, batch: Batch, students: list[Student], stage: int) -> None:
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            loss, _ = self.objective(batch.src, batch.prev_tgt, batch.target, students, stage)
        loss.backward()
        scale_and_clip_gradients(self.model, 1.0 / batch.tokens, self.cfg.train.clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def bench_training(variants: list[tuple[Variant, Config]], batches: list[Batch], warmup: int,
                   device: torch.device, dtype: torch.dtype | None,
                   gemm_ceiling: float | None = None) -> dict[str, dict[str, Any]]:
    """Time training steps of every variant on the same ``batches``.

    Each variant gets a fresh model and optimizer and makes ``warmup`` untimed steps (a compiled
    one at least one on each batch, so that no timed step compiles); its peak memory is measured
    over these (:class:`PeakMemory`: the weights, Adam's moments, and a step's gradients and
    activations) and their time is ``warmup_s``.  Then, for each batch ``i`` in turn, every
    variant makes one timed step on it with the sampler's students of step ``i``; interleaving
    the variants so spreads a slow spell of a shared machine over all of them.

    Returns, per variant name: the median step time, the warm-up time, target tokens per second
    over the timed steps, the analytic FLOPs per step (mean), the achieved FLOP/s and its
    fraction of ``gemm_ceiling``, and the peak memory in MiB.
    """
    runs = len(batches)
    trainers, students, memory, warmup_s = {}, {}, {}, {}
    for variant, cfg in variants:
        steps = max(warmup, runs) if cfg.train.compile else warmup
        started = time.perf_counter()
        with PeakMemory(device) as peak:
            trainer = Trainer(cfg, device, dtype, variant.unfused)
            chosen = sampled_students(cfg, variant.k, runs)
            for i in range(steps):
                trainer.step(batches[i % runs], chosen[i % runs], variant.stage)
        trainers[variant], students[variant], memory[variant] = trainer, chosen, peak.peak
        warmup_s[variant] = time.perf_counter() - started
    times: dict[Variant, list[float]] = {variant: [] for variant, _ in variants}
    for i, batch in enumerate(batches):
        for variant, _ in variants:
            step = partial(trainers[variant].step, batch, students[variant][i], variant.stage)
            times[variant].append(timed(device, step))
    found = {}
    tokens = sum(batch.tokens for batch in batches)
    for variant, cfg in variants:
        teacher = trainers[variant].model.teacher
        flops = [training_flops(cfg.model, batch, [teacher, *chosen], variant.reuse_prefix)
                 for batch, chosen in zip(batches, students[variant], strict=True)]
        achieved = sum(flops) / sum(times[variant])
        found[variant.name] = {
            "method": variant.method, "stage": variant.stage, "k": variant.k,
            "reuse_prefix": variant.reuse_prefix, "compiled": variant.compiled,
            "unfused": variant.unfused,
            "warmup_s": warmup_s[variant],
            "students": [[student_name(s) for s in chosen] for chosen in students[variant]],
            "step_s_median": statistics.median(times[variant]), "step_s": times[variant],
            "tokens_per_s": tokens / sum(times[variant]), "tokens_per_step": tokens / runs,
            "flops_per_step": sum(flops) / runs, "achieved_flops_per_s": achieved,
            "fraction_of_gemm_ceiling": achieved / gemm_ceiling if gemm_ceiling else None,
            "peak_memory_mb": _mib(memory[variant]),
        }
    return found


# ----------------------------------------------------------------------------------------------
# Validation


def bench_validation(cfg: Config, batches: list[Batch], runs: int, device: torch.device,
                     dtype: torch.dtype | None) -> dict[str, Any]:
    """Time :func:`validation_nll` over ``batches`` for every evaluated student and for the
    teacher alone: after one untimed pass of each, ``runs`` rounds of one timed pass of each
    (interleaved), and the median."""
    torch.manual_seed(cfg.train.seed)
    model = Transformer(cfg.model).to(device).eval()
    sets = {"teacher": [model.teacher], "all_students": cfg.distill.space(cfg.model).evaluated}

    def one_pass(students: list[Student]) -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            for batch in batches:
                validation_nll(model, batch.src, batch.prev_tgt, batch.target, students,
                               cfg.distill.reuse_prefix)

    for students in sets.values():
        one_pass(students)
    times: dict[str, list[float]] = {name: [] for name in sets}
    for _ in range(runs):
        for name, students in sets.items():
            times[name].append(timed(device, partial(one_pass, students)))
    tokens = sum(b.tokens for b in batches)
    found: dict[str, Any] = {}
    for name, students in sets.items():
        seconds = statistics.median(times[name])
        flops = sum(forward_flops(cfg.model, b, students, cfg.distill.reuse_prefix)
                    for b in batches)
        found[name] = {"students": len(students), "s_median": seconds, "s": times[name],
                       "flops": flops, "tokens_per_s": tokens / seconds}
    found["ratio_all_vs_teacher"] = found["all_students"]["s_median"] / found["teacher"]["s_median"]
    found["batches"] = len(batches)
    return found


# ----------------------------------------------------------------------------------------------
# Scaling with batch size and sentence length


def length_buckets(lengths: np.ndarray, edges: list[int]) -> list[tuple[str, np.ndarray]]:
    """Pairs grouped by target length: ``(0, e1], (e1, e2], ..., (e_last, inf)``."""
    bounds = [0, *edges, math.inf]
    found = []
    for low, high in zip(bounds[:-1], bounds[1:], strict=True):
        chosen = np.flatnonzero((lengths > low) & (lengths <= high))
        if len(chosen):
            found.append((f"{low + 1}-{high}" if high != math.inf else f">{low}", chosen))
    return found


def bench_scaling(variants: list[tuple[Variant, Config]], split: ParallelSplit,
                  token_sizes: list[int], edges: list[int], runs: int, warmup: int,
                  device: torch.device, dtype: torch.dtype | None) -> dict[str, Any]:
    """Step time against batch tokens (``max_tokens`` in ``token_sizes``) and against sentence
    length (batches of ``train.max_tokens`` tokens cut from one target-length bucket)."""
    found: dict[str, Any] = {"batch_tokens": {}, "length": {}}
    cfg = variants[0][1]
    for size in token_sizes:
        batches = training_batches(split, size, runs, cfg.train.seed, device)
        rows = bench_training(variants, batches, warmup, device, dtype)
        for name, row in rows.items():
            found["batch_tokens"].setdefault(name, []).append(
                {"max_tokens": size, **_scaling_row(row, batches)})
    for bucket, subset in length_buckets(split.tgt_lengths, edges):
        batches = training_batches(split, cfg.train.max_tokens, runs, cfg.train.seed, device,
                                   subset)
        rows = bench_training(variants, batches, warmup, device, dtype)
        for name, row in rows.items():
            found["length"].setdefault(name, []).append(
                {"target_length": bucket, **_scaling_row(row, batches)})
    return found


def _scaling_row(row: dict[str, Any], batches: list[Batch]) -> dict[str, Any]:
    return {"step_s_median": row["step_s_median"], "tokens_per_s": row["tokens_per_s"],
            "tokens_per_step": row["tokens_per_step"],
            "sentences_per_step": sum(len(b.src) for b in batches) / len(batches),
            "achieved_flops_per_s": row["achieved_flops_per_s"]}


# ----------------------------------------------------------------------------------------------
# Decoding (needs aiokd.inference.generate, aiokd.inference.api and aiokd.formats.export)


def decoding_available() -> str | None:
    """``None`` if the decoding modules are installed, else why the section is skipped."""
    for name in ("aiokd.inference.generate", "aiokd.inference.api", "aiokd.formats.export",
                 "ctranslate2"):
        if importlib.util.find_spec(name) is None:
            return f"{name} is not available in this installation"
    return None


def decoding_model(model_path: str | None, cfg: Config, data_dir: Path):
    """The model to decode with: ``model_path`` loaded, or the preset's model at its seeded
    random initialisation.  Returns ``(ModelFiles, description)``."""
    from aiokd.model.checkpoint import ModelFiles, load_model_files, model_config_json

    if model_path is not None:
        return load_model_files(model_path), f"trained model {model_path}"
    manifest = load_manifest(data_dir)
    torch.manual_seed(cfg.train.seed)
    model = Transformer(cfg.model).eval()
    languages = {"src_lang": manifest["src_lang"], "tgt_lang": manifest["tgt_lang"]}
    config = model_config_json(cfg, cfg.distill.space(cfg.model), languages)
    spm_bytes = (data_dir / manifest["spm_model"]).read_bytes()
    return ModelFiles(model, config, spm_bytes, data_dir), "random initialisation (seeded)"


def decoding_batches(sources: list[list[int]], batch_size: int) -> list[list[int]]:
    """Indices of ``sources`` sorted by length and cut into batches of ``batch_size`` (as
    ``fairseq-generate --batch-size`` does)."""
    order = sorted(range(len(sources)), key=lambda i: (len(sources[i]), i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@dataclass(frozen=True)
class Search:
    """The search of every engine: beam size and the output limit ``int(a * S + b)`` (decoder
    steps, the end-of-sentence token included)."""

    beam: int
    max_len_a: float
    max_len_b: int

    def options(self):
        from aiokd.inference.generate import SearchOptions

        return SearchOptions(beam=self.beam, lenpen=1.0, max_len_a=self.max_len_a,
                             max_len_b=self.max_len_b)


def time_decoding(run: Callable[[list[list[int]]], list[list[int]]], sources: list[list[int]],
                  batch_size: int, limit: Callable[[list[int]], int],
                  runs: int) -> dict[str, Any]:
    """Decode ``sources`` in length-sorted batches of ``batch_size`` with ``run``: the median
    over ``runs`` passes (after decoding the first batch once) and its sentences and tokens per
    second.

    Tokens are the decoder steps: the output tokens plus the end-of-sentence token for each
    output that stopped before its limit, which is how ``fairseq-generate`` counts them."""
    batches = [[sources[i] for i in batch] for batch in decoding_batches(sources, batch_size)]
    run(batches[0])
    times, outputs = [], []
    for _ in range(runs):
        start = time.perf_counter()
        outputs = [out for batch in batches for out in run(batch)]
        times.append(time.perf_counter() - start)
    ordered = [source for batch in batches for source in batch]
    tokens = sum(len(out) + (len(out) < limit(source))
                 for out, source in zip(outputs, ordered, strict=True))
    seconds = statistics.median(times)
    return {"sentences": len(sources), "s_median": seconds,
            "sentences_per_s": len(sources) / seconds, "tokens_per_s": tokens / seconds,
            "tokens_per_sentence": tokens / len(sources)}


def torch_decoder(model: Transformer, student: Student,
                  search: Search) -> Callable[[list[list[int]]], list[list[int]]]:
    """One batch through :func:`aiokd.inference.generate.generate`."""
    from aiokd.inference.generate import generate

    options = search.options()
    return lambda batch: generate(model, batch, student, options)


def ctranslate2_decoder(translator, pieces: list[str], cfg: ModelConfig,
                        search: Search) -> Callable[[list[list[int]]], list[list[int]]]:
    """One batch through ``ctranslate2.Translator.translate_batch`` under the search rules of
    :mod:`aiokd.inference.api` (pad and BOS suppressed, at least one token), with the limit of the
    batch's
    longest source."""
    ids = {piece: i for i, piece in enumerate(pieces)}
    suppressed = [[pieces[cfg.pad_id]], [pieces[cfg.bos_id]]]
    options = search.options()

    def run(batch: list[list[int]]) -> list[list[int]]:
        limit = max(options.max_length(len(s), cfg.max_positions) for s in batch)
        results = translator.translate_batch(
            [[pieces[t] for t in s] for s in batch], beam_size=search.beam, length_penalty=1.0,
            max_input_length=0, max_batch_size=0, max_decoding_length=limit,
            min_decoding_length=1, suppress_sequences=suppressed, return_scores=False)
        return [[ids[p] for p in result.hypotheses[0]] for result in results]

    return run


def bench_decoding(files, sources: list[list[int]], students: list[Student], beams: list[int],
                   batch_sizes: list[int], dtypes: list[str], quantizations: list[str],
                   search: Search, runs: int, device: torch.device, workdir: Path,
                   batch1_sentences: int) -> dict[str, Any]:
    """Sentences/s and tokens/s of :func:`aiokd.inference.generate.generate` with the model in each
    of
    ``dtypes`` (engine ``torch`` for float32, ``torch_<dtype>`` otherwise, as ``aiokd translate
    --dtype`` casts it) and of the CTranslate2 export of each student (in each quantization) for
    every beam size and batch size.

    Batch 1 decodes the first ``batch1_sentences`` sources one by one; larger batches decode all
    of them.  ``search`` gives the output limit; its beam is replaced by each of ``beams``.
    """
    import ctranslate2

    from aiokd.formats.export import sentencepiece_pieces, write_ctranslate2
    from aiokd.inference.api import DTYPES

    models = {("torch" if dtype == "float32" else f"torch_{dtype}"):
              copy.deepcopy(files.model).to(device, DTYPES[dtype]).eval() for dtype in dtypes}
    cfg = files.model.cfg
    pieces = sentencepiece_pieces(files.spm_bytes)[0]
    found: dict[str, Any] = {}
    for student in students:
        name = student_name(student)
        engines: dict[str, Any] = dict(models)
        for quantization in quantizations:
            directory = workdir / f"ct2-{name}-{quantization}"
            if not directory.exists():
                directory.mkdir()
                write_ctranslate2(directory, files, student, quantization)
            engine = f"ctranslate2_{'float32' if quantization == 'none' else quantization}"
            engines[engine] = ctranslate2.Translator(
                str(directory), device=device.type, intra_threads=torch.get_num_threads())
        for engine, decoder in engines.items():
            for beam in beams:
                chosen = Search(beam, search.max_len_a, search.max_len_b)
                run = (torch_decoder(decoder, student, chosen) if engine.startswith("torch")
                       else ctranslate2_decoder(decoder, pieces, cfg, chosen))
                options = chosen.options()
                for batch_size in batch_sizes:
                    print(f"  decoding {name} {engine} beam {beam} batch {batch_size} ...",
                          file=sys.stderr, flush=True)
                    row = time_decoding(
                        run, sources[:batch1_sentences] if batch_size == 1 else sources,
                        batch_size, lambda s, o=options: o.max_length(len(s), cfg.max_positions),
                        runs)
                    found.setdefault(name, {}).setdefault(engine, {})[
                        f"beam{beam}_batch{batch_size}"] = row
        del engines
    return found


def decoding_ratios(found: dict[str, Any]) -> dict[str, float]:
    """Each CTranslate2 engine's tokens/s over PyTorch's, per student and setting."""
    ratios = {}
    for name, engines in found.items():
        for engine, rows in engines.items():
            if engine == "torch":
                continue
            for setting, row in rows.items():
                ratios[f"{name}_{engine}_vs_torch_{setting}"] = (
                    row["tokens_per_s"] / engines["torch"][setting]["tokens_per_s"])
    return ratios


# ----------------------------------------------------------------------------------------------
# One preset


@dataclass
class Plan:
    """What to measure and how often."""

    ks: list[int]
    runs: int
    warmup: int
    valid_batches: int
    token_sizes: list[int]
    length_edges: list[int]
    scaling: bool
    validation: bool
    decode_sentences: int
    batch1_sentences: int
    decode_students: list[str]
    fairseq_updates: int
    compiled: bool = False
    unfused: bool = False


def bench_preset(preset: str, data_dir: Path, overrides: list[str], plan: Plan,
                 precisions: list[str], device: torch.device,
                 gemm: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Every training, validation and scaling figure of one preset, for each precision."""
    manifest = load_manifest(data_dir)
    train_split = ParallelSplit.load(data_dir, "train")
    valid_split = ParallelSplit.load(data_dir, "valid")
    cache: dict[Variant, Config] = {}

    def make_cfg(variant: Variant) -> Config:
        if variant not in cache:
            cache[variant] = variant.config(preset, manifest, overrides)
        return cache[variant]

    all_variants = variants(plan.ks, plan.compiled, plan.unfused)
    base = make_cfg(all_variants[1])
    model = Transformer(base.model)
    batches = training_batches(train_split, base.train.max_tokens, plan.runs, base.train.seed,
                               device)
    valid_tokens = base.train.valid_max_tokens or base.train.max_tokens
    valid = token_batches(valid_split.src_lengths, valid_split.tgt_lengths, valid_tokens,
                          shuffle=False)[:plan.valid_batches or None]
    valid_batches = [make_batch(valid_split, indices, device) for indices in valid]
    result: dict[str, Any] = {
        "model": {key: getattr(base.model, key) for key in
                  ("vocab_size", "d_model", "ffn_dim", "heads", "enc_layers", "dec_layers",
                   "dropout", "pre_norm")},
        "parameters": model.num_parameters(),
        "max_tokens": base.train.max_tokens,
        "batches": {"count": len(batches),
                    "target_tokens": [b.tokens for b in batches],
                    "shapes": [[*b.src.shape, b.target.shape[1]] for b in batches]},
        "precisions": {},
    }
    del model
    for precision in precisions:
        dtype = PRECISIONS[precision]
        ceiling = gemm[precision]["ceiling_flops_per_s"]
        print(f"  {preset} {precision} training: {', '.join(v.name for v in all_variants)} ...",
              file=sys.stderr, flush=True)
        training = bench_training([(v, make_cfg(v)) for v in all_variants], batches, plan.warmup,
                                  device, dtype, ceiling)
        teacher = training["teacher"]["step_s_median"]
        ratios = {f"{name}_vs_teacher": row["step_s_median"] / teacher
                  for name, row in training.items() if name != "teacher"}
        entry: dict[str, Any] = {"training": training, "ratios": ratios}
        if plan.validation:
            print(f"  {preset} {precision} validation ...", file=sys.stderr, flush=True)
            entry["validation"] = bench_validation(base, valid_batches, plan.runs, device, dtype)
        if plan.scaling and precision == precisions[0]:
            print(f"  {preset} {precision} scaling ...", file=sys.stderr, flush=True)
            k = headline_k(plan.ks)
            chosen = [all_variants[0], Variant(f"stage1_k{k}", "aiokd", 1, k)]
            entry["scaling"] = bench_scaling([(v, make_cfg(v)) for v in chosen], train_split,
                                             plan.token_sizes, plan.length_edges, plan.runs,
                                             plan.warmup, device, dtype)
        result["precisions"][precision] = entry
    return result


# ----------------------------------------------------------------------------------------------
# Decoding and the fairseq peer, as sections of the report


FAIRSEQ_WARMUP_UPDATES = 2


def decoding_sources(data_dir: Path, count: int) -> tuple[list[list[int]], int]:
    """The first ``count`` validation sources, and their mean reference length with the
    end-of-sentence token, rounded: the fixed decoder steps of an untrained model."""
    valid = ParallelSplit.load(data_dir, "valid")
    count = min(count, len(valid))
    sources = [valid.src(i).tolist() for i in range(count)]
    length = round(float(np.mean(valid.tgt_lengths[:count])) + 1)
    return sources, length


def decoding_dtypes(device: torch.device) -> list[str]:
    """float32, and bfloat16 where the device computes in it natively (GPUs, CPUs with AMX or
    AVX512-BF16)."""
    return ["float32", "bfloat16"] if bf16_is_native(device) else ["float32"]


def run_decoding(args: argparse.Namespace, plan: Plan, data_dir: Path, workdir: Path,
                 device: torch.device) -> dict[str, Any]:
    """The decoding section: the ``--preset`` model (``--model`` if given, else untrained)."""
    cfg = bench_config(args.preset, load_manifest(data_dir), args.overrides)
    files, description = decoding_model(args.model, cfg, data_dir)
    sources, length = decoding_sources(data_dir, plan.decode_sentences)
    if args.model is None:
        search, rule = Search(5, 0.0, length), (
            f"exactly {length} decoder steps per sentence (max_len_a=0, max_len_b={length}: the "
            "mean reference length with EOS; an untrained model never stops earlier)")
    else:
        search, rule = Search(5, 1.2, 10), "until EOS, at most int(1.2 S + 10) decoder steps"
    teacher = max(files.students)
    wanted = [teacher if name == "teacher" else parse_student(name)
              for name in plan.decode_students]
    students = [s for s in dict.fromkeys(wanted) if s in files.students]
    dtypes = list(dict.fromkeys(["float32", *(args.decode_dtypes or decoding_dtypes(device))]))
    found = bench_decoding(files, sources, students, [5, 1], [1, 64], dtypes, ["none", "int8"],
                           search, plan.runs, device, workdir, plan.batch1_sentences)
    return {"model": description, "length_rule": rule, "sentences": len(sources),
            "batch1_sentences": min(plan.batch1_sentences, len(sources)), "results": found,
            "ratios": decoding_ratios(found)}


def _teacher_fp32(report: dict[str, Any]) -> dict[str, Any] | None:
    figures = report["presets"].get("iwslt", {}).get("precisions", {}).get("float32")
    return figures and figures["training"]["teacher"]


def run_fairseq(args: argparse.Namespace, plan: Plan, report: dict[str, Any], data_dir: Path,
                workdir: Path, device: torch.device) -> dict[str, Any]:
    """The fairseq peer against our ``iwslt`` teacher in float32 on the CPU: training tokens/s,
    and decoding tokens/s at beam 5, batch 64 with both models untrained (fixed length)."""
    from fairseq_peer import FAIRSEQ_MAX_TOKENS, bench_fairseq

    if device.type != "cpu":
        return {"skipped": "the fairseq peer is measured on the CPU only (fairseq-train --cpu)"}
    manifest = load_manifest(data_dir)
    ours = _teacher_fp32(report)
    if ours is None or args.overrides:
        print("  iwslt float32 teacher for the fairseq comparison ...", file=sys.stderr)
        cfg = Variant("teacher", "scratch").config("iwslt", manifest, [])
        batches = training_batches(ParallelSplit.load(data_dir, "train"), FAIRSEQ_MAX_TOKENS,
                                   plan.runs, cfg.train.seed, device)
        ours = bench_training([(Variant("teacher", "scratch"), cfg)], batches, plan.warmup,
                              device, None)["teacher"]
    sources, length = decoding_sources(data_dir, plan.decode_sentences)
    cfg = bench_config("iwslt", manifest, [])
    files, _ = decoding_model(None, cfg, data_dir)
    print("  our beam 5 batch 64 decoding for the fairseq comparison ...", file=sys.stderr)
    ours_decoding = time_decoding(torch_decoder(files.model, files.model.teacher,
                                                Search(5, 0.0, length)),
                                  sources, 64, lambda source: length, plan.runs)
    peer = bench_fairseq(Path(args.fairseq_venv), data_dir, workdir, torch.get_num_threads(),
                         plan.fairseq_updates, FAIRSEQ_WARMUP_UPDATES, list(range(len(sources))),
                         length)
    return {
        **peer,
        "ours_train": {key: ours[key] for key in ("tokens_per_s", "step_s_median",
                                                   "tokens_per_step")},
        "ours_generate_beam5_batch64": ours_decoding,
        "decode_length": length,
        "ratio_train_ours_vs_fairseq": ours["tokens_per_s"] / peer["train"]["tokens_per_s"],
        "ratio_generate_ours_vs_fairseq": (ours_decoding["tokens_per_s"]
                                           / peer["generate_beam5_batch64"]["tokens_per_s"]),
    }


# ----------------------------------------------------------------------------------------------
# Report


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_report(report: dict[str, Any]) -> str:
    """The figures of ``report`` as plain-text tables."""
    lines = [f"device: {report['device']} ({report['device_name']}), threads {report['threads']}, "
             f"torch {report['torch_version']}, runs {report['runs']}"]
    for precision, gemm in report.get("gemm", {}).items():
        shapes = ", ".join(f"{s['m']}x{s['k']}x{s['n']}: {s['flops_per_s'] / 1e9:.3g}"
                           for s in gemm["shapes"])
        lines.append(f"GEMM {precision}: ceiling {gemm['ceiling_flops_per_s'] / 1e9:.3g} GFLOP/s "
                     f"({shapes})")
    for preset, entry in report.get("presets", {}).items():
        for precision, figures in entry["precisions"].items():
            lines.append("")
            lines.append(f"[{preset}, {precision}] training, {entry['parameters'] / 1e6:.1f}M "
                         f"parameters, max_tokens {entry['max_tokens']}")
            lines.append(f"{'variant':<22}{'step ms':>9}{'tok/s':>9}{'x teacher':>10}"
                         f"{'GFLOP/s':>9}{'% GEMM':>8}{'peak MiB':>10}{'warm-up s':>11}")
            for name, row in figures["training"].items():
                ratio = figures["ratios"].get(f"{name}_vs_teacher", 1.0)
                fraction = row["fraction_of_gemm_ceiling"]
                lines.append(
                    f"{name:<22}{row['step_s_median'] * 1e3:>9.0f}{row['tokens_per_s']:>9.0f}"
                    f"{ratio:>10.2f}{row['achieved_flops_per_s'] / 1e9:>9.1f}"
                    f"{_fmt(fraction and 100 * fraction, '.0f'):>8}"
                    f"{_fmt(row['peak_memory_mb'], '.0f'):>10}{row['warmup_s']:>11.1f}")
            if "validation" in figures:
                v = figures["validation"]
                lines.append(f"validation ({v['batches']} batches): teacher "
                             f"{v['teacher']['s_median'] * 1e3:.0f} ms, all "
                             f"{v['all_students']['students']} students "
                             f"{v['all_students']['s_median'] * 1e3:.0f} ms, ratio "
                             f"{v['ratio_all_vs_teacher']:.2f}")
            for axis, key in (("batch_tokens", "max_tokens"), ("length", "target_length")):
                for name, rows in figures.get("scaling", {}).get(axis, {}).items():
                    cells = ", ".join(f"{row[key]}: {row['step_s_median'] * 1e3:.0f} ms "
                                      f"{row['tokens_per_s']:.0f} tok/s" for row in rows)
                    lines.append(f"scaling by {axis} ({name}): {cells}")
    lines += _format_decoding(report.get("decoding", {}))
    lines += _format_fairseq(report.get("fairseq", {}))
    lines.append("")
    lines.append(f"ratio_stage1_vs_teacher {_fmt(report.get('ratio_stage1_vs_teacher'), '.3f')}, "
                 f"ratio_stage2_vs_teacher {_fmt(report.get('ratio_stage2_vs_teacher'), '.3f')}, "
                 f"ratio_validation_vs_teacher "
                 f"{_fmt(report.get('ratio_validation_vs_teacher'), '.3f')}")
    return "\n".join(lines)


def _format_decoding(decoding: dict[str, Any]) -> list[str]:
    if not decoding:
        return []
    if "skipped" in decoding:
        return ["", f"decoding: skipped ({decoding['skipped']})"]
    lines = ["", f"decoding: {decoding['model']}; {decoding['length_rule']}; "
             f"{decoding['sentences']} sentences ({decoding['batch1_sentences']} at batch 1)",
             f"{'student':<8}{'engine':<22}{'setting':<16}{'sent/s':>9}{'tok/s':>9}"
             f"{'tok/sent':>9}{'x torch':>9}"]
    for name, engines in decoding["results"].items():
        for engine, rows in engines.items():
            for setting, row in rows.items():
                ratio = decoding["ratios"].get(f"{name}_{engine}_vs_torch_{setting}", 1.0)
                lines.append(f"{name:<8}{engine:<22}{setting:<16}{row['sentences_per_s']:>9.1f}"
                             f"{row['tokens_per_s']:>9.0f}{row['tokens_per_sentence']:>9.1f}"
                             f"{ratio:>9.2f}")
    return lines


def _format_fairseq(fairseq: dict[str, Any]) -> list[str]:
    if not fairseq:
        return []
    if "skipped" in fairseq:
        return ["", f"fairseq: skipped ({fairseq['skipped']})"]
    train, ours = fairseq["train"], fairseq["ours_train"]
    decode, ours_decode = fairseq["generate_beam5_batch64"], fairseq["ours_generate_beam5_batch64"]
    return [
        "", f"fairseq {fairseq['version']}, {fairseq['threads']} threads, iwslt teacher, float32",
        f"training: fairseq {train['tokens_per_s']:.0f} tok/s ({train['timed_updates']} updates), "
        f"ours {ours['tokens_per_s']:.0f} tok/s: ours/fairseq "
        f"{fairseq['ratio_train_ours_vs_fairseq']:.2f}",
        f"decoding beam 5 batch 64, {fairseq['decode_length']} steps: fairseq "
        f"{decode['tokens_per_s']:.0f} tok/s, ours {ours_decode['tokens_per_s']:.0f} tok/s: "
        f"ours/fairseq {fairseq['ratio_generate_ours_vs_fairseq']:.2f}",
    ]


# ----------------------------------------------------------------------------------------------
# Command line


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _dtypes(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in ("float32", "bfloat16", "float16")]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected float32, bfloat16 or float16, got {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="iwslt",
                   help="preset whose K=2 ratios go to the top of the JSON (default: iwslt)")
    p.add_argument("--presets", default=None,
                   help="comma-separated presets to measure (default: --preset)")
    p.add_argument("--data", default=None,
                   help="prepared data directory (default: Multi30k prepared into a temp dir)")
    p.add_argument("--quick", action="store_true",
                   help="K=2 only, one timed repetition, one precision, one validation batch, "
                   "no scaling sweep (unless --scaling-tokens), decoding of the teacher only")
    p.add_argument("--runs", type=int, default=None,
                   help="timed repetitions per measurement (default: 3, --quick: 1)")
    p.add_argument("--warmup", type=int, default=None,
                   help="untimed steps of each variant before timing, over which its memory "
                   "is measured (default: 1)")
    p.add_argument("--ks", type=_ints, default=None,
                   help="numbers of students K (default: 1,2,3,4; --quick: 2)")
    p.add_argument("--amp", choices=["none", "bf16", "auto"], default="auto",
                   help="none: float32; bf16: bfloat16 autocast; auto: bf16 on GPU, float32 on "
                   "CPU (and bf16 beside it unless --quick)")
    p.add_argument("--valid-batches", type=int, default=None,
                   help="validation batches timed (default: all; --quick: 1)")
    p.add_argument("--scaling-tokens", type=_ints, default=None,
                   help="batch sizes of the scaling sweep (default: 1024,2048,4096,8192)")
    p.add_argument("--length-edges", type=_ints, default=[10, 20, 30],
                   help="target-length bucket edges of the scaling sweep (default: 10,20,30)")
    p.add_argument("--skip", default="",
                   help="comma-separated sections to leave out: validation, scaling, decoding")
    p.add_argument("--compile", action="store_true",
                   help="also time the teacher and stage 1 with train.compile=true (every layer "
                   "through torch.compile), after warm-up steps on every timed batch")
    p.add_argument("--unfused", action="store_true",
                   help="also time stage 1 and 2 with the loss computed term by term with "
                   "autograd (benchmarks/unfused_objective.py), as a direct implementation does")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides for every variant, e.g. train.max_tokens=2048")
    p.add_argument("--model", default=None,
                   help="trained model directory for the decoding section (default: train one "
                   "briefly)")
    p.add_argument("--decode-dtypes", type=_dtypes, default=None,
                   help="precisions of our PyTorch decoding besides float32 (the reference), "
                   "from bfloat16, float16 (default: bfloat16 where the device computes in it "
                   "natively)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--threads", type=int, default=0,
                   help="PyTorch CPU threads (default: PyTorch's choice)")
    p.add_argument("--fairseq", action="store_true",
                   help="also measure the fairseq peer (see benchmarks/peers/install_fairseq.sh)")
    p.add_argument("--fairseq-venv", default=str(Path(__file__).parent / ".peers"
                                                 / "fairseq-venv"),
                   help="virtual environment holding fairseq (default: benchmarks/.peers/"
                   "fairseq-venv)")
    p.add_argument("--fairseq-updates", type=int, default=None,
                   help="fairseq-train updates, the first two untimed (default: 12; --quick: 5)")
    p.add_argument("--decode-sentences", type=int, default=None,
                   help="validation sentences decoded at batch 64 (default: 256; --quick: 64)")
    p.add_argument("--batch1-sentences", type=int, default=None,
                   help="of those, decoded one at a time at batch 1 (default: 32; --quick: 8)")
    p.add_argument("--json", default=None, help="write every figure to this JSON file")
    return p


def make_plan(args: argparse.Namespace, skip: set[str]) -> Plan:
    quick = args.quick
    return Plan(
        ks=args.ks or ([2] if quick else [1, 2, 3, 4]),
        runs=args.runs or (1 if quick else 3),
        warmup=args.warmup if args.warmup is not None else 1,
        valid_batches=args.valid_batches if args.valid_batches is not None else (
            1 if quick else 0),
        token_sizes=args.scaling_tokens or [1024, 2048, 4096, 8192],
        length_edges=args.length_edges,
        scaling="scaling" not in skip and not (quick and args.scaling_tokens is None),
        validation="validation" not in skip,
        decode_sentences=args.decode_sentences or (64 if quick else 256),
        batch1_sentences=args.batch1_sentences or (8 if quick else 32),
        decode_students=(["teacher"] if quick else ["teacher", "2-2", "4-2", "6-2"]),
        fairseq_updates=args.fairseq_updates or (5 if quick else 12),
        compiled=args.compile,
        unfused=args.unfused,
    )


def choose_precisions(amp: str, device: torch.device, quick: bool) -> list[str]:
    """Precisions to measure, the one the top-level ratios use first."""
    if amp == "none":
        return ["float32"]
    if amp == "bf16" or device.type == "cuda":
        return ["bfloat16"]
    return ["float32"] if quick else ["float32", "bfloat16"]


def top_level_ratios(report: dict[str, Any], preset: str, k: int) -> dict[str, float | None]:
    """The three headline ratios of ``preset`` at K students in the first precision."""
    entry = report["presets"][preset]
    figures = next(iter(entry["precisions"].values()))
    ratios = figures["ratios"]
    validation = figures.get("validation")
    return {
        "ratio_stage1_vs_teacher": ratios.get(f"stage1_k{k}_vs_teacher"),
        "ratio_stage2_vs_teacher": ratios.get(f"stage2_k{k}_vs_teacher"),
        "ratio_validation_vs_teacher": validation and validation["ratio_all_vs_teacher"],
    }


@contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="aiokd-speed-") as name:
        yield Path(name)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the tables; write ``--json``; return the report."""
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    plan = make_plan(args, skip)
    presets = [p.strip() for p in (args.presets or args.preset).split(",") if p.strip()]
    if args.preset not in presets:
        presets.append(args.preset)
    precisions = choose_precisions(args.amp, device, args.quick)
    command = shlex.join(["python", "benchmarks/speed.py",
                          *(sys.argv[1:] if argv is None else argv)])
    report: dict[str, Any] = {
        "ratio_stage1_vs_teacher": None, "ratio_stage2_vs_teacher": None,
        "ratio_validation_vs_teacher": None,
        "device": device.type, "device_name": device_name(device),
        "threads": torch.get_num_threads(), "torch_version": torch.__version__,
        "command": command, "runs": plan.runs, "warmup": plan.warmup, "quick": args.quick,
        "precisions": precisions, "ks": plan.ks,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    started = time.perf_counter()
    with _workdir() as workdir:
        data_dir = prepared_data(args.data, workdir)
        report["data"] = str(data_dir) if args.data else "multi30k (prepared on the fly)"
        manifest = load_manifest(data_dir)
        print("GEMM ceiling ...", file=sys.stderr, flush=True)
        shapes = []
        for preset in presets:
            cfg = bench_config(preset, manifest, args.overrides)
            shapes += gemm_shapes(cfg.model, cfg.train.max_tokens)
        report["gemm"] = {precision: measure_gemm(list(dict.fromkeys(shapes)),
                                                  dtype or torch.float32, device)
                          for precision, dtype in PRECISIONS.items()}
        report["presets"] = {}
        for preset in presets:
            print(f"preset {preset} ...", file=sys.stderr, flush=True)
            report["presets"][preset] = bench_preset(preset, data_dir, args.overrides, plan,
                                                     precisions, device, report["gemm"])
        report.update(top_level_ratios(report, args.preset, headline_k(plan.ks)))
        reason = "--skip decoding" if "decoding" in skip else decoding_available()
        if reason is None:
            report["decoding"] = run_decoding(args, plan, data_dir, workdir, device)
        else:
            report["decoding"] = {"skipped": reason}
        if args.fairseq:
            report["fairseq"] = run_fairseq(args, plan, report, data_dir, workdir, device)
    report["elapsed_s"] = time.perf_counter() - started
    report["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    print(format_report(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        print(f"figures written to {args.json}", file=sys.stderr)
    return report


if __name__ == "__main__":
    main()
