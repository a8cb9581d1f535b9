"""``aiokd select``: the best student under budgets, the Pareto front, and the exit statuses."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiokd.errors import UserError
from aiokd.evaluation.results import FORMAT, VERSION
from aiokd.evaluation.select import pareto_front, select_student
from tests.conftest import run_aiokd

# student, BLEU, ms/sentence, parameters (millions), size MB
FIGURES = [("2-2", 30.0, 10.0, 4.0, 16.0), ("4-2", 32.0, 12.0, 5.0, 20.0),
           ("6-2", 33.5, 14.0, 6.0, 24.0), ("4-4", 33.0, 20.0, 6.0, 24.0),
           ("6-6", 35.0, 30.0, 10.0, 40.0)]


def entry(name, bleu, ms, params_m, size_mb):
    le, ld = map(int, name.split("-"))
    return {"student": name, "enc_layers": le, "dec_layers": ld, "bleu": bleu, "chrf": bleu + 20,
            "tok_bleu": None, "params": int(params_m * 1e6),
            "params_no_embeddings": int(params_m * 1e6) - 2_000_000,
            "size_bytes": int(size_mb * 1e6), "size_mb": size_mb, "ms_per_sentence": ms,
            "sentences_per_second": 1000 / ms if ms else None, "peak_memory_mb": 500.0}


def make_results(figures=FIGURES, latency=True):
    entries = [entry(*row) for row in figures]
    if not latency:
        for e in entries:
            e["ms_per_sentence"] = e["sentences_per_second"] = e["peak_memory_mb"] = None
    return {"format": FORMAT, "version": VERSION, "model": "runs/x", "students": entries}


def chosen(**budgets):
    best = select_student(make_results(), **budgets)
    return best and best["student"]


def test_without_budgets_the_best_bleu_wins():
    assert chosen() == "6-6"


@pytest.mark.parametrize(("budgets", "expected"), [
    ({"max_latency_ms": 25}, "6-2"),
    ({"max_latency_ms": 14}, "6-2"),
    ({"max_latency_ms": 13.9}, "4-2"),
    ({"max_params": 5e6}, "4-2"),
    ({"max_size_mb": 16}, "2-2"),
    ({"min_bleu": 33.2, "max_latency_ms": 25}, "6-2"),
    ({"min_bleu": 34}, "6-6"),
    ({"max_latency_ms": 100, "max_params": 1e9, "max_size_mb": 1e3, "min_bleu": 0}, "6-6"),
])
def test_budgets(budgets, expected):
    assert chosen(**budgets) == expected


def test_nothing_fits_gives_none():
    assert chosen(max_latency_ms=5) is None
    assert chosen(max_latency_ms=12, min_bleu=33) is None


def test_ties_go_to_the_faster_student():
    results = make_results([("4-2", 32.0, 12.0, 5.0, 20.0), ("3-2", 32.0, 11.0, 5.0, 20.0)])
    assert select_student(results)["student"] == "3-2"


def test_latency_budget_without_latency_figures_is_a_user_error():
    with pytest.raises(UserError, match="--no-latency"):
        select_student(make_results(latency=False), max_latency_ms=10)
    assert select_student(make_results(latency=False), max_params=5e6)["student"] == "4-2"


def test_unknown_budget_and_malformed_results():
    with pytest.raises(TypeError, match="max_memory"):
        select_student(make_results(), max_memory=1)
    with pytest.raises(UserError):
        select_student({"students": []})
    broken = make_results()
    broken["students"][0]["bleu"] = "high"
    with pytest.raises(UserError, match="bleu"):
        select_student(broken)


def test_pareto_front_example():
    front = pareto_front(make_results()["students"])
    # 4-4 is beaten by 6-2: faster and better
    assert [e["student"] for e in front] == ["2-2", "4-2", "6-2", "6-6"]
    by_params = pareto_front(make_results()["students"], x="params")
    assert [e["student"] for e in by_params] == ["2-2", "4-2", "6-2", "6-6"]


def dominates(a, b):
    return (a["ms_per_sentence"] <= b["ms_per_sentence"] and a["bleu"] >= b["bleu"]
            and (a["ms_per_sentence"] < b["ms_per_sentence"] or a["bleu"] > b["bleu"]))


points = st.lists(st.tuples(st.integers(0, 8), st.integers(0, 8)), min_size=0, max_size=25)


@given(points)
def test_pareto_front_property(pairs):
    entries = [{"student": f"s{i}", "ms_per_sentence": float(x), "bleu": float(y)}
               for i, (x, y) in enumerate(pairs)]
    front = pareto_front(entries)
    members = {id(e) for e in front}
    for member in front:
        assert not any(dominates(other, member) for other in entries)
    for other in entries:
        if id(other) not in members:
            assert any(dominates(member, other) for member in front)
    assert [e["ms_per_sentence"] for e in front] == sorted(e["ms_per_sentence"] for e in front)
    assert len(members) == len(front)


def write(tmp_path, results, name="results.json"):
    path = tmp_path / name
    path.write_text(json.dumps(results))
    return path


def test_cli_prints_the_best_student_and_the_front(tmp_path):
    path = write(tmp_path, {**make_results(), "engine": "torch", "dtype": "bfloat16",
                            "device": "cpu"})
    result = run_aiokd("select", "--results", path, "--max-latency-ms", "25", "--min-bleu", "31")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("best student: 6-2")
    assert "latency (ms/sentence at batch 1, torch in bfloat16 on cpu)" in result.stdout
    table = result.stdout.split("Pareto front", 1)[1]
    assert "| * 6-2" in table and "4-4" not in table
    assert all(name in table for name in ("2-2", "4-2", "6-6"))


def test_cli_nothing_fits_exits_1_naming_the_tightest_budget(tmp_path):
    path = write(tmp_path, make_results())
    result = run_aiokd("select", "--results", path, "--max-latency-ms", "5", "--min-bleu", "31")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--max-latency-ms 5" in lines[0] and "2-2" in lines[0]
    result = run_aiokd("select", "--results", path, "--max-latency-ms", "12", "--min-bleu", "33")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("content", [None, "{not json", json.dumps({"format": "other"}),
                                     json.dumps({"format": FORMAT, "version": VERSION})])
def test_cli_bad_results_file_is_a_one_line_error(tmp_path, content):
    path = tmp_path / "results.json"
    if content is not None:
        path.write_text(content)
    result = run_aiokd("select", "--results", path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aiokd: error: ") and str(path) in lines[0]
