"""Timing a translation function and its peak memory, as ``aiokd evaluate`` reports them.

* **ms per sentence at batch 1**: each sentence of a fixed sample translated on its own, after a
  warm-up; one run is the mean over the sample, and the figure is the trimmed mean of the runs.
* **sentences per second batched**: the whole test set translated in one call (the translator
  batches it by tokens), once by default: that pass also gives the translations that are scored,
  and a whole test set is many batches, which average out much of the noise that a batch-1
  sentence has; with ``batched_runs`` of 3 or more, the trimmed mean of the runs.
* **peak memory**: on CPU the peak resident set size of this process during the student's runs
  (``resource.getrusage``, with the high-water mark reset before the student where Linux allows
  it, so it covers the loaded model, the runtime and this student's work); on CUDA the peak of
  ``torch.cuda.max_memory_allocated``.

Times are wall-clock, text in and text out: SentencePiece encoding and decoding are included.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

Translate = Callable[[list[str]], list[str]]

STATISTIC = "trimmed mean: the mean of the runs left after dropping the fastest and the slowest"


def trimmed_mean(values: list[float]) -> float:
    """The mean of ``values`` without their smallest and largest (all of them when fewer than 3).
    """
    ordered = sorted(values)
    kept = ordered[1:-1] if len(ordered) >= 3 else ordered
    return sum(kept) / len(kept)


def sample_indices(count: int, size: int) -> list[int]:
    """``size`` indices spread evenly over ``range(count)`` (all of them when fewer)."""
    if count <= size:
        return list(range(count))
    return [round(i * (count - 1) / (size - 1)) for i in range(size)] if size > 1 else [0]


class PeakMemory:
    """Peak memory of this process from :meth:`reset` to :meth:`read`, in MB (10^6 bytes).

    CTranslate2 on CUDA allocates outside PyTorch: there it is not measured (None).
    """

    def __init__(self, device: torch.device, engine: str = "torch"):
        self.device = device
        self.measured = device.type != "cuda" or engine == "torch"

    @property
    def description(self) -> str:
        if not self.measured:
            return "not measured (CTranslate2 on CUDA allocates outside PyTorch)"
        if self.device.type == "cuda":
            return "CUDA max allocated during the student's runs (full model loaded)"
        return "peak RSS of the evaluating process during the student's runs (full model loaded)"

    def reset(self) -> None:
        if self.device.type == "cuda":
            if self.measured:
                torch.cuda.reset_peak_memory_stats(self.device)
            return
        clear_refs = Path("/proc/self/clear_refs")
        try:
            clear_refs.write_text("5")  # Linux: reset the peak-RSS high-water mark
        except OSError:
            pass

    def read(self) -> float | None:
        if not self.measured:
            return None
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 1e6
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6


@dataclass(frozen=True)
class LatencySettings:
    """How much to time: a batch-1 sample and its repeated runs, the whole set batched
    ``batched_runs`` times, and a warm-up."""

    sample: int = 50
    runs: int = 3
    warmup: int = 5
    batched_runs: int = 1

    def describe(self) -> dict:
        return {"batch1_sample_sentences": self.sample, "runs": self.runs,
                "batched_runs": self.batched_runs,
                "warmup_sentences": self.warmup, "statistic": STATISTIC,
                "timing": "wall clock, text in and text out (SentencePiece included)"}


@dataclass
class Timing:
    """What :func:`time_translation` measured, and the translations of the whole set."""

    ms_per_sentence: float
    sentences_per_second: float
    peak_memory_mb: float | None
    hypotheses: list[str]


def synchronize(device: torch.device | None) -> None:
    """Wait for the work queued on ``device`` (nothing to wait for on a CPU)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function: Callable[[], object], device: torch.device | None = None) -> float:
    """Wall-clock seconds of one call of ``function``; with a CUDA ``device``, until the work
    it queued there is done (and not counting the work queued before)."""
    synchronize(device)
    start = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - start


def time_translation(translate: Translate, lines: list[str], settings: LatencySettings,
                     memory: PeakMemory) -> Timing:
    """Time ``translate`` at batch 1 on a sample of ``lines`` and batched on all of them.

    The first batched run's output is returned as the hypotheses of the set.
    """
    memory.reset()
    for line in lines[:settings.warmup]:
        translate([line])
    sample = [lines[i] for i in sample_indices(len(lines), settings.sample)]
    batch1 = []
    for _ in range(settings.runs):
        seconds = sum(timed(lambda line=line: translate([line])) for line in sample)
        batch1.append(1000 * seconds / len(sample))
    hypotheses: list[str] = []
    batched = []
    for _ in range(settings.batched_runs):
        start = time.perf_counter()
        output = translate(lines)
        batched.append(len(lines) / (time.perf_counter() - start))
        hypotheses = hypotheses or output
    return Timing(trimmed_mean(batch1), trimmed_mean(batched), memory.read(), hypotheses)
