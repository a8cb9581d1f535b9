"""Reproduce the paper's comparison on Multi30k German->English: one AIO-KD run against students
trained separately (from scratch, Word-KD, optionally Selective-KD), and AIO-KD's ablations.

    python benchmarks/reproduce/run.py --preset tiny --out benchmarks/work/multi30k-tiny \\
        --students 2-2,4-2,6-2,4-4,6-6

``--data DIR`` runs the same comparison on another corpus or language pair (a directory made by
``aiokd prepare``), ``--test-split``/``--test-src``/``--test-ref`` on another test set.

Every step is a subprocess of the ``aiokd`` command line (its output goes to ``W/logs/``; one
progress line per step here).  A step whose output exists is skipped and an interrupted
``aiokd train`` resumes, so running the same command again continues an interrupted benchmark;
drivers side by side in one work directory run a step they both need once (the second waits).
After each evaluation ``RESULTS_DIR/NAME-PRESET.{json,md,png}`` is rewritten, merged with the
runs already in that file (so ``--group`` invocations on different machines, or side by side on
one, add up), and each evaluated run's translations are copied to
``RESULTS_DIR/NAME-PRESET.translations/RUN/``, so that the results directory alone holds what
its paired tests are made from.  See ``README.md`` beside this file.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import itertools
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import figure
import machines
import merge
import report
import report_markdown
import significance
from continuation import continued_run, shared_share
from locks import locked, step_locked
from plan import (
    CANDIDATES,
    Preset,
    Run,
    Step,
    TestSet,
    Work,
    evaluated_all,
    load_preset,
    parse_seeds,
    selection,
    sort_students,
)
from status import status_lines
from timings import FLUSH_SECONDS, Timings, children_cpu_seconds, cpu_seconds
from training_log import observe, updates_by_stage

from aiokd.data.prepare import MULTI30K_DIR
from aiokd.io import atomic_directory, atomic_write_bytes, atomic_write_json

ROOT = Path(__file__).resolve().parents[2]
COST_RULE = (
    "on a CPU, CPU-minutes (user + system time) of each `aiokd train` subprocess, so that runs "
    "sharing the cores, or paused, cost what they computed; on a GPU, device-minutes = wall-clock "
    "minutes x 1 device; summed over resumed attempts; evaluation is not counted. Word-KD and "
    "Selective-KD add their teacher's (the from-scratch 6-6 of their seed) training, one teacher "
    "per seed (the mean where its students learned from two trainings of it); aiokd-seqkd adds "
    "the teacher's training and `aiokd distill-data`. cost_minutes_15 (separate students): "
    "the trained students' measured minutes, plus for each of the 15 students not trained the "
    "least-squares line of measured minutes against l_e + l_d (one measured student: its minutes "
    "scaled by l_e + l_d), plus the teacher for the KD systems. With several seeds, a system's "
    "cost (and its cost for 15) is the mean over its seeds of each seed's cost; the KD systems of "
    "each seed add the teacher of that seed."
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny", help="a preset of presets.yaml: narrow, small or "
                   "tiny (CPU), iwslt (GPU), quick (tests)")
    p.add_argument("--quick", action="store_true", help="the quick preset: a smoke test")
    p.add_argument("--out", required=True, help="work directory (runs, data, logs)")
    p.add_argument("--students", help="students to compare, e.g. 2-2,4-2,6-2,4-4,6-6 "
                   "(default: the preset's; 6-6 is always included)")
    p.add_argument("--systems", help="comma-separated systems (default: all but selective-kd): "
                   + ", ".join(report.ORDER))
    p.add_argument("--group", action="append", default=[],
                   help="run only this group of the preset, or one system (repeatable)")
    p.add_argument("--max-updates", type=int, help="U, updates per stage (default: preset's)")
    p.add_argument("--seeds", default="1", help="comma-separated train.seed values, e.g. 1,2 "
                   "(default: 1); seed S != 1 trains runs NAME-seedS; the KD systems of each seed "
                   "learn from (or start from) the from-scratch 6-6 of that seed")
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS of every step "
                   "(default: the preset's)")
    p.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"),
                   help="where NAME-PRESET.{json,md,png} go (default: benchmarks/results)")
    p.add_argument("--data", help="a data directory made by `aiokd prepare` (any language "
                   "pair) instead of Multi30k")
    p.add_argument("--test-split", default="test",
                   help="the split of the data directory to evaluate on (default: test)")
    p.add_argument("--test-src", help="evaluate on this raw source file instead (with "
                   "--test-ref)")
    p.add_argument("--test-ref", help="the reference file of --test-src")
    p.add_argument("--report-only", action="store_true",
                   help="train and evaluate nothing: merge the chosen runs that are finished "
                   "and evaluated into the results files (e.g. while other drivers still train)")
    p.add_argument("--status", action="store_true",
                   help="run nothing: say which steps of the chosen runs are done, running (and "
                   "how far) or to come")
    p.add_argument("--name", help="the benchmark's name, the stem of its results files "
                   "(default: multi30k, or the --data directory's name); a test set other than "
                   "the test split is always added to it, so that its scores never replace "
                   "those of the test split")
    return p.parse_args(argv)


def data_and_test(args: argparse.Namespace) -> tuple[Path | None, TestSet, str]:
    """The given data directory, the test set and the benchmark's name, checked."""
    data = Path(args.data) if args.data else None
    if data is not None and not (data / "manifest.json").is_file():
        raise SystemExit(f"run.py: --data {data}: not a data directory made by `aiokd "
                         "prepare` (no manifest.json)")
    if bool(args.test_src) != bool(args.test_ref):
        raise SystemExit("run.py: --test-src and --test-ref go together")
    files = None
    if args.test_src:
        files = (Path(args.test_src).resolve(), Path(args.test_ref).resolve())
        for option, path in zip(("--test-src", "--test-ref"), files, strict=True):
            if not path.is_file():
                raise SystemExit(f"run.py: {option} {path}: no such file")
    test = TestSet(args.test_split, files)
    name = args.name or (data.resolve().name if data else "multi30k")
    if test.key != "test":
        name += f"-{test.key}"
    return data, test, name


