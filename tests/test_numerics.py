"""Numerical faults: non-finite losses are skipped, logged and, when they persist, stop training
cleanly with the last good checkpoint intact; the KL terms stay finite on half-precision logits."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from aiokd.cli import main as cli_main
from aiokd.distill.aiokd_loss import LossSettings, aiokd_loss
from aiokd.distill.losses import kl_divergence
from aiokd.distill.objective import Objective
from aiokd.distill.word_kd_loss import word_kd_loss, word_kd_loss_reference
from aiokd.model.checkpoint import read_checkpoint
from aiokd.model.transformer import Transformer
from tests.conftest import TINY_MODEL


def train_argv(data_dir, out, *extra) -> list[str]:
    return ["train", "--data", str(data_dir), "--out", str(out), "--stage", "1",
            "--max-updates", "12", *TINY_MODEL, "train.validate_every=3", "train.save_every=2",
            "train.max_bad_steps=3", "train.log_every=1", *extra]


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    """``aiokd ARGV`` in this process: exit status, stdout, stderr."""
    with pytest.raises(SystemExit) as exit_:
        cli_main(argv)
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def poison_losses(monkeypatch, bad_calls, value: float) -> None:
    """Multiply the training loss by ``value`` (NaN, inf) on the ``bad_calls``-th forward passes
    (counted from 1); validation does not go through :class:`Objective`."""
    real_forward = Objective.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        loss, stats = real_forward(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] in bad_calls:
            loss = loss * value
        return loss, stats

    monkeypatch.setattr(Objective, "forward", forward)


def log_records(run, kind: str) -> list[dict]:
    lines = (run / "log.jsonl").read_text(encoding="utf-8").splitlines()
    return [record for record in map(json.loads, lines) if record["kind"] == kind]


def test_persistent_nan_stops_with_one_line_and_keeps_last_good_checkpoint(
        tmp_path, tiny_data_dir, monkeypatch, capsys):
    out = tmp_path / "run"
    poison_losses(monkeypatch, range(8, 100), math.nan)  # updates 1-7 fine, then NaN for ever
    status, stdout, stderr = run_cli(train_argv(tiny_data_dir, out), capsys)
    assert status == 2
    assert "Traceback" not in stderr
    message = stderr.strip().splitlines()[-1]  # after the progress bar
    assert stderr.count("aiokd: error:") == 1
    assert message.startswith("aiokd: error: training stopped: 3 consecutive updates")
    assert "train.max_bad_steps" in message and "stage1-last.safetensors" in message
    assert stdout.count("non-finite loss, update skipped") == 3

    skipped = log_records(out, "skip")
    assert [(r["stage"], r["update"]) for r in skipped] == [(1, 7)] * 3
    assert all(math.isnan(r["loss"]) for r in skipped)
    assert [r["update"] for r in log_records(out, "train")] == list(range(1, 8))
    assert not (out / "model.safetensors").exists()

    checkpoint = read_checkpoint(out / "checkpoints" / "stage1-last.safetensors")
    assert checkpoint.meta["state"]["update"] == 6  # written at 6; 7 was never saved
    model = Transformer(checkpoint.config.model)
    checkpoint.restore(model)
    assert all(torch.isfinite(p).all() for p in model.parameters())

    monkeypatch.undo()  # the same command, healthy again, resumes from that checkpoint
    status, stdout, stderr = run_cli(train_argv(tiny_data_dir, out), capsys)
    assert status == 0, stderr
    assert "resuming stage 1 at update 6" in stdout
    assert read_checkpoint(out / "checkpoints" / "stage1-last.safetensors").meta["state"][
        "update"] == 12


def test_isolated_non_finite_losses_are_skipped_and_training_goes_on(
        tmp_path, tiny_data_dir, monkeypatch, capsys):
    out = tmp_path / "run"
    poison_losses(monkeypatch, {3, 4, 9}, math.inf)  # never 3 in a row
    status, stdout, stderr = run_cli(train_argv(tiny_data_dir, out), capsys)
    assert status == 0, stderr
    assert [(r["update"], r["loss"]) for r in log_records(out, "skip")] == [
        (2, math.inf), (2, math.inf), (6, math.inf)]
    assert [r["update"] for r in log_records(out, "train")] == list(range(1, 13))
    assert all(math.isfinite(r["loss"]) for r in log_records(out, "train"))
    checkpoint = read_checkpoint(out / "checkpoints" / "stage1-last.safetensors")
    assert checkpoint.meta["state"]["update"] == 12 and checkpoint.meta["state"]["bad_steps"] == 0
    for name, tensor in checkpoint.tensors.items():  # no NaN gradient reached weights or Adam
        assert tensor.dtype == torch.uint8 or torch.isfinite(tensor).all(), name
    assert (out / "model.safetensors").is_file()


# ----------------------------------------------------------------------------------------------
# Half precision


def extreme_logits(dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Logits of +-1e4 (and 0) in ``dtype``: far outside what ``exp`` can represent."""
    generator = torch.Generator().manual_seed(seed)
    signs = torch.randint(-1, 2, (6, 50), generator=generator)
    return (signs * 1e4).to(dtype)


def naive_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """``KL(P || Q)`` through ``log(softmax(x))`` in the logits' precision."""
    p = F.softmax(p_logits, -1)
    return (p * (torch.log(p) - torch.log(F.softmax(q_logits, -1)))).sum()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kl_terms_are_finite_on_extreme_half_precision_logits(dtype):
    teacher_logits = extreme_logits(dtype, 0).requires_grad_()
    student_logits = [extreme_logits(dtype, s).requires_grad_() for s in (1, 2, 3)]
    assert not torch.isfinite(naive_kl(teacher_logits, student_logits[0]))  # what is avoided

    gold = torch.randint(0, 50, (6,), generator=torch.Generator().manual_seed(4))
    terms = {}
    for name, loss in (("word-kd", word_kd_loss), ("word-kd reference", word_kd_loss_reference)):
        found = loss(student_logits[0], teacher_logits, gold, 0.1, 5.5)
        assert found.kd.dtype == torch.float32
        terms.update({f"kd {name}": found.kd, f"loss {name}": found.loss})
    for mode in ("no_weight", "full", "detaching"):
        found = aiokd_loss(teacher_logits, student_logits, gold,
                           LossSettings(0.1, 5.5, 0.5, 1.1, True, mode))
        terms.update({f"kd {mode}": found.kd, f"ml {mode}": found.ml, f"loss {mode}": found.loss})
    for name, value in terms.items():
        assert torch.isfinite(value), name
        assert value >= 0, name
    sum(terms.values()).backward()
    for x in (teacher_logits, *student_logits):
        assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_identical_extreme_distributions_have_zero_kl(dtype):
    logits = extreme_logits(dtype, 7)
    lp = F.log_softmax(logits, dim=-1, dtype=torch.float32)
    assert kl_divergence(lp, lp).item() == 0.0
    gold = torch.zeros(6, dtype=torch.long)
    found = aiokd_loss(logits, [logits, logits], gold, LossSettings(0.1, 5.5, 0.5, 1.1))
    assert found.kd.item() == 0.0 and found.ml.item() == 0.0
