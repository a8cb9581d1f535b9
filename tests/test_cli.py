"""The ``aiokd`` command line as a whole: where overrides may stand, the commands that share the
model options, and outputs that the file system refuses, each reported in one line."""

from __future__ import annotations

import argparse
import errno
import os
import shutil
from pathlib import Path

import pytest

from aiokd.cli import build_parser, parse_args
from tests.conftest import (
    assert_one_line_error,
    assert_refused,
    files_under,
    make_corpus,
    run_cli,
    train_argv,
)


def test_every_option_of_every_command_says_what_it_is():
    commands = next(action for action in build_parser()._actions
                    if isinstance(action, argparse._SubParsersAction)).choices
    silent = [f"{name} {action.option_strings[-1] if action.option_strings else action.dest}"
              for name, parser in commands.items() for action in parser._actions
              if not action.help]
    assert not silent


def test_overrides_may_stand_among_the_options():
    args = parse_args(build_parser(), ["train", "--data", "D", "--out", "R", "train.lr=1e-3",
                                       "--max-updates", "5", "model.dropout=0.2"])
    assert args.overrides == ["train.lr=1e-3", "model.dropout=0.2"]
    assert args.max_updates == 5


@pytest.mark.parametrize("argv, names", [
    (["train", "--data", "D", "--out", "R", "a.b=1", "--bogus"], ["--bogus"]),
    (["train", "--data", "D", "--out", "R", "a.b=1", "--max-updates", "2", "stray"], ["stray"]),
    (["translate", "--model", "M", "train.lr=1e-3"], ["train.lr=1e-3"]),
])
def test_unknown_arguments_are_refused(capsys, argv, names):
    status, _, stderr = run_cli(argv, capsys)
    assert status == 2 and "Traceback" not in stderr
    assert "unrecognized arguments" in stderr and all(name in stderr for name in names)


@pytest.mark.parametrize("student", ["7-2", "0-0", "2-5", "2-3", "x", "6-2-1"])
@pytest.mark.parametrize("command", ["translate", "extract", "export", "evaluate"])
def test_model_commands_refuse_untrained_students(tmp_path, tiny_model_dir, tiny_data_dir,
                                                  capsys, command, student):
    source = tmp_path / "input.de"
    source.write_text("ein hund .\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = {
        "translate": ["translate", "--model", tiny_model_dir, "--student", student, "-i", source,
                      "-o", out],
        "extract": ["extract", "--model", tiny_model_dir, "--student", student, "--out", out],
        "export": ["export", "--model", tiny_model_dir, "--student", student, "--out", out],
        "evaluate": ["evaluate", "--model", tiny_model_dir, "--data", tiny_data_dir,
                     "--students", student, "--no-latency", "--out", out],
    }[command]
    assert_refused(argv, capsys, student, out=out)


@pytest.mark.parametrize("how", ["truncated", "pickle", "missing_config", "bad_config"])
@pytest.mark.parametrize("command", ["translate", "extract", "evaluate"])
def test_model_commands_refuse_damaged_models(tmp_path, tiny_model_dir, tiny_data_dir, capsys,
                                              command, how):
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    if how == "truncated":
        damaged = model / "model.safetensors"
        damaged.write_bytes(damaged.read_bytes()[:-100])
    elif how == "pickle":
        damaged = model / "model.safetensors"
        damaged.write_bytes(b"\x80\x04\x95" + b"\0" * 64)
    elif how == "missing_config":
        damaged = model
        (model / "config.json").unlink()
    else:
        damaged = model / "config.json"
        damaged.write_text('{"format": "aiokd-model", "model": {"heads": "four"}}')
    source = tmp_path / "input.de"
    source.write_text("ein hund .\n", encoding="utf-8")
    out = tmp_path / "out"
    argv = {
        "translate": ["translate", "--model", model, "-i", source, "-o", out],
        "extract": ["extract", "--model", model, "--student", "3-2", "--out", out],
        "evaluate": ["evaluate", "--model", model, "--data", tiny_data_dir, "--no-latency",
                     "--out", out],
    }[command]
    assert_refused(argv, capsys, damaged, out=out)


# ----------------------------------------------------------------------------------------------
# Outputs that cannot be written: one line naming the path, nothing left behind

WRITERS = ["prepare", "train", "translate", "evaluate", "extract", "export", "distill-data"]


