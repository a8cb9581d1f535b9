"""The teacher stage (``train.teacher_updates``): ``aiokd train`` first trains the full model
alone, then AIO-KD's stages from it.  It is the two-command recipe in one run: the from-scratch
teacher (``--method scratch --student 3-3``), then AIO-KD ``--init-from`` it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aiokd.config import load_config
from aiokd.model.checkpoint import load_model_files
from aiokd.train.api import train
from aiokd.train.loop import stage_config
from aiokd.train.run_dir import Run
from tests.conftest import TINY_MODEL, assert_refused, train_argv

# Without dropout nothing random tells the two recipes apart (only their dropout noise streams
# differ), so they must give the same tensors.
OPTIONS = [*TINY_MODEL, "model.dropout=0", "train.validate_every=2", "train.log_every=1",
           "train.lr_from_teacher=2e-3"]
TEACHER_UPDATES, STAGE_UPDATES = 4, 6


def assert_same_weights(got, want) -> None:
    """The models of ``got`` and ``want`` (model or run directories, or checkpoints) have
    identical tensors."""
    got, want = (load_model_files(path).model.state_dict() for path in (got, want))
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].equal(want[name]), name


def test_the_teacher_stage_is_the_from_scratch_teacher_then_init_from_it(tmp_path,
                                                                         tiny_data_dir):
    one_run = tmp_path / "one-run"
    train(tiny_data_dir, one_run, max_updates=STAGE_UPDATES,
          overrides=[*OPTIONS, f"train.teacher_updates={TEACHER_UPDATES}"])
    teacher = tmp_path / "teacher"
    train(tiny_data_dir, teacher, method="scratch", student="3-3", max_updates=TEACHER_UPDATES,
          overrides=OPTIONS)
    from_teacher = tmp_path / "from-teacher"
    train(tiny_data_dir, from_teacher, max_updates=STAGE_UPDATES, init_from=teacher,
          overrides=[*OPTIONS, f"train.teacher_updates={TEACHER_UPDATES}"])

    checkpoints = one_run / "checkpoints"
    assert_same_weights(checkpoints / "stage0-best.safetensors", teacher)
    assert_same_weights(one_run, from_teacher)
    # with --init-from the given model is the teacher: no teacher stage
    assert not (from_teacher / "checkpoints" / "stage0-last.safetensors").exists()

    entries = [json.loads(line) for line in (one_run / "log.jsonl").read_text().splitlines()]
    teacher_validations = [e for e in entries if e["kind"] == "valid" and e["stage"] == 0]
    assert teacher_validations and all(set(e) >= {"3-3"} and "2-2" not in e
                                       for e in teacher_validations)
    assert max(e["update"] for e in entries if e["stage"] == 0) == TEACHER_UPDATES
    teacher_updates = [e for e in entries if e["kind"] == "train" and e["stage"] == 0]
    assert teacher_updates and not any(e.get("students") for e in teacher_updates)
    assert {e["stage"] for e in entries if e["kind"] == "valid"} == {0, 1, 2}
    # the teacher stage warms up as from random weights; the stages from it run at the constant
    # train.lr_from_teacher
    lrs = {stage: [e["lr"] for e in entries if e["kind"] == "train" and e["stage"] == stage]
           for stage in (0, 1, 2)}
    assert lrs[0][0] < max(lrs[0]) and 2e-3 not in lrs[0]
    assert set(lrs[1]) == set(lrs[2]) == {2e-3}
    teacher_lrs = [json.loads(line).get("lr") for line in
                   (teacher / "log.jsonl").read_text().splitlines()]
    assert 2e-3 not in teacher_lrs  # a run from random weights keeps its schedule


@pytest.mark.parametrize(("stages", "init_from", "expected", "from_teacher"), [
    ("both", None, [0, 1, 2], True), ("1", None, [0, 1], True), ("2", None, [2], False),
    ("both", Path("teacher"), [1, 2], True)])
def test_the_teacher_stage_comes_before_stage_1_unless_a_teacher_is_given(stages, init_from,
                                                                            expected, from_teacher):
    cfg = load_config("tiny", overrides=[f"train.stages={stages}",
                                              "train.teacher_updates=10"])
    run = Run(Path("run"), cfg, Path("data"), tokenizer=None, languages={}, init_from=init_from)
    assert run.stages == expected
    assert run.from_teacher == from_teacher
    from_random = Run(Path("run"), load_config("tiny"), Path("data"), None, {})
    assert from_random.stages == [1, 2] and not from_random.from_teacher


def test_stage_2_alone_needs_stage_1s_best_checkpoint(tmp_path, tiny_data_dir, capsys):
    out = tmp_path / "run"
    assert_refused(train_argv(tiny_data_dir, out, "train.stages=2"), capsys,
                   "stage 2 starts from stage 1's best checkpoint", "stage1-best.safetensors",
                   "train.stages=1 or both")


def test_max_updates_caps_the_teacher_stage_too():
    cfg = load_config("quickstart", overrides=["train.teacher_updates=300"], extra={
        "train": {"max_updates": 100}})
    teacher = stage_config(cfg, 0)
    assert teacher.train.max_updates == 100 and teacher.distill.method == "scratch"
    assert teacher.distill.student == "6-6"
    assert stage_config(cfg, 1).train.max_updates == 100 and stage_config(cfg, 2) is cfg
    quickstart = load_config("quickstart")
    assert [stage_config(quickstart, stage).train.max_updates for stage in (0, 1, 2)] == [
        1250, 625, 1875]
