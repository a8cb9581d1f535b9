"""Timing the students of a model and their peak memory, as ``aiokd evaluate`` reports them.

* **ms per sentence at batch 1**: each sentence of a fixed sample translated on its own, after a
  warm-up; one run is the mean over the sample, and the figure is the trimmed mean of the runs.
  The runs are taken in rounds across the students (round ``r`` times every student's sample
  before round ``r + 1`` starts), so that a slow spell of a shared machine falls on one run of
  several students, which the trimmed mean drops, and not on every run of one student, which
  would move it up the latency ranking.
* **sentences per second batched**: the whole test set translated in one call (the translator
  batches it by tokens), once by default: that pass also gives the translations that are scored,
  and a whole test set is many batches, which average out much of the noise that a batch-1
  sentence has; with ``batched_runs`` of 3 or more, the trimmed mean of the runs (the further
  runs in the rounds too).
* **peak memory**: on CPU the peak resident set size of this process during the student's
  warm-up and scored pass (``resource.getrusage``, with the high-water mark reset before the
  student where Linux allows it, so it covers the loaded model, the runtime and this student's
  largest batches); on CUDA the peak of ``torch.cuda.max_memory_allocated``.

Times are wall-clock, text in and text out: SentencePiece encoding and decoding are included.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

Translate = Callable[[list[str]], list[str]]

ORDER = "in rounds across the students (run r of every student before run r + 1)"
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
            return ("CUDA max allocated during the student's warm-up and scored pass "
                    "(full model loaded)")
        return ("peak RSS of the evaluating process during the student's warm-up and scored pass "
                "(full model loaded)")

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
                "order": ORDER,
                "timing": "wall clock, text in and text out (SentencePiece included)"}


@dataclass
class Timing:
    """What :class:`FamilyTimer` measured for one student."""

    ms_per_sentence: float
    sentences_per_second: float
    peak_memory_mb: float | None


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


class FamilyTimer:
    """Times several students on ``lines``: :meth:`scored_pass` of each student in turn, then
    :meth:`rounds`, which interleaves the repeated runs across them (see the module docstring).
    """

    def __init__(self, lines: list[str], settings: LatencySettings, memory: PeakMemory):
        self.lines, self.settings, self.memory = lines, settings, memory
        self.sample = [lines[i] for i in sample_indices(len(lines), settings.sample)]
        self.translators: dict[str, Translate] = {}
        self.batched: dict[str, list[float]] = {}
        self.peak: dict[str, float | None] = {}

    def scored_pass(self, name: str, translate: Translate) -> list[str]:
        """Warm ``translate`` up and translate every line in one timed call, recording the peak
        memory; returns the translations."""
        self.memory.reset()
        for line in self.lines[:self.settings.warmup]:
            translate([line])
        hypotheses: list[str] = []
        seconds = timed(lambda: hypotheses.extend(translate(self.lines)))
        self.translators[name] = translate
        self.batched[name] = [len(self.lines) / seconds]
        self.peak[name] = self.memory.read()
        return hypotheses

    def rounds(self) -> dict[str, Timing]:
        """The batch-1 runs and the further batched runs, round by round across the students
        that made their scored pass; the timings of each."""
        batch1: dict[str, list[float]] = {name: [] for name in self.translators}
        for round_ in range(max(self.settings.runs, self.settings.batched_runs - 1)):
            for name, translate in self.translators.items():
                if round_ < self.settings.runs:
                    seconds = sum(timed(partial(translate, [line]))
                                  for line in self.sample)
                    batch1[name].append(1000 * seconds / len(self.sample))
                if round_ < self.settings.batched_runs - 1:
                    seconds = timed(partial(translate, self.lines))
                    self.batched[name].append(len(self.lines) / seconds)
        return {name: Timing(trimmed_mean(batch1[name]), trimmed_mean(self.batched[name]),
                             self.peak[name]) for name in self.translators}