def writer_argv(command: str, inputs: Path, out: Path, data_dir: Path, model_dir: Path) -> list:
    """``aiokd COMMAND`` writing to ``out``, reading what it needs from ``inputs``."""
    return {
        "prepare": ["prepare", "--train", inputs / "corpus", "--valid", inputs / "corpus",
                    "--vocab-size", "60", "--out", out],
        "train": train_argv(data_dir, out),
        "translate": ["translate", "--model", model_dir, "-i", inputs / "corpus.de", "-o", out],
        "evaluate": ["evaluate", "--model", model_dir, "--src", inputs / "corpus.de", "--ref",
                     inputs / "corpus.en", "--beam", "1", "--no-latency", "--out", out],
        "extract": ["extract", "--model", model_dir, "--student", "2-2", "--out", out],
        "export": ["export", "--model", model_dir, "--student", "2-2", "--out", out],
        "distill-data": ["distill-data", "--model", model_dir, "--data", data_dir, "--beam", "1",
                         "--out", out],
    }[command]


@pytest.fixture
def inputs(tmp_path):
    """``corpus.de`` and ``corpus.en`` (40 pairs) in a folder of their own."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    src, tgt = make_corpus(40, seed=3)
    (folder / "corpus.de").write_text("\n".join(src) + "\n", encoding="utf-8")
    (folder / "corpus.en").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    return folder


def assert_cannot_write(argv: list, capsys, tmp_path: Path, *names) -> str:
    """The command ends with one line ``aiokd: error: PATH: cannot write (...)`` (after the
    progress bars of the work done before writing) and adds no file."""
    before = files_under(tmp_path)
    status, _, stderr = run_cli(argv, capsys)
    last = stderr.strip().splitlines()[-1:]
    line = assert_one_line_error(status, "\n".join(last), "cannot write", *names)
    assert "Traceback" not in stderr and stderr.count("aiokd: error: ") == 1, stderr
    assert files_under(tmp_path) == before
    return line


def disk_full(fd: int) -> None:
    """``os.fsync`` on a full disk."""
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("command", WRITERS)
def test_an_output_below_a_file_is_refused(tmp_path, inputs, tiny_data_dir, tiny_model_dir,
                                           capsys, command):
    blocker = tmp_path / "blocker"
    blocker.write_text("mine")
    out = blocker / ("out.txt" if command in ("translate", "evaluate") else "out")
    argv = writer_argv(command, inputs, out, tiny_data_dir, tiny_model_dir)
    line = assert_cannot_write(argv, capsys, tmp_path, blocker, "Not a directory")
    assert blocker.read_text() == "mine", line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
@pytest.mark.parametrize("command", WRITERS)
def test_an_output_in_a_read_only_directory_is_refused(tmp_path, inputs, tiny_data_dir,
                                                       tiny_model_dir, capsys, command):
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        out = read_only / ("out.txt" if command in ("translate", "evaluate") else "out")
        argv = writer_argv(command, inputs, out, tiny_data_dir, tiny_model_dir)
        assert_cannot_write(argv, capsys, tmp_path, read_only, "Permission denied")
    finally:
        read_only.chmod(0o755)


@pytest.mark.parametrize("command", WRITERS)
def test_a_full_disk_is_one_line_and_leaves_no_partial_output(tmp_path, inputs, tiny_data_dir,
                                                               tiny_model_dir, capsys,
                                                               monkeypatch, command):
    monkeypatch.setattr(os, "fsync", disk_full)
    out = tmp_path / ("out.txt" if command in ("translate", "evaluate") else "out")
    argv = writer_argv(command, inputs, out, tiny_data_dir, tiny_model_dir)
    line = assert_cannot_write(argv, capsys, tmp_path, os.strerror(errno.ENOSPC))
    assert not out.exists(), line


def test_a_full_disk_keeps_the_file_it_would_replace(tmp_path, inputs, tiny_model_dir, capsys,
                                                     monkeypatch):
    out = tmp_path / "out.txt"
    out.write_text("the previous translation\n")
    monkeypatch.setattr(os, "fsync", disk_full)
    argv = writer_argv("translate", inputs, out, tiny_model_dir.parent, tiny_model_dir)
    assert_cannot_write(argv, capsys, tmp_path, out)
    assert out.read_text() == "the previous translation\n"
