"""Shared fixtures: a tiny synthetic German-English corpus, data directories prepared from it, and
helpers to run the ``aiokd`` command line and check how it refuses bad input.

Bad input never ends in a traceback: every command prints one line ``aiokd: error: ...`` naming
the file (and line) or the option, exits with status 2, and leaves no partial output behind.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from aiokd.cli import main as cli_main
from aiokd.data.prepare import prepare
from aiokd.model import kernels

_WORDS = [
    ("der", "the"), ("hund", "dog"), ("katze", "cat"), ("läuft", "runs"), ("schnell", "fast"),
    ("park", "park"), ("ein", "a"), ("mann", "man"), ("frau", "woman"), ("sieht", "sees"),
    ("rot", "red"), ("blau", "blue"), ("haus", "house"), ("groß", "big"), ("klein", "small"),
    ("und", "and"), ("spielt", "plays"), ("ball", "ball"), ("wasser", "water"), ("kind", "child"),
    ("straße", "street"), ("grün", "green"), ("isst", "eats"), ("brot", "bread"), ("alt", "old"),
    ("junge", "young"), ("mädchen", "girl"), ("trägt", "wears"), ("hut", "hat"), ("auto", "car"),
]
TINY_VOCAB = 100


@pytest.fixture(params=["exp", "exp2"])
def exp_kernel(request, monkeypatch) -> str:
    """The fused losses' exponentials forced to each kernel in turn (this machine's probe would
    choose one of them: :func:`aiokd.model.probe.exponential_kernel`)."""
    monkeypatch.setattr(kernels, "_exp2_is_faster", lambda device_type: request.param == "exp2")
    return request.param


def pytest_configure(config):
    """Under ``pytest -n N`` each of the N test processes computes on its share of the cores."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        import torch

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
            os.cpu_count() or 1)
        torch.set_num_threads(max(1, cores // int(workers)))


def make_corpus(pairs: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``pairs`` word-for-word translated sentences of 3 to 10 words."""
    rng = random.Random(seed)
    src, tgt = [], []
    for _ in range(pairs):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 10))]
        src.append(" ".join(de for de, _ in words).capitalize() + " .")
        tgt.append(" ".join(en for _, en in words).capitalize() + " .")
    return src, tgt


@pytest.fixture(scope="session")
def tiny_corpus() -> dict[str, tuple[list[str], list[str]]]:
    """Train (300 pairs), valid and test (30 pairs each) of the synthetic corpus."""
    return {"train": make_corpus(300, seed=0), "valid": make_corpus(30, seed=1),
            "test": make_corpus(30, seed=2)}


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory, tiny_corpus):
    """A data directory prepared from :func:`tiny_corpus` (vocabulary 100); do not modify it."""
    out = tmp_path_factory.mktemp("tiny") / "data"
    prepare(out, "de", "en", tiny_corpus["train"], tiny_corpus["valid"],
            {"test": tiny_corpus["test"]}, vocab_size=TINY_VOCAB)
    return out


TINY_MODEL = ["model.d_model=32", "model.ffn_dim=64", "model.heads=2", "model.enc_layers=3",
              "model.dec_layers=3", "distill.min_enc=1", "distill.min_dec=1",
              "train.max_tokens=256", "train.warmup_updates=5", "train.teacher_updates=0",
              "train.max_minutes=0"]
"""``key=value`` overrides of ``aiokd train`` for a model that trains in well under a second
(without the default preset's teacher stage, which ``tests/test_teacher_stage.py`` tests, and
its time budget, which ``tests/test_budget.py`` tests)."""


def train_argv(data_dir: Path, out: Path, *extra) -> list:
    """``aiokd train`` of the tiny model for two updates on ``data_dir`` into ``out``."""
    return ["train", "--data", data_dir, "--out", out, "--max-updates", "2", *TINY_MODEL, *extra]


def run_cli(argv: list, capsys) -> tuple[int, str, str]:
    """``aiokd ARGV`` in this process: exit status, stdout, stderr (any other exception fails)."""
    with pytest.raises(SystemExit) as exit_:
        cli_main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return exit_.value.code, captured.out, captured.err


def files_under(directory: Path) -> dict[str, str]:
    """Every file below ``directory`` (hidden ones too) with a hash of its content."""
    return {str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def assert_one_line_error(status: int, stderr: str, *names) -> str:
    """Exit status 2 and one line ``aiokd: error: ...`` on stderr naming every one of ``names``;
    returns the line."""
    assert "Traceback" not in stderr
    assert status == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aiokd: error: "), stderr
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def assert_process_error(result: subprocess.CompletedProcess, *names) -> str:
    """:func:`assert_one_line_error` of a finished ``aiokd`` subprocess."""
    return assert_one_line_error(result.returncode, result.stderr, *names)


def assert_refused(argv: list, capsys, *names, out: Path | None = None) -> str:
    """The command fails cleanly, naming ``names``, and ``out`` (if given) does not appear;
    nor does a temporary sibling of it."""
    status, _, stderr = run_cli(argv, capsys)
    line = assert_one_line_error(status, stderr, *names)
    if out is not None:
        assert not out.exists(), f"{out} was created"
        assert not list(out.parent.glob(f".{out.name}*")), "temporary output left behind"
    return line


def subprocess_env() -> dict[str, str]:
    """The environment of ``aiokd`` subprocesses: one thread, unbuffered, no torchrun variables."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def aiokd_command(*args) -> list[str]:
    """``python -m aiokd ARGS`` with this interpreter."""
    return [sys.executable, "-m", "aiokd", *map(str, args)]


def run_aiokd(*args, timeout: float = 300, cwd=None) -> subprocess.CompletedProcess:
    """Run the ``aiokd`` command line to its end; stdout and stderr are captured as text."""
    return subprocess.run(aiokd_command(*args), capture_output=True, text=True, timeout=timeout,
                          env=subprocess_env(), cwd=cwd, check=False)


@pytest.fixture(scope="session")
def other_vocab_data_dir(tmp_path_factory):
    """A data directory like :func:`tiny_data_dir` with another corpus and vocabulary (80)."""
    out = tmp_path_factory.mktemp("other") / "data"
    prepare(out, "de", "en", make_corpus(200, seed=5), make_corpus(20, seed=6), {},
            vocab_size=80)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_data_dir):
    """A model directory (3 encoder and 3 decoder layers, d_model 32, students 2-2, 3-2, 3-3)
    trained for 40 updates on :func:`tiny_data_dir`, enough for peaked, non-trivial outputs; do
    not modify it."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from aiokd.config import Config, ModelConfig
    from aiokd.data.batching import collate
    from aiokd.data.corpus import ParallelSplit
    from aiokd.model.checkpoint import model_config_json, save_model_dir
    from aiokd.model.transformer import Transformer
    from aiokd.students import CandidateSpace

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=TINY_VOCAB, d_model=32, ffn_dim=64, heads=4, enc_layers=3,
                      dec_layers=3, dropout=0.0, max_positions=128)
    model = Transformer(cfg)
    split = ParallelSplit.load(tiny_data_dir, "train")
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    rng = np.random.default_rng(0)
    for _ in range(40):
        rows = rng.choice(len(split), 32, replace=False)
        batch = collate([split.src(i) for i in rows], [split.tgt(i) for i in rows],
                        cfg.pad_id, cfg.bos_id, cfg.eos_id)
        logits = model.forward_students(batch.src, batch.prev_tgt, [(3, 3), (3, 2), (2, 2)])
        loss = sum(F.cross_entropy(x.transpose(1, 2), batch.target, ignore_index=cfg.pad_id)
                   for x in logits.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    out = tmp_path_factory.mktemp("model") / "tiny-model"
    config = model_config_json(Config(model=cfg), CandidateSpace(3, 3, 2, 2),
                               {"src_lang": "de", "tgt_lang": "en"})
    save_model_dir(out, model.eval(), config, (tiny_data_dir / "spm.model").read_bytes())
    return out
