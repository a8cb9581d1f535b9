"""What the sections of the speed benchmark share: the machine and its memory, the GEMM
ceiling, the analytic FLOP count, the data and its batches, the command line and the report.

The sections are scripts of their own (``speed_training.py``, ``speed_scaling.py``,
``speed_validation.py``, ``speed_decoding.py``); ``speed.py`` runs them all as one command.
See ``benchmarks/README.md`` for what every figure means.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aiokd.config import Config, ModelConfig, load_config
from aiokd.data.batching import Batch, token_batches
from aiokd.data.corpus import ParallelSplit, load_manifest
from aiokd.evaluation.latency import timed
from aiokd.model.probe import cpu_description
from aiokd.students import Student
from aiokd.train.allocator import freed_memory_is_kept, keep_freed_memory
from aiokd.train.stream import make_batch

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}
"""Precision name -> autocast dtype (``None``: no autocast)."""

RUNS = 3
"""Timed repetitions of every measurement unless told otherwise."""


# ----------------------------------------------------------------------------------------------
# The machine and its memory


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU as :func:`aiokd.model.probe.cpu_description` tells it (model
    name, family and model, widest vector extension, cores)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_description()


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages of the machine (``None`` where there are none)."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


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


def minor_page_faults() -> int | None:
    """Minor page faults of this process so far, all threads (``None`` where the platform does
    not count them): each one a page the kernel mapped, zeroed if fresh, on first touch."""
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


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


class AddedMemory:
    """Peak memory a block of work adds, in bytes (``peak`` after the block; ``None`` if unknown).

    GPU: ``torch.cuda.max_memory_allocated`` minus the allocation before the block.  CPU: the
    peak resident set size during the block minus the resident set size before it (after
    returning freed heap to the OS), so it counts every allocation: tensors, the allocator's and
    the runtime's.  (:class:`aiokd.evaluation.latency.PeakMemory` is the whole process's peak,
    the loaded model included.)
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak: int | None = None

    def __enter__(self) -> AddedMemory:
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


def mib(value: int | None) -> float | None:
    """Bytes in MiB (``None`` stays ``None``)."""
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
        once = timed(lambda a=a, b=b: torch.matmul(a, b), device)
        count = max(1, math.ceil(min_seconds / max(once, 1e-6)))

        def products(a=a, b=b, count=count) -> None:
            for _ in range(count):
                torch.matmul(a, b)

        best = min(timed(products, device) for _ in range(repetitions)) / count
        found.append({"m": m, "k": k, "n": n, "flops_per_s": 2 * m * k * n / best})
    return {"shapes": found, "ceiling_flops_per_s": max(s["flops_per_s"] for s in found)}


def gemm_ceilings(configs: list[Config], device: torch.device) -> dict[str, dict[str, Any]]:
    """:func:`measure_gemm` in every precision at the shapes of every config's model and
    ``train.max_tokens``."""
    shapes = [shape for cfg in configs for shape in gemm_shapes(cfg.model, cfg.train.max_tokens)]
    return {precision: measure_gemm(list(dict.fromkeys(shapes)), dtype or torch.float32, device)
            for precision, dtype in PRECISIONS.items()}


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


def choose_precisions(amp: str, device: torch.device, quick: bool = False) -> list[str]:
    """Precisions to measure for ``--amp``, the one the top-level ratios use first."""
    if amp == "none":
        return ["float32"]
    if amp == "bf16" or device.type == "cuda":
        return ["bfloat16"]
    return ["float32"] if quick else ["float32", "bfloat16"]


# ----------------------------------------------------------------------------------------------
# Command line and report


def int_list(text: str) -> list[int]:
    """``"1,2,4"`` -> ``[1, 2, 4]``."""
    return [int(part) for part in text.split(",") if part.strip()]


def base_parser(description: str, preset_help: str) -> argparse.ArgumentParser:
    """The options of every section: preset, data, runs, device, threads, overrides, JSON."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="iwslt", help=preset_help)
    p.add_argument("--data", default=None,
                   help="prepared data directory (default: Multi30k prepared into a temp dir)")
    p.add_argument("--runs", type=int, default=None,
                   help=f"timed repetitions per measurement (default: {RUNS})")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides for every variant, e.g. train.max_tokens=2048")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--threads", type=int, default=0,
                   help="PyTorch CPU threads (default: PyTorch's choice)")
    p.add_argument("--json", default=None, help="write every figure to this JSON file")
    return p


def add_amp_argument(p: argparse.ArgumentParser) -> None:
    """``--amp``: the precisions of training and validation."""
    p.add_argument("--amp", choices=["none", "bf16", "auto"], default="auto",
                   help="none: float32; bf16: bfloat16 autocast; auto: bf16 on GPU, float32 on "
                   "CPU and bf16 beside it (speed.py --quick: float32 only)")


def add_warmup_argument(p: argparse.ArgumentParser) -> None:
    """``--warmup``: untimed training steps of every variant."""
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed steps of each variant before timing, over which its memory "
                   "is measured (default: 1)")


def chosen_device(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads``, and on a CPU keep freed memory as ``aiokd train`` does
    (``train.keep_freed_memory``; ``--set train.keep_freed_memory=false`` to measure without);
    the device of ``--device`` (default: CUDA if available)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and load_config(args.preset,
                                            overrides=args.overrides).train.keep_freed_memory:
        keep_freed_memory()
    return device


def new_report(device: torch.device, script: str, argv: list[str] | None,
               **settings: Any) -> dict[str, Any]:
    """The head of a report: the machine, the command line, ``settings``, the date and load."""
    command = shlex.join(["python", f"benchmarks/{script}",
                          *(sys.argv[1:] if argv is None else argv)])
    return {"device": device.type, "device_name": device_name(device),
            "threads": torch.get_num_threads(), "torch_version": torch.__version__,
            "freed_memory_kept": freed_memory_is_kept(),
            "command": command, **settings,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "load_average": load_average()}


@contextmanager
def workdir() -> Iterator[Path]:
    """A temporary directory for prepared data and exported models, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="aiokd-speed-") as name:
        yield Path(name)


def fmt(value: float | None, spec: str) -> str:
    """``value`` formatted by ``spec``, or ``-`` for ``None``."""
    return "-" if value is None else format(value, spec)


def format_head(report: dict[str, Any]) -> list[str]:
    """The machine and GEMM ceiling lines of a report."""
    lines = [f"device: {report['device']} ({report['device_name']}), threads {report['threads']}, "
             f"torch {report['torch_version']}, runs {report['runs']}"
             + (", freed memory kept" if report.get("freed_memory_kept") else "")]
    for precision, gemm in report.get("gemm", {}).items():
        shapes = ", ".join(f"{s['m']}x{s['k']}x{s['n']}: {s['flops_per_s'] / 1e9:.3g}"
                           for s in gemm["shapes"])
        lines.append(f"GEMM {precision}: ceiling {gemm['ceiling_flops_per_s'] / 1e9:.3g} GFLOP/s "
                     f"({shapes})")
    return lines


def finish(report: dict[str, Any], started: float, text: Callable[[dict[str, Any]], str],
           path: str | None) -> dict[str, Any]:
    """Add the elapsed time and the load at the end; print ``text(report)``; write it as JSON to
    ``path`` if given; return the report."""
    report["elapsed_s"] = time.perf_counter() - started
    report["load_average_end"] = load_average()
    print(text(report))
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
        print(f"figures written to {path}", file=sys.stderr)
    return report
