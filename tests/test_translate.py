"""``aiokd.load(...).translate`` and ``aiokd translate``: order, empty and long lines, students,
input decoding, and one-line errors."""

from __future__ import annotations

import io
import sys

import pytest
import sentencepiece as spm
import torch

import aiokd
from aiokd.cli import main as cli_main
from aiokd.config import Config
from aiokd.errors import UserError
from aiokd.model.checkpoint import load_model_files, save_checkpoint
from tests.conftest import (
    assert_one_line_error,
    assert_process_error,
    assert_refused,
    make_corpus,
    run_aiokd,
    run_cli,
)

LONG_LINE = ("der hund läuft schnell " * 5000)[:100_000]


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    return aiokd.load(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def lines():
    return make_corpus(9, seed=21)[0]


def run_with_stdin(monkeypatch, *args, stdin: bytes = b""):
    """``aiokd ARGS`` in-process with ``stdin``; returns the exit status."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
    with pytest.raises(SystemExit) as exit_:
        cli_main([str(arg) for arg in args])
    return exit_.value.code


def test_students_and_order(model, lines):
    assert model.students == ["2-2", "3-2", "3-3"]
    batched = model.translate(lines, student="3-2", beam=3, max_tokens=40)
    alone = [model.translate([line], student="3-2", beam=3)[0] for line in lines]
    assert batched == alone and all(batched)
    assert model.translate(lines) == model.translate(lines, student="3-3")


def test_empty_and_long_lines(model, lines, capsys):
    out = model.translate(["", lines[0], "   ", LONG_LINE, lines[1]], beam=2)
    assert len(out) == 5 and out[0] == out[2] == ""
    assert out[1] == model.translate([lines[0]], beam=2)[0]
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and "truncated to 127 tokens" in warning[0]
    assert model.translate([]) == []


@pytest.mark.parametrize("name", ["7-2", "0-0", "2-3", "1-1", "abc", "6-"])
def test_unknown_student_lists_the_trained_ones(model, name):
    with pytest.raises(UserError, match=f"unknown student '{name}'.*: 2-2 3-2 3-3$"):
        model.translate(["Der hund ."], student=name)


def test_bad_options(model, tiny_model_dir):
    with pytest.raises(UserError, match="--beam 0"):
        model.translate(["Der hund ."], beam=0)
    with pytest.raises(UserError, match="--device tpu"):
        aiokd.load(tiny_model_dir, device="tpu")
    with pytest.raises(UserError, match="no such model"):
        aiokd.load(tiny_model_dir / "missing")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_translates_in_half_precision(tiny_model_dir, model, lines, dtype):
    half = aiokd.load(tiny_model_dir, device="cpu", dtype=dtype)
    assert {p.dtype for p in half._engine.model.parameters()} == {getattr(torch, dtype)}
    out = half.translate(lines, student="3-2", beam=3)
    full = model.translate(lines, student="3-2", beam=3)
    same = sum(a == b for a, b in zip(out, full, strict=True))
    assert all(out) and same >= 2 * len(lines) // 3
    with pytest.raises(UserError, match="--dtype int8: expected auto or one of float32, bfloat16"):
        aiokd.load(tiny_model_dir, dtype="int8")


def test_loads_a_checkpoint(tmp_path, tiny_model_dir, lines):
    files = load_model_files(tiny_model_dir)
    path = tmp_path / "last.safetensors"
    save_checkpoint(path, files.model, {"config": Config(model=files.model.cfg).to_dict()},
                    files.spm_bytes)
    from_checkpoint = aiokd.load(path, device="cpu")
    assert from_checkpoint.students == ["2-2", "3-2", "3-3"]
    assert from_checkpoint.translate(lines, "2-2") == aiokd.load(tiny_model_dir).translate(
        lines, "2-2")


def test_detokenizes(model, tiny_model_dir):
    processor = spm.SentencePieceProcessor(model_file=str(tiny_model_dir / "spm.model"))
    (out,) = model.translate(["Der hund läuft ."])
    assert processor.decode(processor.encode(out)) == out and "▁" not in out


def test_cli_stdin_to_stdout(monkeypatch, capsysbinary, model, tiny_model_dir, lines):
    text = "\n".join(["", lines[0], LONG_LINE, "", lines[1]]) + "\n"
    assert run_with_stdin(monkeypatch, "translate", "--model", tiny_model_dir, "--beam", "2",
                   stdin=text.encode()) == 0
    out = capsysbinary.readouterr().out.decode().split("\n")
    assert len(out) == 6 and out[-1] == ""
    assert out[:2] == ["", model.translate([lines[0]], beam=2)[0]]


def test_cli_files(monkeypatch, tmp_path, model, tiny_model_dir, lines):
    source, target = tmp_path / "in.de", tmp_path / "out.en"
    source.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n").encode())
    assert run_with_stdin(monkeypatch, "translate", "--model", tiny_model_dir, "--student", "2-2",
                   "-i", source, "-o", target) == 0
    assert target.read_text().split("\n")[:-1] == model.translate(lines, student="2-2")
    assert run_with_stdin(monkeypatch, "translate", "--model", tiny_model_dir, "--student", "2-2",
                   "--dtype", "bfloat16", "-i", source, "-o", target) == 0
    bf16 = aiokd.load(tiny_model_dir, device="cpu", dtype="bfloat16")
    assert target.read_text().split("\n")[:-1] == bf16.translate(lines, student="2-2")
    source.write_bytes(b"")
    assert run_with_stdin(monkeypatch, "translate", "--model", tiny_model_dir, "-i", source,
                   "-o", target) == 0
    assert target.read_bytes() == b""


def test_cli_threads(monkeypatch, capsys, tiny_model_dir, lines):
    threads = torch.get_num_threads()
    try:
        assert run_with_stdin(monkeypatch, "translate", "--model", tiny_model_dir, "--threads", "1",
                       stdin=lines[0].encode()) == 0
        assert torch.get_num_threads() == 1
        assert run_with_stdin(monkeypatch, "translate", "--model", tiny_model_dir, "--threads", "0",
                       stdin=lines[0].encode()) == 2
        assert "--threads 0: must be at least 1" in capsys.readouterr().err
    finally:
        torch.set_num_threads(threads)


def test_cli_input_errors(monkeypatch, capsys, tmp_path, tiny_model_dir):
    source = tmp_path / "bad.de"
    source.write_bytes(b"Der hund .\nein \xff mann\n")
    assert run_with_stdin(monkeypatch, "translate", "--model", tiny_model_dir, "-i", source) == 2
    assert f"{source}:2: not valid UTF-8 (byte 0xff)" in capsys.readouterr().err
    assert run_with_stdin(monkeypatch, "translate", "--model", tiny_model_dir,
                   stdin=b"\xc3\n") == 2
    assert "stdin:1: not valid UTF-8" in capsys.readouterr().err
    assert run_with_stdin(monkeypatch, "translate", "--model", tiny_model_dir, "-i",
                   tmp_path / "none.de") == 2
    assert "none.de: no such file" in capsys.readouterr().err
    assert run_with_stdin(monkeypatch, "translate", "--model", tiny_model_dir, "-o", tmp_path) == 2
    assert "is a directory" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, tiny_model_dir):
    assert_process_error(run_aiokd("translate", "--model", tiny_model_dir, "--student", "7-2"),
                          "unknown student '7-2'", "2-2 3-2 3-3")
    assert_process_error(run_aiokd("translate", "--model", tmp_path / "nowhere"),
                          "no such model")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("config.json", "spm.model"):
        (damaged / name).write_bytes((tiny_model_dir / name).read_bytes())
    weights = (tiny_model_dir / "model.safetensors").read_bytes()
    (damaged / "model.safetensors").write_bytes(weights[:len(weights) // 2])
    assert_process_error(run_aiokd("translate", "--model", damaged), "model.safetensors")


@pytest.mark.parametrize("content, names", [(b"ein hund\n\xff\xfe\n", [":2", "UTF-8"]),
                                            (bytes(range(256)) * 16, [])])
def test_translate_refuses_bad_input_text(tmp_path, tiny_model_dir, capsys, content, names):
    source = tmp_path / "input.de"
    source.write_bytes(content)
    out = tmp_path / "out.en"
    assert_refused(["translate", "--model", tiny_model_dir, "-i", source, "-o", out], capsys,
                   source, *names, out=out)


def test_translate_handles_a_100000_character_line(tmp_path, tiny_model_dir, capsys):
    """A line far longer than the model's positions gives an error or a translation, never a
    traceback."""
    source = tmp_path / "input.de"
    source.write_text("ein hund .\n" + "hund " * 20_000 + "\n", encoding="utf-8")
    out = tmp_path / "out.en"
    status, _, stderr = run_cli(["translate", "--model", tiny_model_dir, "--beam", "1", "-i",
                                 source, "-o", out], capsys)
    if status == 0:
        assert len(out.read_text(encoding="utf-8").splitlines()) == 2
    else:
        assert_one_line_error(status, stderr)
        assert not out.exists()
