"""The benchmark's results: per-system BLEU and cost from per-run records, the premise, the
targets and the choice of the default (the Markdown report of them: :mod:`report_markdown`).

A *run record* describes one finished ``aiokd train`` run and its ``aiokd evaluate`` results::

    {"run": "word-kd-4-2-seed2", "system": "word-kd", "student": "4-2", "seed": 2,
     "bleu": {"4-2": 31.2}, "chrf": {"4-2": 55.0}, "compared": ["4-2"],
     "teacher_run": "scratch-6-6",
     "train_minutes": 12.5, "extra_minutes": 0.0, "updates": 1800,
     "device": "...", "signatures": {"bleu": "...", "chrf": "..."}, "test_set": "...",
     "commands": ["aiokd ..."], "code": ["<git commit>"], "training": {...},
     "machines": {"CPU: ...": 12.5}, "started": "2026-11-27T23:46:05Z"}

``bleu`` and ``chrf`` (and ``length_ratio``, the translations' length over the references', in
evaluations that wrote it) hold every student the run's evaluation scored, ``compared`` those of
the comparison (absent: all of them); ``teacher_run``: the from-scratch 6-6 run the run distilled or
started from, whose cost is part of the system's (absent or null: none); ``training`` is
:func:`training_log.observe` of its run directory (absent in records written before separate
runs had it); ``seed`` absent means 1; ``machines``: its cost by the machine it trained on
(:mod:`timings`, :mod:`machines`); ``started``: when its training started (:mod:`merge`; a
superseded record has ``superseded_by``); a run that took over part of another's training
names it (``continues``) and the share it paid (``twin_share``, :mod:`continuation`).

Everything else (averages over seeds and students, spreads, costs, targets) is computed here from
the records, so results written by separate invocations of the driver (``--group``, ``--seeds``)
merge by taking the union of their records.
"""

from __future__ import annotations

from collections.abc import Callable
from statistics import mean
from typing import Any

from aiokd.students import parse_student

SEPARATE = ("scratch", "word-kd", "selective-kd")
"""Systems that train one model per student."""
FROM_TEACHER = ("word-kd", "selective-kd", "aiokd-seqkd", "aiokd-init")
"""Systems that learn from the from-scratch 6-6 of their seed, whose cost is part of theirs.
AIO-KD systems with a teacher stage start from the from-scratch 6-6 of their seed (that stage)."""
ORDER = ("scratch", "word-kd", "selective-kd", "aiokd", "aiokd-capped", "aiokd-paper",
         "aiokd-separate", "aiokd-uniform", "aiokd-sandwich", "aiokd-sandwich-kd1",
         "aiokd-no-dgd", "aiokd-no-ml", "aiokd-one-stage", "aiokd-seqkd", "aiokd-init")
OPTIONS = ("aiokd-capped", "aiokd-sandwich", "aiokd-sandwich-kd1", "aiokd-init")
"""AIO-KD rows whose targets are checked beside the default's: the default at the other rows'
budget (`aiokd-capped`, where the default's stage 2 runs longer) and option rows; on a preset
whose default already has an option (sandwich sampling on `narrow`), that row is not run."""
TEACHER = "6-6"
SMALLEST = "2-2"
TEACHER_RUN = "scratch-6-6"
LABELS = {
    "scratch": "separate students, from scratch",
    "word-kd": "separate students, Word-KD",
    "selective-kd": "separate students, Selective-KD",
    "aiokd": "AIO-KD (one run; with a teacher stage: from the from-scratch 6-6)",
    "aiokd-capped": "AIO-KD, stage 2 stopped at U updates",
    "aiokd-paper": "AIO-KD, the paper's settings",
    "aiokd-separate": "AIO-KD, a separate pass per student",
    "aiokd-uniform": "AIO-KD, students sampled uniformly (no sandwich)",
    "aiokd-sandwich": "AIO-KD + sandwich sampling",
    "aiokd-sandwich-kd1": "AIO-KD + sandwich sampling, KD weight 1",
    "aiokd-no-dgd": "AIO-KD without DGD",
    "aiokd-no-ml": "AIO-KD without mutual learning",
    "aiokd-one-stage": "AIO-KD, one stage (2U updates, ML throughout)",
    "aiokd-seqkd": "AIO-KD on Seq-KD data",
    "aiokd-init": "AIO-KD from the from-scratch 6-6 teacher's weights",
}


