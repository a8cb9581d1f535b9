"""The benchmark's picture: test BLEU of every student of every system, in the paper's order.

Each system is a point per student it has: joined by a line for an AIO-KD system whose
evaluation scored all 15 students (a line through a subset would suggest scores not measured);
the separately trained systems are drawn with their own markers.  Where a student
has more than one seed, its mean is drawn with a bar from the lowest to the highest seed.  The
default ``aiokd`` and the paper's settings are drawn boldly, the ablations and options thinly.
"""

from __future__ import annotations

from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from report import LABELS, SEPARATE  # noqa: E402

from aiokd.evaluation.plots import png_bytes  # noqa: E402

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


def _style(system: str, every_student: bool) -> dict[str, Any]:
    """How ``system`` is drawn; a line only through all the students (``every_student``)."""
    line = "-" if every_student else "none"
    if system in SEPARATE:
        return {"linestyle": "none", "marker": MARKERS.get(system, "o"), "markersize": 7,
                "zorder": 3}
    if system in MAIN:
        return {"linestyle": line, "marker": "o", "linewidth": 2, "zorder": 2}
    return {"linestyle": line, "marker": ".", "linewidth": 1, "alpha": 0.6, "zorder": 1}


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
        lines = axes.plot(xs, ys, label=label, **_style(name, len(students) == len(candidates)))
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
    return png_bytes(figure)
