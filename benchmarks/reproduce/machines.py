"""The machines the runs trained on, and the cost target on one machine at a time.

The cost target (:func:`report.targets`, ``cost_vs_word_kd``) sets an AIO-KD system's
CPU-minutes, its teacher's included, against half those of 15 Word-KD students and their teacher.
A benchmark that outlives a machine has runs of both sides on several machines, whose
CPU-minutes do not compare (:mod:`timings`); so each run's record names its cost by machine
(``machines``), and the same target is also computed on every machine on which both sides have
runs that trained there alone:

    cost_M(system)  = mean over the seeds whose runs, teacher included, all trained on M of
                      the seed's cost (training minutes of its runs and of its teacher)
    word_kd_15_M    = the 15 Word-KD students extrapolated (:func:`report.extrapolate_15`) from
                      the students trained on M (each the mean over its seeds there), plus the
                      mean of the from-scratch 6-6 teachers trained on M
    met             = cost_M(system) <= word_kd_15_M / 2
"""

from __future__ import annotations

from statistics import mean
from typing import Any

import report
import report_markdown
from timings import NOT_RECORDED


def machine_of(record: dict[str, Any]) -> str | None:
    """The one machine a run's training cost was spent on, or None (several, or not
    recorded)."""
    used = [machine for machine, minutes in record.get("machines", {}).items() if minutes > 0]
    return used[0] if len(used) == 1 and used[0] != NOT_RECORDED else None


def _system_costs(runs: dict[str, dict[str, Any]], system: str,
                  machine: str) -> dict[int, float]:
    """Seed -> cost of ``system``'s runs of that seed and their teacher, for the seeds whose
    runs all trained on ``machine``."""
    costs = {}
    mine = [r for r in report.current(runs).values() if r["system"] == system]
    for seed, records in report.runs_by_seed(mine).items():
        teachers = {r["teacher_run"] for r in records if r.get("teacher_run")}
        if not teachers <= set(runs):
            continue
        involved = records + [runs[name] for name in sorted(teachers)]
        if all(machine_of(r) == machine for r in involved):
            costs[seed] = sum(report.run_minutes(r) for r in involved)
    return costs


def _word_kd_15(runs: dict[str, dict[str, Any]], machine: str,
                candidates: list[str]) -> dict[str, Any] | None:
    """:data:`word_kd_15_M` with the students and teachers behind it, or None."""
    students: dict[str, list[float]] = {}
    for r in report.current(runs).values():
        if r["system"] == "word-kd" and machine_of(r) == machine:
            students.setdefault(r["student"], []).append(r["train_minutes"])
    teachers = {name: r["train_minutes"] for name, r in report.current(runs).items()
                if r["system"] == "scratch" and r.get("student") == report.TEACHER
                and machine_of(r) == machine}
    if not (students and teachers):
        return None
    fifteen = report.extrapolate_15({s: mean(m) for s, m in students.items()}, candidates)
    return {"students": sorted(students), "teacher_runs": sorted(teachers),
            "minutes": round(fifteen + mean(teachers.values()), 2)}


def cost_on_machines(runs: dict[str, dict[str, Any]],
                     candidates: list[str]) -> dict[str, list[dict[str, Any]]]:
    """System -> the cost target on each machine where it can be computed (module docstring),
    for the default ``aiokd`` and :data:`report.OPTIONS`."""
    machines = sorted({machine_of(r) for r in runs.values()} - {None})
    found: dict[str, list[dict[str, Any]]] = {}
    for system in ("aiokd", *report.OPTIONS):
        for machine in machines:
            costs = _system_costs(runs, system, machine)
            word = _word_kd_15(runs, machine, candidates)
            if not (costs and word):
                continue
            value = mean(costs.values())
            found.setdefault(system, []).append({
                "machine": machine, "seeds": sorted(costs), "cost_minutes": round(value, 2),
                "word_kd_15_minutes": word["minutes"], "word_kd_students": word["students"],
                "teacher_runs": word["teacher_runs"],
                "ratio": round(value / word["minutes"], 3), "met": value <= word["minutes"] / 2})
    return found


def section(results: dict[str, Any]) -> str:
    """The report's section on machines: each run's training cost by machine, and the cost
    target on one machine at a time (empty when no run recorded its machines)."""
    runs = {name: r for name, r in results["runs"].items() if r.get("machines")}
    if not runs:
        return ""
    rows = [[f"`{name}`", "; ".join(f"{machine}: {minutes:.1f}"
                                     for machine, minutes in r["machines"].items())]
            for name, r in runs.items()]
    text = ("\n\n## Machines\n\nCPU-minutes compare on one machine only. Each run's training "
            "cost by the machine it trained on (runs without a line trained before machines "
            "were recorded):\n\n" + report_markdown.table(["run", "minutes by machine"], rows))
    comparisons = [[f"`{system}`", c["machine"], ", ".join(map(str, c["seeds"])),
                    f"{c['cost_minutes']:.1f}", f"{c['word_kd_15_minutes']:.1f}",
                    ", ".join(c["word_kd_students"]), f"{c['ratio']:.3f}",
                    "yes" if c["met"] else "**no**"]
                   for system, found in results.get("cost_by_machine", {}).items()
                   for c in found]
    if comparisons:
        header = ["system", "machine", "seeds", "cost", "15 Word-KD + teacher",
                  "Word-KD students trained there", "ratio", "<= half"]
        text += ("\n\nThe cost target on one machine: the system's seeds whose runs and teacher "
                 "all trained there, against 15 Word-KD students extrapolated from those "
                 "trained there plus the mean of the teachers trained there.\n\n"
                 + report_markdown.table(header, comparisons))
    return text