def write_subset(preset: Preset, work: Work) -> None:
    """The first lines of each shipped Multi30k file, as plain files for ``aiokd prepare``."""
    work.subset_dir.mkdir(parents=True, exist_ok=True)
    files = {"train": "train", "valid": "val", "test": "test_2016_flickr"}
    for split, stem in files.items():
        for lang in ("de", "en"):
            with gzip.open(MULTI30K_DIR / f"{stem}.{lang}.gz", "rt", encoding="utf-8") as f:
                lines = list(itertools.islice(f, preset.subset[split]))
            atomic_write_bytes(work.subset_dir / f"{stem}.{lang}", "".join(lines).encode())


def command_line(step: Step) -> str:
    return step.title if step.action else "aiokd " + shlex.join(step.args)


def code_version() -> str:
    """The git commit of the code that runs, ``+modified`` if ``aiokd/`` differs from it (or
    ``unknown`` outside a git checkout)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        commit, changes = git("rev-parse", "HEAD"), git("status", "--porcelain", "--", "aiokd")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+modified" if changes else "")


CODE_LINE = "# code: "


def code_versions(log: Path) -> list[str]:
    """The code versions that a step's attempts ran (``CODE_LINE`` lines of its log)."""
    lines = log.read_text(errors="replace").splitlines() if log.is_file() else []
    return sorted({line[len(CODE_LINE):] for line in lines if line.startswith(CODE_LINE)})


def execute(step: Step, log: Path, timings: Timings, threads: int | None) -> int:
    """Run one step to its end, its output appended to ``log``; its time is recorded as it
    runs, and also when it fails or is interrupted."""
    log.parent.mkdir(parents=True, exist_ok=True)
    if step.action:
        started = time.perf_counter()
        with open(log, "a", encoding="utf-8") as out:
            out.write(f"$ {command_line(step)}\n")
        step.action()
        timings.add(step.key, time.perf_counter() - started)
        return 0
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    counted, cpu_counted, children_before = time.perf_counter(), 0.0, children_cpu_seconds()
    with open(log, "a", encoding="utf-8") as out:
        out.write(f"$ {command_line(step)}\n{CODE_LINE}{code_version()}\n")
        out.flush()
        process = subprocess.Popen([sys.executable, "-m", "aiokd", *step.args], stdout=out,
                                   stderr=subprocess.STDOUT, env=env)
        try:
            while True:
                try:
                    return process.wait(timeout=FLUSH_SECONDS)
                except subprocess.TimeoutExpired:
                    now, cpu = time.perf_counter(), max(cpu_seconds(process.pid), cpu_counted)
                    timings.add(step.key, now - counted, cpu - cpu_counted)
                    counted, cpu_counted = now, cpu
        finally:
            if process.poll() is None:
                process.terminate()
                process.wait()
            cpu = children_cpu_seconds() - children_before
            timings.add(step.key, time.perf_counter() - counted, max(cpu - cpu_counted, 0.0))


