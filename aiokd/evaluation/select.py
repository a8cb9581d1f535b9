"""``aiokd select``: the best student that fits a device budget, and the Pareto front.

The best student is the one with the highest BLEU among those that meet every budget given
(ties: the faster, then the smaller).  A budget is a bound on one figure of ``results.json``:

    --max-latency-ms   ms_per_sentence (translation at batch 1)
    --max-params       params (embeddings included)
    --max-size-mb      size_mb (the standalone student on disk)
    --min-bleu         bleu

The Pareto front is the set of students that no other student beats on both BLEU and latency
(higher BLEU and lower ms per sentence, one of them strictly); without latency figures it is
taken over BLEU and parameters instead.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from aiokd.errors import UserError
from aiokd.evaluation.results import check_results, load_results, markdown_table, millions, number


@dataclass(frozen=True)
class Budget:
    """A bound on one figure: ``value <= bound`` (an upper bound) or ``value >= bound``."""

    option: str
    field: str
    upper: bool
    unit: str

    def meets(self, entry: dict[str, Any], bound: float) -> bool:
        value = entry[self.field]
        return value <= bound if self.upper else value >= bound


BUDGETS = {
    "max_latency_ms": Budget("--max-latency-ms", "ms_per_sentence", True, "ms/sentence"),
    "max_params": Budget("--max-params", "params", True, "parameters"),
    "max_size_mb": Budget("--max-size-mb", "size_mb", True, "MB"),
    "min_bleu": Budget("--min-bleu", "bleu", False, "BLEU"),
}


def _dominates(a: dict[str, Any], b: dict[str, Any], x: str, y: str) -> bool:
    """``a`` is at least as good as ``b`` on both (lower ``x``, higher ``y``), better on one."""
    return a[x] <= b[x] and a[y] >= b[y] and (a[x] < b[x] or a[y] > b[y])


def pareto_front(entries: list[dict[str, Any]], x: str = "ms_per_sentence",
                 y: str = "bleu") -> list[dict[str, Any]]:
    """The entries that no other entry dominates (lower ``x`` and higher ``y``, one strictly),
    ordered by increasing ``x``; entries lacking either figure are left out.

    Entries with identical figures do not dominate each other: both are on the front.
    """
    known = [e for e in entries if e.get(x) is not None and e.get(y) is not None]
    front = [e for e in known if not any(_dominates(other, e, x, y) for other in known)]
    return sorted(front, key=lambda e: (e[x], -e[y]))


def _given(budgets: dict[str, float | None]) -> dict[Budget, float]:
    unknown = sorted(set(budgets) - set(BUDGETS))
    if unknown:
        raise TypeError(f"unknown budget {unknown[0]!r}; known: {', '.join(BUDGETS)}")
    return {BUDGETS[name]: bound for name, bound in budgets.items() if bound is not None}


def _check_measured(students: list[dict[str, Any]], budgets: dict[Budget, float]) -> None:
    for budget in budgets:
        missing = [e["student"] for e in students if e.get(budget.field) is None]
        if missing:
            why = (" (evaluated with --no-latency)" if budget.field == "ms_per_sentence" else "")
            raise UserError(f"{budget.option}: the results have no {budget.field} for "
                            f"{', '.join(missing)}{why}")


def select_student(results: dict[str, Any], **budgets: float | None) -> dict[str, Any] | None:
    """The entry of the best student of ``results`` that meets every budget, or None.

    Args:
        results: the content of ``results.json``.
        budgets: any of ``max_latency_ms``, ``max_params``, ``max_size_mb``, ``min_bleu``;
            None means no bound.

    Raises:
        UserError: ``results`` is malformed, or lacks the figure a budget bounds.
        TypeError: an unknown budget name.
    """
    check_results(results)
    given = _given(budgets)
    students = results["students"]
    _check_measured(students, given)
    fits = [e for e in students if all(b.meets(e, bound) for b, bound in given.items())]
    if not fits:
        return None
    return min(fits, key=lambda e: (-e["bleu"], e.get("ms_per_sentence") or 0, e["params"]))


def _format_bound(budget: Budget, bound: float) -> str:
    return f"{budget.option} {bound:g}"


def tightest_budget(results: dict[str, Any], **budgets: float | None) -> str:
    """Why nothing fits, in one line: the budget met by the fewest students on its own, and
    what the students can do there."""
    given = _given(budgets)
    students = results["students"]
    if not given:
        return "no student in the results"
    budget, bound = min(given.items(),
                        key=lambda item: sum(item[0].meets(e, item[1]) for e in students))
    alone = [e["student"] for e in students if budget.meets(e, bound)]
    best = (min if budget.upper else max)(students, key=lambda e: e[budget.field])
    reach = f"best available: {best[budget.field]:g} {budget.unit} ({best['student']})"
    if alone:
        return (f"tightest budget {_format_bound(budget, bound)} is met by {', '.join(alone)} "
                "alone, but not together with the other budgets")
    return f"tightest budget {_format_bound(budget, bound)} is met by no student; {reach}"


def _front_table(results: dict[str, Any], chosen: dict[str, Any]) -> tuple[str, str]:
    """The Pareto front as a Markdown table, and what it is taken over."""
    students = results["students"]
    with_latency = all(e.get("ms_per_sentence") is not None for e in students)
    x = "ms_per_sentence" if with_latency else "params"
    front = pareto_front(students, x=x)
    rows = [(("* " if e is chosen else "") + e["student"], number(e["bleu"], 2),
             number(e.get("ms_per_sentence"), 1), millions(e["params"]),
             number(e.get("size_mb"), 1)) for e in front]
    table = markdown_table(("student", "BLEU", "ms/sent", "params", "size MB"), rows)
    measured = f"{results.get('engine', 'torch')} in {results.get('dtype', 'float32')}" + (
        f" on {results['device']}" if "device" in results else "")
    return table, (f"latency (ms/sentence at batch 1, {measured})" if with_latency
                   else "parameters")


def select(results_file: str, *, max_latency_ms: float | None = None,
           max_params: float | None = None, max_size_mb: float | None = None,
           min_bleu: float | None = None) -> dict[str, Any] | None:
    """``aiokd select``: print the best student of ``results_file`` (``results.json``) that meets
    every budget given, and the Pareto front; returns its entry, or None (after saying why on
    stderr) when no student fits.

    Raises:
        UserError: an unreadable results file, or one that lacks a figure a budget bounds.
    """
    results = load_results(results_file)
    budgets = {"max_latency_ms": max_latency_ms, "max_params": max_params,
               "max_size_mb": max_size_mb, "min_bleu": min_bleu}
    chosen = select_student(results, **budgets)
    if chosen is None:
        print(f"aiokd select: no student fits: {tightest_budget(results, **budgets)}",
              file=sys.stderr)
        return None
    given = ", ".join(_format_bound(b, v) for b, v in _given(budgets).items()) or "none"
    print(f"best student: {chosen['student']}  (BLEU {number(chosen['bleu'], 2)}, "
          f"{millions(chosen['params'])} params, {number(chosen.get('size_mb'), 1)} MB, "
          f"{number(chosen.get('ms_per_sentence'), 1)} ms/sentence)")
    print(f"budgets: {given}")
    table, over = _front_table(results, chosen)
    print(f"\nPareto front, BLEU against {over} (* = selected):")
    print(table)
    return chosen
