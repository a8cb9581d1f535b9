"""End-to-end training through the command line: AIO-KD's two stages and the baselines; data and
teachers that training refuses."""

import json
import shutil

import pytest
from safetensors import safe_open

from aiokd.model.checkpoint import load_model_files, read_checkpoint
from tests.conftest import TINY_MODEL, assert_refused, run_aiokd, train_argv


def train(data_dir, out, *extra):
    result = run_aiokd("train", "--data", data_dir, "--out", out, "--preset", "tiny",
                       *TINY_MODEL, "train.validate_every=2", *extra)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.fixture(scope="module")
def aiokd_run(tmp_path_factory, tiny_data_dir):
    out = tmp_path_factory.mktemp("runs") / "aiokd"
    result = train(tiny_data_dir, out, "--max-updates", "4")
    return out, result


@pytest.mark.slow
def test_both_stages_finish_and_report_every_student(aiokd_run):
    out, result = aiokd_run
    log = result.stdout + result.stderr
    assert "stage 1 finished" in log and "stage 2 finished" in log
    assert "stage 2 starts from" in log
    # 3+3 layers, min depth 1, l_d <= l_e: 6 candidates, each reported by name.
    for name in ("1-1", "2-1", "3-1", "2-2", "3-2", "3-3"):
        assert name in log
    entries = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    valid = [e for e in entries if e["kind"] == "valid"]
    assert {e["stage"] for e in valid} == {1, 2}
    assert all("3-3" in e and "mean" in e for e in valid)


@pytest.mark.slow
def test_run_directory_holds_only_safetensors_and_json(aiokd_run):
    out, _ = aiokd_run
    files = [p for p in out.rglob("*") if p.is_file()]
    suffixes = {p.suffix for p in files if "tensorboard" not in p.parts}
    assert suffixes <= {".safetensors", ".json", ".jsonl", ".model"}, suffixes
    for path in files:
        if path.suffix == ".safetensors":
            with safe_open(path, "pt") as handle:  # a safetensors header, whatever its length
                assert list(handle.keys())
        else:  # pickle protocols 2-5 open with 0x80 and the protocol number
            assert path.read_bytes()[:2] not in {b"\x80" + bytes([p]) for p in range(2, 6)}, path
    with safe_open(out / "model.safetensors", "pt") as handle:
        assert "embed.weight" in handle.keys()
    files = load_model_files(out)
    assert files.model.teacher == (3, 3)
    assert len(files.students) == 6


@pytest.mark.slow
def test_checkpoints_record_stage_state(aiokd_run):
    out, _ = aiokd_run
    for stage in (1, 2):
        checkpoint = read_checkpoint(out / "checkpoints" / f"stage{stage}-last.safetensors")
        assert checkpoint.meta["stage"] == stage
        assert checkpoint.meta["state"]["update"] == 4
        assert checkpoint.meta["state"]["finished"] == "max_updates"
        assert any(k.startswith("optim.") for k in checkpoint.tensors)


@pytest.mark.slow
def test_finished_run_is_not_trained_again(aiokd_run, tiny_data_dir):
    out, _ = aiokd_run
    before = (out / "model.safetensors").read_bytes()
    result = train(tiny_data_dir, out, "--max-updates", "4")
    assert "already finished" in result.stdout + result.stderr
    assert (out / "model.safetensors").read_bytes() == before


@pytest.mark.slow
def test_resume_with_other_settings_is_refused(aiokd_run, tiny_data_dir):
    out, _ = aiokd_run
    result = run_aiokd("train", "--data", tiny_data_dir, "--out", out, "--preset", "tiny",
                       *TINY_MODEL, "distill.alpha=1.0")
    assert result.returncode == 2
    assert "distill.alpha" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_stage_one_alone(tmp_path, tiny_data_dir):
    out = tmp_path / "s1"
    result = train(tiny_data_dir, out, "--max-updates", "2", "--stage", "1")
    assert "stage 2" not in result.stdout + result.stderr
    assert (out / "model.safetensors").is_file()


