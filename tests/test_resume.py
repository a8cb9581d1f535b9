"""Crash safety: a training run killed with SIGKILL anywhere and started again with the same command
ends with files bitwise identical to those of a run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from aiokd.config import load_config
from aiokd.model.checkpoint import read_checkpoint, save_checkpoint
from aiokd.model.transformer import Transformer
from aiokd.train.api import train
from tests.conftest import TINY_MODEL, aiokd_command, run_aiokd, subprocess_env

CRASH_AT = Path(__file__).with_name("crash_at.py")
OPTIONS = [*TINY_MODEL, "model.dropout=0.1", "train.validate_every=3", "train.save_every=2",
           "train.log_every=1", "train.valid_max_tokens=32"]
MAX_UPDATES = 12


def train_args(data_dir: Path, out: Path) -> list[str]:
    return ["train", "--data", data_dir, "--out", out, "--max-updates", MAX_UPDATES, *OPTIONS]


def results(run: Path) -> dict[str, bytes]:
    """The files a finished run leaves that must not depend on interruptions."""
    names = ["model.safetensors", "config.json", "spm.model", "run.json"]
    names += [f"checkpoints/stage{stage}-{kind}.safetensors"
              for stage in (1, 2) for kind in ("last", "best")]
    return {name: (run / name).read_bytes() for name in names}


def temporaries(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.rglob(".*.tmp-*"))


def assert_same_results(run: Path, reference: Path) -> None:
    got, want = results(run), results(reference)
    for name in want:
        assert got[name] == want[name], f"{name} differs from the uninterrupted run"
    assert not temporaries(run), "leftover temporary files"


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, tiny_data_dir) -> Path:
    """The uninterrupted run."""
    out = tmp_path_factory.mktemp("reference") / "run"
    done = run_aiokd(*train_args(tiny_data_dir, out))
    assert done.returncode == 0, done.stderr
    assert "resuming" not in done.stdout + done.stderr
    return out


def crash_at(point: str, stage: int, update: int, data_dir: Path, out: Path):
    command = [sys.executable, str(CRASH_AT), point, str(stage), str(update), "--",
               *map(str, train_args(data_dir, out)[1:])]
    return subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env=subprocess_env(), check=False)


@pytest.mark.slow
def test_killed_at_chosen_points_resumes_bit_for_bit(tmp_path, tiny_data_dir, reference_run):
    """Killed during a step, a validation, a checkpoint write and the model write: restarting the
    same command each time gives the uninterrupted run's files, and says where it resumes."""
    out = tmp_path / "run"
    # where the process dies, and the last checkpoint (stage, update) the next start resumes from;
    # checkpoints are written at updates 2, 3, 4, 6, 8, 9, 10, 12 of each stage
    plan = [("step", 1, 5, (1, 4)),
            ("validate", 1, 9, (1, 8)),
            ("save", 1, 12, (1, 10)),     # half of update 12's file is on disk
            ("save", 2, 6, (2, 4)),
            ("model", 0, 0, None)]        # both stages are finished, model.safetensors is not
    expected = None
    for point, stage, update, resumes_at in plan:
        killed = crash_at(point, stage, update, tiny_data_dir, out)
        assert killed.returncode == -signal.SIGKILL, (point, stage, update, killed.stderr[-2000:])
        if expected is not None:
            assert expected in killed.stdout
        if point in ("save", "model"):
            assert temporaries(out), "the simulated partial write left no temporary file"
        if resumes_at is None:
            expected = "stage 2 already finished"
        else:
            last = read_checkpoint(out / "checkpoints" / f"stage{resumes_at[0]}-last.safetensors")
            assert last.meta["state"]["update"] == resumes_at[1]
            expected = "resuming stage {} at update {}".format(*resumes_at)
    done = run_aiokd(*train_args(tiny_data_dir, out))
    assert done.returncode == 0, done.stderr
    assert expected in done.stdout
    assert_same_results(out, reference_run)


