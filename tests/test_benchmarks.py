"""The speed benchmark and each of its sections run end to end on a tiny model, and its FLOP
count is exact."""

from __future__ import annotations

import json
import math
import platform
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from aiokd.config import ModelConfig
from aiokd.data.batching import collate
from aiokd.data.corpus import load_manifest
from aiokd.model.transformer import Transformer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import auto_settings  # noqa: E402
import freed_memory  # noqa: E402
import speed  # noqa: E402
import speed_decoding  # noqa: E402
import speed_scaling  # noqa: E402
import speed_training  # noqa: E402
import speed_validation  # noqa: E402
from speed_common import bench_config, training_flops  # noqa: E402


def _positive(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


TINY = ["model.d_model=32", "model.ffn_dim=64", "model.heads=2", "train.max_tokens=256"]


@pytest.fixture
def one_thread():
    """Run with one PyTorch thread (a tiny model gains nothing from more), restored after."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_auto_precision_is_reported_beside_the_measured_alternatives(tiny_data_dir, tmp_path,
                                                                     one_thread, monkeypatch):
    """Where the benchmark times float32 and bf16, it says what ``train.amp=auto`` picks here
    and which precision its teacher step measured fastest, so a wrong choice shows."""
    from aiokd.model import probe

    monkeypatch.setenv("AIOKD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(probe, "bf16_is_native", lambda device: True)
    monkeypatch.setattr(speed, "choose_precisions",
                        lambda amp, device, quick=False: ["float32", "bfloat16"])
    report = speed.main([
        "--preset", "tiny", "--data", str(tiny_data_dir), "--ks", "2", "--runs", "1",
        "--warmup", "1", "--threads", "1", "--skip", "validation,scaling,decoding",
        "--amp", "auto", "--set", *TINY])
    auto = report["presets"]["tiny"]["auto_precision"]
    assert auto["chose"] in ("float32", "bfloat16") and auto["reason"].startswith("measured")
    assert set(auto["teacher_tokens_per_s"]) == {"float32", "bfloat16"}
    assert auto["auto_is_fastest"] == (auto["chose"] == auto["fastest"])


def test_quick_run_writes_every_headline_figure(tiny_data_dir, tmp_path, one_thread):
    out = tmp_path / "speed.json"
    report = speed.main([
        "--quick", "--preset", "tiny", "--data", str(tiny_data_dir), "--runs", "1",
        "--warmup", "1", "--scaling-tokens", "256", "--length-edges", "6", "--threads", "1",
        "--skip", "decoding", "--compile", "--unfused", "--json", str(out), "--set", *TINY,
    ])
    saved = json.loads(out.read_text())
    assert saved["command"] == report["command"]
    for key in ("ratio_stage1_vs_teacher", "ratio_stage2_vs_teacher",
                "ratio_validation_vs_teacher"):
        assert _positive(saved[key]), key
    assert saved["device"] in ("cpu", "cuda")
    assert saved["threads"] == 1
    assert saved["torch_version"] == torch.__version__
    assert saved["runs"] == 1
    figures = saved["presets"]["tiny"]["precisions"]["float32"]
    assert set(figures["training"]) == {"teacher", "stage1_k2", "stage2_k2",
                                        "stage1_k2_no_reuse", "teacher_compiled",
                                        "stage1_k2_compiled", "stage1_k2_unfused",
                                        "stage2_k2_unfused"}
    assert [name for name, row in figures["training"].items() if row["compiled"]] == [
        "teacher_compiled", "stage1_k2_compiled"]
    for row in figures["training"].values():
        assert _positive(row["tokens_per_s"]) and _positive(row["achieved_flops_per_s"])
        assert row["peak_memory_mb"] is None or row["peak_memory_mb"] >= 0
    assert all(_positive(ratio) for ratio in figures["ratios"].values())
    for axis in ("batch_tokens", "length"):
        assert figures["scaling"][axis]["teacher"]
    for gemm in saved["gemm"].values():
        assert _positive(gemm["ceiling_flops_per_s"])
    assert saved["decoding"] == {"skipped": "--skip decoding"}


def test_decoding_in_pytorch_and_ctranslate2(tiny_data_dir, tmp_path, one_thread):
    torch.set_num_threads(1)
    pytest.importorskip("ctranslate2")
    if speed_decoding.decoding_available() is not None:
        pytest.skip(speed_decoding.decoding_available())
    cfg = bench_config("tiny", load_manifest(tiny_data_dir), TINY)
    files, _ = speed_decoding.decoding_model(None, cfg, tiny_data_dir)
    sources, length = speed_decoding.decoding_sources(tiny_data_dir, 3)
    found = speed_decoding.bench_decoding(
        files, sources, [(6, 2)], [5], [64], ["float32", "bfloat16"], ["none", "int8"],
        speed_decoding.Search(5, 0.0, length), 1, torch.device("cpu"), tmp_path, 1)
    rows = found["6-2"]
    assert set(rows) == {"torch", "torch_bfloat16", "ctranslate2_float32", "ctranslate2_int8"}
    for engine in rows.values():
        assert engine["beam5_batch64"]["tokens_per_sentence"] == length
    ratios = speed_decoding.decoding_ratios(found)
    assert len(ratios) == 3 and all(_positive(ratio) for ratio in ratios.values())


SECTION = ["--preset", "tiny", "--runs", "1", "--threads", "1", "--set", *TINY]


def test_training_section_on_its_own(tiny_data_dir, tmp_path, one_thread):
    out = tmp_path / "training.json"
    report = speed_training.main(["--data", str(tiny_data_dir), "--ks", "2", "--amp", "none",
                                  "--json", str(out), *SECTION])
    assert json.loads(out.read_text())["command"] == report["command"]
    figures = report["presets"]["tiny"]["precisions"]["float32"]
    assert set(figures["training"]) == {"teacher", "stage1_k2", "stage2_k2", "stage1_k2_no_reuse"}
    assert all(_positive(ratio) for ratio in figures["ratios"].values())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_memory_times_both_sides_in_processes_of_their_own(tiny_data_dir, tmp_path):
    out = tmp_path / "freed-memory.json"
    report = freed_memory.main(["--preset", "tiny", "--data", str(tiny_data_dir), "--runs", "1",
                                "--rounds", "1", "--set", *TINY, "--json", str(out)])
    assert json.loads(out.read_text())["variants"] == report["variants"]
    assert set(report["variants"]) == {"teacher", "stage1_k2", "stage2_k2", "stage1_k2_no_reuse"}
    for figures in report["variants"].values():
        assert len(figures["step_s_kept"]) == len(figures["step_s_returned"]) == 1
        assert _positive(figures["ratio_returned_vs_kept"])
    gemm = report["gemm_flops_per_s_median"]
    assert set(gemm["kept"]) == set(gemm["returned"]) and gemm["kept"]


def test_exp_kernels_times_every_variant_with_both_kernels(tiny_data_dir, tmp_path, monkeypatch,
                                                          one_thread):
    import exp_kernels

    monkeypatch.setenv("AIOKD_CACHE_DIR", str(tmp_path / "cache"))
    report = exp_kernels.main(["--data", str(tiny_data_dir), "--amp", "none", *SECTION])
    assert report["probe"]["value"] in exp_kernels.KERNELS
    rows = report["precisions"]["float32"]
    assert set(rows) == {"teacher", "stage1_k2", "stage2_k2"}
    for row in rows.values():
        assert all(_positive(row["step_s_median"][name]) for name in exp_kernels.KERNELS)
        assert math.isclose(row["exp_vs_exp2"],
                            row["step_s_median"]["exp"] / row["step_s_median"]["exp2"])


def test_validation_section_on_its_own(tiny_data_dir, one_thread):
    report = speed_validation.main(["--data", str(tiny_data_dir), "--valid-batches", "1",
                                    "--amp", "none", *SECTION])
    validation = report["presets"]["tiny"]["precisions"]["float32"]["validation"]
    assert validation["batches"] == 1 and _positive(validation["ratio_all_vs_teacher"])


def test_scaling_section_on_its_own(tiny_data_dir, one_thread):
    report = speed_scaling.main(["--data", str(tiny_data_dir), "--scaling-tokens", "128,256",
                                 "--length-edges", "6", "--amp", "none", *SECTION])
    scaling = report["presets"]["tiny"]["precisions"]["float32"]["scaling"]
    assert [row["max_tokens"] for row in scaling["batch_tokens"]["stage1_k2"]] == [128, 256]
    assert [row["target_length"] for row in scaling["length"]["teacher"]][-1] == ">6"


def test_decoding_section_on_its_own(tiny_data_dir, one_thread):
    report = speed_decoding.main(["--data", str(tiny_data_dir), "--decode-sentences", "2",
                                  "--batch1-sentences", "1", "--decode-dtypes", "bfloat16",
                                  *SECTION])
    decoding = report["decoding"]
    if "skipped" in decoding:
        pytest.skip(decoding["skipped"])
    assert list(decoding["results"]) == ["6-6", "2-2", "4-2", "6-2"]
    assert all(_positive(ratio) for ratio in decoding["ratios"].values())


@pytest.mark.parametrize("students, reuse_prefix", [
    ([(4, 3)], True),
    ([(4, 3), (2, 2), (4, 1), (3, 3)], True),
    ([(4, 3), (2, 2), (4, 1)], False),
])
def test_analytic_flops_match_pytorch_flop_counter(students, reuse_prefix):
    cfg = ModelConfig(vocab_size=50, d_model=32, ffn_dim=48, heads=2, enc_layers=4, dec_layers=3)
    model = Transformer(cfg)
    rng = np.random.default_rng(0)
    batch = collate([rng.integers(4, 50, n) for n in (5, 7, 3)],
                    [rng.integers(4, 50, n) for n in (6, 2, 4)], 0, 2, 3)
    # the math attention kernel: PyTorch's FLOP counter does not count the CPU flash kernel
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        logits = model.forward_students(batch.src, batch.prev_tgt, students, reuse_prefix,
                                        select=batch.target != 0)
        sum(x.sum() for x in logits.values()).backward()
    assert counter.get_total_flops() == training_flops(cfg, batch, students, reuse_prefix)


@pytest.mark.parametrize("script, args, rows", [
    ("attention_kernels", ["--batch", "3", "--length", "5", "--head-dim", "8", "--repeats", "2"],
     ["sdpa math", "products"]),
    ("dropout_masks", ["--shape", "4", "9", "--repeats", "2"], ["F.dropout", "aiokd / torch.rand"]),
    ("loss_stages", ["--tokens", "5", "--vocab", "11", "--repeats", "2"], ["stage 2 adds"]),
])
def test_kernel_benchmarks_print_every_variant(script, args, rows, capsys, monkeypatch, one_thread):
    module = __import__(script)
    monkeypatch.setattr(sys, "argv", [script, *args])
    module.main()
    out = capsys.readouterr().out
    for dtype in ("torch.float32", "torch.bfloat16"):
        assert dtype in out
    for row in rows:
        assert row in out


def test_decoding_precision_scores_and_times_both(tiny_model_dir, tiny_data_dir, tmp_path,
                                                  capsys, monkeypatch, one_thread):
    import decoding_precision

    out = tmp_path / "precision.json"
    monkeypatch.setattr(sys, "argv", [
        "decoding_precision.py", "--model", str(tiny_model_dir), "--data", str(tiny_data_dir),
        "--students", "2-2,3-3,6-6", "--runs", "2", "--sample", "2", "--threads", "1",
        "--json", str(out)])
    assert decoding_precision.main() == 0
    report = json.loads(out.read_text())
    assert list(report["students"]) == ["2-2", "3-3"]
    for found in report["students"].values():
        assert len(found["float32"]["batched_s"]) == len(found["bfloat16"]["batch1_s"]) == 2
        versus = found["bfloat16_vs_float32"]
        assert 0 <= versus["same_output_fraction"] <= 1
        assert _positive(versus["speedup_batched"]) and _positive(versus["speedup_batch1"])
        assert math.isclose(versus["bleu_difference"],
                            found["bfloat16"]["bleu"] - found["float32"]["bleu"])
    assert "bfloat16" in capsys.readouterr().out


def test_ctranslate2_threads_times_every_count(tiny_model_dir, tiny_data_dir, capsys,
                                               monkeypatch, one_thread):
    import ctranslate2_threads

    monkeypatch.setattr(sys, "argv", [
        "ctranslate2_threads.py", "--model", str(tiny_model_dir), "--data", str(tiny_data_dir),
        "--student", "3-2", "--threads", "1,2", "--sample", "2", "--sentences", "4",
        "--runs", "1"])
    assert ctranslate2_threads.main() == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [row[0] for row in rows] == ["1", "2"]
    assert all(_positive(float(cell)) for row in rows for cell in row[1:])


def test_auto_settings_compares_the_default_with_each_explicit_setting(
        tiny_model_dir, tiny_data_dir, tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("AIOKD_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "auto.json"
    report = auto_settings.main(["--model", str(tiny_model_dir), "--data", str(tiny_data_dir),
                                 "--sentences", "6", "--single", "2", "--rounds", "2",
                                 "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    torch_engine, ct2 = report["engines"]["torch"], report["engines"]["ctranslate2"]
    assert {"default", "float32"} <= set(torch_engine["seconds"])
    assert torch_engine["default_chose"]["dtype"] in torch_engine["seconds"]
    assert ct2["default_vs_fastest"] >= 1.0 and "ctranslate2_threads" in ct2["default_chose"]


def test_latency_rounds_measures_both_protocols(tiny_model_dir, tiny_data_dir, tmp_path,
                                                capsys, monkeypatch, one_thread):
    import latency_rounds

    assert latency_rounds.clearly_slower_pairs(["2-2", "3-2", "3-3"]) == [("2-2", "3-3"),
                                                                           ("3-2", "3-3")]
    out = tmp_path / "rounds.json"
    monkeypatch.setattr(sys, "argv", [
        "latency_rounds.py", "--model", str(tiny_model_dir), "--data", str(tiny_data_dir),
        "--sentences", "4", "--sample", "2", "--runs", "3", "--repeats", "2", "--threads", "1",
        "--json", str(out)])
    assert latency_rounds.main() == 0
    report = json.loads(out.read_text())
    assert list(report["protocols"]) == ["in rounds", "student by student"]
    for found in report["protocols"].values():
        assert found["pairs"] == 2 and len(found["ranking_errors"]) == 2
        assert all(0 <= errors <= 2 for errors in found["ranking_errors"])
        assert [sorted(r) for r in found["ms_per_sentence"]] == [["2-2", "3-2", "3-3"]] * 2
        assert all(_positive(ms) for r in found["ms_per_sentence"] for ms in r.values())
        assert found["movement_max"] >= found["movement_mean"] >= 0
    assert "student by student" in capsys.readouterr().out
