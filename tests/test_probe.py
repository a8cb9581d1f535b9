"""Measured ``auto`` settings: the choice follows the timings, the reference wins near-ties,
the answer is cached per machine and question, and the probes run on real (tiny) models."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

import aiokd
from aiokd.config import ModelConfig
from aiokd.inference import precision
from aiokd.model import probe
from aiokd.model.transformer import Transformer
from tests.conftest import run_cli, train_argv

CPU = torch.device("cpu")
TINY = ModelConfig(vocab_size=60, d_model=16, ffn_dim=32, heads=2, enc_layers=2, dec_layers=2,
                   max_positions=64)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AIOKD_CACHE_DIR", str(tmp_path / "cache"))


def sleeper(seconds: float, calls: list[str], name: str):
    def run() -> None:
        calls.append(name)
        time.sleep(seconds)
    return run


def test_clearly_faster_candidate_is_chosen_and_cached():
    calls: list[str] = []
    runs = {"slow": sleeper(0.03, calls, "slow"), "fast": sleeper(0.005, calls, "fast")}
    choice = probe.measured_choice("q", CPU, runs, reference="slow")
    assert choice.value == "fast" and not choice.cached
    assert choice.seconds["fast"] < choice.seconds["slow"]
    assert "fast" in choice.reason and "x slow" in choice.reason
    assert calls.count("slow") == calls.count("fast") == 3  # one warm-up, two timed
    again = probe.measured_choice("q", CPU, runs, reference="slow")
    assert again.cached and again.value == "fast" and len(calls) == 6
    cache = json.loads(probe.cache_path().read_text())
    assert [entry["value"] for entry in cache.values()] == ["fast"]


def test_reference_wins_unless_clearly_faster():
    calls: list[str] = []
    runs = {"ref": sleeper(0.02, calls, "ref"), "other": sleeper(0.0195, calls, "other")}
    choice = probe.measured_choice("tie", CPU, runs, reference="ref", margin=0.5)
    assert choice.value == "ref" and "not 50% faster" in choice.reason


def test_questions_and_machines_are_cached_apart(monkeypatch):
    calls: list[str] = []
    runs = {"a": sleeper(0.0, calls, "a"), "b": sleeper(0.01, calls, "b")}
    probe.measured_choice("one", CPU, runs, reference="b")
    probe.measured_choice("two", CPU, runs, reference="b")
    monkeypatch.setattr(probe, "machine_key", lambda device: "another machine")
    probe.measured_choice("one", CPU, runs, reference="b")
    assert len(json.loads(probe.cache_path().read_text())) == 3 and len(calls) == 18


def test_unreadable_cache_is_measured_again():
    probe.cache_path().parent.mkdir(parents=True)
    probe.cache_path().write_text("{not json")
    calls: list[str] = []
    choice = probe.measured_choice("q", CPU, {"x": sleeper(0, calls, "x")}, reference="x")
    assert choice.value == "x" and not choice.cached and calls


def test_no_native_bf16_means_float32_without_timing(monkeypatch):
    monkeypatch.setattr(probe, "bf16_is_native", lambda device: False)
    monkeypatch.setattr(precision, "bf16_is_native", lambda device: False)
    assert probe.training_precision(TINY, CPU, 512).value == "none"
    model = Transformer(TINY)
    assert precision.decoding_precision(model, (2, 2), CPU).value == "float32"
    assert not probe.cache_path().exists()


def test_training_and_decoding_probes_time_both_precisions(monkeypatch):
    monkeypatch.setattr(probe, "bf16_is_native", lambda device: True)
    monkeypatch.setattr(precision, "bf16_is_native", lambda device: True)
    train = probe.training_precision(TINY, CPU, 256)
    assert train.value in ("none", "bf16") and set(train.seconds) == {"none", "bf16"}
    assert probe.training_precision(TINY, CPU, 256).cached
    model = Transformer(TINY)
    decode = precision.decoding_precision(model, (2, 1), CPU)
    assert decode.value in ("float32", "bfloat16") and set(decode.seconds) == {"float32",
                                                                             "bfloat16"}
    assert next(model.parameters()).dtype == torch.float32


def test_the_exponential_kernel_is_measured_once_per_machine():
    choice = probe.exponential_kernel(CPU)
    assert choice.value in ("exp", "exp2") and set(choice.seconds) == {"exp", "exp2"}
    assert not choice.cached and probe.exponential_kernel(CPU).cached


def _precision_record(run_dir) -> dict:
    entries = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return next(entry for entry in entries if entry["kind"] == "precision")


@pytest.mark.parametrize("native", [True, False])
def test_training_with_auto_precision_logs_the_measured_choice(tiny_data_dir, tmp_path, capsys,
                                                               monkeypatch, native):
    monkeypatch.setattr(probe, "bf16_is_native", lambda device: native)
    out = tmp_path / "run"
    assert run_cli(train_argv(tiny_data_dir, out, "train.stages=1"), capsys)[0] == 0
    record = _precision_record(out)
    if native:
        assert record["amp"] in ("none", "bf16") and "(measured on this machine" in record[
            "precision"]
        assert {"seconds_none", "seconds_bf16"} <= set(record)
    else:
        assert record["amp"] == "none" and "no native bf16" in record["precision"]
    assert json.loads((out / "run.json").read_text())["config"]["train"]["amp"] == "auto"


def test_a_given_precision_is_kept(tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli(train_argv(tiny_data_dir, out, "train.stages=1", "train.amp=none"),
                   capsys)[0] == 0
    assert _precision_record(out)["amp"] == "none"
    assert not probe.cache_path().exists()


@pytest.mark.parametrize("native", [True, False])
def test_loading_chooses_the_decoding_precision_by_measurement(tiny_model_dir, monkeypatch,
                                                               native):
    monkeypatch.setattr(precision, "bf16_is_native", lambda device: native)
    translator = aiokd.load(tiny_model_dir, device="cpu")
    chosen = translator.settings["dtype"]
    assert chosen in (("float32", "bfloat16") if native else ("float32",))
    assert {p.dtype for p in translator._engine.model.parameters()} == {getattr(torch, chosen)}
    assert ("measured on this machine" if native else "no native bf16") in translator.settings[
        "dtype_reason"]
    given = aiokd.load(tiny_model_dir, device="cpu", dtype="float32").settings
    assert given == {"dtype": "float32", "dtype_reason": "as given"}


def test_ctranslate2_threads_are_measured_unless_given(tiny_model_dir, tiny_corpus):
    lines = tiny_corpus["test"][0][:3]
    torch.set_num_threads(2)
    auto = aiokd.load(tiny_model_dir, device="cpu", engine="ctranslate2")
    auto.translate(lines, student="3-2")
    assert auto.settings["ctranslate2_threads"] in ("1", "2")
    assert "measured on this machine" in auto.settings["ctranslate2_threads_reason"]
    given = aiokd.load(tiny_model_dir, device="cpu", engine="ctranslate2", threads=2)
    assert given.translate(lines, student="3-2") == auto.translate(lines, student="3-2")
    assert given.settings["ctranslate2_threads"] == "2"


def test_evaluate_records_the_settings_and_why(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "results.json"
    status, stdout, _ = run_cli(["evaluate", "--model", tiny_model_dir, "--data", tiny_data_dir,
                                 "--split", "test", "--students", "3-2", "--no-latency",
                                 "--out", out], capsys)
    results = json.loads(out.read_text())
    assert status == 0 and results["dtype"] in ("float32", "bfloat16")
    assert results["dtype_reason"] and f"dtype: {results['dtype']}, " in stdout


def test_the_cpu_is_described_in_one_line_that_tells_models_apart():
    """The model name, then (on x86 Linux) family, model and the widest vector extension, and
    the cores this process may use."""
    text = probe.cpu_description()
    assert text.startswith(probe.cpu_model()) and text.endswith(" cores")
    assert "\n" not in text
    if Path("/proc/cpuinfo").is_file() and "avx2" in Path("/proc/cpuinfo").read_text():
        assert "family " in text and any(name in text for _, name in probe.VECTOR_LEVELS)
