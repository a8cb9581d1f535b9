"""Model files are data, never code: nothing unpickles, damaged files are refused with one clear
error, and a checkpoint restores a model and its optimizer exactly."""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import aiokd
from aiokd.config import load_config
from aiokd.distill.objective import Objective
from aiokd.errors import UserError
from aiokd.model.checkpoint import load_model_files, read_checkpoint, save_checkpoint
from aiokd.model.transformer import Transformer
from aiokd.train.optimizer import make_optimizer
from tests.conftest import TINY_MODEL, run_aiokd

PACKAGE = Path(aiokd.__file__).parent


class Payload:
    """Unpickling this creates ``marker``: proof that a pickle was executed."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def tiny_config(*extra):
    return load_config("tiny", overrides=[*TINY_MODEL, "model.vocab_size=100", *extra])


@pytest.fixture
def pickles(tmp_path):
    """Pickle payloads that would create ``marker`` if unpickled: raw pickle, ``torch.save``."""
    marker = tmp_path / "EXECUTED"
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(Payload(marker)))
    saved = tmp_path / "torch.pt"
    torch.save({"model": Payload(marker)}, saved)
    sanity = tmp_path / "SANITY"
    pickle.loads(pickle.dumps(Payload(sanity)))  # the payload works when unpickled
    assert sanity.exists()
    return marker, [raw, saved]


# ----------------------------------------------------------------------------------------------
# No pickle, anywhere


def test_pickle_as_checkpoint_is_refused_and_not_executed(pickles, tmp_path):
    marker, payloads = pickles
    for payload in payloads:
        path = tmp_path / "stage1-last.safetensors"
        shutil.copy(payload, path)
        with pytest.raises(UserError, match=re.escape(str(path))):
            read_checkpoint(path)
        with pytest.raises(UserError, match=re.escape(str(path))):
            load_model_files(path)
    assert not marker.exists()


def test_pickle_as_model_safetensors_is_refused_and_not_executed(pickles, tmp_path,
                                                                 tiny_model_dir):
    marker, payloads = pickles
    for payload in payloads:
        model_dir = tmp_path / "model"
        shutil.copytree(tiny_model_dir, model_dir, dirs_exist_ok=True)
        shutil.copy(payload, model_dir / "model.safetensors")
        with pytest.raises(UserError, match="model.safetensors"):
            load_model_files(model_dir)
        with pytest.raises(UserError, match="model.safetensors"):
            load_model_files(model_dir / "model.safetensors")
    assert not marker.exists()


def test_pickle_inside_a_safetensors_file_stays_bytes(pickles, tmp_path):
    """A pickle stored as a tensor's bytes is never interpreted."""
    marker, (raw, _) = pickles
    path = tmp_path / "wrapped.safetensors"
    save_file({"vocab.spm": torch.frombuffer(bytearray(raw.read_bytes()), dtype=torch.uint8)},
              path, metadata={"aiokd": json.dumps({"format": "aiokd-checkpoint", "config": {}})})
    checkpoint = read_checkpoint(path)
    assert checkpoint.spm_bytes == raw.read_bytes()
    assert not marker.exists()


@pytest.mark.slow
def test_training_refuses_pickles_in_the_run_and_data_directories(pickles, tmp_path,
                                                                  tiny_data_dir):
    """Through the command line: a pickled ``last`` checkpoint and a pickled ``.npy`` array."""
    marker, (raw, saved) = pickles
    out = tmp_path / "run"
    args = ["train", "--data", tiny_data_dir, "--out", out, "--max-updates", 2, "--stage", 1,
            *TINY_MODEL]
    assert run_aiokd(*args).returncode == 0
    shutil.copy(saved, out / "checkpoints" / "stage1-last.safetensors")
    done = run_aiokd(*args)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("aiokd: error: ") and "stage1-last.safetensors" in done.stderr

    data = tmp_path / "data"
    shutil.copytree(tiny_data_dir, data)
    np.save(data / "train.de.ids.npy", np.array([Payload(marker)], dtype=object),
            allow_pickle=True)
    done = run_aiokd("train", "--data", data, "--out", tmp_path / "run2", *args[5:])
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "train.de.ids.npy" in done.stderr
    assert not (tmp_path / "run2").exists()
    assert not marker.exists()


def test_package_never_unpickles():
    """No module of the package can load a pickle: no ``torch.load``, ``pickle.load(s)``,
    ``allow_pickle=True`` or ``weights_only=False``."""
    forbidden = re.compile(
        r"torch\.load\(|torch\.jit\.load\(|^\s*(import|from) (c?pickle|dill|joblib)\b|"
        r"pickle\.loads?\(|Unpickler|allow_pickle\s*=\s*True|weights_only\s*=\s*False|"
        r"np\.load\((?![^)]*allow_pickle\s*=\s*False)")
    assert all(forbidden.search(line) for line in (
        "state = torch.load(path)", "import pickle", "np.load(path)", "pickle.loads(data)"))
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 10
    found = [f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
             for path in sources
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if forbidden.search(line)]
    assert not found


# ----------------------------------------------------------------------------------------------
# Damaged files


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory) -> bytes:
    """A complete checkpoint (model, Adam, vocabulary, header) of a tiny model."""
    cfg = tiny_config()
    model = Transformer(cfg.model)
    path = tmp_path_factory.mktemp("checkpoint") / "stage1-last.safetensors"
    save_checkpoint(path, model, {"config": cfg.to_dict(), "stage": 1}, b"spm",
                    make_optimizer(model, cfg))
    return path.read_bytes()


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.floats(0, 1, exclude_max=True),
       edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)),
                      max_size=4),
       in_header=st.booleans())
