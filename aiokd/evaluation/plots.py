"""The two figures of ``aiokd evaluate``, rendered to PNG bytes.

* :func:`bleu_heatmap`: BLEU of every student on the ``l_e x l_d`` grid, each cell annotated;
  grid positions that are not students stay blank.
* :func:`bleu_latency_plot`: BLEU against ms per sentence at batch 1 (or another cost, such as
  parameters), every point labelled with its student, the Pareto front joined and marked.
"""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from aiokd.evaluation.select import pareto_front  # noqa: E402


def png_bytes(figure) -> bytes:
    """``figure`` rendered to PNG (150 dpi, tight), then closed."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=150, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def bleu_heatmap(entries: list[dict[str, Any]], title: str) -> bytes:
    """A heatmap of ``bleu`` with encoder layers across and decoder layers up."""
    encs = range(min(e["enc_layers"] for e in entries), max(e["enc_layers"] for e in entries) + 1)
    decs = range(min(e["dec_layers"] for e in entries), max(e["dec_layers"] for e in entries) + 1)
    grid = np.full((len(decs), len(encs)), np.nan)
    for e in entries:
        grid[e["dec_layers"] - decs.start, e["enc_layers"] - encs.start] = e["bleu"]
    figure, axes = plt.subplots(figsize=(1.1 * len(encs) + 2.2, 0.9 * len(decs) + 1.6))
    image = axes.imshow(np.ma.masked_invalid(grid), origin="lower", cmap="viridis",
                        aspect="auto")
    low, high = np.nanmin(grid), np.nanmax(grid)
    digits = 1 if high >= 10 else 2
    for row, col in zip(*np.nonzero(~np.isnan(grid)), strict=True):
        value = grid[row, col]
        light = high > low and (value - low) / (high - low) > 0.6
        axes.text(col, row, f"{value:.{digits}f}", ha="center", va="center", fontsize=10,
                  color="black" if light else "white")
    axes.set_xticks(range(len(encs)), [str(le) for le in encs])
    axes.set_yticks(range(len(decs)), [str(ld) for ld in decs])
    axes.set_xlabel("encoder layers $l_e$")
    axes.set_ylabel("decoder layers $l_d$")
    axes.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axes, label="BLEU")
    return png_bytes(figure)


_LABEL_SIZE = 8
_CANDIDATE_OFFSETS = ((4, 4), (4, -11), (-6, 6), (-6, -13), (6, -3))
"""Where a label may go relative to its point, in points; the first that overlaps least wins."""


def _overlap(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    return max(width, 0.0) * max(height, 0.0)


def _label_offsets(axes, points: list[tuple[float, float]],
                   labels: list[str]) -> list[tuple[int, int]]:
    """An offset for each label that keeps it off the other labels and points, as far as the
    few candidate places allow (labels are placed greedily, left to right)."""
    to_points = 72.0 / axes.figure.dpi
    xy = [tuple(v * to_points for v in axes.transData.transform(p)) for p in points]
    boxes = [(px - 3, py - 3, px + 3, py + 3) for px, py in xy]
    chosen: dict[int, tuple[int, int]] = {}
    for i in sorted(range(len(points)), key=lambda i: xy[i]):
        width, height = 0.6 * _LABEL_SIZE * len(labels[i]), _LABEL_SIZE
        candidates = []
        for dx, dy in _CANDIDATE_OFFSETS:
            shift = dx - width if dx < 0 else dx
            box = (xy[i][0] + shift, xy[i][1] + dy, xy[i][0] + shift + width,
                   xy[i][1] + dy + height)
            candidates.append((sum(_overlap(box, other) for other in boxes), shift, dy, box))
        _, shift, dy, box = min(candidates, key=lambda candidate: candidate[0])
        boxes.append(box)
        chosen[i] = (round(shift), dy)
    return [chosen[i] for i in range(len(points))]


def bleu_latency_plot(entries: list[dict[str, Any]], title: str, xlabel: str,
                      x: str = "ms_per_sentence", scale: float = 1.0) -> bytes:
    """BLEU against ``x`` (divided by ``scale``), the Pareto front joined by a step line."""
    figure, axes = plt.subplots(figsize=(6.4, 4.4))
    front = pareto_front(entries, x=x)
    on_front = {id(e) for e in front}

    def points(group: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
        return [e[x] / scale for e in group], [e["bleu"] for e in group]

    axes.scatter(*points([e for e in entries if id(e) not in on_front]), color="tab:gray", s=28,
                 label="student", zorder=2)
    axes.step(*points(front), where="post", color="tab:red", linewidth=1.2, alpha=0.7, zorder=1)
    axes.scatter(*points(front), color="tab:red", s=42, label="Pareto front", zorder=3)
    axes.margins(x=0.1, y=0.1)
    axes.autoscale_view()
    offsets = _label_offsets(axes, [(e[x] / scale, e["bleu"]) for e in entries],
                             [e["student"] for e in entries])
    for e, offset in zip(entries, offsets, strict=True):
        axes.annotate(e["student"], (e[x] / scale, e["bleu"]), xytext=offset,
                      textcoords="offset points", fontsize=_LABEL_SIZE,
                      color="tab:red" if id(e) in on_front else "dimgray")
    axes.set_xlabel(xlabel)
    axes.set_ylabel("BLEU")
    axes.set_title(title, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    return png_bytes(figure)
