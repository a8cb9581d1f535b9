"""Configuration: presets, YAML and ``key=value`` overrides in that order, typed values, checks that
name the option or the file and line, and exact round trips through JSON."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiokd.config import PRESETS, Config, load_config, parse_override
from aiokd.errors import UserError
from aiokd.train.run_dir import RESUMABLE_CHANGES, check_same_settings
from tests.conftest import assert_one_line_error, assert_refused, run_aiokd, train_argv


def numbers(cfg: Config):
    """Every numeric value of ``cfg`` as ``(option, value)``."""
    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(item, (int, float)) and not isinstance(item, bool):
                    yield f"{section}.{key}", item


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_is_valid(preset):
    cfg = load_config(preset)
    for section, values in PRESETS[preset].items():
        for key, value in values.items():
            assert getattr(getattr(cfg, section), key) == value
    assert cfg.distill.space(cfg.model).candidates


def test_precedence_preset_yaml_flags_overrides(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("train:\n  lr: 1e-3\n  seed: 7\n  max_updates: 50\nmodel:\n  heads: 8\n",
                      encoding="utf-8")
    cfg = load_config("tiny", config, ["train.seed=9"],
                      {"train": {"max_updates": 60, "seed": 8}})
    assert cfg.model.d_model == PRESETS["tiny"]["model"]["d_model"]  # preset
    assert cfg.model.heads == 8 and cfg.train.lr == 1e-3             # YAML over preset
    assert cfg.train.max_updates == 60                                # flags over YAML
    assert cfg.train.seed == 9                                        # overrides last


@pytest.mark.parametrize("text, expected", [
    ("train.lr=7e-4", ("train", "lr", "7e-4")),       # YAML 1.1 reads this as a string ...
    ("train.lr=0.0007", ("train", "lr", 0.0007)),
    ("distill.student=4-2", ("distill", "student", "4-2")),
    ("train.adam_betas=[0.9, 0.99]", ("train", "adam_betas", [0.9, 0.99])),
    ("model.pre_norm=true", ("model", "pre_norm", True)),
    (" train.seed = 3", ("train", "seed", 3)),
    ("distill.teacher=", ("distill", "teacher", None)),
    ("distill.teacher=a=b", ("distill", "teacher", "a=b")),
])
def test_parse_override(text, expected):
    assert parse_override(text) == expected


def test_values_get_their_field_types():
    cfg = load_config("tiny", overrides=["train.lr=7e-4", "model.dropout=0", "train.seed='5'",
                                         "train.adam_betas=[0.9, 0.99]", "model.pre_norm=True",
                                         "train.stages=1"])
    assert cfg.train.lr == 7e-4 and isinstance(cfg.train.lr, float)  # ... and it becomes one
    assert cfg.model.dropout == 0.0 and isinstance(cfg.model.dropout, float)
    assert cfg.train.seed == 5 and cfg.train.adam_betas == (0.9, 0.99)
    assert cfg.model.pre_norm is True and cfg.train.stages == "1"


@pytest.mark.parametrize("override, option", [
    ("train.lr=-1", "train.lr"), ("train.lr=0", "train.lr"), ("distill.k=0", "distill.k"),
    ("distill.alpha=-1", "distill.alpha"), ("distill.beta=-0.5", "distill.beta"),
    ("distill.eta=0", "distill.eta"), ("train.warmup_updates=-1", "train.warmup_updates"),
    ("train.adam_eps=0", "train.adam_eps"), ("train.adam_betas=[1, 0.9]", "train.adam_betas"),
    ("train.label_smoothing=1", "train.label_smoothing"), ("train.update_freq=0",
                                                           "train.update_freq"),
    ("train.max_tokens=0", "train.max_tokens"), ("train.seed=-1", "train.seed"),
    ("train.seed=4294967296", "train.seed"), ("model.heads=5", "model.heads"),
    ("model.dropout=-0.1", "model.dropout"), ("model.pad_id=8000", "model.pad_id"),
    ("distill.selective_ratio=0", "distill.selective_ratio"), ("train.stages=3", "train.stages"),
    ("distill.ml_mode=all", "distill.ml_mode"), ("distill.loss=unfused", "distill.loss"),
    ("train.amp=fp8", "train.amp"), ("train.max_minutes=-1", "train.max_minutes"),
    ("train.max_bad_steps=0", "train.max_bad_steps"), ("train.lr=.nan", "train.lr"),
    ("distill.alpha=.inf", "distill.alpha"), ("train.weight_decay=.inf", "train.weight_decay"),
    ("model.d_model=true", "model.d_model"), ("train.lr=false", "train.lr"),
    ("model.pre_norm=1", "model.pre_norm"), ("train.max_tokens=1.5", "train.max_tokens"),
    ("train.foo=1", "foo"), ("tran.lr=1", "tran"), ("lr=1", "section.key=value"),
    ("train.lr=[1", "train.lr"),
])
def test_invalid_values_name_the_option(override, option):
    with pytest.raises(UserError, match=option.replace(".", r"\.").replace("[", r"\[")):
        load_config("tiny", overrides=[override])


def test_baselines_need_their_student_and_teacher():
    with pytest.raises(UserError, match="--student"):
        load_config("tiny", overrides=["distill.method=scratch"])
    with pytest.raises(UserError, match="--teacher"):
        load_config("tiny", overrides=["distill.method=word-kd", "distill.student=2-2"])


def test_candidate_space_checks_depths():
    cfg = load_config("tiny", overrides=["model.enc_layers=2", "distill.min_enc=3"])
    with pytest.raises(UserError, match="distill.min_enc"):
        cfg.distill.space(cfg.model)
    cfg = load_config("tiny", overrides=["distill.replacement=false", "distill.k=16"])
    with pytest.raises(UserError, match="distill.k"):
        cfg.distill.space(cfg.model)


@pytest.mark.parametrize("text, where", [
    ("train:\n  lr: 1\n  seed: [1\n", "bad.yaml:4"),
    ("train:\n  lr: 1\n   seed: 2\n", "bad.yaml:3"),
    ("model: {d_model: 64\n", "bad.yaml:2"),
    ("trian:\n  lr: 1\n", "bad.yaml: unknown option 'trian'"),
    ("model:\n  depth: 3\n", "bad.yaml: model: unknown option 'depth'"),
    ("train: [1, 2]\n", "bad.yaml: train: expected a mapping"),
    ("42\n", "bad.yaml: expected a mapping"),
])
def test_yaml_errors_name_the_file_and_line(tmp_path, text, where):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError) as error:
        load_config("tiny", path)
    assert str(error.value).startswith(str(tmp_path / where))


def test_empty_yaml_file_and_sections_are_fine(tmp_path):
    path = tmp_path / "empty.yaml"
    for text in ("", "# nothing\n", "model:\ntrain:\n"):
        path.write_text(text, encoding="utf-8")
        assert load_config("tiny", path) == load_config("tiny")


def test_round_trip_through_json():
    cfg = load_config("base", overrides=["distill.method=word-kd", "distill.student=6-2",
                                         "distill.teacher=/runs/teacher", "train.amp=bf16"])
    again = Config.from_dict(json.loads(json.dumps(cfg.to_dict())), where="run.json")
    assert again == cfg and isinstance(again.train.adam_betas, tuple)


def test_resumable_changes_are_the_only_allowed_ones(tmp_path):
    saved = load_config("tiny")
    for key in sorted(RESUMABLE_CHANGES):
        value = getattr(saved.train, key)
        other = (not value) if isinstance(value, bool) else value + 1
        changed = dataclasses.replace(saved, train=dataclasses.replace(saved.train,
                                                                       **{key: other}))
        check_same_settings(saved, changed, tmp_path)
    for override in ("train.lr=1e-3", "model.dropout=0.2", "distill.alpha=1", "train.seed=2"):
        with pytest.raises(UserError, match=override.split("=")[0].replace(".", r"\.")):
            check_same_settings(saved, load_config("tiny", overrides=[override]), tmp_path)


def test_a_baseline_resumes_whatever_the_settings_only_aiokd_reads(tmp_path):
    scratch = ["distill.method=scratch", "distill.student=2-2"]
    saved = load_config("tiny", overrides=scratch)
    aiokd_only = ["distill.sandwich=true", "distill.k=3", "distill.reuse_prefix=false"]
    check_same_settings(saved, load_config("tiny", overrides=[*scratch, *aiokd_only]), tmp_path)
    with pytest.raises(UserError, match=r"distill\.alpha"):  # Word-KD reads it
        check_same_settings(load_config("tiny", overrides=["distill.method=word-kd",
                                                           "distill.student=2-2",
                                                           "distill.teacher=t"]),
                            load_config("tiny", overrides=["distill.method=word-kd",
                                                           "distill.student=2-2",
                                                           "distill.teacher=t",
                                                           "distill.alpha=1"]), tmp_path)
    with pytest.raises(UserError, match=r"distill\.sandwich"):  # AIO-KD reads it
        check_same_settings(load_config("tiny"), load_config("tiny", overrides=aiokd_only[:1]),
                            tmp_path)


# ----------------------------------------------------------------------------------------------
# Properties


FIELDS = {f"{section}.{field.name}" for section, cls in
          (("model", Config().model), ("distill", Config().distill), ("train", Config().train))
          for field in dataclasses.fields(cls)}
SCALARS = st.one_of(
    st.integers(-5, 10**12), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    st.none(), st.text(max_size=8),
    st.sampled_from(["4-2", "aiokd", "word-kd", "bf16", "both", "no_weight", "[0.9, 0.98]",
                     ".nan", "-.inf", "1e-3", "{a: 1}", "[]", "yes"]))


def as_yaml(value) -> str:
    if isinstance(value, float):
        return ".nan" if math.isnan(value) else (
            ("-.inf" if value < 0 else ".inf") if math.isinf(value) else repr(value))
    if value is None:
        return "~"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


@given(st.lists(st.tuples(st.sampled_from(sorted(FIELDS)), SCALARS), max_size=4))
def test_random_overrides_give_a_valid_config_or_user_error(pairs):
    """Any combination of values: a Config whose numbers are all finite and which survives a
    JSON round trip, or a UserError; never another exception."""
    overrides = [f"{key}={as_yaml(value)}" for key, value in pairs]
    try:
        cfg = load_config("tiny", overrides=overrides)
    except UserError as error:
        assert str(error) and "\n" not in str(error)
        return
    for option, value in numbers(cfg):
        assert math.isfinite(value), option
    assert Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@given(st.dictionaries(st.sampled_from(["model", "distill", "train", "other"]),
                       st.one_of(SCALARS, st.dictionaries(st.text(max_size=6), SCALARS,
                                                          max_size=3)), max_size=3))
def test_random_yaml_gives_a_valid_config_or_user_error(tmp_path_factory, document):
    path = tmp_path_factory.mktemp("yaml") / "config.yaml"
    path.write_text(json.dumps(document), encoding="utf-8")  # JSON is YAML
    try:
        load_config("tiny", path)
    except UserError as error:
        assert str(error).startswith(str(path)) or str(error).startswith("option ")


def test_iwslt_preset_is_the_papers_recipe():
    cfg = load_config("iwslt")
    m, d, t = cfg.model, cfg.distill, cfg.train
    assert (m.d_model, m.ffn_dim, m.heads, m.enc_layers, m.dec_layers) == (512, 1024, 4, 6, 6)
    assert (m.dropout, m.pre_norm) == (0.3, False)
    assert (d.k, d.alpha, d.beta, d.eta, d.ml_mode) == (2, 5.5, 0.5, 1.1, "no_weight")
    assert (t.lr, t.warmup_updates, t.max_tokens, t.label_smoothing) == (5e-4, 4000, 4096, 0.1)
    assert (t.adam_betas, t.weight_decay, t.clip_norm) == ((0.9, 0.98), 1e-4, 0.0)


# ----------------------------------------------------------------------------------------------
# Settings of `aiokd train` that are refused before training starts


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




@pytest.mark.slow
def test_train_subprocess_exit_status_and_stderr(tmp_path, tiny_data_dir):
    out = tmp_path / "run"
    done = run_aiokd(*train_argv(tiny_data_dir, out, "train.lr=-1"))
    assert_one_line_error(done.returncode, done.stderr, "train.lr")
    assert not out.exists()


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