@pytest.mark.slow
def test_training_with_compiled_layers(tmp_path, tiny_data_dir):
    out = tmp_path / "compiled"
    train(tiny_data_dir, out, "--max-updates", "2", "--stage", "1", "train.compile=true")
    assert load_model_files(out).model.teacher == (3, 3)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["scratch", "word-kd", "selective-kd"])
def test_baselines_train_one_student(tmp_path, tiny_data_dir, aiokd_run, method):
    teacher, _ = aiokd_run
    extra = ["--teacher", teacher] if method != "scratch" else []
    out = tmp_path / method
    train(tiny_data_dir, out, "--method", method, "--student", "2-1", "--max-updates", "2",
          *extra)
    files = load_model_files(out)
    assert files.model.teacher == (2, 1)
    assert [f"{a}-{b}" for a, b in files.students] == ["2-1"]


@pytest.mark.slow
def test_word_kd_needs_a_teacher(tmp_path, tiny_data_dir):
    result = run_aiokd("train", "--data", tiny_data_dir, "--out", tmp_path / "w", "--method",
                       "word-kd", "--student", "2-1", *TINY_MODEL)
    assert result.returncode == 2
    assert "--teacher" in result.stderr


# ----------------------------------------------------------------------------------------------
# Data and teachers that training refuses


@pytest.fixture
def data_copy(tmp_path, tiny_data_dir):
    return shutil.copytree(tiny_data_dir, tmp_path / "data")


@pytest.mark.parametrize("how", ["truncated_ids", "missing_offsets", "manifest_json",
                                 "not_prepared"])
def test_train_refuses_damaged_data(tmp_path, data_copy, capsys, how):
    if how == "truncated_ids":
        path = data_copy / "train.de.ids.npy"
        path.write_bytes(path.read_bytes()[:100])
    elif how == "missing_offsets":
        path = data_copy / "valid.en.offsets.npy"
        path.unlink()
    elif how == "manifest_json":
        path = data_copy / "manifest.json"
        path.write_text("{not json", encoding="utf-8")
    else:
        path = data_copy
        (data_copy / "manifest.json").unlink()
    out = tmp_path / "run"
    assert_refused(train_argv(data_copy, out), capsys, path, out=out)


def test_train_refuses_missing_data_directory(tmp_path, capsys):
    out = tmp_path / "run"
    assert_refused(train_argv(tmp_path / "nowhere", out), capsys, tmp_path / "nowhere", out=out)


def test_train_refuses_sentences_longer_than_the_model(tmp_path, tiny_data_dir, capsys):
    out = tmp_path / "run"
    assert_refused(train_argv(tiny_data_dir, out, "model.max_positions=8"), capsys,
                   "model.max_positions", out=out)


def test_train_refuses_an_update_larger_than_the_data(tmp_path, tiny_data_dir, capsys):
    """Found only once training starts: the new run directory is removed again."""
    out = tmp_path / "run"
    assert_refused(train_argv(tiny_data_dir, out, "train.update_freq=1000"), capsys,
                   "train.update_freq", out=out)


def test_word_kd_refuses_a_teacher_with_another_vocabulary(tmp_path, other_vocab_data_dir,
                                                           tiny_model_dir, capsys):
    out = tmp_path / "run"
    assert_refused(train_argv(other_vocab_data_dir, out, "--method", "word-kd", "--student",
                              "2-1", "--teacher", tiny_model_dir),
                   capsys, tiny_model_dir, "vocabulary", out=out)


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty", "missing"])
def test_word_kd_refuses_a_damaged_teacher(tmp_path, tiny_data_dir, tiny_model_dir, capsys,
                                           how):
    teacher = shutil.copytree(tiny_model_dir, tmp_path / "teacher")
    weights = teacher / "model.safetensors"
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[:len(weights.read_bytes()) // 2])
    elif how == "garbage":
        weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header!!}" + b"\0" * 64)
    elif how == "empty":
        weights.write_bytes(b"")
    else:
        weights.unlink()
    out = tmp_path / "run"
    assert_refused(train_argv(tiny_data_dir, out, "--method", "word-kd", "--student", "2-1",
                              "--teacher", teacher), capsys, weights, out=out)
