"""The benchmark's picture: test BLEU of every student of every system, in the paper's order.

Each system is a point per student it has: joined by a line for an AIO-KD system whose
evaluation scored all 15 students (a line through a subset would suggest scores not measured);
the separately trained systems are drawn with their own markers.  Where a student
has more than one seed, its mean is drawn with a bar from the lowest to the highest seed.  The
default ``aiokd`` and the paper's settings are drawn boldly, the ablations and options thinly.
"""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from report import LABELS, SEPARATE  # noqa: E402

MAIN = ("aiokd", "aiokd-paper")
"""The AIO-KD systems drawn boldly."""
MARKERS = {"scratch": "s", "word-kd": "D", "selective-kd": "^"}
OFFSETS = {"scratch": -0.15, "word-kd": 0.15, "selective-kd": 0.3}
"""Horizontal shifts of the separately trained systems' points, so that none hides another."""


def _seed_range(entry: dict[str, Any], student: str) -> tuple[float, float] | None:
    """(lowest, highest) BLEU of ``student`` over the seeds of a system, None with one seed."""
    values = [scores[student] for scores in entry.get("bleu_by_seed", {}).values()
              if student in scores]
    return (min(values), max(values)) if len(values) > 1 else None


def bleu_by_student(results: dict[str, Any], candidates: list[str]) -> bytes:
    """PNG of the results file ``results`` (see :mod:`report`) over ``candidates``, the
    students in the paper's order."""
    position = {student: index for index, student in enumerate(candidates)}
    figure, axes = plt.subplots(figsize=(11, 5))
    for name, entry in results["systems"].items():
        scores = entry.get("bleu_all_students", entry["bleu"])
        students = [s for s in candidates if s in scores]
        shift = OFFSETS.get(name, 0.0)
        xs, ys = [position[s] + shift for s in students], [scores[s] for s in students]
        seeds = entry.get("seeds", [1])
        label = f"{LABELS[name]} (seed{'s' if len(seeds) > 1 else ''} " \
                f"{', '.join(map(str, seeds))})"
        line = "-" if len(students) == len(candidates) else "none"
        if name in SEPARATE:
            lines = axes.plot(xs, ys, linestyle="none", marker=MARKERS.get(name, "o"),
                              markersize=7, label=label, zorder=3)
        elif name in MAIN:
            lines = axes.plot(xs, ys, linestyle=line, marker="o", linewidth=2, label=label,
                              zorder=2)
        else:
            lines = axes.plot(xs, ys, linestyle=line, marker=".", linewidth=1, alpha=0.6,
                              label=label, zorder=1)
        for s in students:
            found = _seed_range(entry, s)
            if found:
                axes.vlines(position[s] + shift, *found, color=lines[0].get_color(), linewidth=1.5)
    axes.set_xticks(range(len(candidates)), candidates)
    axes.set_xlabel("student $l_e$-$l_d$ (encoder-decoder layers)")
    axes.set_ylabel("test BLEU")
    axes.set_title(f"{results['title']} ({results['preset']}) on {results['test_set']}; a bar "
                   "spans a student's seeds", fontsize=9)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=150, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()