def test_damaged_checkpoint_loads_or_raises_user_error(checkpoint_bytes, tmp_path, cut, edits,
                                                       in_header):
    """Truncated anywhere, or bytes overwritten (often in the JSON header): either the file still
    reads (tensor data carries no checksum) or a UserError names it; nothing else."""
    data = bytearray(checkpoint_bytes)
    header_end = 8 + int.from_bytes(data[:8], "little")
    for where, value in edits:
        data[int(where * (header_end if in_header else len(data)))] = value
    if not edits:
        data = data[:int(cut * len(data))]
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(bytes(data))
    for load in (read_checkpoint, load_model_files):
        try:
            load(path)
        except UserError as error:
            assert str(path) in str(error) and "\n" not in str(error)


@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(section=st.sampled_from(["model", "space", None]), key=st.sampled_from(
    ["vocab_size", "d_model", "heads", "enc_layers", "dec_layers", "min_enc", "min_dec",
     "pad_id", "dropout", "format", "dec_le_enc", "unknown"]),
       value=st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True),
                       st.text(max_size=3), st.just([]), st.just({})))
def test_edited_model_config_loads_or_raises_user_error(tiny_model_dir, tmp_path, section, key,
                                                        value):
    """A hand-edited ``config.json`` with wrong types or values never gives a traceback."""
    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir, dirs_exist_ok=True)
    config = json.loads((model_dir / "config.json").read_text())
    (config[section] if section else config)[key] = value
    (model_dir / "config.json").write_text(json.dumps(config))
    try:
        files = load_model_files(model_dir)
    except UserError as error:
        assert "\n" not in str(error)
    else:
        assert files.students


@pytest.mark.parametrize("damage", ["empty", "short", "huge_header", "not_json", "list_header",
                                    "no_metadata", "truncated_data"])
def test_damaged_checkpoint_message_names_the_file(checkpoint_bytes, tmp_path, damage):
    header = int.from_bytes(checkpoint_bytes[:8], "little")
    data = {
        "empty": b"",
        "short": checkpoint_bytes[:5],
        "huge_header": (2**60).to_bytes(8, "little") + checkpoint_bytes[8:],
        "not_json": checkpoint_bytes[:8] + b"\xff" * header + checkpoint_bytes[8 + header:],
        "list_header": (2).to_bytes(8, "little") + b"[]",
        "no_metadata": None,
        "truncated_data": checkpoint_bytes[:-10],
    }[damage]
    path = tmp_path / "stage2-best.safetensors"
    if data is None:
        save_file({"x": torch.zeros(2)}, path)
    else:
        path.write_bytes(data)
    with pytest.raises(UserError, match=re.escape(str(path))):
        read_checkpoint(path)


# ----------------------------------------------------------------------------------------------
# Exact round trip


def test_checkpoint_round_trip_is_exact(tmp_path):
    """Weights, Adam's moments and step, the header and the vocabulary come back bit for bit,
    and the restored pair takes the same next step as the original."""
    cfg = tiny_config("model.dropout=0")
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    optimizer = make_optimizer(model, cfg)
    objective = Objective(model, cfg)
    src = torch.randint(4, 100, (3, 7))
    prev, target = torch.randint(4, 100, (3, 6)), torch.randint(4, 100, (3, 6))

    def step(objective, optimizer):
        loss, _ = objective(src, prev, target, [(1, 1), (3, 2)], 2)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    for _ in range(3):
        step(objective, optimizer)
    meta = {"config": cfg.to_dict(), "stage": 2, "state": {"update": 3, "best": float("inf")},
            "nested": {"list": [1, 2.5, "x"], "none": None}}
    spm = bytes(range(256)) * 3
    path = tmp_path / "stage2-last.safetensors"
    save_checkpoint(path, model, meta, spm, optimizer)

    checkpoint = read_checkpoint(path)
    assert checkpoint.spm_bytes == spm
    assert checkpoint.meta["nested"] == meta["nested"]
    assert checkpoint.meta["state"] == meta["state"]
    assert checkpoint.config.to_dict() == cfg.to_dict()
    torch.manual_seed(1)
    restored = Transformer(checkpoint.config.model)
    restored_optimizer = make_optimizer(restored, cfg)
    checkpoint.restore(restored, restored_optimizer)

    for (name, a), (_, b) in zip(model.state_dict().items(), restored.state_dict().items(),
                                 strict=True):
        assert torch.equal(a, b), name
    original, loaded = optimizer.state_dict(), restored_optimizer.state_dict()
    assert original["state"].keys() == loaded["state"].keys()
    for index, values in original["state"].items():
        for key, value in values.items():
            assert torch.equal(value, loaded["state"][index][key]), (index, key)
    for group, loaded_group in zip(original["param_groups"], loaded["param_groups"], strict=True):
        for key, value in group.items():
            assert (list(value) if isinstance(value, tuple) else value) == (
                list(loaded_group[key]) if isinstance(loaded_group[key], tuple)
                else loaded_group[key]), key

    step(objective, optimizer)
    step(Objective(restored, cfg), restored_optimizer)
    for a, b in zip(model.parameters(), restored.parameters(), strict=True):
        assert torch.equal(a, b)

    copy = tmp_path / "copy.safetensors"
    save_checkpoint(copy, restored, meta, spm, restored_optimizer)
    save_checkpoint(path, model, meta, spm, optimizer)
    assert copy.read_bytes() == path.read_bytes()  # saving is deterministic too
