"""The run directory: what ``aiokd train`` refuses to train in or to resume, and one process at a
time in it."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import pytest

from aiokd.lock import exclusive_lock
from aiokd.train.api import train
from aiokd.train.run_dir import LOCK
from tests.conftest import (
    TINY_MODEL,
    assert_one_line_error,
    assert_refused,
    files_under,
    run_aiokd,
    subprocess_env,
    train_argv,
)


@pytest.mark.parametrize("make", ["file", "foreign_directory"])
def test_train_refuses_an_out_that_is_not_a_run(tmp_path, tiny_data_dir, capsys, make):
    out = tmp_path / "run"
    if make == "file":
        out.write_text("mine")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    before = files_under(tmp_path)
    assert_refused(train_argv(tiny_data_dir, out), capsys, out)
    assert files_under(tmp_path) == before


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_data_dir):
    """A finished two-update run of both stages on :func:`tiny_data_dir`."""
    out = tmp_path_factory.mktemp("finished") / "run"
    train(tiny_data_dir, out, max_updates=2, overrides=TINY_MODEL)
    return out


@pytest.mark.parametrize("how", ["other_data", "changed_setting", "damaged_checkpoint",
                                 "damaged_run_json"])
def test_resume_refusals_leave_the_run_untouched(tmp_path, finished_run, tiny_data_dir,
                                                 other_vocab_data_dir, capsys, how):
    run = shutil.copytree(finished_run, tmp_path / "run")
    data, extra, names = tiny_data_dir, [], [run]
    if how == "other_data":
        data, names = other_vocab_data_dir, [run, other_vocab_data_dir, "vocabulary"]
    elif how == "changed_setting":
        extra, names = ["train.lr=1e-3"], [run, "train.lr"]
    elif how == "damaged_checkpoint":
        last = run / "checkpoints" / "stage2-last.safetensors"
        last.write_bytes(last.read_bytes()[:1000])
        names = [last]
    else:
        (run / "run.json").write_text('{"config": ', encoding="utf-8")
        names = [run / "run.json"]
    before = files_under(run)
    assert_refused(train_argv(data, run, *extra), capsys, *names)
    assert files_under(run) == before


# ----------------------------------------------------------------------------------------------
# One process per run directory

HOLD_LOCK = """
import sys, time
from aiokd.lock import exclusive_lock
with exclusive_lock(sys.argv[1], "held"):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_run_in_use_is_refused_naming_the_process(tmp_path, finished_run, tiny_data_dir,
                                                    capsys):
    run = shutil.copytree(finished_run, tmp_path / "run")
    before = files_under(run)
    with exclusive_lock(run / LOCK, str(run)):
        line = assert_refused(train_argv(tiny_data_dir, run), capsys, run, "in use",
                              f"process {os.getpid()} on {socket.gethostname()}")
        assert "Traceback" not in line
    assert files_under(run) == before


def test_a_new_run_in_use_is_refused(tmp_path, tiny_data_dir, capsys):
    out = tmp_path / "run"
    out.mkdir()
    with exclusive_lock(out / LOCK, str(out)):
        assert_refused(train_argv(tiny_data_dir, out), capsys, out, f"process {os.getpid()}")
    assert not any(out.iterdir())


def test_distill_data_in_use_is_refused(tmp_path, tiny_data_dir, tiny_model_dir, capsys):
    out = tmp_path / "distilled"
    with exclusive_lock(tmp_path / f".{out.name}.lock", str(out)):
        assert_refused(["distill-data", "--model", tiny_model_dir, "--data", tiny_data_dir,
                        "--out", out], capsys, out, f"process {os.getpid()}")
    assert not out.exists() and not (tmp_path / f".{out.name}.partial").exists()


@pytest.mark.slow
def test_the_lock_of_a_killed_process_does_not_block(tmp_path, tiny_data_dir):
    """Refused while another process holds the lock; once it is killed with SIGKILL, its lock
    file stays but the next training runs."""
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out / LOCK)],
                              stdout=subprocess.PIPE, text=True, env=subprocess_env())
    try:
        assert holder.stdout.readline() == "locked\n"
        refused = run_aiokd(*train_argv(tiny_data_dir, out))
        assert_one_line_error(refused.returncode, refused.stderr, out,
                              f"process {holder.pid} on {socket.gethostname()}")
    finally:
        holder.kill()
        holder.wait()
    assert (out / LOCK).exists()
    done = run_aiokd(*train_argv(tiny_data_dir, out))
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "model.safetensors").is_file() and not (out / LOCK).exists()
