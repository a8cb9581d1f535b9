"""The Multi30k benchmark driver (``benchmarks/reproduce``): its plan, seeds, targets and costs,
what it reads from training logs, the learning curves, and an end-to-end ``--quick`` run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from aiokd.config import Config, load_config
from aiokd.data.prepare import prepare
from aiokd.model.checkpoint import read_checkpoint
from aiokd.train.loop import stage_config
from tests.conftest import TINY_VOCAB, make_corpus, run_aiokd, subprocess_env, train_argv

DRIVER = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce"
sys.path.insert(0, str(DRIVER))

import curves  # noqa: E402
import figure  # noqa: E402
import length_penalty  # noqa: E402
import locks  # noqa: E402
import machines  # noqa: E402
import merge  # noqa: E402
import plan  # noqa: E402
import report  # noqa: E402
import report_markdown  # noqa: E402
import run as driver  # noqa: E402
import significance  # noqa: E402
import status  # noqa: E402
import timings as timings_module  # noqa: E402
import training_log  # noqa: E402

SYSTEMS = ("scratch", "word-kd", "aiokd", "aiokd-separate", "aiokd-sandwich",
           "aiokd-sandwich-kd1", "aiokd-no-dgd", "aiokd-no-ml", "aiokd-one-stage", "aiokd-seqkd")
"""The quick driver's systems: not ``aiokd-paper``, whose settings are the quick preset's own."""


def tiny_steps(tmp_path, systems=None, groups=(), preset="tiny", seeds=(1,)):
    p = plan.load_preset(preset)
    chosen = plan.selection(p, systems, list(groups), plan.sort_students(p.students))
    return p, plan.Work(tmp_path, p).steps(chosen, list(seeds))


def config_of(argv: list[str]) -> Config:
    """The config that ``aiokd ARGV`` (a train command) trains with."""
    return status.train_config(argv)


def test_the_default_systems_leave_out_a_row_equal_to_the_default():
    narrow, tiny = plan.default_systems(plan.load_preset("narrow")), plan.default_systems(
        plan.load_preset("tiny"))
    assert "aiokd-uniform" in narrow and "aiokd-sandwich" not in narrow  # narrow sandwiches
    assert "aiokd-sandwich" in tiny and "aiokd-uniform" not in tiny
    assert {"aiokd", "aiokd-seqkd", "scratch"} <= set(narrow) & set(tiny)


def test_a_group_never_trains_the_default_run_twice():
    """A preset's groups name the option rows once for every preset; where the preset's default
    already has a row's options (``narrow`` sandwiches and starts from the teacher, ``small``
    has the paper's settings), that row is left out rather than trained again."""
    for name in ("narrow", "small", "tiny"):
        p = plan.load_preset(name)
        for group in p.groups:
            systems = [system for system, _ in plan.selection(p, None, [group], ["6-6"])]
            assert not [s for s in systems if plan.same_as_default(p, s)], (name, group)
    narrow = plan.load_preset("narrow")
    runs = [s for s, _ in plan.selection(narrow, None, ["aiokd-runs", "separate-runs"], ["6-6"])]
    assert "aiokd-sandwich" not in runs and "aiokd-init" not in runs
    assert {"aiokd", "aiokd-capped", "aiokd-no-dgd", "aiokd-seqkd", "scratch"} <= set(runs)
    small = plan.load_preset("small")
    assert "aiokd-paper" not in [s for s, _ in plan.selection(small, None, ["aiokd-runs"], ["6-6"])]
    assert plan.same_as_default(plan.load_preset("tiny"), "aiokd-capped")


def test_every_train_command_is_a_valid_aiokd_train(tmp_path):
    p, steps = tiny_steps(tmp_path, systems=list(report.ORDER))
    trains = {s.key: s.args for s in steps if s.key.startswith("train:")}
    assert len(trains) == 12 + 3 * 5  # 12 AIO-KD systems; 5 students x 3 separate systems
    for key, args in trains.items():
        cfg = config_of(args)
        u = p.updates_per_stage
        one_stage = key in ("train:aiokd-one-stage",) or cfg.distill.method != "aiokd"
        assert cfg.train.max_updates == (2 * u if one_stage else u), key
        assert cfg.train.patience == p.patience and cfg.train.validate_every == p.validate_every
        assert cfg.train.stages == ("1" if key == "train:aiokd-one-stage" else "both")
        assert cfg.train.seed == 1
    assert config_of(trains["train:aiokd-sandwich"]).distill.sandwich
    assert not config_of(trains["train:aiokd-uniform"]).distill.sandwich
    low_kd = config_of(trains["train:aiokd-sandwich-kd1"]).distill
    assert low_kd.sandwich and low_kd.alpha == 1.0
    assert not config_of(trains["train:aiokd-no-dgd"]).distill.detach
    init_from = trains["train:aiokd-init"]
    assert init_from[init_from.index("--init-from") + 1] == str(tmp_path / "runs" / "scratch-6-6")


def test_a_long_stage_2_is_capped_like_a_separate_student_after_a_stage_1_of_u(tmp_path):
    p, steps = tiny_steps(tmp_path, systems=["aiokd", "aiokd-capped", "aiokd-no-ml",
                                             "aiokd-one-stage", "scratch:2-2"], preset="narrow")
    u = p.updates_per_stage
    cfg = {s.key: config_of(s.args) for s in steps if s.key.startswith("train:")}
    caps = {key: (stage_config(c, 1).train.max_updates, stage_config(c, 2).train.max_updates)
            for key, c in cfg.items()}
    assert caps["train:aiokd"] == (u, 2 * u)
    assert caps["train:aiokd-capped"] == caps["train:aiokd-no-ml"] == (u, u)
    assert caps["train:scratch-2-2"][0] == caps["train:aiokd-one-stage"][0] == 2 * u
    assert cfg["train:aiokd-capped"].distill == cfg["train:aiokd"].distill
    assert "up to 12000" in p.budget()
    assert "aiokd-capped" in plan.default_systems(p)
    assert "aiokd-capped" not in plan.default_systems(plan.load_preset("tiny"))


def test_the_new_rows_train_with_their_settings(tmp_path):
    _, steps = tiny_steps(tmp_path, systems=["aiokd", "aiokd-paper", "aiokd-separate",
                                             "aiokd-one-stage"])
    cfg = {s.key: config_of(s.args) for s in steps if s.key.startswith("train:")}
    one_stage = cfg["train:aiokd-one-stage"]
    assert one_stage.train.stages == "1" and one_stage.distill.ml_stage == 1  # ML from update 1
    assert not cfg["train:aiokd-separate"].distill.reuse_prefix
    assert cfg["train:aiokd"].distill.reuse_prefix
    paper = cfg["train:aiokd-paper"].distill
    assert (paper.alpha, paper.beta, paper.eta, paper.k, paper.sandwich, paper.ml_stage) == (
        5.5, 0.5, 1.1, 2, False, 2)
    assert paper == cfg["train:aiokd"].distill  # the paper's settings are the defaults today


def test_with_a_teacher_stage_aiokd_starts_from_the_from_scratch_teacher(tmp_path):
    p, steps = tiny_steps(tmp_path, systems=["aiokd", "aiokd-paper", "aiokd-no-ml"],
                          preset="narrow")
    trains = {s.key: s.args for s in steps if s.key.startswith("train:")}
    assert list(trains)[0] == "train:scratch-6-6"
    teacher = config_of(trains["train:scratch-6-6"])
    assert teacher.train.max_updates == load_config("narrow").train.teacher_updates == 12000
    for key in ("train:aiokd", "train:aiokd-no-ml"):
        args = trains[key]
        assert args[args.index("--init-from") + 1] == str(tmp_path / "runs" / "scratch-6-6")
    assert "--init-from" not in trains["train:aiokd-paper"]
    paper = config_of(trains["train:aiokd-paper"]).train
    assert paper.teacher_updates == 0 and paper.lr_from_teacher == 0
    work = plan.Work(tmp_path, p)
    work.steps(plan.selection(p, ["aiokd", "aiokd-paper"], [], p.students))
    assert work.runs["aiokd"].teacher_run == "scratch-6-6"
    assert work.runs["aiokd-paper"].teacher_run is None


