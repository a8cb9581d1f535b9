"""The Multi30k benchmark driver (``benchmarks/reproduce``): its plan, targets and costs, and an
end-to-end ``--quick`` run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aiokd.cli import build_parser
from aiokd.config import Config
from aiokd.data.prepare import prepare
from aiokd.train.api import build_config
from tests.conftest import TINY_VOCAB, make_corpus, subprocess_env

DRIVER = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce"
sys.path.insert(0, str(DRIVER))

import plan  # noqa: E402
import report  # noqa: E402

SYSTEMS = ("scratch", "word-kd", "aiokd", "aiokd-sandwich", "aiokd-sandwich-kd1", "aiokd-no-dgd",
           "aiokd-no-ml", "aiokd-one-stage", "aiokd-seqkd")


def tiny_steps(tmp_path, systems=None, groups=(), preset="tiny"):
    p = plan.load_preset(preset)
    chosen = plan.selection(p, systems, list(groups), plan.sort_students(p.students))
    return p, plan.Work(tmp_path, p).steps(chosen)


def config_of(argv: list[str]) -> Config:
    """The config that ``aiokd ARGV`` (a train command) trains with."""
    a = build_parser().parse_args(argv)
    return build_config(a.preset, a.config, a.overrides, a.max_updates, a.stage, a.method,
                        a.student, a.teacher)


def test_every_train_command_is_a_valid_aiokd_train(tmp_path):
    p, steps = tiny_steps(tmp_path, systems=list(report.ORDER))
    trains = {s.key: s.args for s in steps if s.key.startswith("train:")}
    assert len(trains) == 7 + 3 * 5  # 7 AIO-KD systems; 5 students x 3 separate systems
    for key, args in trains.items():
        cfg = config_of(args)
        u = p.updates_per_stage
        one_stage = key in ("train:aiokd-one-stage",) or cfg.distill.method != "aiokd"
        assert cfg.train.max_updates == (2 * u if one_stage else u), key
        assert cfg.train.patience == p.patience and cfg.train.validate_every == p.validate_every
        assert cfg.train.stages == ("1" if key == "train:aiokd-one-stage" else "both")
    assert config_of(trains["train:aiokd-sandwich"]).distill.sandwich
    low_kd = config_of(trains["train:aiokd-sandwich-kd1"]).distill
    assert low_kd.sandwich and low_kd.alpha == 1.0
    assert not config_of(trains["train:aiokd-no-dgd"]).distill.detach


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
    assert found["every_student_vs_word_kd"]["below_word_kd"] == {"aiokd": ["2-2"],
                                                                 "aiokd-sandwich": []}
    assert found["every_student_vs_word_kd"]["met"] is True
    assert report.targets({"aiokd": systems["aiokd"]})["avg_vs_scratch"]["met"] is None
    assert found["avg_vs_word_kd/aiokd-sandwich"]["met"] is True  # 25 >= 24.5 + 0.5
    assert found["teacher_vs_scratch/aiokd-sandwich"]["value"] == 27.5  # its own 6-6
    assert "avg_vs_scratch/aiokd-sandwich-kd1" not in found  # no results for it


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
    assert set(found["systems"]) == set(SYSTEMS)
    for name, system in found["systems"].items():
        assert set(system["bleu"]) == {"2-2", "6-6"}, name
        assert system["cost_minutes"] > 0
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

    again = run_driver(work, results)
    assert again.returncode == 0, again.stdout + again.stderr
    progress = [line for line in again.stdout.splitlines() if line.startswith("[")]
    assert progress and all(line.endswith("done already") for line in progress)
    assert json.loads((results / "multi30k-quick.json").read_text())["runs"] == found["runs"]


def test_kd_systems_pay_for_their_teacher():
    def record(run, system, student, minutes):
        return {"run": run, "system": system, "student": student, "bleu": {student: 30.0},
                "chrf": {student: 50.0}, "train_minutes": minutes, "updates": 10}

    runs = {"scratch-6-6": record("scratch-6-6", "scratch", "6-6", 12.0),
            "word-kd-6-6": record("word-kd-6-6", "word-kd", "6-6", 20.0)}
    systems = report.summarize(runs, ["6-6"], plan.CANDIDATES)
    assert systems["scratch"]["cost_minutes"] == 12.0
    assert systems["word-kd"]["cost_minutes"] == 32.0
    assert systems["word-kd"]["cost_minutes_15"] == pytest.approx(20.0 * 120 / 12 + 12.0)


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
    assert json.loads((results / "en-de-quick.json").read_text())["runs"] == found["runs"]


@pytest.mark.parametrize("extra, message", [
    (["--data", "nowhere"], "--data nowhere: not a data directory"),
    (["--test-src", "a.de"], "--test-src and --test-ref go together"),
    (["--test-src", "a.de", "--test-ref", "a.en"], "no such file"),
])
def test_bad_data_options_are_one_line_errors(tmp_path, extra, message):
    done = run_driver(tmp_path / "work", tmp_path / "results", *extra)
    assert done.returncode != 0 and message in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
