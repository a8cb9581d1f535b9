"""The Markdown report of the benchmark's results (:mod:`report`), and its terminal summary."""

from __future__ import annotations

from typing import Any

from report import DEFAULT_RULE, FROM_TEACHER, LABELS, SMALLEST, TEACHER


def _cell(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["--:"] * (len(header)
                                                                            - 1)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _score(entry: dict[str, Any], metric: str, student: str) -> str:
    """A student's score; BLEU of a student with more than one seed: mean ± spread."""
    value = entry[metric].get(student)
    seeds = sum(student in scores for scores in entry.get(f"{metric}_by_seed", {}).values())
    if value is None or seeds < 2:
        return _cell(value)
    return f"{value:.2f} ± {entry['spread'][student]:.2f}"


def _average_cell(entry: dict[str, Any], metric: str) -> str:
    spread = entry.get(f"avg_{metric}_spread")
    value = _cell(entry[f"avg_{metric}"])
    return value if spread is None else f"{value} ± {spread:.2f}"


def _score_table(results: dict[str, Any], metric: str) -> str:
    students = results["students"]
    unit = "GPU-min" if results["device"].startswith("1 GPU") else "CPU-min"
    header = ["system", "seeds", *students, "avg", "updates", f"cost ({unit})",
              "cost for 15 (+teacher)"]
    rows = []
    for name, entry in results["systems"].items():
        seeds = ", ".join(map(str, entry.get("seeds", [1])))
        rows.append([f"{LABELS[name]} (`{name}`)", seeds,
                     *(_score(entry, metric, s) for s in students), _average_cell(entry, metric),
                     str(entry["updates"]), _cell(entry["cost_minutes"], 1),
                     _cell(entry.get("cost_minutes_15"), 1)])
    teacher = results.get("teacher")
    if teacher:
        rows.append(["teacher: from-scratch 6-6 (`scratch-6-6`)", "1",
                     *(_cell(teacher[metric]) if s == TEACHER else "" for s in students), "",
                     str(teacher["updates"]), _cell(teacher["cost_minutes"], 1), ""])
    return table(header, rows)


def _all_students_table(results: dict[str, Any]) -> str:
    """BLEU of every student of the systems whose evaluation scored more than the compared
    ones (mean over seeds), their average, and that average seed by seed; empty if none did."""
    scored = {name: entry for name, entry in results["systems"].items()
              if "bleu_all_students" in entry}
    if not scored:
        return ""
    students = list(next(iter(scored.values()))["bleu_all_students"])
    rows = []
    for name, entry in scored.items():
        bleu = entry["bleu_all_students"]
        by_seed = entry.get("avg_bleu_all_students_by_seed", {})
        rows.append([f"`{name}`", *(_cell(bleu.get(s)) for s in students),
                     _cell(sum(bleu.values()) / len(bleu)),
                     " / ".join(f"{seed}: {_cell(avg)}" for seed, avg in by_seed.items())])
    return ("\n\n## BLEU of every student\n\n"
            + table(["system", *students, "avg", "avg by seed"], rows))


def _training_table(results: dict[str, Any]) -> str:
    """What the AIO-KD runs' training logs say (empty if no record has it)."""
    rows = []
    for name, entry in results["systems"].items():
        found = entry.get("training")
        if not found:
            continue
        fractions = " / ".join(f"{100 * f:.1f}%" for _, f in
                               sorted(found["detached_fraction"].items())) or "-"
        ce = found["valid_ce"]
        low, high = min(ce, key=ce.get), max(ce, key=ce.get)
        stopped = sorted({f"stage {stage}: {why}" for stages in found["stopped"].values()
                          for stage, why in stages.items()})
        rows.append([f"`{name}`", ", ".join(map(str, entry.get("seeds", [1]))), fractions,
                     _cell(found["valid_ce_mean"], 3), _cell(found["valid_ce_spread"], 3),
                     f"{low} {ce[low]:.3f} / {high} {ce[high]:.3f}", "; ".join(stopped)])
    if not rows:
        return ""
    header = ["system", "seeds", "KD terms detached (stage 1 / 2)", "valid CE, mean",
              "spread across students", "lowest / highest student", "stopped by"]
    return ("\n\n## Training\n\nFrom each run's `log.jsonl` (mean over seeds): the share of "
            "KD terms whose teacher side DGD detached, over the logged updates of each stage (K "
            "per update); at the best validation of the last stage (the evaluated checkpoint), "
            "the validation CE (nats/token) averaged over the students, the spread across "
            "students (highest - lowest CE), the lowest and highest student; why each stage "
            "stopped.\n\n" + table(header, rows))


def _validation_table(results: dict[str, Any]) -> str:
    """The validation CE of each compared student at its evaluated checkpoint, every system that
    has it (empty if none)."""
    students, rows = results["students"], []
    for name, entry in results["systems"].items():
        ce = entry.get("valid_ce") or entry.get("training", {}).get("valid_ce") or {}
        if any(s in ce for s in students):
            rows.append([f"`{name}`", *(_cell(ce.get(s), 3) for s in students)])
    if not rows:
        return ""
    return ("\n\n## Validation CE\n\nAt the checkpoint each run was evaluated with (its best by "
            "validation CE), in nats per token, the mean over the seeds whose records have it: "
            "the number choices are made on.\n\n" + table(["system", *students], rows))


def _p_values(tests: list[dict[str, Any]], system: str, student: str) -> str:
    """`` (p 0.07)``: the paired tests of ``system``'s ``student`` against Word-KD's (one per
    pair of seeds), or nothing if none was made."""
    found = [f"{t['p_value']:.3f}" for t in tests if t["system"] == system
             and t["baseline"] == "word-kd" and t["student"] == student]
    return f" (p {', '.join(found)})" if found else ""


_MET = {True: "**yes**", False: "no", None: "not yet"}


def _premise_row(found: dict[str, Any] | None) -> list[list[str]]:
    """The premise as a row of the targets table: 6-6's BLEU and CE against 2-2's."""
    if not found:
        return []
    bleu, valid = found["bleu"], found["valid_ce_by_seed"]
    value = f"BLEU {_cell(bleu[TEACHER])}" + "".join(
        f"; seed {seed}: CE {ce[TEACHER]:.3f}" for seed, ce in valid.items())
    needed = f"BLEU > {_cell(bleu[SMALLEST])}" + "".join(
        f"; CE < {ce[SMALLEST]:.3f}" for ce in valid.values())
    return [[found["text"], value, needed, _MET[found["met"]]]]


def _targets_table(found: dict[str, dict[str, Any]], tests: list[dict[str, Any]],
                   premise: dict[str, Any] | None = None) -> str:
    """The premise and the targets; a student's margin over Word-KD with the p-values of its
    paired tests."""
    rows = _premise_row(premise)
    for entry in found.values():
        met = _MET[entry["met"]]
        if "below_word_kd" in entry:
            margins = ", ".join(f"{s} {m:+.2f}{_p_values(tests, entry['system'], s)}"
                                for s, m in entry["margins"].items())
            rows.append([entry["text"], f"BLEU minus Word-KD's: {margins}", "", met])
        else:
            rows.append([entry["text"], _cell(entry["value"]), _cell(entry["threshold"]), met])
    return table(["target", "value", "needed", "met"], rows)


def _significance_section(results: dict[str, Any]) -> str:
    """The paired tests of :mod:`significance` (empty if none was made)."""
    found = results.get("significance")
    if not found:
        return ""
    rows = [[t["student"], f"`{t['run']}`", f"`{t['baseline_run']}`", _cell(t["bleu"]),
             _cell(t["baseline_bleu"]), f"{t['delta']:+.2f}", f"{t['p_value']:.3f}"]
            for t in found]
    header = ["student", "AIO-KD run", "against", "BLEU", "its BLEU", "difference", "p"]
    return ("\n\n## Paired significance\n\nEach AIO-KD student against the same student trained "
            "on its own, on the same test sentences: sacreBLEU's paired bootstrap resampling "
            f"(`{found[0]['signature']}`). p is the estimated chance of a difference at least "
            "this large between two equally good systems on this test set; it does not measure "
            "seed-to-seed variation.\n\n" + table(header, rows))


def _challengers_section(results: dict[str, Any]) -> str:
    """The rule that chooses the default, applied (validation results only)."""
    found = results.get("challengers") or []
    if not found:
        return ""
    rows = [[f"`{c['system']}`", f"`{c.get('against', 'aiokd')}`",
             ", ".join(map(str, c["seeds"])), _cell(c["avg"]), _cell(c["default_avg"]),
             _cell(c["smallest"]), _cell(c["default_smallest"]),
             "**yes**" if c["replaces_default"] else "no"] for c in found]
    header = ["system", "against", "seeds", "avg BLEU", "its avg BLEU", "2-2 BLEU", "its 2-2",
              "replaces the default"]
    return "\n\n## Choosing the default\n\n" + DEFAULT_RULE + "\n\n" + table(header, rows)


def summary(results: dict[str, Any]) -> str:
    """The BLEU table and the targets, for the terminal."""
    return _score_table(results, "bleu") + "\n\n" + _targets_table(
        results["targets"], results.get("significance", []), results.get("premise"))


def _code(record: dict[str, Any]) -> str:
    """`` (code COMMIT)`` for a record that says which code trained it, and whether a later
    training of its run superseded it (:mod:`merge`)."""
    versions = record.get("code") or []
    code = f" (code {', '.join(versions)})" if versions else ""
    if record.get("superseded_by"):
        code += f"; trained again as {record['superseded_by']}, in no table"
    return code


def _teachers_sentence(runs: dict[str, dict[str, Any]]) -> str:
    """Which teacher the systems of each seed learn from or start from."""
    sentence = ("The KD systems of each seed learn from the from-scratch 6-6 of that seed, whose "
                "training is part of their cost.")
    if any(r.get("teacher_run") and r["system"] not in FROM_TEACHER for r in runs.values()):
        sentence += (" An AIO-KD system with a teacher stage starts from that 6-6, which is its"
                     " teacher stage.")
    return sentence


def markdown(results: dict[str, Any], machines: str = "") -> str:
    """The report: BLEU and chrF tables, targets (then ``machines``, the section on the
    machines the runs trained on), and how the numbers were obtained."""
    signatures = "\n".join(f"  - {metric}: `{signature}`"
                           for metric, signature in results["sacrebleu_signature"].items())
    commands = "\n".join(f"# {name}{_code(record)}\n" + "\n".join(record["commands"])
                         for name, record in results["runs"].items())
    drivers = "\n".join(results["driver_commands"])
    teachers = _teachers_sentence(results["runs"])
    targets = (_targets_table(results["targets"], results.get("significance", []),
                              results.get("premise"))
               + _significance_section(results) + _challengers_section(results) + machines)
    return f"""# AIO-KD vs separately trained students on {results['title']} ({results['preset']})

- Test set: {results['test_set']}; beam 5; sacreBLEU BLEU and chrF.
- Device: {results['device']}; threads: {results['threads'] or 'default'}.
- Preset `{results['preset']}`; seeds {', '.join(map(str, results['seeds']))}.
- A system's score is the mean over its seeds, shown ± the spread (max - min) where it has more
  than one seed; its updates and cost are, per student, the mean over that student's seeds,
  summed over its students. {teachers}
- Students in the paper's order; `avg` is the mean over the students shown.

## BLEU

{_score_table(results, 'bleu')}

## chrF

{_score_table(results, 'chrf')}{_all_students_table(results)}{_validation_table(results)}\
{_training_table(results)}

## Targets

{targets}

## How

- Budget: {results['budget']}
- Cost: {results['cost_rule']}
- sacreBLEU signatures:
{signatures}

Driver:
```bash
{drivers}
```

Every `aiokd` command run:
```bash
{commands}
```
"""
