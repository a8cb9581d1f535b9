"""How much test BLEU the default length penalty leaves out: for every run and student, the beam
search's length penalty chosen on the validation set, and the test BLEU with it.

    python benchmarks/reproduce/length_penalty.py --data W/data \\
        --runs W/runs/scratch-2-2-seed2:2-2 W/runs/aiokd-seed2:2-2,6-6 \\
        --out benchmarks/results/lenpen-narrow

A finished hypothesis of ``n`` tokens scores ``log p / n^lenpen`` (``aiokd evaluate --lenpen``);
the comparison scores every system at ``lenpen = 1``.  For each ``RUN:STUDENTS``, at every
penalty of ``--grid``: the validation BLEU and length ratio (beam 5); the penalty with the best
validation BLEU (the lower one on a tie); then the test BLEU and length ratio at 1 and at the
chosen penalty.  ``PREFIX.json`` keeps every figure and the command that measured each run,
``PREFIX.md`` is the table; ``--keep PREFIX.json`` keeps the earlier runs not given again (their
directories may be gone).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from aiokd.evaluation.evaluate import EvalSet, evaluate, read_test_set
from aiokd.inference.api import set_threads
from aiokd.io import atomic_write_bytes, atomic_write_json

GRID = (1.0, 1.25, 1.5, 1.75, 2.0)
DEFAULT = 1.0
BEAM = 5
HEADER = ("| run | student | valid BLEU at 1 | best valid BLEU (penalty) | test BLEU at 1 (ratio) "
          "| test BLEU at the chosen penalty (ratio) | test gain |\n|---|--:|--:|--:|--:|--:|--:|")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="prepared data directory (valid and test)")
    p.add_argument("--runs", nargs="+", required=True, metavar="RUN:STUDENTS",
                   help="a model or run directory and the students to score, e.g. W/runs/x:2-2,6-6")
    p.add_argument("--grid", default=",".join(f"{g:g}" for g in GRID),
                   help="length penalties to try on the validation set (default: %(default)s)")
    p.add_argument("--out", required=True, help="PREFIX of PREFIX.json and PREFIX.md")
    p.add_argument("--keep", help="an earlier PREFIX.json whose other runs to keep")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    try:
        args.grid = sorted({float(value) for value in args.grid.split(",")})
    except ValueError:
        p.error(f"--grid {args.grid}: expected numbers, e.g. 1,1.5,2")
    if DEFAULT not in args.grid:
        p.error(f"--grid must contain the default penalty {DEFAULT:g}")
    return args


def parse_run(text: str) -> tuple[Path, list[str]]:
    """``DIR:2-2,6-6`` -> ``(DIR, ["2-2", "6-6"])``."""
    path, sep, students = text.rpartition(":")
    if not sep or not students:
        raise SystemExit(f"length_penalty.py: --runs {text}: expected RUN:STUDENTS, e.g. "
                         "W/runs/aiokd:2-2,6-6")
    return Path(path), students.split(",")


def scores(run: Path, test: EvalSet, students: list[str], lenpen: float) -> dict[str, Any]:
    """Per student: BLEU and length ratio of ``run`` on ``test`` with penalty ``lenpen``;
    ``signature``: sacreBLEU's."""
    found = evaluate(run, test, students, beam=BEAM, latency=None, progress=False,
                     lenpen=lenpen).results
    return {"signature": found["signatures"]["bleu"], "dtype": found.get("dtype"),
            "students": {e["student"]: {"bleu": e["bleu"], "length_ratio": e["length_ratio"]}
                         for e in found["students"]}}


def chosen_penalty(valid: dict[float, dict[str, float]]) -> float:
    """The penalty with the best validation BLEU; the lowest of those tied."""
    best = max(entry["bleu"] for entry in valid.values())
    return min(lenpen for lenpen, entry in valid.items() if entry["bleu"] == best)


def measure_run(run: Path, students: list[str], grid: list[float], valid: EvalSet,
                test: EvalSet) -> dict[str, Any]:
    """Every figure of one run (see the module's docstring)."""
    by_penalty = {lenpen: scores(run, valid, students, lenpen) for lenpen in grid}
    record: dict[str, Any] = {"run": str(run), "signature": by_penalty[DEFAULT]["signature"],
                              "dtype": by_penalty[DEFAULT]["dtype"], "students": {}}
    on_valid = {student: {lenpen: by_penalty[lenpen]["students"][student] for lenpen in grid}
                for student in students}
    chosen = {student: chosen_penalty(on_valid[student]) for student in students}
    tested = {DEFAULT: scores(run, test, students, DEFAULT)}
    for lenpen in sorted(set(chosen.values()) - {DEFAULT}):  # each student at its own penalty
        tested[lenpen] = scores(run, test, [s for s in students if chosen[s] == lenpen], lenpen)
    for student in students:
        record["students"][student] = {
            "valid": {f"{lenpen:g}": on_valid[student][lenpen] for lenpen in grid},
            "chosen": chosen[student],
            "test_default": tested[DEFAULT]["students"][student],
            "test_chosen": tested[chosen[student]]["students"][student],
        }
    return record


def markdown(results: dict[str, Any]) -> str:
    rows = []
    for name, record in results["runs"].items():
        for student, entry in record["students"].items():
            default, chosen = entry["test_default"], entry["test_chosen"]
            penalty = entry["chosen"]
            at_default, at_chosen = (entry["valid"][f"{lenpen:g}"]["bleu"]
                                     for lenpen in (DEFAULT, penalty))
            rows.append(
                f"| `{name}` | {student} | {at_default:.2f} | {at_chosen:.2f} ({penalty:g}) | "
                f"{default['bleu']:.2f} ({default['length_ratio']:.3f}) | "
                f"{chosen['bleu']:.2f} ({chosen['length_ratio']:.3f}) | "
                f"{chosen['bleu'] - default['bleu']:+.2f} |")
    grid = ", ".join(f"{g:g}" for g in results["grid"])
    commands = "\n".join(dict.fromkeys(record["command"] for record in results["runs"].values()))
    return f"""# The length penalty chosen on the validation set

Beam {BEAM}; penalties tried on the validation split: {grid}; the chosen one (best validation
BLEU) then scores the test split. Length ratio: translation length over reference length, in
BLEU's tokens. BLEU signature `{results['signature']}`.

{HEADER}
{chr(10).join(rows)}

Commands (each run's; `--keep` carries the runs measured before):
```bash
{commands}
```
"""


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    set_threads(args.threads)
    runs = [parse_run(text) for text in args.runs]
    valid, test = (read_test_set(args.data, split) for split in ("valid", "test"))
    kept = json.loads(Path(args.keep).read_text())["runs"] if args.keep else {}
    command = " ".join(["python benchmarks/reproduce/length_penalty.py",
                        *(argv if argv is not None else sys.argv[1:])])
    measured = {}
    for run, students in runs:
        print(f"length_penalty.py: {run.name} {','.join(students)}", file=sys.stderr)
        measured[run.name] = {**measure_run(run, students, args.grid, valid, test),
                              "command": command}
    results = {"grid": args.grid, "beam": BEAM,
               "signature": next(iter(measured.values()))["signature"],
               "runs": {**{k: v for k, v in kept.items() if k not in measured}, **measured}}
    prefix = Path(args.out)
    atomic_write_json(prefix.with_name(prefix.name + ".json"), results)
    atomic_write_bytes(prefix.with_name(prefix.name + ".md"), markdown(results).encode("utf-8"))
    print(markdown(results))


if __name__ == "__main__":
    main()
