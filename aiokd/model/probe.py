"""Measured defaults: which of a few candidate settings runs a model fastest on this machine.

Whether bf16 pays depends on the processor, not only on whether it can multiply bf16: on a CPU
with AMX a bf16 matrix product is about 2.5x float32, on one with AVX-512 BF16 but no AMX it can
be slower than float32.  So ``auto`` settings are decided by timing the candidates on the
machine at hand, on the model's own shape, a few steps each (and the fused losses' exponential,
whose speed depends on the processor's vendor, the same way: :func:`exponential_kernel`):

* the candidates run alternately, ``warmup`` calls each first, then ``rounds`` timed calls each;
  a candidate's time is the fastest of its timed calls (the least disturbed by other work);
* the reference (float32, or the safe thread count) wins unless another candidate takes at most
  ``1 - margin`` of its time, so that ``auto`` is never slower than the reference by more than
  the noise of a short measurement;
* the choice is cached in ``$AIOKD_CACHE_DIR/probes.json`` (default ``~/.cache/aiokd``) under a
  key of the machine (processor, its bf16 flags, PyTorch version, thread count) and of the
  question (what was timed, at which shape), so each question is measured once per machine.

A :class:`Choice` carries the chosen value, the times behind it and one line saying why, for the
run log and the results files.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from aiokd.config import ModelConfig
from aiokd.io import atomic_write_json
from aiokd.model.kernels import LOG2_E

MARGIN = 0.05
"""A candidate replaces the reference only if it takes at most ``1 - MARGIN`` of its time."""


@dataclass(frozen=True)
class Choice:
    """The value chosen among ``seconds`` (candidate -> fastest timed call), and why."""

    value: str
    reason: str
    seconds: dict[str, float] = field(default_factory=dict)
    cached: bool = False

    def to_json(self) -> dict[str, object]:
        return {"value": self.value, "reason": self.reason, "seconds": self.seconds}


def cache_path() -> Path:
    root = os.environ.get("AIOKD_CACHE_DIR") or Path.home() / ".cache" / "aiokd"
    return Path(root) / "probes.json"


def cpu_model() -> str:
    """The processor's model name (Linux: ``/proc/cpuinfo``)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpuinfo(field: str) -> str | None:
    """The value of ``field`` for the first processor in ``/proc/cpuinfo`` (None elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == field:
                return value.strip()
    except OSError:
        pass
    return None


def _cpu_flags() -> list[str]:
    flags = (_cpuinfo("flags") or "").split()
    return sorted(f for f in flags if "bf16" in f or f.startswith("amx") or f == "avx512f")


VECTOR_LEVELS = (("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512 BF16"), ("avx512f", "AVX-512"),
                 ("avx2", "AVX2"))
"""The widest matrix or vector extension a CPU has, by its ``/proc/cpuinfo`` flag, widest first:
what decides how fast it trains (and whether in bf16)."""


def cpu_description() -> str:
    """This CPU as one line that tells machines of one model name apart, e.g. ``AMD EPYC
    (family 25 model 1, AVX2), 2 cores``: the model name, on x86 the family and model numbers
    and the widest extension (:data:`VECTOR_LEVELS`), and the cores this process may use."""
    flags = set((_cpuinfo("flags") or "").split())
    details = [f"family {_cpuinfo('cpu family')} model {_cpuinfo('model')}"
               if _cpuinfo("cpu family") else None,
               next((name for flag, name in VECTOR_LEVELS if flag in flags), None)]
    shown = ", ".join(d for d in details if d)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu_model()}{f' ({shown})' if shown else ''}, {cores} cores"


def machine_key(device: torch.device) -> str:
    """The processor (or GPU), its bf16-related flags, PyTorch's version and thread count."""
    if device.type == "cuda":
        what = [torch.cuda.get_device_name(device), torch.version.cuda or ""]
    else:
        what = [cpu_model(), *_cpu_flags(), f"threads={torch.get_num_threads()}"]
    return "|".join([device.type, *what, f"torch={torch.__version__}"])