def updates_done(run_dir: Path) -> int:
    """Updates trained, summed over stages, from the run's ``log.jsonl``."""
    return sum(updates_by_stage(run_dir).values())


def on_gpu(results: dict[str, Any]) -> bool:
    """Whether an ``aiokd evaluate`` results file was written on a GPU."""
    return results["device"].startswith("cuda")


def device_name(results: dict[str, Any]) -> str:
    if on_gpu(results):
        return f"1 GPU: {results['hardware']}"
    hardware = results["hardware"]  # names its cores since probe.cpu_description
    cores = "" if hardware.endswith(" cores") else f", {os.cpu_count()} cores"
    return f"CPU: {hardware}{cores}"


def test_set_name(test: dict[str, Any], work: Work) -> str:
    """The test set of an evaluation, in words (``test``: its ``test_set`` record)."""
    if "ref" in test:
        if work.test.files is None:
            return f"the first {test['sentences']} lines of Multi30k test_2016_flickr"
        return f"{Path(test['ref']).name} ({test['sentences']} sentences)"
    if work.given_data is None:
        split = "test_2016_flickr" if test["split"] == "test" else test["split"]
        return f"Multi30k {split} ({test['sentences']} sentences)"
    return f"{Path(test['data']).name}/{test['split']} ({test['sentences']} sentences)"


def test_sets(records: list[dict[str, Any]], results_dir: Path) -> str:
    """The test sets ``records`` were scored on, in words, each once.  Records whose kept
    references (their translations' ``reference.txt``) are identical were scored on one test
    set, and so were the records named as one of them (where every record of that name with
    kept references has these): older records name the split of the data directory they were
    evaluated through (``data/test``) where newer ones name the corpus, so each such test set
    takes the name of its most recently trained record."""
    newest: dict[str, dict[str, Any]] = {}  # references' digest -> its newest record
    digests: dict[str, set[str]] = {}  # name -> the digests of its records' references
    for record in records:
        references = results_dir / record.get("translations", "") / "reference.txt"
        if record.get("translations") and references.is_file():
            digest = hashlib.sha256(references.read_bytes()).hexdigest()
            if (record.get("started") or "") >= (newest.get(digest, {}).get("started") or ""):
                newest[digest] = record
            digests.setdefault(record["test_set"], set()).add(digest)

    def named(name: str) -> str:
        found = digests.get(name, set())
        return newest[next(iter(found))]["test_set"] if len(found) == 1 else name

    return "; ".join(sorted({named(record["test_set"]) for record in records}))


def step_log(work: Work, key: str) -> Path:
    return work.root / "logs" / f"{key.replace(':', '-')}.log"


def run_record(run: Run, steps: list[Step], timings: Timings,
               work: Work) -> dict[str, Any] | None:
    """The record of a finished and evaluated run (see :mod:`report`), or None."""
    path = run.results
    if not evaluated_all(path, run.students):
        return None
    results = json.loads(path.read_text())
    gpu = on_gpu(results)
    entries = {entry["student"]: entry for entry in results["students"]}
    twin = continued_run(run.path)
    mine = [s for s in steps if s.run == run.name or (twin and s.key == f"train:{twin}")]
    train, evaluation = own = (f"train:{run.name}", work.test.step_key(run.name))
    taken_over = shared_share(run.path, work.run_dir(twin)) if twin else 1.0
    shares = {train: 1.0} | {s.key: taken_over if s.key == f"train:{twin}" else 1.0
                             for s in mine if s.key not in own}
    record = {
        "run": run.name, "system": run.system, "seed": run.seed,
        "bleu": {s: entries[s]["bleu"] for s in run.students},
        "chrf": {s: entries[s]["chrf"] for s in run.students},
        "compared": run.compared, "teacher_run": run.teacher_run,
        "train_minutes": timings.cost_minutes(train, gpu),
        "train_wall_minutes": timings.minutes(train),
        "extra_minutes": round(sum(timings.cost_minutes(key, gpu) * share
                                   for key, share in shares.items() if key != train), 2),
        "evaluate_minutes": timings.minutes(evaluation),
        "updates": updates_done(run.path), "device": device_name(results),
        "signatures": results["signatures"],
        "test_set": test_set_name(results["test_set"], work),
        "commands": [command_line(s) for s in mine],
        "code": sorted({v for s in mine if s.key.startswith("train:")
                        for v in code_versions(step_log(work, s.key))}),
    }
    record["started"] = merge.started(run.path)
    if twin:
        record["continues"] = twin
        record["twin_share"] = round(taken_over, 4)
    record["machines"] = {}
    for key, share in shares.items():
        for machine, minutes in timings.machine_minutes(key, gpu).items():
            record["machines"][machine] = round(
                record["machines"].get(machine, 0.0) + minutes * share, 2)
    if results.get("translations"):
        record["translations"] = str(path.parent / results["translations"])
    ratios = {s: entries[s].get("length_ratio") for s in run.students}
    if None not in ratios.values():
        record["length_ratio"] = ratios
    if run.system in report.SEPARATE:
        record["student"] = run.students[0]
    record["training"] = observe(run.path)
    return record


