"""Multi-process training through ``torchrun`` on CPU (gloo): the processes agree on the students
of every update and on the parameters, two processes equal one process accumulating the same
global batch, a killed multi-process run resumes, and a stopped one keeps its update."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file

from aiokd.config import DistillConfig
from aiokd.model.checkpoint import read_checkpoint
from aiokd.students import CandidateSpace, sample_students
from tests.conftest import TINY_MODEL, run_aiokd, subprocess_env

DDP_TRAIN = Path(__file__).with_name("ddp_train.py")
OPTIONS = [*TINY_MODEL, "train.validate_every=3", "train.save_every=2", "train.log_every=1"]
MAX_UPDATES = 8


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(*args) -> list[str]:
    """``torchrun --nproc_per_node 2`` on a free local port."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *map(str, args)]


def train_args(data_dir: Path, out: Path, *extra) -> list:
    return ["train", "--data", data_dir, "--out", out, "--max-updates", MAX_UPDATES, *OPTIONS,
            *extra]


def run(command: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env=subprocess_env(), check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, tiny_data_dir):
    """Both stages with dropout on two processes, recorded by ``ddp_train.py``."""
    root = tmp_path_factory.mktemp("ddp")
    out = root / "run"
    run(torchrun(DDP_TRAIN, root, "--", *train_args(tiny_data_dir, out, "model.dropout=0.1")[1:]))
    reports = [json.loads((root / f"rank{r}.json").read_text()) for r in range(2)]
    return out, reports


# ----------------------------------------------------------------------------------------------
# The student sampler


@given(seed=st.integers(0, 2**31), stage=st.sampled_from([1, 2]), update=st.integers(0, 10**6),
       k=st.integers(1, 6), replacement=st.booleans(), enc=st.integers(1, 6),
       dec=st.integers(1, 6))
def test_sampler_is_a_function_of_seed_stage_update(seed, stage, update, k, replacement, enc,
                                                     dec):
    candidates = CandidateSpace(enc, dec, 1, 1, dec_le_enc=False).candidates
    k = min(k, len(candidates)) if not replacement else k
    distill = DistillConfig(k=k, replacement=replacement)
    first = sample_students(candidates, distill, seed, stage, update)
    assert first == sample_students(list(candidates), distill, seed, stage, update)
    assert len(first) == k and set(first) <= set(candidates)
    if not replacement:
        assert len(set(first)) == k


def test_sampler_does_not_depend_on_the_process():
    """Other interpreters (other hash seeds, as other ranks have) draw the same students."""
    candidates = CandidateSpace(6, 6).candidates
    here = [sample_students(candidates, DistillConfig(k=2), 1, stage, update)
            for stage in (1, 2) for update in range(50)]
    script = ("import json; from aiokd.config import DistillConfig; "
              "from aiokd.students import CandidateSpace, sample_students; "
              "c, d = CandidateSpace(6, 6).candidates, DistillConfig(k=2); print(json.dumps("
              "[sample_students(c, d, 1, s, u) for s in (1, 2) for u in range(50)]))")
    for hash_seed in ("1", "12345"):
        env = {**subprocess_env(), "PYTHONHASHSEED": hash_seed}
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              env=env, check=True)
        assert [[tuple(s) for s in draw] for draw in json.loads(done.stdout)] == here
    assert len({tuple(draw) for draw in here}) > 10  # and they vary from update to update


# ----------------------------------------------------------------------------------------------
# Two processes


@pytest.mark.slow
def test_ranks_sample_the_same_students_and_end_with_the_same_parameters(two_process_run):
    out, (rank0, rank1) = two_process_run
    cfg = read_checkpoint(out / "checkpoints" / "stage2-last.safetensors").config
    candidates = cfg.distill.space(cfg.model).candidates
    assert set(rank0["students"]) == {f"{s}/{u}" for s in (1, 2) for u in range(MAX_UPDATES)}
    assert rank0["students"] == rank1["students"]
    for key, chosen in rank0["students"].items():
        stage, update = map(int, key.split("/"))
        expected = sample_students(candidates, cfg.distill, cfg.train.seed, stage, update)
        assert [tuple(s) for s in chosen] == expected
    for report in (rank0, rank1):
        assert report["max_param_diff"] == {"1": 0.0, "2": 0.0}


