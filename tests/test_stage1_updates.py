"""A shorter stage 1 (``train.stage1_updates``): AIO-KD's stage 1 stops at its own cap while
stage 2 runs on to ``train.max_updates``; a baseline's one stage keeps the plain cap.  A run whose
stages both stopped at a cap of U goes on in stage 2 alone when ``max_updates`` is raised, to the
files of a run trained with the longer stage 2 at once."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from aiokd.model.checkpoint import read_checkpoint
from aiokd.train.api import train
from tests.conftest import TINY_MODEL

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce"))
import training_log  # noqa: E402

OPTIONS = [*TINY_MODEL, "model.dropout=0.1", "train.validate_every=2", "train.save_every=2",
           "train.log_every=1"]
STAGE1, CAP = 3, 6


def last_update(run: Path, stage: int) -> int:
    checkpoint = read_checkpoint(run / "checkpoints" / f"stage{stage}-last.safetensors")
    return checkpoint.meta["state"]["update"]


def test_stage_1_stops_at_its_own_cap_and_stage_2_runs_on(tmp_path, tiny_data_dir):
    run = tmp_path / "run"
    train(tiny_data_dir, run, max_updates=CAP,
          overrides=[*OPTIONS, f"train.stage1_updates={STAGE1}"])
    assert (last_update(run, 1), last_update(run, 2)) == (STAGE1, CAP)
    entries = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    finished = {e["stage"]: (e["update"], e["why"]) for e in entries if e["kind"] == "finished"}
    assert finished == {1: (STAGE1, "max_updates"), 2: (CAP, "max_updates")}
    config = training_log.run_config(run)
    assert [training_log.stage_cap(config, stage) for stage in (1, 2)] == [STAGE1, CAP]


def test_a_baseline_keeps_the_plain_cap(tmp_path, tiny_data_dir):
    run = tmp_path / "run"
    train(tiny_data_dir, run, method="scratch", student="2-2", max_updates=CAP,
          overrides=[*OPTIONS, f"train.stage1_updates={STAGE1}"])
    assert last_update(run, 1) == CAP
    assert training_log.stage_cap(training_log.run_config(run), 1) == CAP


def test_raising_the_cap_reopens_stage_2_alone(tmp_path, tiny_data_dir):
    at_once, raised = tmp_path / "at-once", tmp_path / "raised"
    longer = [*OPTIONS, f"train.stage1_updates={STAGE1}"]
    train(tiny_data_dir, at_once, max_updates=CAP, overrides=longer)
    train(tiny_data_dir, raised, max_updates=STAGE1, overrides=OPTIONS)
    assert (last_update(raised, 1), last_update(raised, 2)) == (STAGE1, STAGE1)
    train(tiny_data_dir, raised, max_updates=CAP, overrides=longer)
    assert (last_update(raised, 1), last_update(raised, 2)) == (STAGE1, CAP)
    # stage 1's checkpoints record the settings they were written under, which differ here
    for name in ["model.safetensors", "checkpoints/stage2-last.safetensors",
                 "checkpoints/stage2-best.safetensors"]:
        assert (raised / name).read_bytes() == (at_once / name).read_bytes(), name