def keep_translations(record: dict[str, Any], results_dir: Path, stem: str) -> dict[str, Any]:
    """The record with its translations copied to ``results_dir/STEM.translations/RUN/`` (the
    directory replaced as a whole, unless already copied since the evaluation wrote them) and
    named relative to ``results_dir``; without ``translations`` where they are neither in the
    run directory nor kept."""
    if not record.get("translations"):
        return record
    source, kept = Path(record["translations"]), Path(f"{stem}.translations", record["run"])
    target = results_dir / kept
    if source.is_dir() and (not any(target.glob("*.txt"))
                            or target.stat().st_mtime < source.stat().st_mtime):
        with atomic_directory(target, overwrite=True) as building:
            for path in sorted(source.glob("*.txt")):
                shutil.copyfile(path, building / path.name)
    if not any(target.glob("*.txt")):
        return {key: value for key, value in record.items() if key != "translations"}
    return {**record, "translations": str(kept)}


def languages(work: Work) -> tuple[str, str]:
    """Source and target language of the data (Multi30k's before it is prepared)."""
    manifest = work.data / "manifest.json"
    if not manifest.is_file():
        return "de", "en"
    found = json.loads(manifest.read_text())
    return found["src_lang"], found["tgt_lang"]


def build_results(preset: Preset, runs: dict[str, dict[str, Any]], drivers: list[str],
                  name: str, work: Work, results_dir: Path,
                  tested: list[dict[str, Any]]) -> dict[str, Any]:
    """The results file: systems, teacher, premise, targets and how they were obtained;
    ``tested``: the paired tests recorded before, kept where the translations are gone."""
    current = report.current(runs)
    students = [s for s in CANDIDATES
                if any(s in r.get("compared", r["bleu"]) for r in current.values())]
    systems = report.summarize(runs, students, CANDIDATES)
    teacher = current.get(report.TEACHER_RUN)
    signatures = sorted({json.dumps(r["signatures"], sort_keys=True) for r in current.values()})
    src, tgt = languages(work)
    return {
        "benchmark": f"{name}-{src}-{tgt}", "preset": preset.name,
        "title": f"{'Multi30k' if name == 'multi30k' else name} "
                 f"{src.capitalize()}->{tgt.capitalize()}",
        "device": "; ".join(sorted({r["device"] for r in current.values()})),
        "test_set": test_sets(list(current.values()), results_dir),
        "sacrebleu_signature": json.loads(signatures[-1]) if signatures else {},
        "seeds": sorted({r.get("seed", 1) for r in current.values()}),
        "threads": preset.threads,
        "budget": preset.budget(),
        "cost_rule": COST_RULE, "students": students, "systems": systems,
        "teacher": teacher and {"bleu": teacher["bleu"][report.TEACHER],
                                "chrf": teacher["chrf"][report.TEACHER],
                                "updates": teacher["updates"],
                                "cost_minutes": teacher["train_minutes"]},
        "premise": report.premise(systems),
        "targets": report.targets(systems),
        "cost_by_machine": machines.cost_on_machines(runs, CANDIDATES),
        "challengers": report.challengers(systems) if work.test.key == "valid" else [],
        "significance": significance.tests(runs, tgt, base=results_dir, recorded=tested),
        "driver_commands": drivers,
        "command": drivers[-1] if drivers else None, "runs": dict(sorted(runs.items())),
    }