def test_each_seed_of_a_teacher_stage_system_has_its_own_teacher(tmp_path):
    _, steps = tiny_steps(tmp_path, systems=["aiokd", "word-kd:4-2"], preset="narrow",
                          seeds=(1, 2))
    trains = {s.key: s.args for s in steps if s.key.startswith("train:")}
    seed2 = trains["train:aiokd-seed2"]
    assert seed2[seed2.index("--init-from") + 1] == str(tmp_path / "runs" / "scratch-6-6-seed2")
    keys = list(trains)
    assert keys.index("train:scratch-6-6-seed2") < keys.index("train:aiokd-seed2")
    word_kd = trains["train:word-kd-4-2-seed2"]
    assert word_kd[word_kd.index("--teacher") + 1] == str(tmp_path / "runs" / "scratch-6-6-seed2")

    def record(run, system, seed, minutes, teacher=None):
        return {"run": run, "system": system, "seed": seed, "bleu": {"6-6": 40.0},
                "chrf": {"6-6": 60.0}, "train_minutes": minutes, "updates": 10,
                "teacher_run": teacher}

    runs = {"scratch-6-6": {**record("scratch-6-6", "scratch", 1, 100.0), "student": "6-6"},
            "scratch-6-6-seed2": {**record("scratch-6-6-seed2", "scratch", 2, 120.0),
                                  "student": "6-6"},
            "aiokd": record("aiokd", "aiokd", 1, 300.0, "scratch-6-6"),
            "aiokd-seed2": record("aiokd-seed2", "aiokd", 2, 310.0, "scratch-6-6-seed2")}
    aiokd = report.summarize(runs, ["6-6"], plan.CANDIDATES)["aiokd"]
    assert aiokd["cost_minutes_by_seed"] == {"1": 400.0, "2": 430.0}
    assert aiokd["cost_minutes"] == 415.0
    assert "its teacher stage" in report_markdown._teachers_sentence(runs)
    runs = {name: r for name, r in runs.items() if not name.startswith("aiokd")}
    assert "teacher stage" not in report_markdown._teachers_sentence(runs)


def test_a_teacher_stage_other_than_the_teachers_cap_is_refused(tmp_path):
    p = plan.load_preset("narrow")
    p.overrides = ["train.teacher_updates=500"]
    with pytest.raises(SystemExit, match="train.teacher_updates=500"):
        plan.check_teacher_stage(p)


def test_the_small_preset_trains_to_convergence_in_two_drivers(tmp_path):
    p, steps = tiny_steps(tmp_path, groups=["aiokd-runs", "separate-runs"], preset="small")
    trains = {s.key: config_of(s.args) for s in steps if s.key.startswith("train:")}
    assert trains["train:aiokd"].train.max_updates == 4000
    assert trains["train:aiokd-one-stage"].train.max_updates == 8000
    assert trains["train:scratch-2-2"].train.max_updates == 8000
    assert all(c.train.patience == 5 and c.train.validate_every == 250
               for c in trains.values())
    assert trains["train:aiokd"].model.d_model == 256 and not trains["train:aiokd"].model.pre_norm
    work = plan.Work(tmp_path, p)
    work.steps(plan.selection(p, None, ["aiokd-runs"], p.students))
    assert work.runs["aiokd"].students == plan.CANDIDATES  # all 15 scored
    assert work.runs["aiokd"].compared == ["2-2", "4-2", "6-2", "4-4", "6-6"]
    assert work.runs["aiokd-no-ml"].students == work.runs["aiokd-no-ml"].compared
    teachers = [s.key for s in tiny_steps(tmp_path, groups=["aiokd-runs"], preset="small")[1]
                if s.key == "train:scratch-6-6"]
    assert not teachers  # the teacher is trained by the other group only


def test_each_seed_replicates_the_comparison_teacher_included(tmp_path):
    _, steps = tiny_steps(tmp_path, systems=["scratch", "word-kd", "aiokd", "aiokd-seqkd"],
                          seeds=(1, 2))
    trains = {s.key: s.args for s in steps if s.key.startswith("train:")}
    assert "train:aiokd" in trains and "train:scratch-6-6-seed2" in trains
    assert config_of(trains["train:aiokd-seed2"]).train.seed == 2
    assert config_of(trains["train:aiokd"]).train.seed == 1
    word_kd = config_of(trains["train:word-kd-4-2-seed2"])
    assert word_kd.train.seed == 2
    assert Path(word_kd.distill.teacher).name == "scratch-6-6-seed2"
    assert Path(config_of(trains["train:word-kd-4-2"]).distill.teacher).name == "scratch-6-6"
    distills = {s.key: s.args for s in steps if s.key.startswith("distill-data")}
    assert list(distills) == ["distill-data", "distill-data-seed2"]
    seed2 = distills["distill-data-seed2"]
    assert Path(seed2[seed2.index("--model") + 1]).name == "scratch-6-6-seed2"
    seqkd = trains["train:aiokd-seqkd-seed2"]
    assert seqkd[seqkd.index("--data") + 1] == seed2[seed2.index("--out") + 1]
    assert [k for k in trains if k.startswith("train:scratch-6-6")] == [
        "train:scratch-6-6", "train:scratch-6-6-seed2"]
    keys = list(trains)
    assert max(keys.index(k) for k in keys if "seed2" not in k) < min(
        keys.index(k) for k in keys if "seed2" in k)  # seed by seed
    assert plan.parse_seeds("1,2") == [1, 2]
    for bad in ("1,1", "x", "-1"):
        with pytest.raises(SystemExit):
            plan.parse_seeds(bad)


def test_dependencies_come_first_and_groups_are_self_contained(tmp_path):
    _, steps = tiny_steps(tmp_path)
    keys = [s.key for s in steps]
    assert keys[0] == "prepare"
    assert keys.index("train:scratch-6-6") < keys.index("train:word-kd-2-2")
    assert keys.index("distill-data") < keys.index("train:aiokd-seqkd")
    _, steps = tiny_steps(tmp_path, groups=["word-kd-1"], preset="iwslt")
    assert [s.key for s in steps if s.key.startswith("train")] == [
        "train:scratch-6-6", "train:word-kd-2-2", "train:word-kd-3-2", "train:word-kd-4-2"]


def test_students_are_in_paper_order_with_the_teacher():
    assert plan.sort_students(["6-2", "2-2"]) == ["2-2", "6-2", "6-6"]
    with pytest.raises(SystemExit):
        plan.sort_students(["2-3"])


def _system(bleu, cost, cost_15=None):
    entry = {"bleu": bleu, "cost_minutes": cost}
    if cost_15 is not None:
        entry["cost_minutes_15"] = cost_15
    return entry


def test_targets_are_computed_from_the_numbers():
    systems = {
        "scratch": _system({"2-2": 20.0, "6-6": 26.0}, 50, 400),
        "word-kd": _system({"2-2": 22.0, "6-6": 27.0}, 80, 700),
        "aiokd": _system({"2-2": 21.0, "6-6": 28.0}, 300),
        "aiokd-sandwich": _system({"2-2": 22.5, "6-6": 27.5}, 300),
    }
    found = report.targets(systems)
    assert found["avg_vs_scratch"]["met"] is True  # 24.5 >= 23 + 1
    assert found["avg_vs_word_kd"]["met"] is False  # 24.5 < 24.5 + 0.5
    assert found["teacher_vs_scratch"]["met"] is True  # 28 >= 27
    assert found["cost_vs_word_kd"]["met"] is True  # 300 <= 350
    assert found["every_student_vs_word_kd"]["below_word_kd"] == ["2-2"]
    assert found["every_student_vs_word_kd"]["margins"] == {"2-2": -1.0, "6-6": 1.0}
    assert found["every_student_vs_word_kd"]["met"] is False  # 21 < 22 at 2-2
    assert found["every_student_vs_word_kd/aiokd-sandwich"]["met"] is True
    assert report.targets({"aiokd": systems["aiokd"]})["avg_vs_scratch"]["met"] is None
    assert found["avg_vs_word_kd/aiokd-sandwich"]["met"] is True  # 25 >= 24.5 + 0.5
    assert found["teacher_vs_scratch/aiokd-sandwich"]["value"] == 27.5  # its own 6-6
    assert "avg_vs_scratch/aiokd-sandwich-kd1" not in found  # no results for it


@pytest.mark.parametrize("sandwich_2_2, sandwich_6_6, replaces", [
    (40.0, 42.0, True),    # avg 41.0 >= 41.0 and 2-2 40.0 > 39.0
    (40.0, 41.5, False),   # avg 40.75 < 41.0
    (39.0, 44.0, False),   # 2-2 not higher
])
def test_the_rule_that_chooses_the_default(sandwich_2_2, sandwich_6_6, replaces):
    runs = [_record("aiokd-seed2", "aiokd", 2, {"2-2": 39.0, "6-6": 43.0}, 1.0),
            _record("aiokd-sandwich-seed2", "aiokd-sandwich", 2,
                    {"2-2": sandwich_2_2, "6-6": sandwich_6_6}, 1.0),
            _record("aiokd-paper", "aiokd-paper", 1, {"2-2": 45.0, "6-6": 45.0}, 1.0),
            _scratch("2-2", 2, 41.0)]
    systems = report.summarize({r["run"]: r for r in runs}, ["2-2", "6-6"], plan.CANDIDATES)
    found = report.challengers(systems)
    assert [c["system"] for c in found] == ["aiokd-sandwich"]  # the paper row: no common seed
    assert found[0]["seeds"] == [2] and found[0]["students"] == ["2-2", "6-6"]
    assert found[0]["default_avg"] == 41.0 and found[0]["replaces_default"] is replaces
    section = report_markdown._challengers_section({"challengers": found})
    assert ("**yes**" if replaces else "| no |") in section
    assert report_markdown._challengers_section({"challengers": []}) == ""


