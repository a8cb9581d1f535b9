"""Bad input never ends in a traceback: every command prints one line ``aiokd: error: ...`` naming
the file (and line) or the option, exits with status 2, and leaves no partial output behind.

Most cases run the command line in this process (the same ``aiokd.cli.main`` as the installed
command); a few run it as a real subprocess to check the exit status and stderr of the process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import aiokd.train.loop
from aiokd.cli import build_parser, parse_args
from aiokd.cli import main as cli_main
from aiokd.config import load_config, parse_override
from aiokd.data.corpus import load_manifest
from aiokd.distill.students import CandidateSpace, parse_student
from aiokd.errors import UserError
from tests.conftest import TINY_MODEL, make_corpus, run_aiokd

TRAIN = ["--max-updates", "2", *TINY_MODEL]


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
    assert "Traceback" not in stderr
    assert status == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aiokd: error: "), stderr
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def assert_refused(argv: list, capsys, *names, out: Path | None = None) -> str:
    """The command fails cleanly, naming ``names``, and ``out`` (if given) does not appear;
    nor does a temporary sibling of it."""
    status, _, stderr = run_cli(argv, capsys)
    line = assert_one_line_error(status, stderr, *names)
    if out is not None:
        assert not out.exists(), f"{out} was created"
        assert not list(out.parent.glob(f".{out.name}*")), "temporary output left behind"
    return line


# ----------------------------------------------------------------------------------------------
# prepare


@pytest.fixture
def corpus_files(tmp_path):
    """``good.{de,en}`` (40 pairs) and ``valid.{de,en}`` (10 pairs) in ``tmp_path``."""
    for name, (src, tgt) in (("good", make_corpus(40, 3)), ("valid", make_corpus(10, 4))):
        (tmp_path / f"{name}.de").write_text("\n".join(src) + "\n", encoding="utf-8")
        (tmp_path / f"{name}.en").write_text("\n".join(tgt) + "\n", encoding="utf-8")
    return tmp_path


def prepare_argv(directory: Path, train: str, *extra) -> list:
    return ["prepare", "--src-lang", "de", "--tgt-lang", "en", "--train", directory / train,
            "--valid", directory / "valid", "--vocab-size", "60", "--out", directory / "out",
            *extra]


def damage(directory: Path, how: str) -> tuple[str, list]:
    """Write ``bad.{de,en}`` damaged as ``how``; returns the prefix name and what the error
    message must name."""
    good_de = (directory / "good.de").read_bytes()
    good_en = (directory / "good.en").read_bytes()
    de, en = directory / "bad.de", directory / "bad.en"
    de.write_bytes(good_de)
    en.write_bytes(good_en)
    if how == "mismatched":
        en.write_bytes(b"".join(good_en.splitlines(keepends=True)[:-3]))
        return "bad", [de, en, "37", "40"]
    if how == "non_utf8":
        de.write_bytes(good_de + b"caf\xe9\n")
        en.write_bytes(good_en + b"cafe\n")
        return "bad", [f"{de}:41", "UTF-8"]
    if how == "empty":
        de.write_bytes(b"")
        return "bad", [de, "empty"]
    if how == "missing":
        de.unlink()
        return "bad", [de]
    if how == "binary":
        de.write_bytes(np.random.default_rng(0).bytes(4096) + b"\0")
        return "bad", [de]
    if how == "directory":
        de.unlink()
        de.mkdir()
        return "bad", [de, "directory"]
    if how == "bad_gzip":
        de.unlink()
        (directory / "bad.de.gz").write_bytes(b"\x1f\x8b" + b"\0" * 20)
        return "bad", ["bad.de.gz"]
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["mismatched", "non_utf8", "empty", "missing", "binary",
                                 "directory", "bad_gzip"])
def test_prepare_refuses_bad_text(corpus_files, capsys, how):
    prefix, names = damage(corpus_files, how)
    assert_refused(prepare_argv(corpus_files, prefix), capsys, *names,
                   out=corpus_files / "out")


@pytest.mark.parametrize("option, value", [("--vocab-size", "3"), ("--max-len", "0"),
                                           ("--max-ratio", "0.5"), ("--src-lang", "d/e")])
def test_prepare_refuses_bad_options(corpus_files, capsys, option, value):
    assert_refused(prepare_argv(corpus_files, "good", option, value), capsys, option,
                   out=corpus_files / "out")


def test_prepare_never_overwrites_without_force(corpus_files, capsys):
    out = corpus_files / "out"
    out.mkdir()
    (out / "keep").write_text("mine")
    assert_refused(prepare_argv(corpus_files, "good"), capsys, out, "--force")
    assert files_under(out) == {"keep": hashlib.sha256(b"mine").hexdigest()}


def test_prepare_drops_a_100000_character_line(corpus_files, capsys):
    """Not an error: the pair is dropped as too long, and the summary says so."""
    with open(corpus_files / "good.de", "a", encoding="utf-8") as handle:
        handle.write("a" * 100_000 + "\n")
    with open(corpus_files / "good.en", "a", encoding="utf-8") as handle:
        handle.write("a long line .\n")
    status, stdout, stderr = run_cli(prepare_argv(corpus_files, "good"), capsys)
    assert status == 0, stderr
    assert "1 too_long" in stdout
    assert load_manifest(corpus_files / "out")["splits"]["train"]["pairs"] == 40


@pytest.mark.slow
def test_prepare_subprocess_exit_status_and_stderr(corpus_files):
    """The installed command itself: status 2 and exactly one stderr line."""
    prefix, names = damage(corpus_files, "non_utf8")
    done = run_aiokd(*prepare_argv(corpus_files, prefix))
    assert_one_line_error(done.returncode, done.stderr, *names)
    assert not (corpus_files / "out").exists()


# ----------------------------------------------------------------------------------------------
# train: configuration


def train_argv(data_dir: Path, out: Path, *extra) -> list:
    return ["train", "--data", data_dir, "--out", out, *TRAIN, *extra]


@pytest.mark.parametrize("override, names", [
    ("train.lr=-1", ["train.lr"]),
    ("train.lr=abc", ["train.lr"]),
    ("train.lr=.nan", ["train.lr"]),
    ("distill.k=0", ["distill.k"]),
    ("distill.alpha=-1", ["distill.alpha"]),
    ("distill.alpha=.inf", ["distill.alpha"]),
    ("train.foo=1", ["train", "foo"]),
    ("foo.bar=1", ["foo"]),
    ("lr=1", ["lr=1"]),
    ("train.lr", ["train.lr"]),
    ("model.heads=3", ["model.heads"]),
    ("model.dropout=1", ["model.dropout"]),
    ("model.pre_norm=maybe", ["model.pre_norm"]),
    ("model.enc_layers=0", ["model.enc_layers"]),
    ("train.seed=-1", ["train.seed"]),
    ("train.adam_betas=[0.9]", ["train.adam_betas"]),
    ("train.adam_betas=5", ["train"]),
    ("train.amp=fp8", ["train.amp"]),
    ("distill.min_enc=9", ["distill.min_enc"]),
    ("distill.method=magic", ["distill.method"]),
    ("train.max_tokens=1e3", ["train.max_tokens"]),
])
def test_train_refuses_bad_overrides(tmp_path, tiny_data_dir, capsys, override, names):
    out = tmp_path / "run"
    assert_refused(train_argv(tiny_data_dir, out, override), capsys, *names, out=out)


@pytest.mark.parametrize("text, names", [
    ("train:\n  lr: [1\n", ["bad.yaml:3", "YAML"]),
    ("train:\n\tlr: 1\n", ["bad.yaml:2"]),
    ("trian:\n  lr: 1\n", ["bad.yaml", "trian"]),
    ("train:\n  foo: 1\n", ["bad.yaml", "foo"]),
    ("train: 5\n", ["bad.yaml", "train", "mapping"]),
    ("- 1\n- 2\n", ["bad.yaml", "mapping"]),
    ("train:\n  lr: -5\n", ["train.lr"]),
])
def test_train_refuses_bad_yaml(tmp_path, tiny_data_dir, capsys, text, names):
    config = tmp_path / "bad.yaml"
    config.write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    assert_refused(train_argv(tiny_data_dir, out, "--config", config), capsys, *names, out=out)


def test_train_accepts_empty_yaml_sections(tmp_path, tiny_data_dir):
    config = tmp_path / "ok.yaml"
    config.write_text("model:\ntrain:\n  lr: 1e-3\n", encoding="utf-8")
    assert load_config("tiny", config, ["train.seed=3"]).train.lr == 1e-3


@pytest.mark.parametrize("make", ["missing", "directory", "binary"])
def test_train_refuses_unreadable_yaml(tmp_path, tiny_data_dir, capsys, make):
    config = tmp_path / "config.yaml"
    if make == "directory":
        config.mkdir()
    elif make == "binary":
        config.write_bytes(b"\xff\xfe\x00 train")
    out = tmp_path / "run"
    assert_refused(train_argv(tiny_data_dir, out, "--config", config), capsys, config, out=out)


@pytest.mark.parametrize("argv, names", [
    (["--preset", "huge"], ["--preset", "huge"]),
    (["--method", "scratch"], ["--student"]),
    (["--method", "scratch", "--student", "0-0"], ["--student", "0-0"]),
    (["--method", "scratch", "--student", "x-2"], ["x-2"]),
    (["--method", "word-kd", "--student", "2-1"], ["--teacher"]),
    (["--max-updates", "0"], ["train.max_updates"]),
])
def test_train_refuses_bad_flags(tmp_path, tiny_data_dir, capsys, argv, names):
    out = tmp_path / "run"
    assert_refused(train_argv(tiny_data_dir, out, *argv), capsys, *names, out=out)


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


@pytest.mark.slow
def test_train_subprocess_exit_status_and_stderr(tmp_path, tiny_data_dir):
    out = tmp_path / "run"
    done = run_aiokd(*train_argv(tiny_data_dir, out, "train.lr=-1"))
    assert_one_line_error(done.returncode, done.stderr, "train.lr")
    assert not out.exists()


# ----------------------------------------------------------------------------------------------
# train: data and model files


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


@pytest.mark.parametrize("make", ["file", "foreign_directory"])
def test_train_refuses_an_out_that_is_not_a_run(tmp_path, tiny_data_dir, capsys, make):
    out = tmp_path / "run"
    if make == "file":
        out.write_text("mine")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    before = files_under(tmp_path)
    assert_refused(train_argv(tiny_data_dir, out), capsys, out)
    assert files_under(tmp_path) == before


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


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_data_dir):
    """A finished two-update run of both stages on :func:`tiny_data_dir`."""
    out = tmp_path_factory.mktemp("finished") / "run"
    args = build_parser().parse_args([str(a) for a in train_argv(tiny_data_dir, out)])
    assert aiokd.train.loop.main(args) == 0
    return out


@pytest.mark.parametrize("how", ["other_data", "changed_setting", "damaged_checkpoint",
                                 "damaged_run_json"])
def test_resume_refusals_leave_the_run_untouched(tmp_path, finished_run, tiny_data_dir,
                                                 other_vocab_data_dir, capsys, how):
    run = shutil.copytree(finished_run, tmp_path / "run")
    data, extra, names = tiny_data_dir, [], [run]
    if how == "other_data":
        data, names = other_vocab_data_dir, [run, other_vocab_data_dir, "vocabulary"]
    elif how == "changed_setting":
        extra, names = ["train.lr=1e-3"], [run, "train.lr"]
    elif how == "damaged_checkpoint":
        last = run / "checkpoints" / "stage2-last.safetensors"
        last.write_bytes(last.read_bytes()[:1000])
        names = [last]
    else:
        (run / "run.json").write_text('{"config": ', encoding="utf-8")
        names = [run / "run.json"]
    before = files_under(run)
    assert_refused(train_argv(data, run, *extra), capsys, *names)
    assert files_under(run) == before


# ----------------------------------------------------------------------------------------------
# Students and the commands that use a trained model


def test_students_outside_the_trained_space_are_refused():
    space = CandidateSpace(3, 3, 2, 2)  # trained: 2-2 3-2 3-3 (l_d <= l_e)
    for name, reason in (("7-2", "outside"), ("0-0", "outside"), ("2-5", "outside"),
                         ("2-3", "not trained"), ("1-1", "not trained")):
        with pytest.raises(UserError, match=reason) as error:
            space.check(parse_student(name))
        assert name in str(error.value)
    assert space.check((3, 2)) == (3, 2)


def _needs(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not part of this version")


@pytest.mark.parametrize("student", ["7-2", "0-0", "2-5", "2-3", "x", "6-2-1"])
@pytest.mark.parametrize("command", ["translate", "extract", "export", "evaluate"])
def test_model_commands_refuse_untrained_students(tmp_path, tiny_model_dir, tiny_data_dir,
                                                  capsys, command, student):
    module = {"translate": "aiokd.inference.translate",
              "evaluate": "aiokd.evaluation.evaluate"}.get(command, "aiokd.formats.export")
    _needs(module)
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
    _needs({"translate": "aiokd.inference.translate", "evaluate": "aiokd.evaluation.evaluate",
            "extract": "aiokd.formats.export"}[command])
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


@pytest.mark.parametrize("content, names", [(b"ein hund\n\xff\xfe\n", [":2", "UTF-8"]),
                                            (bytes(range(256)) * 16, [])])
def test_translate_refuses_bad_input_text(tmp_path, tiny_model_dir, capsys, content, names):
    _needs("aiokd.inference.translate")
    source = tmp_path / "input.de"
    source.write_bytes(content)
    out = tmp_path / "out.en"
    assert_refused(["translate", "--model", tiny_model_dir, "-i", source, "-o", out], capsys,
                   source, *names, out=out)


def test_translate_handles_a_100000_character_line(tmp_path, tiny_model_dir, capsys):
    """A line far longer than the model's positions gives an error or a translation, never a
    traceback."""
    _needs("aiokd.inference.translate")
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


# ----------------------------------------------------------------------------------------------
# Parsers: any text gives a value or a UserError, nothing else


@given(st.text(max_size=12))
def test_parse_student_gives_a_pair_or_user_error(text):
    try:
        le, ld = parse_student(text)
    except UserError as error:
        assert "\n" not in str(error)
    else:
        assert le >= 0 and ld >= 0
        assert parse_student(f"{le}-{ld}") == (le, ld)


@given(st.integers(0, 99), st.integers(0, 99), st.sampled_from(["", " ", "\t"]))
def test_parse_student_reads_every_well_formed_name(le, ld, space):
    assert parse_student(f"{space}{le}-{ld}{space}") == (le, ld)


KEYS = [f"{section}.{name}" for section, names in (
    ("model", ["vocab_size", "d_model", "heads", "dropout", "pre_norm", "enc_layers"]),
    ("distill", ["k", "alpha", "method", "student", "replacement", "min_dec"]),
    ("train", ["lr", "adam_betas", "seed", "amp", "stages", "max_tokens", "foo"]),
    ("nothing", ["x"])) for name in names]
VALUES = st.one_of(st.text(max_size=10), st.sampled_from(
    ["-1", "0", "1", "2", "1e-3", ".nan", ".inf", "-.inf", "true", "no", "[]", "[0.9, 0.98]",
     "{a: 1}", "[1, x]", "2001-01-01", "!!python/object:os.system", "'x'", "~", "0x10", "1_000"]))


@given(key=st.one_of(st.sampled_from(KEYS), st.text(max_size=12)), value=VALUES)
def test_overrides_give_a_config_or_user_error(key, value):
    text = f"{key}={value}"
    try:
        cfg = load_config("tiny", overrides=[text])
    except UserError as error:
        assert str(error)
        return
    section, name, _ = parse_override(text)
    assert getattr(getattr(cfg, section), name) is not None or name in ("student", "teacher")
    assert load_config("tiny", overrides=[]).to_dict().keys() == cfg.to_dict().keys()


@given(st.text(max_size=30))
def test_any_override_text_gives_a_config_or_user_error(text):
    try:
        load_config("tiny", overrides=[text])
    except UserError:
        pass
