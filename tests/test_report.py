"""What training shows of itself: per sampled student the CE ratio to the teacher and whether
its KD term was detached, per validation every student's CE and their spread, per stage the
share of KD terms detached."""

from __future__ import annotations

import json

import pytest

from aiokd.train.report import detached_line, format_losses, student_statistics, with_spread
from tests.conftest import run_cli, train_argv


def test_student_statistics_from_an_updates_sums():
    totals = {"ce": 200.0, "batches": 2.0, "student_ces": [220.0, 300.0], "gates": [2.0, 1.0]}
    found = student_statistics([(2, 2), (6, 3)], totals)
    assert found == {"students": ["2-2", "6-3"], "ratios": [1.1, 1.5], "gates": [1.0, 0.5],
                     "ratio_max": 1.5, "detached": 0.5}
    assert student_statistics([], {"ce": 1.0}) == {}


def test_validation_spread_and_grid():
    losses = with_spread({"2-2": 3.0, "3-2": 2.5, "3-3": 2.25, "mean": 2.5833},
                         [(2, 2), (3, 2), (3, 3)])
    assert losses["spread"] == pytest.approx(0.75)
    assert "spread (max - min) 0.7500" in format_losses(losses, [(2, 2), (3, 2), (3, 3)])
    assert detached_line(3, 12) == "KD terms detached: 3 of 12 (25.0%)"


@pytest.mark.parametrize("eta, detached", [(1e-6, True), (1e6, False)])
def test_training_logs_ratios_gates_and_spread(tiny_data_dir, tmp_path, capsys, eta, detached):
    out = tmp_path / "run"
    status, stdout, stderr = run_cli(train_argv(tiny_data_dir, out, "train.stages=1",
                                                f"distill.eta={eta}", "train.log_every=1",
                                                "distill.k=3", "train.amp=none"), capsys)
    assert status == 0, stderr
    entries = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    train = [e for e in entries if e["kind"] == "train"]
    assert len(train) == 2
    for entry in train:
        assert len(entry["students"]) == len(entry["ratios"]) == len(entry["gates"]) == 3
        assert all(r > 0 for r in entry["ratios"]) and entry["ratio_max"] == max(entry["ratios"])
        assert entry["gates"] == [0.0 if detached else 1.0] * 3
        assert entry["detached"] == (3.0 if detached else 0.0)
    valid = [e for e in entries if e["kind"] == "valid"]
    students = [v for k, v in valid[-1].items() if "-" in k]
    assert valid[-1]["spread"] == pytest.approx(max(students) - min(students))
    share = "6 of 6 (100.0%)" if detached else "0 of 6 (0.0%)"
    assert f"KD terms detached: {share}" in stdout + stderr
    [finished] = [e for e in entries if e["kind"] == "finished"]
    assert finished["why"] == "max_updates" and finished["update"] == 2
    assert finished["kd_terms"] == 6 and finished["kd_detached"] == (6 if detached else 0)
    assert finished["best_ce"] == min(v["mean"] for v in valid)