def test_variants_are_judged_against_the_default_at_their_budget():
    runs = [_record("aiokd-seed2", "aiokd", 2, {"2-2": 41.0, "6-6": 43.0}, 1.0),
            _record("aiokd-capped-seed2", "aiokd-capped", 2, {"2-2": 39.0, "6-6": 42.0}, 1.0),
            _record("aiokd-no-ml-seed2", "aiokd-no-ml", 2, {"2-2": 39.5, "6-6": 42.0}, 1.0),
            _scratch("2-2", 2, 41.0)]
    systems = report.summarize({r["run"]: r for r in runs}, ["2-2", "6-6"], plan.CANDIDATES)
    found = {c["system"]: c for c in report.challengers(systems)}
    assert found["aiokd-capped"]["against"] == "aiokd"
    assert not found["aiokd-capped"]["replaces_default"]  # 40.5 < 42.0
    assert found["aiokd-no-ml"]["against"] == "aiokd-capped"
    assert found["aiokd-no-ml"]["default_avg"] == 40.5
    assert found["aiokd-no-ml"]["replaces_default"]  # 40.75 >= 40.5 and 39.5 > 39.0


def test_cost_for_15_students_follows_the_layers():
    candidates = plan.CANDIDATES
    line = {"2-2": 4.0, "6-6": 12.0}  # 1 minute per layer: the 15 have 120 layers
    assert report.extrapolate_15(line, candidates) == pytest.approx(120.0)
    assert report.extrapolate_15({"4-2": 6.0}, candidates) == pytest.approx(120.0)
    assert report.extrapolate_15({}, candidates) is None


def run_driver(work: Path, results: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(DRIVER / "run.py"), "--quick", "--out", str(work), "--results-dir",
         str(results), *extra], capture_output=True, text=True, env=subprocess_env(),
        timeout=600, check=False)


@pytest.mark.slow
def test_quick_benchmark_end_to_end(tmp_path):
    work, results = tmp_path / "work", tmp_path / "results"
    done = run_driver(work, results)
    assert done.returncode == 0, done.stdout + done.stderr
    found = json.loads((results / "multi30k-quick.json").read_text())
    assert found["preset"] == "quick" and found["sacrebleu_signature"]["bleu"].startswith("nrefs")
    assert set(found["systems"]) == set(SYSTEMS) and found["seeds"] == [1]
    assert found["students"] == ["2-2", "6-6"]
    for name, system in found["systems"].items():
        assert set(system["bleu"]) == {"2-2", "6-6"}, name
        assert system["cost_minutes"] > 0
    assert len(found["runs"]["aiokd"]["bleu"]) == 15  # the aiokd evaluation scores all 15
    assert set(found["runs"]["aiokd"]["length_ratio"]) == set(found["runs"]["aiokd"]["bleu"])
    assert len(found["systems"]["aiokd"]["bleu_all_students"]) == 15
    training = found["runs"]["aiokd"]["training"]
    assert set(training["stages"]) == {"1", "2"} and len(training["best"]["ce"]) == 15
    assert 0 <= training["stages"]["1"]["detached_fraction"] <= 1
    assert "detached_fraction" in found["systems"]["aiokd-no-ml"]["training"]
    assert found["systems"]["word-kd"]["cost_minutes_15"] > found["systems"]["word-kd"][
        "cost_minutes"]
    assert all(t["met"] in (True, False) for t in found["targets"].values())
    assert found["runs"]["aiokd-one-stage"]["updates"] == 4  # 2U in one stage
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=DRIVER, capture_output=True,
                            text=True, check=True).stdout.strip()
    assert all(record["code"] and record["code"][0].startswith(commit)
               for record in found["runs"].values())
    assert "| separate students, Word-KD (`word-kd`) |" in (
        results / "multi30k-quick.md").read_text()
    assert (results / "multi30k-quick.png").read_bytes().startswith(b"\x89PNG")
    tested = {(t["run"], t["baseline_run"], t["student"]) for t in found["significance"]}
    assert ("aiokd", "word-kd-2-2", "2-2") in tested and ("aiokd", "scratch-6-6", "6-6") in tested
    assert all(0 <= t["p_value"] <= 1 for t in found["significance"])
    kept = results / found["runs"]["aiokd"]["translations"]
    assert kept == results / "multi30k-quick.translations" / "aiokd"
    assert (kept / "reference.txt").read_text() == (
        work / "runs" / "aiokd" / "results.translations" / "reference.txt").read_text()
    assert len(list(kept.glob("?-?.txt"))) == 15
    assert found["runs"]["scratch-2-2"]["training"]["best"]["mean"] > 0
    assert found["premise"]["met"] in (True, False)
    assert "| Premise: from-scratch 6-6 above" in (results / "multi30k-quick.md").read_text()
    here = timings_module.this_machine()
    for name, record in found["runs"].items():  # every run trained here: its cost, by machine
        assert record["machines"] == {here: pytest.approx(
            record["train_minutes"] + record.get("extra_minutes", 0.0), abs=0.02)}, name
    on_one = found["cost_by_machine"]["aiokd"]
    assert [c["machine"] for c in on_one] == [here] and on_one[0]["seeds"] == [1]
    assert on_one[0]["cost_minutes"] == pytest.approx(found["systems"]["aiokd"]["cost_minutes"],
                                                      abs=0.02)
    assert "## Machines" in (results / "multi30k-quick.md").read_text()

    again = run_driver(work, results)
    assert again.returncode == 0, again.stdout + again.stderr
    progress = [line for line in again.stdout.splitlines() if line.startswith("[")]
    assert progress and all(line.endswith("done already") for line in progress)
    assert json.loads((results / "multi30k-quick.json").read_text())["runs"] == found["runs"]

    reported = run_driver(work, results, "--seeds", "1,2", "--systems", "aiokd", "--report-only")
    assert reported.returncode == 0, reported.stdout + reported.stderr
    assert not (work / "runs" / "aiokd-seed2").exists()  # nothing trained
    merged = json.loads((results / "multi30k-quick.json").read_text())
    assert (merged["runs"], merged["driver_commands"]) == (found["runs"],
                                                           found["driver_commands"])

    seeds = run_driver(work, results, "--seeds", "1,2", "--systems", "aiokd")
    assert seeds.returncode == 0, seeds.stdout + seeds.stderr
    assert json.loads((work / "runs" / "aiokd-seed2" / "run.json").read_text())["config"][
        "train"]["seed"] == 2
    merged = json.loads((results / "multi30k-quick.json").read_text())
    aiokd = merged["systems"]["aiokd"]
    assert merged["seeds"] == [1, 2] and aiokd["seeds"] == [1, 2]
    assert set(aiokd["bleu_by_seed"]) == {"1", "2"} and set(aiokd["spread"]) == {"2-2", "6-6"}
    assert aiokd["avg_bleu_spread"] is not None and merged["systems"]["scratch"]["seeds"] == [1]
    assert " ± " in (results / "multi30k-quick.md").read_text()


def test_kd_systems_pay_for_their_teacher():
    def record(run, system, student, minutes):
        return {"run": run, "system": system, "student": student, "bleu": {student: 30.0},
                "chrf": {student: 50.0}, "train_minutes": minutes, "updates": 10}

    runs = {"scratch-6-6": record("scratch-6-6", "scratch", "6-6", 12.0),
            "word-kd-6-6": record("word-kd-6-6", "word-kd", "6-6", 20.0)}
    runs["aiokd"] = {**record("aiokd", "aiokd", "6-6", 30.0), "teacher_run": "scratch-6-6"}
    runs["aiokd-paper"] = record("aiokd-paper", "aiokd-paper", "6-6", 30.0)
    systems = report.summarize(runs, ["6-6"], plan.CANDIDATES)
    assert systems["scratch"]["cost_minutes"] == 12.0
    assert systems["word-kd"]["cost_minutes"] == 32.0
    assert systems["aiokd"]["cost_minutes"] == 42.0 and systems["aiokd"]["cost_includes_teacher"]
    assert systems["aiokd-paper"]["cost_minutes"] == 30.0
    assert systems["word-kd"]["cost_minutes_15"] == pytest.approx(20.0 * 120 / 12 + 12.0)