def extrapolate_15(measured: dict[str, float], candidates: list[str]) -> float | None:
    """Minutes to train every one of ``candidates`` separately, from the ``measured`` ones.

    A student that was not trained costs what the least-squares line through the measured
    (l_e + l_d, minutes) points gives for its l_e + l_d (at least 0); with one measured student,
    its cost scaled by the ratio of total layers.
    """
    if not measured:
        return None
    points = [(sum(map(int, name.split("-"))), minutes) for name, minutes in measured.items()]
    xs = [x for x, _ in points]
    x_mean, y_mean = mean(xs), mean(y for _, y in points)
    spread = sum((x - x_mean) ** 2 for x in xs)
    if spread:
        slope = sum((x - x_mean) * (y - y_mean) for x, y in points) / spread

        def estimate(layers: int) -> float:
            return max(0.0, y_mean + slope * (layers - x_mean))
    else:
        def estimate(layers: int) -> float:
            return y_mean * layers / x_mean

    return sum(measured[name] if name in measured else
               estimate(sum(map(int, name.split("-")))) for name in candidates)


def _average(values: dict[str, float], students: list[str]) -> float | None:
    chosen = [values[s] for s in students if s in values]
    return round(mean(chosen), 2) if chosen else None


def current(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The records of ``runs`` that no later training of their run superseded (:mod:`merge`)."""
    return {name: r for name, r in runs.items() if not r.get("superseded_by")}


def run_minutes(record: dict[str, Any]) -> float:
    """The training minutes of one run, with what it needed besides (e.g. Seq-KD data)."""
    return record["train_minutes"] + record.get("extra_minutes", 0.0)


def _sum_of_means(records: list[dict[str, Any]], value: Callable[[dict], float]) -> float:
    """Over the runs of one system: per student the mean of ``value(run)`` over its seeds (a
    single-run system has one group), summed over the students, so that a student with fewer
    seeds is counted once."""
    groups: dict[str | None, list[float]] = {}
    for record in records:
        groups.setdefault(record.get("student"), []).append(value(record))
    return sum(mean(values) for values in groups.values())


def runs_by_seed(records: list[dict[str, Any]]) -> dict[int, list[dict[str, Any]]]:
    """``records`` by seed."""
    found: dict[int, list[dict[str, Any]]] = {}
    for record in records:
        found.setdefault(record.get("seed", 1), []).append(record)
    return dict(sorted(found.items()))


def _scores(records: list[dict[str, Any]], metric: str) -> dict[str, float]:
    return {s: value for r in records for s, value in r[metric].items()}


def _over_seeds(by_seed: dict[int, dict[str, float]], students: list[str]) -> dict[str, Any]:
    """Per student the mean over the seeds that have it and its spread (max - min; 0 with one
    seed); the average over ``students`` of each seed and, over the seeds that have all the
    students of the mean, its spread (None with fewer than two)."""
    have = {s: [scores[s] for scores in by_seed.values() if s in scores] for s in students}
    means = {s: round(mean(v), 2) for s, v in have.items() if v}
    complete = [scores for scores in by_seed.values() if set(means) <= set(scores)]
    averages = [mean(scores[s] for s in means) for scores in complete] if means else []
    return {"mean": means, "spread": {s: round(max(v) - min(v), 2) for s, v in have.items() if v},
            "avg_by_seed": {str(seed): _average(scores, students)
                            for seed, scores in by_seed.items()},
            "avg_spread": round(max(averages) - min(averages), 2) if len(averages) > 1 else None}


def _training(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Over the runs (seeds) of an AIO-KD system: the mean detached fraction of KD terms per
    stage, and at the best validation of the last stage the mean CE of every student, of all
    students, and of the spread across students; why each stage of each run stopped."""
    seen = [r for r in records if r.get("training", {}).get("best")]
    if not seen:
        return None
    fractions: dict[str, list[float]] = {}
    for r in seen:
        for stage, found in r["training"]["stages"].items():
            if found.get("detached_fraction") is not None:
                fractions.setdefault(stage, []).append(found["detached_fraction"])
    bests = [r["training"]["best"] for r in seen]
    students = [s for s in bests[0]["ce"] if all(s in b["ce"] for b in bests)]
    return {
        "detached_fraction": {stage: round(mean(v), 4) for stage, v in fractions.items()},
        "valid_ce": {s: round(mean(b["ce"][s] for b in bests), 4) for s in students},
        "valid_ce_mean": round(mean(b["mean"] for b in bests), 4),
        "valid_ce_spread": round(mean(b["spread"] for b in bests), 4),
        "stopped": {r["run"]: {stage: found["stopped"] for stage, found
                               in r["training"]["stages"].items()} for r in seen},
    }


def _validation_by_student(by_seed: dict[int, list[dict[str, Any]]]) -> dict[str, Any]:
    """Over the runs of a separate-student system that logged it: the best validation CE of each
    student per seed (``valid_ce_by_seed``) and its mean over those seeds (``valid_ce``)."""
    found: dict[str, dict[str, float]] = {}
    for seed, records in by_seed.items():
        for r in records:
            best = r.get("training", {}).get("best")
            if best:
                found.setdefault(str(seed), {})[r["student"]] = best["mean"]
    students = sorted({s for ce in found.values() for s in ce}, key=parse_student)
    return {"valid_ce": {s: round(mean(ce[s] for ce in found.values() if s in ce), 4)
                         for s in students}, "valid_ce_by_seed": found}


def _teacher_minutes(runs: dict[str, dict[str, Any]], records: list[dict[str, Any]],
                     system: str) -> float:
    """The training minutes of the teacher the runs of one seed of ``system`` started from or
    distilled from (``teacher_run`` of their records; for a :data:`FROM_TEACHER` record without
    it, the from-scratch 6-6 of seed 1), 0 if none or not trained yet. A seed has one teacher:
    where its runs learned from several trainings of it (one trained again, :mod:`merge`), the
    mean of their minutes."""
    names = {r["teacher_run"] for r in records if r.get("teacher_run")}
    if not names and system in FROM_TEACHER:
        names = {TEACHER_RUN}
    minutes = [runs[name]["train_minutes"] for name in sorted(names) if name in runs]
    return mean(minutes) if minutes else 0.0


def summarize(runs: dict[str, dict[str, Any]], students: list[str],
              candidates: list[str]) -> dict[str, dict[str, Any]]:
    """Per system: BLEU and chrF per student (the mean over its seeds), BLEU per seed and its
    spread, averages over ``students``, and updates and cost (each the mean over seeds of the
    seed's sum over its runs); AIO-KD systems: what their training logs say."""
    systems: dict[str, dict[str, Any]] = {}
    for system in ORDER:
        mine = [r for r in current(runs).values() if r["system"] == system]
        if not mine:
            continue
        by_seed = runs_by_seed(mine)
        bleu_scores = {seed: _scores(rs, "bleu") for seed, rs in by_seed.items()}
        bleu = _over_seeds(bleu_scores, students)
        chrf = _over_seeds({seed: _scores(rs, "chrf") for seed, rs in by_seed.items()}, students)
        entry = {"seeds": list(by_seed), "bleu": bleu["mean"], "chrf": chrf["mean"],
                 "avg_bleu": _average(bleu["mean"], students),
                 "avg_chrf": _average(chrf["mean"], students),
                 "bleu_by_seed": {str(seed): {s: v for s, v in scores.items() if s in students}
                                  for seed, scores in bleu_scores.items()},
                 "spread": bleu["spread"], "avg_bleu_by_seed": bleu["avg_by_seed"],
                 "avg_bleu_spread": bleu["avg_spread"], "students": len(bleu["mean"]),
                 "updates": round(_sum_of_means(mine, lambda r: r["updates"])),
                 "runs": sorted(r["run"] for r in mine)}
        every = _over_seeds(bleu_scores, candidates)
        if set(every["mean"]) - set(students):
            entry["bleu_all_students"] = every["mean"]
            entry["avg_bleu_all_students_by_seed"] = every["avg_by_seed"]
        teachers = {seed: _teacher_minutes(runs, rs, system) for seed, rs in by_seed.items()}
        extra = mean(teachers.values())
        costs = {seed: sum(run_minutes(r) for r in rs) + teachers[seed]
                 for seed, rs in by_seed.items()}
        entry["cost_minutes"] = round(_sum_of_means(mine, run_minutes) + extra, 2)
        entry["cost_minutes_by_seed"] = {str(seed): round(c, 2) for seed, c in costs.items()}
        entry["cost_includes_teacher"] = bool(extra)
        if system in SEPARATE:
            fifteen = [extrapolate_15({r["student"]: r["train_minutes"] for r in rs}, candidates)
                       for rs in by_seed.values()]
            entry["cost_minutes_15"] = round(mean(fifteen) + extra, 2)
            entry["trained_students"] = len({r["student"] for r in mine})
        if system in SEPARATE:
            entry |= _validation_by_student(by_seed)
        elif training := _training(mine):
            entry["training"] = training
        systems[system] = entry
    return systems


def _common(a: dict[str, float], b: dict[str, float]) -> list[str]:
    return [s for s in a if s in b]


def _target(text: str, value: float | None, threshold: float | None, at_most: bool = False,
            **details: Any) -> dict[str, Any]:
    if value is None or threshold is None:
        return {"text": text, "value": value, "threshold": threshold, "met": None,
                "why": "missing results", **details}
    met = value <= threshold if at_most else value >= threshold
    return {"text": text, "value": round(value, 2), "threshold": round(threshold, 2),
            "met": bool(met), **details}


def _avg_target(text: str, mine: dict[str, Any] | None, theirs: dict[str, Any] | None,
                margin: float) -> dict[str, Any]:
    if not (mine and theirs):
        return _target(text, None, None)
    common = _common(mine["bleu"], theirs["bleu"])
    if not common:
        return _target(text, None, None)
    return _target(text, mean(mine["bleu"][s] for s in common),
                   mean(theirs["bleu"][s] for s in common) + margin, students=common)


def _every_student(systems: dict[str, Any], name: str, label: str) -> dict[str, Any]:
    """Whether every student of ``name`` that Word-KD also has scores at least Word-KD's;
    ``margins``: each such student's BLEU minus Word-KD's."""
    text = f"{label}: every student >= its Word-KD counterpart"
    mine, word = systems.get(name), systems.get("word-kd")
    common = _common(mine["bleu"], word["bleu"]) if mine and word else []
    if not common:
        return _target(text, None, None)
    margins = {s: round(mine["bleu"][s] - word["bleu"][s], 2) for s in common}
    below = [s for s in common if margins[s] < 0]
    return {"text": text, "system": name, "margins": margins, "below_word_kd": below,
            "met": not below}


def _system_targets(systems: dict[str, dict[str, Any]], name: str,
                    label: str) -> dict[str, dict[str, Any]]:
    """The average, teacher, cost and every-student targets of the AIO-KD system ``name``."""
    mine, scratch, word = (systems.get(s) for s in (name, "scratch", "word-kd"))
    teacher_text = f"{label} teacher 6-6 BLEU >= from-scratch 6-6 BLEU + 1.0"
    if mine and scratch and TEACHER in mine["bleu"] and TEACHER in scratch["bleu"]:
        teacher = _target(teacher_text, mine["bleu"][TEACHER], scratch["bleu"][TEACHER] + 1.0)
    else:
        teacher = _target(teacher_text, None, None)
    cost_text = f"{label} cost <= half the cost of 15 Word-KD students + their teacher"
    cost = _target(cost_text, mine and mine["cost_minutes"],
                   word and word["cost_minutes_15"] / 2, at_most=True)
    return {
        "avg_vs_scratch": _avg_target(f"{label} average BLEU >= from-scratch average + 1.0",
                                      mine, scratch, 1.0),
        "avg_vs_word_kd": _avg_target(f"{label} average BLEU >= Word-KD average + 0.5",
                                      mine, word, 0.5),
        "teacher_vs_scratch": teacher,
        "cost_vs_word_kd": cost,
        "every_student_vs_word_kd": _every_student(systems, name, label),
    }


def premise(systems: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The paper's premise, that the teacher is better than its smallest student: the
    from-scratch 6-6 above the from-scratch 2-2 in BLEU on the scored set (the test split, or the
    driver's ``--test-split``; means over seeds) and below it in validation CE in every seed where
    both runs logged it; ``met`` None while a run is missing."""
    scratch = systems.get("scratch", {})
    bleu = {s: scratch.get("bleu", {}).get(s) for s in (SMALLEST, TEACHER)}
    valid = {seed: ce for seed, ce in scratch.get("valid_ce_by_seed", {}).items()
             if SMALLEST in ce and TEACHER in ce}
    text = "Premise: from-scratch 6-6 above from-scratch 2-2 (BLEU; validation CE by seed)"
    if None in bleu.values():
        return {"text": text, "bleu": bleu, "valid_ce_by_seed": valid, "met": None}
    met = bleu[TEACHER] > bleu[SMALLEST] and all(
        ce[TEACHER] < ce[SMALLEST] for ce in valid.values())
    return {"text": text, "bleu": bleu, "valid_ce_by_seed": valid, "met": met}


DEFAULT_RULE = ("An AIO-KD variant replaces the default `aiokd` if, over the seeds both have, "
                "its BLEU averaged over the compared students is at least the default's and its "
                "2-2's is higher than the default's 2-2's. The rule was fixed before the seed-2 "
                "runs of `aiokd` and `aiokd-sandwich` ended, and is applied on the validation "
                "split only. A variant that replaces the default becomes it: the preset takes its "
                "options, its runs are renamed `aiokd`, and the former default's runs become the "
                "row named for what it does differently (on `narrow`: sandwich sampling replaced "
                "the uniform sampling of `aiokd-uniform`). Where the default's stage 2 runs "
                "longer than the other AIO-KD rows' (`narrow`), each variant is compared with "
                "`aiokd-capped`, the default stopped at their budget, and `aiokd-capped` with "
                "the default.")


def _seed_mean(by_seed: dict[str, dict[str, float]], seeds: list[str], student: str) -> float:
    return mean(by_seed[seed][student] for seed in seeds)


def challengers(systems: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every AIO-KD variant with scores on seeds its reference also has, judged by
    :data:`DEFAULT_RULE`: ``against`` (the reference: ``aiokd``, or ``aiokd-capped`` where it
    has results, the default at the variants' budget), ``avg`` and ``smallest`` (the variant's
    mean BLEU over the students both have in those seeds, and its 2-2's), the reference's
    ``default_avg`` and ``default_smallest``, and ``replaces_default``."""
    found = []
    for name in ORDER:
        against = "aiokd-capped" if name != "aiokd-capped" and "aiokd-capped" in systems \
            else "aiokd"
        default, other = systems.get(against), systems.get(name)
        if not (default and other) or name in ("aiokd", against) or name in SEPARATE:
            continue
        mine, theirs = other["bleu_by_seed"], default["bleu_by_seed"]
        seeds = [seed for seed in mine if seed in theirs]
        students = [s for s in (theirs[seeds[0]] if seeds else [])
                    if all(s in mine[seed] and s in theirs[seed] for seed in seeds)]
        if SMALLEST not in students:
            continue
        avg, default_avg = (mean(_seed_mean(b, seeds, s) for s in students)
                            for b in (mine, theirs))
        smallest, default_smallest = (_seed_mean(b, seeds, SMALLEST) for b in (mine, theirs))
        found.append({"system": name, "against": against,
                      "seeds": [int(seed) for seed in seeds],
                      "students": students, "avg": round(avg, 2),
                      "default_avg": round(default_avg, 2), "smallest": round(smallest, 2),
                      "default_smallest": round(default_smallest, 2),
                      "replaces_default": avg >= default_avg and smallest > default_smallest})
    return found


def targets(systems: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The targets, each with ``value``, ``threshold`` and ``met`` (None if a system it
    needs has no results): those of the default AIO-KD (``aiokd``), and the same for each of
    :data:`OPTIONS` that has results (keys ``KEY/SYSTEM``)."""
    found = _system_targets(systems, "aiokd", "AIO-KD")
    for option in OPTIONS:
        if option in systems:
            found |= {f"{key}/{option}": entry for key, entry in
                      _system_targets(systems, option, f"`{option}`").items()}
    return found