def start(args: list) -> subprocess.Popen:
    return subprocess.Popen(aiokd_command(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=subprocess_env(), start_new_session=True)


def records(run: Path) -> list[dict]:
    """The complete lines of ``log.jsonl``."""
    try:
        lines = (run / "log.jsonl").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.endswith("}")]


def progress(run: Path) -> tuple[int, int]:
    """``(stage, update)`` of the last record, ``(0, 0)`` before the first."""
    found = records(run)
    return (found[-1]["stage"], found[-1]["update"]) if found else (0, 0)


def writing_checkpoint(run: Path, pid: int) -> bool:
    """Process ``pid`` is writing a checkpoint: its temporary file exists."""
    try:
        return any(name.endswith(f".tmp-{pid}") for name in os.listdir(run / "checkpoints"))
    except FileNotFoundError:
        return False


def validating(run: Path, pid: int) -> bool:
    """The last record is an update that a validation follows."""
    found = records(run)
    return bool(found) and found[-1]["kind"] == "train" and found[-1]["update"] % 3 == 0


def updating(run: Path, pid: int) -> bool:
    """The last record is an update without validation: the process is inside the next one."""
    found = records(run)
    return bool(found) and found[-1]["kind"] == "train" and found[-1]["update"] % 3 != 0


def run_until(args: list, condition, after: tuple[int, int], run: Path,
              timeout: float = 120) -> tuple[bool, str]:
    """Start the command and SIGKILL it as soon as ``condition(run, pid)`` holds once the log
    has reached ``after`` (stage, update); returns whether it was killed and its output."""
    process = start(args)
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if progress(run) >= after and condition(run, process.pid):
            os.killpg(process.pid, signal.SIGKILL)
            break
        time.sleep(0.001)
    output = process.communicate(timeout=timeout)[0]
    assert process.returncode in (0, -signal.SIGKILL), output[-3000:]
    return process.returncode == -signal.SIGKILL, output


@pytest.mark.slow
@pytest.mark.parametrize("signal_name, stage, update", [("sigint", 1, 5), ("sigterm", 2, 7)])
def test_stopped_by_a_signal_saves_where_it_is_and_resumes_bit_for_bit(
        tmp_path, tiny_data_dir, reference_run, signal_name, stage, update):
    """Ctrl-C or SIGTERM during an update: the run finishes that update, saves its checkpoint
    there (not at the last ``save_every``), says so and exits 130; the same command goes on
    from that update to the uninterrupted run's files."""
    out = tmp_path / "run"
    stopped = crash_at(signal_name, stage, update, tiny_data_dir, out)
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    assert stopped.stderr.strip().splitlines()[-1] == (
        f"aiokd: interrupted: stage {stage} stopped at update {update}, its checkpoint saved: "
        "run the same command to go on")
    last = read_checkpoint(out / "checkpoints" / f"stage{stage}-last.safetensors")
    assert last.meta["state"]["update"] == update  # update % save_every != 0
    done = run_aiokd(*train_args(tiny_data_dir, out))
    assert done.returncode == 0, done.stderr
    assert f"resuming stage {stage} at update {update}" in done.stdout
    assert_same_results(out, reference_run)


@pytest.mark.slow
def test_killed_while_polled_resumes_bit_for_bit(tmp_path, tiny_data_dir, reference_run):
    """The real command killed from outside when the run directory shows a checkpoint being
    written, a validation starting, or an update under way, and restarted each time."""
    out = tmp_path / "run"
    args = train_args(tiny_data_dir, out)
    kills, outputs = 0, []
    for condition, after in ((writing_checkpoint, (1, 4)), (validating, (1, 9)),
                             (updating, (2, 4))):
        killed, output = run_until(args, condition, after, out)
        kills += killed
        outputs.append(output)
    assert kills >= 2, "the run ended before it could be killed"
    done = run_aiokd(*args)
    assert done.returncode == 0, done.stderr
    assert_same_results(out, reference_run)
    restarts = [*outputs[1:], done.stdout + done.stderr]
    assert any("resuming stage" in output for output in restarts)