def _record(run, system, seed, bleu, minutes, training=None):
    record = {"run": run, "system": system, "seed": seed, "bleu": bleu,
              "chrf": {s: 50.0 for s in bleu}, "train_minutes": minutes, "updates": 100}
    if training:
        record["training"] = training
    return record


def test_the_cost_target_on_one_machine_leaves_the_others_out():
    """Seed 1 of the default and its teacher trained on machine A, seed 2 on B; Word-KD's
    students trained on A (2-2) and on a mix of A and B (6-6), their teacher on A: on A the
    target sets seed 1 (its run and teacher) against the one Word-KD student trained there,
    extrapolated to 15, plus the teacher; on B Word-KD has nothing, so no comparison."""
    def on(machine, minutes):
        return {"machines": {machine: minutes}}

    runs = {
        "scratch-6-6": _record("scratch-6-6", "scratch", 1, {"6-6": 40.0}, 30.0)
        | {"student": "6-6"} | on("A", 30.0),
        "scratch-6-6-seed2": _record("scratch-6-6-seed2", "scratch", 2, {"6-6": 40.0}, 90.0)
        | {"student": "6-6"} | on("B", 90.0),
        "aiokd": _record("aiokd", "aiokd", 1, {"6-6": 42.0}, 50.0)
        | {"teacher_run": "scratch-6-6"} | on("A", 50.0),
        "aiokd-seed2": _record("aiokd-seed2", "aiokd", 2, {"6-6": 42.0}, 150.0)
        | {"teacher_run": "scratch-6-6-seed2"} | on("B", 150.0),
        "word-kd-2-2": _record("word-kd-2-2", "word-kd", 1, {"2-2": 39.0}, 8.0)
        | {"student": "2-2", "teacher_run": "scratch-6-6"} | on("A", 8.0),
        "word-kd-6-6": _record("word-kd-6-6", "word-kd", 1, {"6-6": 40.0}, 20.0)
        | {"student": "6-6", "teacher_run": "scratch-6-6",
           "machines": {"A": 5.0, "B": 15.0}},
    }
    found = machines.cost_on_machines(runs, plan.CANDIDATES)
    fifteen = report.extrapolate_15({"2-2": 8.0}, plan.CANDIDATES)
    assert found == {"aiokd": [{
        "machine": "A", "seeds": [1], "cost_minutes": 80.0,
        "word_kd_15_minutes": round(fifteen + 30.0, 2), "word_kd_students": ["2-2"],
        "teacher_runs": ["scratch-6-6"], "ratio": round(80.0 / (fifteen + 30.0), 3),
        "met": 80.0 <= (fifteen + 30.0) / 2}]}
    assert machines.machine_of(runs["word-kd-6-6"]) is None
    assert machines.machine_of({"machines": {timings_module.NOT_RECORDED: 3.0}}) is None
    text = machines.section({"runs": runs, "cost_by_machine": found})
    assert "| `word-kd-6-6` | A: 5.0; B: 15.0 |" in text and "| `aiokd` | A | 1 |" in text


def test_a_run_trained_again_keeps_the_training_it_replaces(tmp_path):
    """The seed-1 teacher trained again (another start): its earlier record stays as
    ``scratch-6-6@earlier``, in no table, with its translations; the Word-KD student distilled
    from it keeps its cost; the new training is the system's 6-6.  Evaluated again (the same
    start), a record is simply replaced."""
    kept = tmp_path / "m.translations" / "scratch-6-6"
    kept.mkdir(parents=True)
    (kept / "6-6.txt").write_text("old\n")
    runs = {
        "scratch-6-6": _record("scratch-6-6", "scratch", 1, {"6-6": 41.0}, 120.0)
        | {"student": "6-6", "translations": "m.translations/scratch-6-6"},
        "word-kd-2-2": _record("word-kd-2-2", "word-kd", 1, {"2-2": 39.0}, 100.0)
        | {"student": "2-2", "teacher_run": "scratch-6-6"},
    }
    again = _record("scratch-6-6", "scratch", 1, {"6-6": 40.0}, 360.0) | {
        "student": "6-6", "started": "2026-11-27T23:46:05Z"}
    merge.merge(runs, [again], tmp_path)
    assert runs["scratch-6-6"] is again
    earlier = runs["scratch-6-6@earlier"]
    assert earlier["superseded_by"] == "scratch-6-6" and earlier["run"] == "scratch-6-6@earlier"
    assert (tmp_path / earlier["translations"] / "6-6.txt").read_text() == "old\n"
    assert runs["word-kd-2-2"]["teacher_run"] == "scratch-6-6@earlier"
    systems = report.summarize(runs, ["2-2", "6-6"], plan.CANDIDATES)
    assert systems["scratch"]["bleu"] == {"6-6": 40.0} and systems["scratch"]["runs"] == [
        "scratch-6-6"]
    assert systems["word-kd"]["cost_minutes"] == 220.0  # its own teacher's 120, not 360
    later_student = _record("word-kd-4-2", "word-kd", 1, {"4-2": 39.5}, 110.0) | {
        "student": "4-2", "teacher_run": "scratch-6-6"}
    two_teachers = report.summarize(runs | {"word-kd-4-2": later_student}, ["2-2", "4-2", "6-6"],
                                    plan.CANDIDATES)["word-kd"]
    assert two_teachers["cost_minutes"] == 100.0 + 110.0 + (120.0 + 360.0) / 2  # one teacher
    evaluated_again = again | {"bleu": {"6-6": 40.5}}
    merge.merge(runs, [evaluated_again], tmp_path)
    assert runs["scratch-6-6"] is evaluated_again and len(runs) == 3
    assert "trained again as scratch-6-6" in report_markdown._code(earlier)


def test_a_run_trained_again_leaves_its_run_directory_translations_to_the_new_training(
        tmp_path):
    """An earlier record names its run directory's own translations (an absolute path, from
    before the copies were kept): once the run is trained and evaluated again, they are the new
    training's, so they stay where they are, are kept under the new record, and the earlier
    record has none.  Translations neither in the run directory nor kept are named by no
    record (no empty directory either)."""
    own = tmp_path / "runs" / "scratch-6-6" / "results.translations"
    own.mkdir(parents=True)
    (own / "6-6.txt").write_text("new\n")
    results = tmp_path / "results"
    runs = {"scratch-6-6": _record("scratch-6-6", "scratch", 1, {"6-6": 41.0}, 120.0)
            | {"student": "6-6", "translations": str(own)}}
    again = _record("scratch-6-6", "scratch", 1, {"6-6": 40.0}, 360.0) | {
        "student": "6-6", "started": "2026-11-27T23:46:05Z", "translations": str(own)}
    merge.merge(runs, [again], results)
    assert "translations" not in runs["scratch-6-6@earlier"]
    runs["scratch-6-6"] = driver.keep_translations(runs["scratch-6-6"], results, "m")
    kept = results / runs["scratch-6-6"]["translations"]
    assert kept == results / "m.translations" / "scratch-6-6"
    assert (kept / "6-6.txt").read_text() == (own / "6-6.txt").read_text() == "new\n"
    gone = _record("word-kd-2-2", "word-kd", 1, {"2-2": 39.0}, 10.0) | {
        "translations": str(tmp_path / "elsewhere")}
    assert "translations" not in driver.keep_translations(gone, results, "m")
    assert not (results / "m.translations" / "word-kd-2-2").exists()


def test_the_test_set_is_named_once_where_records_name_it_two_ways(tmp_path):
    """Older records name the data directory's split, newer ones the corpus: where their kept
    references are the same file, the header names the test set once, as the newest record
    does, records without kept references but of an old name included; other references stay
    a test set of their own."""
    def scored(run, name, references=None, started=None):
        record = _record(run, "scratch", 1, {"2-2": 30.0}, 1.0) | {"test_set": name}
        if references is not None:
            record["translations"] = write_translations(tmp_path / run, references,
                                                        **{"2-2": references})
        return record | ({"started": started} if started else {})

    records = [scored("old", "data/test (60 sentences)", REFERENCES),
               scored("old-no-copy", "data/test (60 sentences)"),
               scored("new", "Multi30k test_2016_flickr (60 sentences)", REFERENCES,
                       "2026-11-27T23:46:05Z")]
    assert driver.test_sets(records, tmp_path) == "Multi30k test_2016_flickr (60 sentences)"
    other = scored("other", "other/test (60 sentences)", ["a", "b", "c"])
    assert driver.test_sets([*records, other], tmp_path) == (
        "Multi30k test_2016_flickr (60 sentences); other/test (60 sentences)")


