"""The time budget of a training job (``train.max_minutes``, ``aiokd train --max-minutes``): the
stages share it in proportion to their work left, a stage whose share is spent stops as at its
cap, and running the job again goes on with the stage that was stopped."""

from __future__ import annotations

import functools
import json

from aiokd.config import load_config
from aiokd.model.checkpoint import read_checkpoint
from aiokd.train.api import build_config, train
from aiokd.train.budget import TimeBudget, update_cost
from aiokd.train.loop import stage_config
from tests.conftest import TINY_MODEL


class TickingClock:
    """A clock that advances by one second each time it is read."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def test_each_stage_gets_its_share_of_the_time_left():
    now = 0.0
    budget = TimeBudget(10, clock=lambda: now)  # ends at 600 s
    assert budget.stage_deadline(1250, 5000) == 120.0  # 600 x 1250 / 6250
    now = 100.0  # that stage stopped early (patience): the next ones share what it left
    assert budget.stage_deadline(2500, 2500) == 350.0
    assert budget.minutes_left(350.0) == 250 / 60
    assert not budget.expired(349.0) and budget.expired(100.0)
    now = 700.0  # past the end: the last stage stops at once
    assert budget.stage_deadline(2500, 0) == 700.0
    assert TimeBudget(0).stage_deadline(1, 1) is None and not TimeBudget(0).expired(None)


def test_an_aiokd_update_costs_one_plus_half_k_updates_of_a_model_alone():
    cfg = load_config("quickstart")
    assert update_cost(cfg) == 2.0
    assert update_cost(load_config("quickstart", overrides=["distill.k=4"])) == 3.0
    assert update_cost(stage_config(cfg, 0)) == 1.0  # the teacher stage
    assert update_cost(build_config("quickstart", method="scratch", student="2-2")) == 1.0


def test_the_quickstart_trains_within_23_minutes_and_the_option_sets_it():
    assert load_config("quickstart").train.max_minutes == 23
    assert build_config("quickstart", max_minutes=3).train.max_minutes == 3
    assert load_config("narrow").train.max_minutes == 0


def _stage_state(run, stage: int) -> dict:
    return read_checkpoint(run / "checkpoints" / f"stage{stage}-last.safetensors").meta["state"]


def test_a_spent_budget_stops_every_stage_and_running_again_goes_on(tmp_path, tiny_data_dir,
                                                                     monkeypatch, capsys):
    monkeypatch.setattr("aiokd.train.loop.TimeBudget",
                        functools.partial(TimeBudget, clock=TickingClock()))
    run, cap = tmp_path / "run", 20
    options = [*TINY_MODEL, f"train.teacher_updates={cap}", "train.validate_every=5"]
    train(tiny_data_dir, run, max_updates=cap, overrides=[*options, "train.max_minutes=0.5"])
    out = capsys.readouterr().out
    states = {stage: _stage_state(run, stage) for stage in (0, 1, 2)}
    for stage, state in states.items():
        assert state["finished"] == "max_minutes", stage
        assert 0 < state["update"] < cap, stage
    # the clock ticks once per update: each stage's updates follow its share of the time left
    assert states[0]["update"] < states[1]["update"]
    assert out.count("share of train.max_minutes is spent") == 3
    assert (run / "model.safetensors").is_file()
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    shares = {e["stage"]: e["minutes"] for e in log if e["kind"] == "budget"}
    stops = {e["stage"]: (e["why"], e["update"]) for e in log if e["kind"] == "finished"}
    assert set(shares) == {0, 1, 2} and sum(shares.values()) < 0.5  # each share of the time left
    assert stops == {stage: ("max_minutes", state["update"]) for stage, state in states.items()}

    train(tiny_data_dir, run, max_updates=cap, overrides=options)  # no budget now
    out = capsys.readouterr().out
    assert "stage 2 stopped when its time ran out" in out
    assert _stage_state(run, 2)["update"] == cap
    assert _stage_state(run, 2)["finished"] == "max_updates"
    for stage in (0, 1):  # a later stage has started from them: they stay as they were
        assert _stage_state(run, stage) == states[stage]
