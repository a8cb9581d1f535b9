"""``aiokd evaluate``: every figure of every chosen student, the files written, and bad input."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from sacrebleu.metrics import BLEU

from aiokd.cli import main as cli_main
from aiokd.evaluation.evaluate import (
    EvalSet,
    evaluate,
    output_paths,
    read_test_set,
    summary,
    write_outputs,
)
from aiokd.evaluation.footprint import directory_bytes
from aiokd.evaluation.latency import (
    FamilyTimer,
    LatencySettings,
    PeakMemory,
    sample_indices,
    trimmed_mean,
)
from aiokd.evaluation.results import load_results
from aiokd.evaluation.scoring import sacrebleu_scores
from aiokd.evaluation.select import select_student
from aiokd.inference.api import load
from aiokd.model.checkpoint import load_model_files
from aiokd.model.probe import cpu_description
from tests.conftest import make_corpus, run_aiokd

PNG = b"\x89PNG\r\n\x1a\n"
FIGURES = ("bleu", "chrf", "tok_bleu", "length_ratio", "params", "params_no_embeddings",
           "size_bytes", "size_mb", "ms_per_sentence", "sentences_per_second", "peak_memory_mb")
QUICK = LatencySettings(sample=2, runs=1, warmup=1)


@pytest.fixture(scope="module")
def test_set():
    src, ref = make_corpus(6, seed=31)
    return EvalSet(src, ref, {"src": "memory", "ref": "memory"})


@pytest.fixture(scope="module")
def evaluation(tiny_model_dir, test_set):
    return evaluate(tiny_model_dir, test_set, beam=2, device="cpu", tok_bleu=True,
                    latency=QUICK, progress=False)


@pytest.fixture(scope="module")
def results(evaluation):
    return evaluation.results


def write_pair(tmp_path, src, ref):
    (tmp_path / "src.de").write_text("".join(line + "\n" for line in src))
    (tmp_path / "ref.en").write_text("".join(line + "\n" for line in ref))
    return tmp_path / "src.de", tmp_path / "ref.en"


def test_every_student_has_every_figure(results, tiny_model_dir):
    assert [e["student"] for e in results["students"]] == ["2-2", "3-2", "3-3"]
    for e in results["students"]:
        assert all(isinstance(e[key], int | float) for key in FIGURES), e
        assert 0 <= e["bleu"] <= 100 and 0 <= e["chrf"] <= 100
        assert e["params"] > e["params_no_embeddings"] > 0
        assert e["ms_per_sentence"] > 0 and e["sentences_per_second"] > 0
    model = load_model_files(tiny_model_dir).model
    small, large = results["students"][0], results["students"][-1]
    assert small["params"] == model.num_parameters((2, 2))
    assert large["params_no_embeddings"] == model.num_parameters((3, 3), embeddings=False)
    assert small["size_bytes"] < large["size_bytes"]
    assert results["signatures"]["bleu"].startswith("nrefs:1")
    assert "chrf" in results["signatures"] and "tok_bleu" in results["signatures"]
    assert "Moses" in results["tok_bleu"] and results["latency"]["runs"] == 1
    assert "1 run in rounds across the students" in summary(results)
    assert "batched, the scored pass" in summary(results)
    assert results["threads"] >= 1 and results["device"] == "cpu" and results["beam"] == 2
    assert results["hardware"] == cpu_description()  # latency is this CPU's: named in full


def test_size_is_that_of_the_extracted_student(results, tiny_model_dir, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["extract", "--model", str(tiny_model_dir), "--student", "3-2",
                  "--out", str(tmp_path / "3-2")])
    assert exit_.value.code == 0
    entry = next(e for e in results["students"] if e["student"] == "3-2")
    assert entry["size_bytes"] == directory_bytes(tmp_path / "3-2")


def test_outputs_are_written(evaluation, results, tmp_path):
    paths = write_outputs(evaluation, tmp_path / "out" / "results.json")
    assert [p.name for p in paths] == ["results.json", "results.csv", "results.bleu_grid.png",
                                       "results.bleu_latency.png", "results.translations"]
    written = load_results(paths[0])
    assert written["students"] == results["students"]
    assert written["translations"] == "results.translations"
    rows = list(csv.DictReader(paths[1].open()))
    assert [row["student"] for row in rows] == ["2-2", "3-2", "3-3"]
    assert float(rows[0]["bleu"]) == results["students"][0]["bleu"]
    for png in paths[2:4]:
        assert png.read_bytes().startswith(PNG)
    assert sorted(p.name for p in paths[0].parent.iterdir()) == sorted(p.name for p in paths)
    assert select_student(results)["student"] in {"2-2", "3-2", "3-3"}


def test_the_written_translations_are_what_was_scored(evaluation, results, tmp_path):
    """Every student's file, rescored with sacreBLEU against the written reference, gives the
    BLEU and length ratio of the results; the source and reference are the test set, line for
    line."""
    directory = write_outputs(evaluation, tmp_path / "results.json")[-1]
    assert sorted(p.name for p in directory.iterdir()) == [
        "2-2.txt", "3-2.txt", "3-3.txt", "reference.txt", "source.txt"]
    def read(name):
        return (directory / name).read_text(encoding="utf-8").split("\n")[:-1]

    assert read("source.txt") == evaluation.test.sources
    references = read("reference.txt")
    assert references == evaluation.test.references
    for entry in results["students"]:
        hypotheses = read(f"{entry['student']}.txt")
        assert hypotheses == evaluation.hypotheses[entry["student"]]
        assert len(hypotheses) == len(references)
        rescored = BLEU().corpus_score(hypotheses, [references])
        assert round(rescored.score, 4) == entry["bleu"]
        assert round(rescored.sys_len / rescored.ref_len, 4) == entry["length_ratio"]


def test_the_length_penalty_is_the_one_translate_uses(tiny_model_dir, test_set):
    """``lenpen`` reaches the beam search (each student translates as ``translate`` with the same
    penalty would) and is recorded with the results."""
    found = evaluate(tiny_model_dir, test_set, students=["2-2"], beam=3, device="cpu",
                     latency=None, progress=False, lenpen=2.5)
    translator = load(tiny_model_dir, device="cpu")
    assert found.hypotheses["2-2"] == translator.translate(test_set.sources, student="2-2",
                                                           beam=3, lenpen=2.5)
    assert found.results["lenpen"] == 2.5 and "search: beam 3, lenpen 2.5" in summary(found.results)


def test_translations_of_an_earlier_evaluation_are_replaced(evaluation, tmp_path):
    directory = tmp_path / "results.translations"
    directory.mkdir()
    (directory / "6-6.txt").write_text("from an earlier model\n")
    write_outputs(evaluation, tmp_path / "results.json")
    assert not (directory / "6-6.txt").exists() and (directory / "2-2.txt").is_file()


def test_cli_with_raw_files_and_no_latency(tiny_model_dir, tmp_path, capsys):
    src, ref = write_pair(tmp_path, *make_corpus(4, seed=32))
    out = tmp_path / "r.json"
    with pytest.raises(SystemExit) as exit_:
        cli_main(["evaluate", "--model", str(tiny_model_dir), "--src", str(src), "--ref",
                  str(ref), "--students", "3-3,2-2", "--beam", "1", "--no-latency",
                  "--device", "cpu", "--out", str(out)])
    assert exit_.value.code == 0
    stdout = capsys.readouterr().out
    table = [line for line in stdout.splitlines() if line.startswith("| ")]
    assert table[0].split("|")[1].strip() == "student"
    assert [row.split("|")[1].strip() for row in table[1:]] == ["2-2", "3-3"]
    results = load_results(out)
    assert results["latency"] is None and results["students"][0]["ms_per_sentence"] is None
    assert results["test_set"]["sentences"] == 4
    assert (tmp_path / "r.bleu_params.png").read_bytes().startswith(PNG)
    assert sorted(p.name for p in (tmp_path / "r.translations").iterdir()) == [
        "2-2.txt", "3-3.txt", "reference.txt", "source.txt"]
    assert str(out) in stdout


def test_ctranslate2_engine(tiny_model_dir, test_set):
    results = evaluate(tiny_model_dir, test_set, students="2-2", beam=2, engine="ctranslate2",
                       device="cpu", latency=QUICK, progress=False).results
    (entry,) = results["students"]
    assert entry["student"] == "2-2" and entry["ms_per_sentence"] > 0
    assert results["engine"] == "ctranslate2" and "CTranslate2" in results["size"]
    assert results["dtype"] == "default"


def test_evaluates_in_the_dtype_asked(tiny_model_dir, test_set):
    results = evaluate(tiny_model_dir, test_set, students="3-3", beam=2, device="cpu",
                       latency=None, progress=False, dtype="bfloat16").results
    assert results["dtype"] == "bfloat16" and "torch in bfloat16 on cpu" in summary(results)
    assert results["students"][0]["bleu"] >= 0


def test_read_test_set_from_a_data_directory(tiny_data_dir, tiny_corpus):
    test = read_test_set(str(tiny_data_dir), "test")
    assert (test.sources, test.references) == tiny_corpus["test"]
    assert test.description["split"] == "test"


def test_latency_helpers():
    assert trimmed_mean([5.0, 1.0, 100.0, 3.0]) == 4.0
    assert trimmed_mean([2.0, 4.0]) == 3.0
    assert sample_indices(3, 50) == [0, 1, 2]
    sample = sample_indices(1000, 50)
    assert len(set(sample)) == 50 and sample[0] == 0 and sample[-1] == 999


@pytest.mark.parametrize("batched_runs", [1, 3])
def test_the_whole_set_is_translated_once_unless_asked(batched_runs):
    """By default the pass whose translations are scored is also the timed batched pass: one
    translation of the whole set per student, besides the batch-1 sample; more on request."""
    lines = [f"sentence {i}" for i in range(20)]
    calls = []

    def translate(batch):
        calls.append(len(batch))
        return [line.upper() for line in batch]

    settings = LatencySettings(sample=4, runs=3, warmup=2, batched_runs=batched_runs)
    timer = FamilyTimer(lines, settings, PeakMemory(torch.device("cpu")))
    assert timer.scored_pass("2-2", translate) == [line.upper() for line in lines]
    timing = timer.rounds()["2-2"]
    assert calls.count(len(lines)) == batched_runs
    assert calls.count(1) == 2 + 3 * 4
    assert timing.sentences_per_second > 0 and timing.ms_per_sentence > 0


def test_repeated_runs_are_interleaved_across_students():
    """Run r of every student comes before run r + 1 of any: a slow spell of the machine then
    falls on one run of several students (which the trimmed mean drops), not on one student."""
    lines = [f"sentence {i}" for i in range(6)]
    order = []

    def translator(name):
        def translate(batch):
            order.append((name, len(batch)))
            return batch
        return translate

    settings = LatencySettings(sample=2, runs=3, warmup=1, batched_runs=2)
    timer = FamilyTimer(lines, settings, PeakMemory(torch.device("cpu")))
    for name in ("2-2", "6-6"):
        timer.scored_pass(name, translator(name))
    scored = [("2-2", 1), ("2-2", 6), ("6-6", 1), ("6-6", 6)]
    assert order[:4] == scored
    del order[:4]
    timings = timer.rounds()
    small, large = [("2-2", 1)] * 2, [("6-6", 1)] * 2  # one run of the batch-1 sample
    round_with_batched = small + [("2-2", 6)] + large + [("6-6", 6)]
    assert order == round_with_batched + small + large + small + large
    assert set(timings) == {"2-2", "6-6"}


def output_names(out):
    return [p.name for p in output_paths(out).values()]


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aiokd: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_cli_errors_are_one_line(tiny_model_dir, tmp_path):
    src, ref = write_pair(tmp_path, *make_corpus(3, seed=33))
    out = tmp_path / "results.json"
    common = ["--src", src, "--ref", ref, "--out", out, "--no-latency"]
    assert_one_line_error(run_aiokd("evaluate", "--model", tiny_model_dir, "--students", "7-2",
                                    *common), "7-2", "2-2 3-2 3-3")
    assert_one_line_error(run_aiokd("evaluate", "--model", tmp_path / "nothing", *common),
                          str(tmp_path / "nothing"))
    short = tmp_path / "short.en"
    short.write_text("one line\n")
    assert_one_line_error(run_aiokd("evaluate", "--model", tiny_model_dir, "--src", src,
                                    "--ref", short, "--out", out),
                          str(src), str(short), "1 lines", "3")
    assert_one_line_error(run_aiokd("evaluate", "--model", tiny_model_dir, "--out", out),
                          "--data")
    assert_one_line_error(run_aiokd("evaluate", "--model", tiny_model_dir, "--src", src,
                                    "--ref", ref, "--out", out, "--throughput-runs", "0"),
                          "--throughput-runs")
    assert not any(path.name in output_names(out) for path in tmp_path.iterdir())


def test_output_paths_sit_beside_the_results_file(tmp_path):
    assert output_names(tmp_path / "x.json") == ["x.json", "x.csv", "x.bleu_grid.png",
                                                 "x.bleu_latency.png", "x.translations"]
    assert json.dumps(output_names(tmp_path / "x")) == json.dumps(
        ["x", "x.csv", "x.bleu_grid.png", "x.bleu_latency.png", "x.translations"])


def test_a_ctranslate2_export_is_measured_as_it_is(tiny_model_dir, test_set, tmp_path):
    export = tmp_path / "ct2"
    with pytest.raises(SystemExit) as exit_:
        cli_main(["export", "--model", str(tiny_model_dir), "--student", "3-2",
                  "--quantization", "int8", "--out", str(export)])
    assert exit_.value.code == 0
    results = evaluate(export, test_set, beam=2, engine="ctranslate2", device="cpu",
                       latency=None, progress=False).results
    (entry,) = results["students"]
    assert entry["student"] == "3-2" and entry["size_bytes"] == directory_bytes(export)
    assert entry["params"] == load_model_files(tiny_model_dir).model.num_parameters((3, 2))
    assert "int8" in results["size"]


def test_bleu_carries_the_length_ratio_behind_its_brevity_penalty():
    references = ["a man rides a bike .", "two dogs play in the snow ."]
    short = ["a man rides .", "two dogs play ."]
    bleu, chrf = sacrebleu_scores(short, references, "en")
    assert bleu.length_ratio == 8 / 13 and chrf.length_ratio is None
    assert sacrebleu_scores(references, references, "en")[0].length_ratio == 1.0