def _observed(detached, ce):
    best = {"update": 250, "ce": ce, "mean": sum(ce.values()) / len(ce),
            "spread": max(ce.values()) - min(ce.values())}
    return {"k": 2, "best": best,
            "stages": {"1": {"detached_fraction": detached, "stopped": "patience", "best": best},
                       "2": {"detached_fraction": 0.0, "stopped": "max_updates", "best": best}}}


def test_seeds_are_averaged_with_their_spread():
    every = {s: 30.0 for s in plan.CANDIDATES}
    runs = {
        "aiokd": _record("aiokd", "aiokd", 1, {**every, "2-2": 30.0, "6-6": 32.0}, 10.0,
                         _observed(0.5, {"2-2": 3.0, "6-6": 2.5})),
        "aiokd-seed2": _record("aiokd-seed2", "aiokd", 2, {**every, "2-2": 31.0, "6-6": 31.0},
                               14.0, _observed(0.25, {"2-2": 3.2, "6-6": 2.9})),
        "scratch-2-2": _record("scratch-2-2", "scratch", 1, {"2-2": 29.0}, 2.0),
        "scratch-6-6": _record("scratch-6-6", "scratch", 1, {"6-6": 28.0}, 6.0),
    }
    for record in runs.values():
        if record["system"] == "scratch":
            record["student"] = next(iter(record["bleu"]))
    systems = report.summarize(runs, ["2-2", "6-6"], plan.CANDIDATES)
    aiokd = systems["aiokd"]
    assert aiokd["seeds"] == [1, 2] and aiokd["bleu"] == {"2-2": 30.5, "6-6": 31.5}
    assert aiokd["bleu_by_seed"] == {"1": {"2-2": 30.0, "6-6": 32.0},
                                     "2": {"2-2": 31.0, "6-6": 31.0}}
    assert aiokd["spread"] == {"2-2": 1.0, "6-6": 1.0}
    assert aiokd["avg_bleu"] == 31.0 and aiokd["avg_bleu_spread"] == 0.0  # 31.0 both seeds
    assert aiokd["cost_minutes"] == 12.0 and aiokd["cost_minutes_by_seed"] == {"1": 10.0,
                                                                               "2": 14.0}
    assert len(aiokd["bleu_all_students"]) == 15 and "bleu_all_students" not in systems[
        "scratch"]
    every_average = round((13 * 30.0 + 30.0 + 32.0) / 15, 2)  # seed 2: 31.0 + 31.0 likewise
    assert aiokd["avg_bleu_all_students_by_seed"] == {"1": every_average, "2": every_average}
    assert "avg_bleu_all_students_by_seed" not in systems["scratch"]
    training = aiokd["training"]
    assert training["detached_fraction"] == {"1": 0.375, "2": 0.0}
    assert training["valid_ce"] == {"2-2": 3.1, "6-6": 2.7}
    assert training["valid_ce_spread"] == pytest.approx(0.4)
    assert systems["scratch"]["seeds"] == [1] and systems["scratch"]["avg_bleu_spread"] is None
    results = {"title": "t", "preset": "p", "test_set": "", "device": "", "threads": 1,
               "seeds": [1, 2], "students": ["2-2", "6-6"], "systems": systems, "teacher": None,
               "targets": report.targets(systems), "budget": "", "cost_rule": "",
               "sacrebleu_signature": {}, "driver_commands": [], "runs": {}}
    text = report_markdown.markdown(results)
    assert "| 30.50 ± 1.00 | 31.50 ± 1.00 | 31.00 ± 0.00 |" in text
    assert "| 29.00 | 28.00 | 28.50 |" in text  # one seed: no spread
    assert "| 30.13 | 1: 30.13 / 2: 30.13 |" in text  # every student: average, then by seed
    assert "## BLEU of every student" in text and "37.5% / 0.0%" in text
    assert "## Validation CE" in text and "| `aiokd` | 3.100 | 2.700 |" in text
    assert figure.bleu_by_student(results, plan.CANDIDATES).startswith(b"\x89PNG")
    assert figure._seed_range(aiokd, "2-2") == (30.0, 31.0)
    assert figure._seed_range(systems["scratch"], "2-2") is None  # one seed: no bar


REFERENCES = [f"a dog number {i} runs across the green grass ." for i in range(60)]


def write_translations(directory: Path, references: list[str], **students: list[str]) -> str:
    directory.mkdir(parents=True)
    for name, lines in {"reference": references, **students}.items():
        (directory / f"{name}.txt").write_text("".join(line + "\n" for line in lines))
    return str(directory)


def test_paired_bootstrap_tells_chance_from_a_real_difference():
    half = [line.replace("grass", "lawn") for line in REFERENCES]
    worse, also_worse = half[:30] + REFERENCES[30:], REFERENCES[:30] + half[30:]
    level = significance.paired_bootstrap(REFERENCES, worse, also_worse, "en")
    assert level["delta"] == 0.0 and level["p_value"] > 0.2
    better = significance.paired_bootstrap(REFERENCES, half, REFERENCES, "en")
    assert better["bleu"] == 100.0 and better["delta"] > 5 and better["p_value"] < 0.01
    assert "bs:1000" in better["signature"]
    tiny = significance.paired_bootstrap(REFERENCES, worse, half[:29] + REFERENCES[29:], "en")
    assert 0 < tiny["delta"] < 1 and tiny["p_value"] > 0.05  # one sentence of sixty


def test_each_aiokd_student_is_tested_against_the_same_student_alone(tmp_path):
    lawn = [line.replace("grass", "lawn") for line in REFERENCES]
    hyps = {"2-2": REFERENCES, "6-6": REFERENCES, **{s: lawn for s in plan.CANDIDATES
                                                      if s not in ("2-2", "6-6")}}
    aiokd = _record("aiokd", "aiokd", 1, dict.fromkeys(hyps, 30.0), 10.0)
    aiokd["translations"] = write_translations(tmp_path / "aiokd", REFERENCES, **hyps)
    word = _record("word-kd-2-2", "word-kd", 1, {"2-2": 20.0}, 5.0)
    word["translations"] = write_translations(tmp_path / "word", REFERENCES,
                                              **{"2-2": lawn})
    other_test = _record("scratch-2-2", "scratch", 1, {"2-2": 20.0}, 5.0)
    other_test["translations"] = write_translations(tmp_path / "other", lawn, **{"2-2": lawn})
    unwritten = _record("scratch-6-6", "scratch", 1, {"6-6": 20.0}, 5.0)
    paper = _record("aiokd-paper", "aiokd-paper", 1, {"2-2": 20.0}, 5.0)  # no translations
    for separate in (word, other_test, unwritten):
        separate["student"] = next(iter(separate["bleu"]))
    runs = {r["run"]: r for r in (aiokd, word, other_test, unwritten, paper)}
    (found,) = significance.tests(runs, "en")
    assert (found["run"], found["baseline_run"], found["student"]) == ("aiokd", "word-kd-2-2",
                                                                      "2-2")
    assert found["delta"] > 0 and found["p_value"] < 0.05
    results = {"title": "t", "preset": "p", "test_set": "", "device": "", "threads": 1,
               "seeds": [1], "students": ["2-2"], "systems": {}, "teacher": None,
               "targets": {}, "budget": "", "cost_rule": "", "sacrebleu_signature": {},
               "driver_commands": [], "runs": {}, "significance": [found]}
    text = report_markdown.markdown(results)
    assert "## Paired significance" in text and "| 2-2 | `aiokd` | `word-kd-2-2` |" in text
    systems = report.summarize(runs, ["2-2"], plan.CANDIDATES)
    every = report.targets(systems)["every_student_vs_word_kd"]
    assert every["system"] == "aiokd" and every["margins"] == {"2-2": 10.0}
    line = next(row for row in report_markdown.markdown({**results, "targets": {"every": every}})
                .splitlines() if "every student" in row)
    assert f"2-2 +10.00 (p {found['p_value']:.3f})" in line
    assert "## Paired significance" not in report_markdown.markdown({**results, "significance": []})



