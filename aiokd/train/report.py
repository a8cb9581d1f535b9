"""What training shows of itself: the validation grid of every student and its spread, and, for
each sampled student of an update, its cross-entropy ratio to the teacher's and whether its KD
term had the teacher side detached (dynamic gradient detaching, ``CE_S / CE_T > eta``).

An update's statistics are sums over its batches (and processes): ``student_ces`` and ``gates``
hold one value per sampled student, the gate 1 when the teacher learns from that student, 0 when
detached, so ``gates[k] / batches`` is the share of the update's batches in which it learnt.
"""

from __future__ import annotations

from aiokd.students import Student, student_name

VECTORS = ("student_ces", "gates")
"""Statistics with one value per sampled student (every other one is a number)."""
COUNTS = ("batches", *VECTORS)
"""Statistics that are counts or ratios, not sums over target tokens."""


def format_losses(losses: dict[str, float], students: list[Student]) -> str:
    """Per-student losses by name, laid out as a grid: one row per ``l_d``, one column per
    ``l_e``; then their mean and spread."""
    encs = sorted({le for le, _ in students})
    decs = sorted({ld for _, ld in students})
    lines = ["valid CE (nats/token) by student l_e-l_d:"]
    for ld in decs:
        cells = [f"{student_name((le, ld)):>5} {losses[student_name((le, ld))]:6.3f}"
                 if (le, ld) in students else " " * 12 for le in encs]
        lines.append("  ".join(cells).rstrip())
    spread = f", spread (max - min) {losses['spread']:.4f}" if "spread" in losses else ""
    lines.append(f"mean over {len(students)} students: {losses['mean']:.4f}{spread}")
    return "\n".join(lines)


def with_spread(losses: dict[str, float], students: list[Student]) -> dict[str, float]:
    """``losses`` and their ``spread``: the highest student CE minus the lowest."""
    values = [losses[student_name(s)] for s in students]
    return {**losses, "spread": max(values) - min(values)}


def student_statistics(students: list[Student], totals: dict) -> dict[str, object]:
    """The log entry's per-student part: ``students`` (names), ``ratios`` (``CE_S / CE_T`` over
    the update's tokens), ``gates`` (share of batches whose KD term reached the teacher),
    ``ratio_max`` and ``detached`` (KD terms detached in the update)."""
    if not students:
        return {}
    ratios = [ce / totals["ce"] for ce in totals["student_ces"]]
    gates = [g / totals["batches"] for g in totals["gates"]]
    return {"students": [student_name(s) for s in students], "ratios": ratios, "gates": gates,
            "ratio_max": max(ratios), "detached": sum(1.0 - g for g in gates)}


def detached_line(detached: float, terms: float) -> str:
    """How often dynamic gradient detaching fired over a stage's updates."""
    share = f" ({detached / terms:.1%})" if terms else ""
    return f"KD terms detached: {detached:g} of {terms:g}{share}"