def write_results(preset: Preset, work: Work, steps: list[Step], timings: Timings,
                  results_dir: Path, driver: str | None, name: str) -> dict[str, Any]:
    """Merge this invocation's finished runs into ``RESULTS_DIR/NAME-PRESET.json``; write it,
    its report and its figure.  ``driver``: the command line to add to the file's driver
    commands (None: a ``--report-only`` invocation, which adds none)."""
    with locked(work.root):
        timings.reload()
        return _write_results(preset, work, steps, timings, results_dir, driver, name)


def _write_results(preset: Preset, work: Work, steps: list[Step], timings: Timings,
                   results_dir: Path, driver: str | None, name: str) -> dict[str, Any]:
    json_path, md_path, png_path = (results_dir / f"{name}-{preset.name}.{kind}"
                                    for kind in ("json", "md", "png"))
    old = json.loads(json_path.read_text()) if json_path.is_file() else {}
    runs = dict(old.get("runs", {}))
    records = [run_record(run, steps, timings, work) for run in work.runs.values()]
    merge.merge(runs, [r for r in records if r], results_dir)
    for run_name in [r["run"] for r in records if r]:
        runs[run_name] = keep_translations(runs[run_name], results_dir, json_path.stem)
    drivers = [d for d in old.get("driver_commands", []) if d != driver] + (
        [driver] if driver else [])
    results = build_results(preset, runs, drivers, name, work, results_dir,
                            old.get("significance", []))
    results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(json_path, results)
    text = report_markdown.markdown(results, machines.section(results))
    atomic_write_bytes(md_path, text.encode())
    if results["systems"]:
        atomic_write_bytes(png_path, figure.bleu_by_student(results, CANDIDATES))
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preset = load_preset("quick" if args.quick else args.preset)
    if args.max_updates:
        preset.updates_per_stage = args.max_updates
    if args.threads:
        preset.threads = args.threads
    students = args.students.split(",") if args.students else preset.students
    chosen = selection(preset, args.systems and args.systems.split(","), args.group,
                       sort_students(students))
    seeds = parse_seeds(args.seeds)
    data, test, name = data_and_test(args)
    work = Work(Path(args.out), preset, data, test)
    steps = work.steps(chosen, seeds)
    if args.status:
        print("\n".join(status_lines(steps, work, Timings(work.root / "timings.json").minutes)))
        return 0
    work.root.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(work.root / ".gitignore", b"*\n")
    timings = Timings(work.root / "timings.json")
    driver = "python benchmarks/reproduce/run.py " + shlex.join(sys.argv[1:] if argv is None
                                                                 else argv)
    results_dir = Path(args.results_dir)
    if args.report_only:
        results = write_results(preset, work, steps, timings, results_dir, None, name)
        print(report_markdown.summary(results))
        return 0
    if preset.subset is not None and data is None:
        write_subset(preset, work)
    for number, step in enumerate(steps, 1):
        where = f"[{number:>2}/{len(steps)}] {step.title}"
        with step_locked(work.root, step.key, where):
            if step.done():
                print(f"{where}: done already", flush=True)
                continue
            print(f"{where} ...", flush=True)
            log = step_log(work, step.key)
            started = time.perf_counter()
            status = execute(step, log, timings, preset.threads)
        if status:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
            print(f"{where}: failed (exit {status}); last lines of {log}:\n{tail}", flush=True)
            write_results(preset, work, steps, timings, results_dir, driver, name)
            return status
        seconds = time.perf_counter() - started
        took = f"{seconds:.0f} s" if seconds < 60 else f"{seconds / 60:.1f} min"
        print(f"{where}: {took}", flush=True)
        if step.run and step.key == work.test.step_key(step.run):
            write_results(preset, work, steps, timings, results_dir, driver, name)
    results = write_results(preset, work, steps, timings, results_dir, driver, name)
    print("\n" + report_markdown.summary(results))
    print(f"\nwrote {results_dir / f'{name}-{preset.name}'}.json, .md and .png")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the step as Ctrl-C does
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; run the same command again to continue", file=sys.stderr)
        sys.exit(130)