def test_a_recorded_test_outlives_its_translations_while_the_scores_stand(tmp_path):
    lawn = [line.replace("grass", "lawn") for line in REFERENCES]
    aiokd = _record("aiokd", "aiokd", 1, {"2-2": 100.0}, 10.0)
    aiokd["translations"] = write_translations(tmp_path / "kept" / "aiokd", REFERENCES,
                                               **{"2-2": REFERENCES})
    word = {**_record("word-kd-2-2", "word-kd", 1, {"2-2": 20.0}, 5.0), "student": "2-2",
            "translations": "kept/word"}  # relative to the results directory
    write_translations(tmp_path / "kept" / "word", REFERENCES, **{"2-2": lawn})
    runs = {"aiokd": aiokd, "word-kd-2-2": word}
    (made,) = significance.tests(runs, "en", base=tmp_path)
    word["bleu"] = {"2-2": made["baseline_bleu"] + 0.004}  # records keep more digits
    aiokd["bleu"] = {"2-2": made["bleu"] - 0.003}
    for path in (tmp_path / "kept" / "word").iterdir():
        path.unlink()  # the translations are gone, e.g. on another machine
    assert significance.tests(runs, "en", base=tmp_path) == []
    assert significance.tests(runs, "en", base=tmp_path, recorded=[made]) == [made]
    retrained = {**runs, "aiokd": {**aiokd, "bleu": {"2-2": made["bleu"] - 1}}}
    assert significance.tests(retrained, "en", base=tmp_path, recorded=[made]) == []


def _scratch(student, seed, bleu, ce=None):
    run = f"scratch-{student}" + ("" if seed == 1 else f"-seed{seed}")
    record = {**_record(run, "scratch", seed, {student: bleu}, 1.0), "student": student}
    if ce is not None:
        record["training"] = {"best": {"update": 100, "ce": {student: ce}, "mean": ce}}
    return record


@pytest.mark.parametrize("ce_2_2, met", [(1.60, True), (1.50, False)])
def test_the_premise_needs_the_teacher_above_its_smallest_student(ce_2_2, met):
    runs = [_scratch("2-2", 1, 39.0), _scratch("6-6", 1, 41.0),
            _scratch("2-2", 2, 39.5, ce=ce_2_2), _scratch("6-6", 2, 41.5, ce=1.52)]
    systems = report.summarize({r["run"]: r for r in runs}, ["2-2", "6-6"], plan.CANDIDATES)
    assert systems["scratch"]["valid_ce_by_seed"] == {"2": {"2-2": ce_2_2, "6-6": 1.52}}
    found = report.premise(systems)
    assert found["bleu"] == {"2-2": 39.25, "6-6": 41.25} and found["met"] is met
    table = report_markdown._validation_table({"students": ["2-2", "6-6"], "systems": systems})
    assert f"| `scratch` | {ce_2_2:.3f} | 1.520 |" in table
    row = report_markdown._targets_table({}, [], found)
    assert "| BLEU 41.25; seed 2: CE 1.520 | BLEU > 39.25; CE < " in row
    assert report.premise(report.summarize({"scratch-6-6": runs[1]}, ["6-6"],
                                           plan.CANDIDATES))["met"] is None


def write_log(run_dir: Path, entries: list[dict], **config) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in entries))
    (run_dir / "run.json").write_text(json.dumps({"config": config}))


def _valid(stage, update, mean, ce):
    return {"kind": "valid", "stage": stage, "update": update, "mean": mean, **ce}


def test_training_log_gives_dgd_the_best_validation_and_the_stop(tmp_path):
    train = {"kind": "train", "stage": 1, "tokens": 200.0}
    entries = [
        {"kind": "precision", "stage": 0, "update": 0, "amp": "none"},
        {**train, "update": 1, "detached": 2 / 200},  # as the loop logs it: per token
        {**train, "update": 2, "detached": 0.0},
        {**train, "update": 2, "detached": 1 / 200},  # logged again after a resume: kept
        _valid(1, 2, 3.0, {"2-2": 3.2, "6-6": 2.8}),
        _valid(1, 4, 3.1, {"2-2": 3.3, "6-6": 2.9}),
        _valid(1, 6, 3.05, {"2-2": 3.2, "6-6": 2.9}),
        {**train, "stage": 2, "update": 1, "gates": [1.0, 0.0]},
        _valid(2, 2, 2.9, {"2-2": 3.0, "6-6": 2.8}),
    ]
    write_log(tmp_path / "run", entries, distill={"k": 2},
              train={"patience": 2, "max_updates": 10})
    found = training_log.observe(tmp_path / "run")
    stage1, stage2 = found["stages"]["1"], found["stages"]["2"]
    assert stage1["detached_fraction"] == 0.75 and stage1["logged_updates"] == 2  # 3 of 4
    assert stage2["detached_fraction"] == 0.5
    assert stage1["best"]["update"] == 2 and stage1["best"]["spread"] == pytest.approx(0.4)
    assert stage1["best"]["ce"] == {"2-2": 3.2, "6-6": 2.8}
    assert stage1["stopped"] == "patience" and stage2["stopped"] == "unfinished"
    assert found["best"]["mean"] == 2.9 and found["k"] == 2 and set(found["stages"]) == {"1", "2"}

    # what the loop records at a stage's end says why, unless the stage was reopened after it
    stop = {"kind": "finished", "stage": 2, "update": 2, "why": "max_minutes"}
    write_log(tmp_path / "stopped", [*entries, stop], train={"max_updates": 10})
    assert training_log.observe(tmp_path / "stopped")["stages"]["2"]["stopped"] == "max_minutes"
    write_log(tmp_path / "reopened", [*entries, stop, _valid(2, 4, 2.8, {"2-2": 2.9})],
              train={"max_updates": 10})
    assert training_log.observe(tmp_path / "reopened")["stages"]["2"]["stopped"] == "unfinished"


@pytest.mark.slow
def test_learning_curves_of_a_tiny_run(tmp_path, tiny_data_dir):
    run = tmp_path / "run"
    done = run_aiokd(*train_argv(tiny_data_dir, run, "train.validate_every=1",
                                 "train.log_every=1", "train.patience=1"))
    assert done.returncode == 0, done.stderr
    assert curves.main(["--runs", str(run), str(run), "--labels", "a", "b", "--out",
                        str(tmp_path / "curves")]) == 0
    found = json.loads((tmp_path / "curves.json").read_text())["runs"]
    assert [r["label"] for r in found] == ["a", "b"]
    stage1 = found[0]["stages"]["1"]
    assert set(stage1["valid"]) == {"1", "2"} and "mean" in stage1["valid"]["1"]
    assert stage1["best_update"] in (1, 2) and found[0]["best"]["stage"] == 2
    assert isinstance(found[0]["stopped_by_patience"], bool)
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        curves.main(["--runs", str(tmp_path), "--out", str(tmp_path / "none")])
    gone = {**found[0], "run": str(tmp_path / "gone"), "label": "gone"}
    (tmp_path / "old.json").write_text(json.dumps({"runs": [gone, found[1]]}))
    assert curves.main(["--runs", str(run), "--labels", "again", "--keep",
                        str(tmp_path / "old.json"), "--out", str(tmp_path / "grown")]) == 0
    grown = json.loads((tmp_path / "grown.json").read_text())["runs"]
    assert [r["label"] for r in grown] == ["gone", "again"]  # the run read again replaces b


@pytest.fixture(scope="module")
def english_german(tmp_path_factory, tiny_corpus):
    """Another language pair (English->German: the synthetic corpus reversed) as a data
    directory, and a held-out test set of it as raw files."""
    root = tmp_path_factory.mktemp("en-de")
    flip = {split: (tgt, src) for split, (src, tgt) in tiny_corpus.items()}
    prepare(root / "en-de", "en", "de", flip["train"], flip["valid"], {"test": flip["test"]},
            vocab_size=TINY_VOCAB)
    held_out_de, held_out_en = make_corpus(12, seed=9)
    (root / "held-out.en").write_text("\n".join(held_out_en) + "\n", encoding="utf-8")
    (root / "held-out.de").write_text("\n".join(held_out_de) + "\n", encoding="utf-8")
    return root


@pytest.mark.slow
def test_quick_benchmark_on_another_language_pair_and_test_set(tmp_path, english_german):
    work, results = tmp_path / "work", tmp_path / "results"
    data = ["--data", str(english_german / "en-de"), "--systems", "scratch,aiokd"]
    done = run_driver(work, results, *data)
    assert done.returncode == 0, done.stdout + done.stderr
    found = json.loads((results / "en-de-quick.json").read_text())
    assert found["benchmark"] == "en-de-en-de" and found["title"] == "en-de En->De"
    assert found["test_set"] == "en-de/test (30 sentences)"
    assert set(found["systems"]) == {"scratch", "aiokd"}
    assert not (work / "data").exists()

    held_out = ["--test-src", str(english_german / "held-out.en"),
                "--test-ref", str(english_german / "held-out.de")]
    again = run_driver(work, results, *data, *held_out)
    assert again.returncode == 0, again.stdout + again.stderr
    trained = [line for line in again.stdout.splitlines() if line.startswith("[")
               and " train " in line]
    assert trained and all(line.endswith("done already") for line in trained)
    other = json.loads((results / "en-de-held-out-quick.json").read_text())
    assert other["test_set"] == "held-out.de (12 sentences)"
    assert set(other["runs"]) == set(found["runs"])
    assert (work / "runs" / "aiokd" / "results-held-out.json").is_file()
    timings = json.loads((work / "timings.json").read_text())
    assert "evaluate-held-out:aiokd" in timings and "evaluate:aiokd" in timings
    assert json.loads((results / "en-de-quick.json").read_text())["runs"] == found["runs"]

    named = run_driver(work, results, *data, *held_out, "--name", "mine")
    assert named.returncode == 0, named.stdout + named.stderr
    assert (results / "mine-held-out-quick.json").is_file()
    assert not (results / "mine-quick.json").exists()