@pytest.mark.slow
def test_two_processes_equal_one_process_accumulating_two_batches(tmp_path, tiny_data_dir):
    """World 2 x update_freq 1 and world 1 x update_freq 2 see the same global batches."""
    two, one = tmp_path / "two", tmp_path / "one"
    run(torchrun("-m", "aiokd", *train_args(tiny_data_dir, two, "model.dropout=0")))
    single = run_aiokd(*train_args(tiny_data_dir, one, "model.dropout=0",
                                   "train.update_freq=2"))
    assert single.returncode == 0, single.stderr
    for name in ("model.safetensors", "checkpoints/stage1-best.safetensors"):
        a, b = load_file(two / name), load_file(one / name)
        assert a.keys() == b.keys()
        for key in a:
            if a[key].is_floating_point():
                assert torch.allclose(a[key], b[key], rtol=0, atol=1e-4), (name, key)
            else:
                assert torch.equal(a[key], b[key]), (name, key)
    state_two = read_checkpoint(two / "checkpoints" / "stage2-last.safetensors").meta["state"]
    state_one = read_checkpoint(one / "checkpoints" / "stage2-last.safetensors").meta["state"]
    for key in ("update", "epoch", "index", "best_update"):
        assert state_two[key] == state_one[key], key
    assert state_two["best"] == pytest.approx(state_one["best"], abs=1e-4)


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from ``/proc``): torchrun's workers are in their own
    process groups."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    tree, pending = [], [pid]
    while pending:
        tree.append(pending.pop())
        pending.extend(children.get(tree[-1], []))
    return tree


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every process below it at once, as a power cut would."""
    for member in process_tree(pid):
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


def last_record(run_dir: Path) -> dict | None:
    try:
        lines = (run_dir / "log.jsonl").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return None
    complete = [line for line in lines if line.endswith("}")]
    return json.loads(complete[-1]) if complete else None


@pytest.mark.slow
def test_killed_two_process_run_resumes(tmp_path, tiny_data_dir, two_process_run):
    """SIGKILL to torchrun and both workers in stage 1, then in stage 2; the restarted command
    ends with the uninterrupted two-process run's files, bit for bit."""
    reference, _ = two_process_run
    out = tmp_path / "run"
    command = torchrun("-m", "aiokd", *train_args(tiny_data_dir, out, "model.dropout=0.1"))
    for stage, update in ((1, 5), (2, 4)):
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, env=subprocess_env())
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            record = last_record(out)
            if record and (record["stage"], record["update"]) >= (stage, update):
                kill_tree(process.pid)
                break
            time.sleep(0.005)
        output = process.communicate(timeout=60)[0]
        assert process.returncode == -signal.SIGKILL, output[-3000:]
        assert "best model written" not in output
    done = run(torchrun("-m", "aiokd", *train_args(tiny_data_dir, out, "model.dropout=0.1")))
    assert "resuming stage 2" in done.stdout + done.stderr
    for name in ("model.safetensors", "checkpoints/stage1-best.safetensors",
                 "checkpoints/stage2-best.safetensors", "checkpoints/stage2-last.safetensors"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name



@pytest.mark.slow
def test_sigterm_stops_both_processes_at_one_update_and_keeps_it(tmp_path, tiny_data_dir,
                                                                 two_process_run):
    """SIGTERM to ``torchrun`` reaches both workers; they agree on one logged update (every
    third here), the checkpoint of that update is written, and the same command goes on from it
    to the uninterrupted run's files."""
    reference, _ = two_process_run
    out = tmp_path / "run"
    command = torchrun("-m", "aiokd", *train_args(tiny_data_dir, out, "model.dropout=0.1",
                                                  "train.log_every=3"))
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=subprocess_env())
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        record = last_record(out)
        if record and record["stage"] == 1 and record["update"] >= 3:
            process.send_signal(signal.SIGTERM)
            break
        time.sleep(0.005)
    output = process.communicate(timeout=120)[0]
    assert process.returncode != 0 and "best model written" not in output, output[-3000:]
    stops = {line.split("aiokd: interrupted: ")[1] for line in output.splitlines()
             if "aiokd: interrupted: " in line}
    assert len(stops) == 1, output[-3000:]  # both processes, the same words
    stage, update = map(int, re.match(r"stage (\d) stopped at update (\d+),", stops.pop()).groups())
    assert update % 3 == 0
    last = read_checkpoint(out / "checkpoints" / f"stage{stage}-last.safetensors")
    assert last.meta["state"]["update"] == update
    done = run(torchrun("-m", "aiokd", *train_args(tiny_data_dir, out, "model.dropout=0.1")))
    assert f"resuming stage {stage} at update {update}" in done.stdout + done.stderr
    for name in ("model.safetensors", "checkpoints/stage2-best.safetensors",
                 "checkpoints/stage2-last.safetensors"):
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name


@pytest.mark.slow
def test_a_time_budget_stops_both_processes_at_the_same_update(tmp_path, tiny_data_dir):
    """Each process reads its own clock; they stop together, or DDP would wait for ever."""
    out = tmp_path / "run"
    done = run(torchrun("-m", "aiokd", "train", "--data", tiny_data_dir, "--out", out,
                        "--max-updates", 100_000, *OPTIONS,
                        "train.stage1_updates=0",  # both stages capped alike: half the minutes each
                        "train.max_minutes=0.1"))
    assert done.stdout.count("share of train.max_minutes is spent") == 2
    for stage in (1, 2):
        state = read_checkpoint(out / "checkpoints" / f"stage{stage}-last.safetensors"
                                ).meta["state"]
        assert state["finished"] == "max_minutes" and 0 < state["update"] < 100_000
    assert (out / "model.safetensors").is_file()
