"""``aiokd extract`` and ``aiokd export``: standalone students that decode exactly as inside the
teacher, in PyTorch and in CTranslate2."""

from __future__ import annotations

import json
import subprocess

import ctranslate2
import pytest
import sentencepiece as spm
import torch

import aiokd
from aiokd.cli import main as cli_main
from aiokd.data.batching import pad_sequences
from aiokd.errors import UserError
from aiokd.inference.generate import SearchOptions, generate
from aiokd.model.checkpoint import load_model_files, save_model_dir
from tests.conftest import aiokd_command, make_corpus, run_aiokd, subprocess_env


def run_cli(*args):
    """``aiokd ARGS`` in-process; returns the exit status."""
    with pytest.raises(SystemExit) as exit_:
        cli_main([str(arg) for arg in args])
    return exit_.value.code


@pytest.fixture(scope="module")
def lines():
    return make_corpus(30, seed=31)[0]


@pytest.fixture(scope="module")
def torch_model(tiny_model_dir):
    return aiokd.load(tiny_model_dir, device="cpu", engine="torch")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_model_dir):
    """Float32 CTranslate2 exports of students 3-2 and 2-2 of the tiny model."""
    root = tmp_path_factory.mktemp("ct2")
    for student in ("3-2", "2-2"):
        assert run_cli("export", "--model", tiny_model_dir, "--student", student,
                       "--out", root / student) == 0
    return root


def test_extract_holds_only_the_student(tmp_path, tiny_model_dir, lines):
    out = tmp_path / "s22"
    assert run_cli("extract", "--model", tiny_model_dir, "--student", "2-2", "--out", out) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s22"]
    config = json.loads((out / "config.json").read_text())
    assert config["student"] == "2-2" and config["students"] == ["2-2"]
    assert config["extracted_from"] == str(tiny_model_dir.resolve())
    assert (config["model"]["enc_layers"], config["model"]["dec_layers"]) == (2, 2)
    assert config["space"] == {"enc_layers": 2, "dec_layers": 2, "min_enc": 2, "min_dec": 2,
                               "dec_le_enc": False, "include_teacher": True}

    teacher, student = load_model_files(tiny_model_dir).model, load_model_files(out).model
    assert len(student.encoder) == len(student.decoder) == 2
    processor = spm.SentencePieceProcessor(model_file=str(out / "spm.model"))
    sources = processor.encode(lines)
    src = pad_sequences(sources, 0, suffix=3)
    prev = pad_sequences([s[:5] for s in sources], 0, prefix=2)
    with torch.inference_mode():
        assert torch.equal(student(src, prev), teacher(src, prev, 2, 2))
    for beam in (1, 5):
        options = SearchOptions(beam=beam)
        assert generate(student, sources, None, options) == generate(teacher, sources, (2, 2),
                                                                     options)
    assert aiokd.load(out).students == ["2-2"]
    with pytest.raises(UserError, match="unknown student '3-3'.*: 2-2$"):
        aiokd.load(out).translate(lines, student="3-3")


def test_extract_errors(tmp_path, capsys, tiny_model_dir):
    assert run_cli("extract", "--model", tiny_model_dir, "--student", "2-3",
                   "--out", tmp_path / "x") == 2
    assert "unknown student '2-3'" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    assert run_cli("extract", "--model", tiny_model_dir, "--student", "2-2",
                   "--out", tmp_path / "taken") == 2
    assert "exists" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("student", ["3-2", "2-2"])