@pytest.mark.parametrize("extra, message", [
    (["--data", "nowhere"], "--data nowhere: not a data directory"),
    (["--test-src", "a.de"], "--test-src and --test-ref go together"),
    (["--test-src", "a.de", "--test-ref", "a.en"], "no such file"),
])
def test_bad_data_options_are_one_line_errors(tmp_path, extra, message):
    done = run_driver(tmp_path / "work", tmp_path / "results", *extra)
    assert done.returncode != 0 and message in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_student_with_fewer_seeds_costs_its_mean_once():
    """From scratch: 2-2 with seeds 1 and 2 (10 and 12 minutes), 6-6 with seed 1 only (30): the
    system's cost and updates are per student the mean over its seeds, summed (11 + 30)."""
    runs = {name: _record(name, "scratch", seed, {student: 30.0}, minutes)
            | {"student": student, "updates": updates}
            for name, seed, student, minutes, updates in [
                ("scratch-2-2", 1, "2-2", 10.0, 400), ("scratch-2-2-seed2", 2, "2-2", 12.0, 600),
                ("scratch-6-6", 1, "6-6", 30.0, 1000)]}
    scratch = report.summarize(runs, ["2-2", "6-6"], plan.CANDIDATES)["scratch"]
    assert scratch["cost_minutes"] == 41.0 and scratch["updates"] == 1500
    assert scratch["cost_minutes_by_seed"] == {"1": 40.0, "2": 12.0}



@pytest.mark.parametrize("busy", [True, False])
def test_a_step_cost_is_recorded_while_it_runs(tmp_path, monkeypatch, busy):
    """A driver killed without warning keeps the cost of its running step: ``timings.json``
    grows while the step runs, not only when it ends; its CPU seconds are counted apart from its
    wall seconds (a step that waits, or is paused, costs no CPU time).  The busy step computes
    for 1.5 CPU-seconds however loaded the machine is; the idle one sleeps for 2 seconds."""
    import threading

    import run
    fake_python = tmp_path / "python"
    work = ("while time.process_time() < 1.5: pass" if busy else "time.sleep(2)")
    fake_python.write_text(f"#!{sys.executable}\nimport time\n{work}\n")
    fake_python.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake_python))
    monkeypatch.setattr(run, "FLUSH_SECONDS", 0.1)
    step = plan.Step("train:scratch-2-2", "train scratch-2-2", ["train"], lambda: False)
    path = tmp_path / "timings.json"
    timings = run.Timings(path)
    worker = threading.Thread(target=run.execute, args=(step, tmp_path / "step.log", timings, 1))
    worker.start()
    running = {}
    while worker.is_alive() and running.get("cpu:train:scratch-2-2" if busy else
                                            "train:scratch-2-2", 0.0) < 0.5:
        time.sleep(0.05)
        running = json.loads(path.read_text()) if path.is_file() else {}
    assert worker.is_alive(), "the step ended before its cost was recorded"
    worker.join()
    finished = json.loads(path.read_text())
    wall, cpu = finished["train:scratch-2-2"], finished["cpu:train:scratch-2-2"]
    assert running["train:scratch-2-2"] < wall
    if busy:
        assert running["cpu:train:scratch-2-2"] < cpu and 1.4 < cpu < wall + 0.5
    else:
        assert wall > 1.9 and cpu < 0.5
    machines = finished["machine:train:scratch-2-2"]
    assert list(machines) == [timings_module.this_machine()]
    assert machines[timings_module.this_machine()] == pytest.approx(cpu)


def test_a_step_cost_is_kept_by_machine(tmp_path):
    """A step resumed on another machine keeps each machine's CPU-minutes apart, and the cost
    counted before machines were recorded is named so; on a GPU the cost is wall-clock."""
    path = tmp_path / "timings.json"
    path.write_text(json.dumps({"train:a": 900.0, "cpu:train:a": 600.0}))  # an older driver's
    timings = timings_module.Timings(path)
    timings.add("train:a", 300.0, 120.0)
    timings.seconds["machine:train:a"]["CPU: another"] = 60.0
    timings.seconds["cpu:train:a"] += 60.0
    assert timings.machine_minutes("train:a", gpu=False) == {
        timings_module.this_machine(): 2.0, "CPU: another": 1.0,
        timings_module.NOT_RECORDED: 10.0}
    assert timings.cost_minutes("train:a", gpu=False) == 13.0
    assert sum(timings.machine_minutes("train:a", gpu=True).values()) == pytest.approx(20.0)


def test_a_step_two_drivers_need_runs_once(tmp_path, capsys):
    """While one driver holds a step (trains the from-scratch 6-6, say), a second driver that
    reaches the same step waits, and says so, instead of training the same run directory at the
    same time; once the first lets go, the second goes on (and will find the step done)."""
    import threading

    second_in = threading.Event()

    def second_driver() -> None:
        with locks.step_locked(tmp_path, "train:scratch-6-6", "[2/5] train scratch-6-6"):
            second_in.set()

    with locks.step_locked(tmp_path, "train:scratch-6-6", "[1/3] train scratch-6-6"):
        worker = threading.Thread(target=second_driver)
        worker.start()
        while "waiting" not in capsys.readouterr().out:
            assert worker.is_alive()
            time.sleep(0.02)
        assert not second_in.wait(0.3)
        with locks.step_locked(tmp_path, "evaluate:scratch-6-6", "[3/3] evaluate scratch-6-6"):
            pass  # another step is not held up
    worker.join(5)
    assert second_in.is_set()


def test_the_length_penalty_is_chosen_on_validation_and_scored_on_test(tiny_model_dir,
                                                                       tiny_data_dir, tmp_path):
    assert length_penalty.chosen_penalty({1.0: {"bleu": 30.0}, 1.5: {"bleu": 31.0},
                                          2.0: {"bleu": 31.0}}) == 1.5  # the lower of a tie
    with pytest.raises(SystemExit):
        length_penalty.parse_run("W/runs/aiokd")
    out = tmp_path / "lenpen"
    length_penalty.main(["--data", str(tiny_data_dir), "--runs", f"{tiny_model_dir}:2-2,3-3",
                         "--grid", "1,3", "--out", str(out)])
    found = json.loads(out.with_suffix(".json").read_text())
    entry = found["runs"][tiny_model_dir.name]["students"]["2-2"]
    assert set(entry["valid"]) == {"1", "3"} and entry["chosen"] in (1.0, 3.0)
    assert entry["valid"][f"{entry['chosen']:g}"]["bleu"] == max(
        v["bleu"] for v in entry["valid"].values())
    if entry["chosen"] == 1.0:
        assert entry["test_chosen"] == entry["test_default"]
    assert f"| `{tiny_model_dir.name}` | 3-3 |" in out.with_suffix(".md").read_text()
    found["runs"]["gone"] = found["runs"][tiny_model_dir.name]  # a run no longer at hand
    out.with_suffix(".json").write_text(json.dumps(found))
    again = tmp_path / "again"
    length_penalty.main(["--data", str(tiny_data_dir), "--runs", f"{tiny_model_dir}:3-3",
                         "--grid", "1", "--out", str(again), "--keep", str(out) + ".json"])
    kept = json.loads(again.with_suffix(".json").read_text())["runs"]
    assert list(kept[tiny_model_dir.name]["students"]) == ["3-3"]  # measured again: replaced
    assert list(kept["gone"]["students"]) == ["2-2", "3-3"]  # kept as it was
    commands = again.with_suffix(".md").read_text().split("```bash\n")[1]
    assert commands.count("length_penalty.py") == 2 and "--keep" in commands  # every run's