def test_interrupted_checkpoint_write_keeps_previous_checkpoint(tmp_path):
    """A process writing checkpoints in a loop, killed at varied moments: the file on disk is
    always a complete checkpoint, one of those written."""
    path = tmp_path / "stage1-last.safetensors"
    script = f"""
from pathlib import Path
import torch
from aiokd.model.checkpoint import save_checkpoint
from aiokd.config import load_config
from aiokd.model.transformer import Transformer
cfg = load_config("tiny", overrides={TINY_MODEL!r} + ["model.vocab_size=100"])
model = Transformer(cfg.model)
i = 0
while True:
    i += 1
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(i)
    save_checkpoint(Path({str(path)!r}), model, {{"i": i}}, b"spm" * i)
    print(i, flush=True)
"""
    for delay in (0.02, 0.1, 0.3):
        process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                                   text=True, env=subprocess_env())
        assert process.stdout.readline()  # one checkpoint is complete
        time.sleep(delay)
        process.kill()
        process.wait()
        checkpoint = read_checkpoint(path)
        i = checkpoint.meta["i"]
        assert checkpoint.spm_bytes == b"spm" * i
        for name, tensor in checkpoint.model_state().items():
            if name.endswith(".weight") or name.endswith(".bias"):
                assert torch.all(tensor == i), name


def test_leftover_temporary_file_is_ignored_and_removed(tmp_path, tiny_data_dir):
    """A half-written temporary file beside a good checkpoint neither replaces nor damages it, and
    the next training run in that directory deletes such leftovers."""
    cfg = load_config("tiny", overrides=[*TINY_MODEL, "model.vocab_size=100"])
    path = tmp_path / "checkpoints" / "stage1-last.safetensors"
    save_checkpoint(path, Transformer(cfg.model), {"i": 1}, b"spm")
    good = path.read_bytes()
    leftover = path.with_name(f".{path.name}.tmp-999999")
    leftover.write_bytes(good[:len(good) // 3])
    assert read_checkpoint(path).meta["i"] == 1
    assert path.read_bytes() == good

    out = tmp_path / "run"
    train(tiny_data_dir, out, max_updates=2, overrides=OPTIONS)
    for stale in (out / ".model.safetensors.tmp-999999",
                  out / "checkpoints" / ".stage2-last.safetensors.tmp-999999"):
        stale.write_bytes(good[:100])
    train(tiny_data_dir, out, max_updates=2, overrides=OPTIONS)
    assert not temporaries(out)


def test_a_stage_stopped_at_its_cap_continues_when_the_cap_is_raised(tmp_path, tiny_data_dir):
    """Trained to 6 updates, then the same command with ``--max-updates 12``: the files of a run
    trained to 12 at once.  In a two-stage run only the last started stage continues."""
    def train_to(out: Path, updates: int, stages: str) -> str:
        done = run_aiokd("train", "--data", tiny_data_dir, "--out", out, "--max-updates", updates,
                         *OPTIONS, f"train.stages={stages}")
        assert done.returncode == 0, done.stderr
        return done.stdout + done.stderr

    train_to(tmp_path / "at-once", 12, "1")
    train_to(tmp_path / "raised", 6, "1")
    assert "continuing to 12" in train_to(tmp_path / "raised", 12, "1")
    for name in ["model.safetensors", "checkpoints/stage1-last.safetensors",
                 "checkpoints/stage1-best.safetensors"]:
        assert (tmp_path / "raised" / name).read_bytes() == \
            (tmp_path / "at-once" / name).read_bytes(), name

    train_to(tmp_path / "two", 6, "both")
    said = train_to(tmp_path / "two", 8, "both")
    assert "stage 1 already finished (max_updates)" in said and "continuing to 8" in said
    stage_1 = read_checkpoint(tmp_path / "two" / "checkpoints" / "stage1-last.safetensors")
    stage_2 = read_checkpoint(tmp_path / "two" / "checkpoints" / "stage2-last.safetensors")
    assert stage_1.meta["state"]["update"] == 6 and stage_2.meta["state"]["update"] == 8