def test_ctranslate2_scores_equal_torch_log_probs(exported, tiny_model_dir, lines, student):
    files = load_model_files(tiny_model_dir)
    processor = spm.SentencePieceProcessor(model_proto=files.spm_bytes)
    sources = processor.encode(lines)
    targets = [s[::-1][:7] for s in sources]
    translator = ctranslate2.Translator(str(exported / student), intra_threads=1)
    scored = translator.score_batch([processor.id_to_piece(s) for s in sources],
                                    [processor.id_to_piece(t) for t in targets])
    le, ld = map(int, student.split("-"))
    src = pad_sequences(sources, 0, suffix=3)
    prev = pad_sequences(targets, 0, prefix=2)
    gold = pad_sequences(targets, 0, suffix=3)
    with torch.inference_mode():
        log_probs = torch.log_softmax(files.model(src, prev, le, ld), dim=-1)
    ours = log_probs.gather(2, gold[..., None])[..., 0]
    for row, result in enumerate(scored):
        expected = ours[row, :len(targets[row]) + 1]
        assert torch.allclose(torch.tensor(result.log_probs), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("student", ["3-2", "2-2"])
@pytest.mark.parametrize("options", [SearchOptions(beam=1), SearchOptions(beam=5),
                                     SearchOptions(beam=5, lenpen=0.0),
                                     SearchOptions(beam=4, lenpen=0.6, max_len_a=0, max_len_b=3)])
def test_ctranslate2_decodes_the_same_tokens(exported, torch_model, lines, student, options):
    exported_model = aiokd.load(exported / student)
    assert exported_model.students == [student]
    settings = {"beam": options.beam, "lenpen": options.lenpen,
                "max_len_a": options.max_len_a, "max_len_b": options.max_len_b}
    expected = torch_model.translate(lines, student=student, **settings)
    assert exported_model.translate(lines, **settings) == expected
    assert exported_model.translate(lines, student=student, **settings) == expected


@pytest.fixture(scope="module")
def pad_heavy_dir(tmp_path_factory, tiny_model_dir):
    """The tiny model with the embeddings of pad and BOS copied from EOS and a common piece, so
    that pad and BOS would be produced, often, were they not forbidden."""
    files = load_model_files(tiny_model_dir)
    with torch.no_grad():
        files.model.embed.weight[0] = files.model.embed.weight[3]
        files.model.embed.weight[2] = files.model.embed.weight[5]
    out = tmp_path_factory.mktemp("pad-heavy") / "model"
    save_model_dir(out, files.model, files.config, files.spm_bytes)
    return out


@pytest.mark.parametrize("beam", [1, 5])
def test_pad_and_bos_are_forbidden_alike(pad_heavy_dir, lines, beam):
    files = load_model_files(pad_heavy_dir)
    processor = spm.SentencePieceProcessor(model_proto=files.spm_bytes)
    outputs = generate(files.model, processor.encode(lines), (3, 2), SearchOptions(beam=beam))
    assert not any({0, 2} & set(output) for output in outputs)
    expected = aiokd.load(pad_heavy_dir, engine="torch").translate(lines, "3-2", beam=beam)
    ctranslate2_model = aiokd.load(pad_heavy_dir, engine="ctranslate2")
    assert ctranslate2_model.translate(lines, "3-2", beam=beam) == expected


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_ctranslate2_computes_in_the_dtype_asked_if_it_can(exported, lines, dtype):
    if dtype in ctranslate2.get_supported_compute_types("cpu"):
        model = aiokd.load(exported / "2-2", device="cpu", dtype=dtype)
        assert all(model.translate(lines[:3], beam=2))
    else:
        with pytest.raises(UserError, match=f"--dtype {dtype}: CTranslate2 cannot compute in it "
                                            "on cpu here .it can in: .*float32"):
            aiokd.load(exported / "2-2", device="cpu", dtype=dtype)


def test_ctranslate2_engine_exports_on_the_fly(tiny_model_dir, torch_model, lines):
    model = aiokd.load(tiny_model_dir, engine="ctranslate2")
    assert model.students == ["2-2", "3-2", "3-3"]
    for student in ("3-3", "2-2"):
        assert model.translate(lines, student) == torch_model.translate(lines, student)


def test_export_description_and_errors(exported, tiny_model_dir, tmp_path, capsys):
    info = json.loads((exported / "3-2" / "aiokd.json").read_text())
    assert info["student"] == "3-2" and info["quantization"] == "none"
    assert (info["model"]["enc_layers"], info["model"]["dec_layers"]) == (3, 2)
    assert (exported / "3-2" / "spm.model").read_bytes() == (tiny_model_dir /
                                                             "spm.model").read_bytes()
    with pytest.raises(UserError, match="CTranslate2 export; translate with --engine ctranslate2"):
        aiokd.load(exported / "3-2", engine="torch")
    with pytest.raises(UserError, match="unknown student '2-2'.*: 3-2$"):
        aiokd.load(exported / "3-2").translate(["Der hund ."], student="2-2")
    assert run_cli("export", "--model", exported / "3-2", "--out", tmp_path / "again") == 2
    assert "is a CTranslate2 export" in capsys.readouterr().err
    assert run_cli("export", "--model", tiny_model_dir, "--out", exported / "3-2") == 2
    assert "exists" in capsys.readouterr().err


def test_int8_export_translates(tmp_path, tiny_model_dir, lines):
    out = tmp_path / "int8"
    assert run_cli("export", "--model", tiny_model_dir, "--student", "3-3", "--quantization",
                   "int8", "--out", out) == 0
    translations = aiokd.load(out).translate(["", *lines], beam=3)
    assert len(translations) == len(lines) + 1 and translations[0] == ""
    assert all(translations[1:])


def test_cli_translate_with_ctranslate2(exported, torch_model, lines):
    command = aiokd_command("translate", "--engine", "ctranslate2", "--model", exported / "2-2",
                            "--beam", "5")
    result = subprocess.run(command, input="\n".join(["", *lines]) + "\n", capture_output=True,
                            text=True, env=subprocess_env(), timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n") == ["", *torch_model.translate(lines, "2-2"), ""]

    result = run_aiokd("translate", "--model", exported / "2-2")
    assert result.returncode == 2 and "--engine ctranslate2" in result.stderr


def test_export_of_a_missing_model(tmp_path, capsys):
    assert run_cli("export", "--model", tmp_path / "none", "--out", tmp_path / "out") == 2
    assert "no such model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
