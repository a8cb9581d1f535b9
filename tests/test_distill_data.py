"""``aiokd distill-data``: the data directory it writes, resuming, and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aiokd.cli import main as cli_main
from aiokd.data.corpus import ParallelSplit, data_sentencepiece, load_manifest, side_files
from aiokd.inference.distill_data import distill_data, translate_resumably
from tests.conftest import TINY_MODEL, run_aiokd


@pytest.fixture(scope="module")
def distilled(tiny_model_dir, tiny_data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("distill") / "kd"
    manifest = distill_data(tiny_model_dir, tiny_data_dir, out, student="3-2", beam=2,
                            device="cpu", chunk_lines=128)
    return out, manifest


def test_same_pairs_same_vocabulary_translated_targets(distilled, tiny_data_dir):
    out, manifest = distilled
    original = ParallelSplit.load(tiny_data_dir, "train")
    train = ParallelSplit.load(out, "train")
    assert len(train) == len(original)
    assert train.source_lines() == original.source_lines()
    assert all(np.array_equal(train.src(i), original.src(i)) for i in range(len(train)))
    targets = train.target_lines()
    assert targets != original.target_lines()
    tokenizer = data_sentencepiece(out)
    assert [list(train.tgt(i)) for i in range(len(train))] == tokenizer.encode_batch(targets)
    assert (out / "spm.model").read_bytes() == (tiny_data_dir / "spm.model").read_bytes()
    assert manifest == load_manifest(out)
    assert manifest["recipe"]["name"] == "distill-data"
    assert (manifest["recipe"]["student"], manifest["recipe"]["beam"]) == ("3-2", 2)
    assert manifest["recipe"]["dtype"] == "float32"
    assert manifest["splits"]["train"]["pairs"] == len(original)


def test_valid_and_test_are_copied(distilled, tiny_data_dir):
    out, _ = distilled
    for split in ("valid", "test"):
        for lang in ("de", "en"):
            for name in side_files(split, lang).values():
                assert (out / name).read_bytes() == (tiny_data_dir / name).read_bytes()
        assert len(ParallelSplit.load(out, split)) == len(ParallelSplit.load(tiny_data_dir, split))
    assert not list(out.parent.glob(".*"))  # no partial or temporary directory left


def test_the_output_trains(distilled, tmp_path):
    out, _ = distilled
    result = run_aiokd("train", "--data", out, "--out", tmp_path / "run", "--max-updates", "2",
                       "--stage", "1", *TINY_MODEL)
    assert result.returncode == 0, result.stderr[-2000:]


class FakeTranslator:
    """Upper-cases lines; raises after ``fail_after`` calls, like an interrupted job."""

    def __init__(self, fail_after=None):
        self.calls, self.fail_after = 0, fail_after

    def translate(self, lines, student=None, beam=5, progress=None):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt
        self.calls += 1
        progress(len(lines))
        return [line.upper() for line in lines]


def test_an_interrupted_job_resumes_from_the_last_chunk(tmp_path):
    sources = [f"line {i}" for i in range(25)]
    work, job = tmp_path / ".out.partial", {"model": "m", "beam": 5}
    with pytest.raises(KeyboardInterrupt):
        translate_resumably(FakeTranslator(fail_after=2), sources, "6-6", 5, work, job, 10)
    assert sorted(p.name for p in work.glob("chunk-*")) == ["chunk-000000.txt", "chunk-000001.txt"]
    again = FakeTranslator()
    assert translate_resumably(again, sources, "6-6", 5, work, job, 10) == [
        line.upper() for line in sources]
    assert again.calls == 1
    other = FakeTranslator()
    translate_resumably(other, sources, "6-6", 5, work, {**job, "beam": 4}, 10)
    assert other.calls == 3
    assert json.loads((work / "job.json").read_text())["beam"] == 4


def test_cli_errors(tiny_model_dir, tiny_data_dir, distilled, tmp_path):
    out, _ = distilled
    for args, fragment in [(("--out", out), "exists"),
                           (("--out", tmp_path / "x", "--student", "7-2"), "7-2"),
                           (("--out", tmp_path / "y", "--beam", "0"), "--beam")]:
        result = run_aiokd("distill-data", "--model", tiny_model_dir, "--data", tiny_data_dir,
                           *args)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("aiokd: error: ") and fragment in lines[0]
    assert not (tmp_path / "x").exists()


def test_cli(tiny_model_dir, tiny_data_dir, tmp_path, capsys):
    out = tmp_path / "kd"
    with pytest.raises(SystemExit) as exit_:
        cli_main(["distill-data", "--model", str(tiny_model_dir), "--data", str(tiny_data_dir),
                  "--out", str(out), "--student", "2-2", "--beam", "1", "--device", "cpu"])
    assert exit_.value.code == 0
    assert f"wrote {out}: 300 training pairs translated by student 2-2" in capsys.readouterr().out
    assert load_manifest(out)["recipe"]["beam"] == 1