def _read_cache() -> dict[str, dict]:
    try:
        cache = json.loads(cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def _write_cache(key: str, choice: Choice) -> None:
    """Add one choice to the cache; a cache that cannot be written only costs a new probe."""
    cache = _read_cache()
    cache[key] = choice.to_json()
    try:
        atomic_write_json(cache_path(), cache)
    except OSError:
        pass


def measured_choice(question: str, device: torch.device, candidates: dict[str, Callable[[], None]],
                    reference: str, warmup: int = 1, rounds: int = 2,
                    margin: float = MARGIN) -> Choice:
    """Time ``candidates`` (name -> one call) alternately and choose, or return the cached
    choice for ``question`` on this machine.  The reference wins ties within ``margin``."""
    key = hashlib.sha256(f"{machine_key(device)}|{question}".encode()).hexdigest()[:24]
    cached = _read_cache().get(key)
    if isinstance(cached, dict) and cached.get("value") in candidates:
        return Choice(cached["value"], f"{cached.get('reason', '')}; cached in {cache_path()}",
                      dict(cached.get("seconds", {})), cached=True)
    for _ in range(warmup):
        for run in candidates.values():
            run()
    best = dict.fromkeys(candidates, float("inf"))
    for _ in range(rounds):
        for name, run in candidates.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            run()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best[name] = min(best[name], time.perf_counter() - start)
    fastest = min(best, key=best.get)
    value = fastest if best[fastest] <= (1 - margin) * best[reference] else reference
    ratios = ", ".join(f"{name} {best[name] * 1e3:.0f} ms" for name in candidates)
    if value == reference and fastest != reference:
        why = f"{reference} kept: {fastest} not {margin:.0%} faster"
    elif value == reference:
        why = f"{reference} fastest"
    else:
        why = f"{value} {best[reference] / best[value]:.2f}x {reference}"
    choice = Choice(value, f"measured on this machine ({ratios}): {why}",
                    {name: round(s, 6) for name, s in best.items()})
    _write_cache(key, choice)
    return choice


EXP_PROBE_SHAPE = (8, 8192)
"""The float32 block the exponential kernels are timed on: about a block of the losses' row loops
(:data:`aiokd.distill.losses.CACHE_BLOCK_BYTES`)."""
EXP_PROBE_CALLS = 64
"""Calls of a kernel per timed round (one call takes microseconds)."""


def exponential_kernel(device: torch.device) -> Choice:
    """``exp`` or ``exp2``: how the fused losses compute ``exp(x)`` of float32 blocks on this
    machine, ``torch.exp(x)`` or ``torch.exp2(x log2 e)``, by timing both on
    :data:`EXP_PROBE_SHAPE`.

    PyTorch's CPU ``exp`` calls Intel MKL's vector maths, which takes a slow path on other
    vendors' processors (on a 2-core AMD EPYC this probe timed ``exp2`` at 5.45x ``exp``:
    ``benchmarks/exp_kernels.py`` prints it); ``exp2`` is PyTorch's own vectorised kernel.  On a
    GPU both are fast and ``exp`` is kept."""
    if device.type != "cpu":
        return Choice("exp", f"exp: on a {device.type} without timing")
    x = torch.randn(EXP_PROBE_SHAPE, generator=torch.Generator().manual_seed(0))
    out = torch.empty_like(x)

    def natural() -> None:
        for _ in range(EXP_PROBE_CALLS):
            torch.exp(x, out=out)

    def base_two() -> None:
        for _ in range(EXP_PROBE_CALLS):
            torch.mul(x, LOG2_E, out=out).exp2_()

    return measured_choice(f"exp|float32|{EXP_PROBE_SHAPE}", device,
                           {"exp": natural, "exp2": base_two}, reference="exp", rounds=5)


def bf16_is_native(device: torch.device) -> bool:
    """Whether the device multiplies bf16 in hardware (GPUs from Ampere on; CPUs with
    AVX-512 BF16 or AMX, as oneDNN reports them)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available()
                and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def _training_step(cfg: ModelConfig, device: torch.device, dtype: torch.dtype | None,
                   tokens: int) -> Callable[[], None]:
    """One forward and backward pass of the teacher on a random batch of about ``tokens``
    target tokens (sentences of 24 tokens), under autocast in ``dtype`` (None: float32)."""
    from aiokd.model.transformer import Transformer

    @functools.cache
    def built() -> tuple[Transformer, torch.Tensor, torch.Tensor]:
        """The model and batch, made on the first call only (none when the choice is cached)."""
        generator = torch.Generator().manual_seed(0)
        length = min(24, cfg.max_positions)
        rows = max(1, tokens // length)
        src, tgt = (torch.randint(4, cfg.vocab_size, (rows, length), generator=generator)
                    .to(device) for _ in range(2))
        return Transformer(cfg).to(device).train(), src, tgt

    def step() -> None:
        model, src, tgt = built()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(src, tgt)
        loss = F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten())
        loss.backward()
        model.zero_grad(set_to_none=True)

    return step


def training_precision(cfg: ModelConfig, device: torch.device, tokens: int) -> Choice:
    """``train.amp=auto``: ``bf16`` or ``none`` (float32), by timing a training step of this
    model shape at ``min(tokens, 1024)`` tokens in both, where the device has native bf16."""
    if not bf16_is_native(device):
        return Choice("none", f"float32: no native bf16 on this {device.type}")
    if device.type == "cuda":
        return Choice("bf16", "bf16: native on this GPU")
    tokens = min(tokens, 1024)
    shape = (f"train|V={cfg.vocab_size}|C={cfg.d_model}|F={cfg.ffn_dim}|H={cfg.heads}|"
             f"L={cfg.enc_layers}-{cfg.dec_layers}|pre={cfg.pre_norm}|tokens={tokens}")
    steps = {"none": _training_step(cfg, device, None, tokens),
             "bf16": _training_step(cfg, device, torch.bfloat16, tokens)}
    return measured_choice(shape, device, steps, reference="none")