def test_the_long_default_is_planned_as_the_continuation_of_its_capped_twin(tmp_path):
    _, steps = tiny_steps(tmp_path, systems=["aiokd"], preset="narrow", seeds=(2,))
    keys = [s.key for s in steps]
    order = ["train:aiokd-capped-seed2", "evaluate:aiokd-capped-seed2", "continue:aiokd-seed2",
             "train:aiokd-seed2", "evaluate:aiokd-seed2"]
    assert [k for k in keys if k in order] == order
    _, steps = tiny_steps(tmp_path, systems=["aiokd"])  # tiny: stage 2 is not long
    assert not [s for s in steps if s.key.startswith(("continue:", "train:aiokd-capped"))]


def trained_at_once(work: plan.Work, system: str, out: Path) -> bytes:
    """The model that ``system``'s own train command, as the driver plans it in ``work``,
    trains into ``out`` in one go."""
    steps = work.steps([(system, ["2-2", "6-6"])])
    args = next(s.args for s in steps if s.key == f"train:{system}")
    args[args.index("--out") + 1] = str(out)
    done = run_aiokd(*args)
    assert done.returncode == 0, done.stderr
    return (out / "model.safetensors").read_bytes()


@pytest.mark.slow
def test_the_continued_run_is_the_long_run_and_pays_for_its_twin(tmp_path, monkeypatch):
    """The driver trains the capped twin, copies it less its model and evaluations, and goes on:
    the continued run's model is byte for byte that of the long command run at once; its
    record counts the twin's training in its cost and the twin keeps its own row."""
    import continuation
    import run

    quick = plan.load_preset("quick")
    quick.long_stage2 = ["aiokd"]
    monkeypatch.setattr(run, "load_preset", lambda name: quick)
    work, results = tmp_path / "work", tmp_path / "results"
    argv = ["--quick", "--out", str(work), "--results-dir", str(results), "--systems", "aiokd"]
    assert run.main(argv) == 0
    runs = work / "runs"
    assert continuation.continued_run(runs / "aiokd") == "aiokd-capped"
    assert not continuation.continued_run(runs / "aiokd-capped")
    assert (runs / "aiokd" / "model.safetensors").read_bytes() == trained_at_once(
        plan.Work(work, quick), "aiokd", tmp_path / "at-once")
    found = json.loads((results / "multi30k-quick.json").read_text())["runs"]
    timings = json.loads((work / "timings.json").read_text())
    assert found["aiokd"]["continues"] == "aiokd-capped"
    assert found["aiokd"]["updates"] == 6 and found["aiokd-capped"]["updates"] == 4
    assert found["aiokd"]["extra_minutes"] == pytest.approx(
        (timings["cpu:train:aiokd-capped"] + timings.get("cpu:continue:aiokd", 0.0)) / 60, abs=0.01)
    assert found["aiokd"]["commands"][0].startswith("aiokd train") and "aiokd-capped" in found[
        "aiokd"]["commands"][0]


def test_an_ablation_of_stage_2_alone_is_planned_from_the_default_s_stage_1(tmp_path):
    """Without mutual learning (which starts in stage 2) stage 1 is the default's: on `narrow`
    the run starts from a copy of that stage of `aiokd-capped` (the default at the ablations'
    budget); an ablation that changes stage 1 (no DGD) trains both stages."""
    preset, steps = tiny_steps(tmp_path, systems=["aiokd-no-ml", "aiokd-no-dgd"], preset="narrow")
    work = plan.Work(tmp_path, preset)
    keys = [s.key for s in steps]
    order = ["train:aiokd-capped", "stage1:aiokd-no-ml", "train:aiokd-no-ml"]
    assert [k for k in keys if k in order] == order
    assert not [k for k in keys if k.startswith("stage1:aiokd-no-dgd")]
    assert {s: work.shares_stage1(s) for s in plan.ABLATIONS if work.shares_stage1(s)} == {
        "aiokd-no-ml": "aiokd-capped"}


@pytest.mark.slow
def test_the_stage_1_copy_is_the_run_trained_at_once_and_pays_its_share(tmp_path, monkeypatch):
    """The driver trains the default, copies its stage 1 and trains the no-mutual-learning
    stage 2 from it: the model is byte for byte that of the ablation's own command run at once;
    its record counts the default's training in the share of stage-1 updates (half at U + U)."""
    import continuation
    import run

    work, results = tmp_path / "work", tmp_path / "results"
    argv = ["--quick", "--out", str(work), "--results-dir", str(results), "--systems",
            "aiokd-no-ml"]
    assert run.main(argv) == 0
    runs = work / "runs"
    assert continuation.continued_run(runs / "aiokd-no-ml") == "aiokd"
    assert (runs / "aiokd-no-ml" / "model.safetensors").read_bytes() != (
        runs / "aiokd" / "model.safetensors").read_bytes()
    assert (runs / "aiokd-no-ml" / "model.safetensors").read_bytes() == trained_at_once(
        plan.Work(work, plan.load_preset("quick")), "aiokd-no-ml", tmp_path / "at-once")
    found = json.loads((results / "multi30k-quick.json").read_text())["runs"]
    timings = json.loads((work / "timings.json").read_text())
    mine = found["aiokd-no-ml"]
    assert mine["continues"] == "aiokd" and mine["twin_share"] == 0.5 and mine["updates"] == 4
    assert mine["extra_minutes"] == pytest.approx(
        0.5 * timings["cpu:train:aiokd"] / 60 + timings.get("cpu:stage1:aiokd-no-ml", 0) / 60,
        abs=0.01)
    assert sum(mine["machines"].values()) == pytest.approx(
        mine["train_minutes"] + mine["extra_minutes"], abs=0.02)


@pytest.mark.slow
def test_a_stopped_driver_stops_its_step_and_the_step_keeps_its_work(tmp_path):
    """SIGTERM to the driver (as a scheduler stops a job) reaches the running ``aiokd train``,
    which saves its checkpoint where it is; the driver says how to go on and exits 130."""
    import signal

    work = tmp_path / "work"
    driver = subprocess.Popen(
        [sys.executable, str(DRIVER / "run.py"), "--quick", "--out", str(work), "--results-dir",
         str(tmp_path / "results"), "--systems", "scratch:2-2", "--max-updates", "5000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())
    log = work / "logs" / "train-scratch-2-2.log"
    deadline = time.monotonic() + 300
    while not (log.is_file() and "stage 1:" in log.read_text(errors="replace")):
        assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()
        time.sleep(0.2)
    driver.send_signal(signal.SIGTERM)
    out, err = driver.communicate(timeout=120)
    assert driver.returncode == 130, out + err
    assert "interrupted; run the same command again to continue" in err
    stopped = log.read_text().strip().splitlines()[-1]
    assert stopped.startswith("aiokd: interrupted: stage 1 stopped at update "), stopped
    update = int(stopped.split("update ")[1].split(",")[0])
    checkpoint = work / "runs" / "scratch-2-2" / "checkpoints" / "stage1-last.safetensors"
    assert read_checkpoint(checkpoint).meta["state"]["update"] == update


def test_status_says_what_is_done_running_and_to_come(tmp_path):
    p, steps = tiny_steps(tmp_path, systems=["scratch:2-2"], preset="narrow")
    work = plan.Work(tmp_path, p)
    run = tmp_path / "runs" / "scratch-2-2"
    run.mkdir(parents=True)
    (run / "log.jsonl").write_text("".join(json.dumps(e) + "\n" for e in [
        {"kind": "valid", "stage": 1, "update": 250, "2-2": 3.5, "mean": 3.5},
        {"kind": "valid", "stage": 1, "update": 500, "2-2": 3.25, "mean": 3.25},
        {"kind": "train", "stage": 1, "update": 450, "time": 1000.0},
        {"kind": "train", "stage": 1, "update": 500, "time": 1100.0},
        {"kind": "train", "stage": 1, "update": 550, "time": 9000.0},  # after a pause
        {"kind": "train", "stage": 1, "update": 600, "time": 9100.0}]))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text("{}")
    minutes = {"train:scratch-2-2": 12.34}.get
    with locks.step_locked(tmp_path, "train:scratch-2-2", "test"):
        lines = status.status_lines(steps, work, lambda key: minutes(key, 0.0))
    by_title = {line.split("] ", 1)[1].split(":")[0]: line for line in lines}
    assert by_title["prepare Multi30k"].endswith(": done")
    assert by_title["train scratch-2-2"].endswith(
        ": running; stage 1, update 600 of 12,000, best mean valid CE 3.2500 at update 500, "
        "2.00 s per update: 6.3 h to the cap; 12.3 min (wall clock)")
    assert by_title["evaluate scratch-2-2"].endswith(": to come")
    assert len(lines) == len(steps) == 3
    assert not locks.held(tmp_path, "train:scratch-2-2")
