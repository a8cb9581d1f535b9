"""What the benchmark runs: its presets, the systems, and the ``aiokd`` commands of each step.

Work directory layout (``--out W``)::

    W/data/                    aiokd prepare multi30k (quick: W/multi30k-subset/ prepared;
                               none with --data DIR, which is used as it is)
    W/data-seqkd/              aiokd distill-data from the from-scratch 6-6 teacher
                               (seed s != 1: W/data-seqkd-seedS/, from that seed's 6-6)
    W/runs/NAME/               one aiokd train run each: model.safetensors, results.json, ...
                               (seed s != 1: W/runs/NAME-seedS/, trained with train.seed=S)
    W/logs/STEP.log            output of each step
    W/timings.json             wall and CPU seconds of every step, summed over its attempts,
                               and its cost by machine (timings.py)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from continuation import copy_stage1, copy_to_continue
from report import FROM_TEACHER, ORDER, SEPARATE, TEACHER, TEACHER_RUN

from aiokd.config import Config, load_config
from aiokd.errors import UserError
from aiokd.students import CandidateSpace, parse_student, student_name
from aiokd.train.loop import stage_config

HERE = Path(__file__).resolve().parent
CANDIDATES = [student_name(s) for s in CandidateSpace().candidates]
"""The paper's 15 students in its order."""
DEFAULT_SYSTEMS = tuple(s for s in ORDER if s not in ("selective-kd", "aiokd-init"))
PAPER = ["distill.alpha=5.5", "distill.beta=0.5", "distill.eta=1.1", "distill.k=2",
         "distill.sandwich=false", "distill.ml_mode=no_weight", "distill.ml_stage=2",
         "train.teacher_updates=0", "train.lr_from_teacher=0"]
"""The paper's AIO-KD settings, named so that ``aiokd-paper`` keeps them if the defaults change."""
ABLATIONS = {
    "aiokd": [],
    "aiokd-paper": PAPER,
    "aiokd-separate": ["distill.reuse_prefix=false"],
    "aiokd-uniform": ["distill.sandwich=false"],
    "aiokd-capped": [],
    "aiokd-sandwich": ["distill.sandwich=true"],
    "aiokd-sandwich-kd1": ["distill.sandwich=true", "distill.alpha=1.0"],
    "aiokd-no-dgd": ["distill.detach=false"],
    "aiokd-no-ml": ["distill.ml_mode=none"],
    "aiokd-one-stage": ["train.stages=1", "train.stage1_updates=0", "distill.ml_stage=1"],
    "aiokd-seqkd": [],
}
"""Overrides of each AIO-KD system."""
STAGE2_ONLY = ("beta", "ml_mode")
"""``distill`` settings that stage 1 does not read where mutual learning starts in stage 2."""


@dataclass
class Preset:
    """One entry of ``presets.yaml``."""

    name: str
    train_preset: str
    overrides: list[str]
    updates_per_stage: int
    validate_every: int
    patience: int
    students: list[str]
    data: Any
    threads: int | None = None
    groups: dict[str, list[str]] = field(default_factory=dict)
    long_stage2: list[str] = field(default_factory=list)
    """AIO-KD systems whose stage 2 may run 2U updates, the cap of a separately trained
    student, after a stage 1 of U (the others: U in each stage)."""
    all_students: list[str] = field(default_factory=list)
    """Single-run systems whose evaluation scores all 15 students (the table shows the compared
    ones; the JSON keeps every score)."""

    @property
    def subset(self) -> dict[str, int] | None:
        """Lines of each shipped file to use (quick), or None for the whole of Multi30k."""
        return self.data.get("subset") if isinstance(self.data, dict) else None

    def train_config(self, system: str = "aiokd") -> Config:
        """The settings ``aiokd train`` resolves for ``system``'s runs (before ``--max-updates``
        and the driver's validation options)."""
        return load_config(self.train_preset,
                           overrides=[*self.overrides, *ABLATIONS.get(system, [])])

    def last_stage_cap(self, system: str) -> int:
        """``--max-updates`` of ``system``'s runs: the cap of its last stage (2U for one-stage
        runs and for the stage 2 of :attr:`long_stage2` systems, else U)."""
        one_stage = system in SEPARATE or system == "aiokd-one-stage"
        return self.updates_per_stage * (2 if one_stage or system in self.long_stage2 else 1)

    def budget(self) -> str:
        """The budget rules, in words."""
        u = self.updates_per_stage
        stop = (f"stopped early after {self.patience} validations without a lower mean "
                "validation CE" if self.patience else "no early stopping")
        extra = f" {' '.join(self.overrides)}" if self.overrides else ""
        teacher = (f", after a teacher stage of up to {2 * u} updates (the from-scratch 6-6 of "
                   "the same seed, whose cost is theirs; the paper's row has none)"
                   if self.train_config().train.teacher_updates else "")
        long = (f" ({', '.join(f'`{name}`' for name in self.long_stage2)}: {u} + up to "
                f"{2 * u}, its stage 2 capped like a separately trained student)"
                if self.long_stage2 else "")
        return (f"`aiokd train --preset {self.train_preset}{extra}`; "
                f"U = {u} updates per stage: AIO-KD and its ablations {u} + {u} (two stages)"
                f"{long}{teacher}, one-stage AIO-KD {2 * u} in its one stage (mutual learning "
                f"from the first update), every separately trained student "
                f"{2 * u} (one stage); validation every {self.validate_every} updates, {stop}; "
                "the best checkpoint by validation CE is evaluated")


def load_preset(name: str) -> Preset:
    presets = yaml.safe_load((HERE / "presets.yaml").read_text(encoding="utf-8"))
    if name not in presets:
        raise SystemExit(f"run.py: unknown preset {name!r}; known: {', '.join(presets)}")
    values = presets[name]
    values["students"] = CANDIDATES if values["students"] == "all" else values["students"]
    if values["updates_per_stage"] is None:
        values["updates_per_stage"] = load_config(values["train_preset"]).train.max_updates
    preset = Preset(name=name, **values)
    check_teacher_stage(preset)
    return preset


def check_teacher_stage(preset: Preset) -> None:
    """A teacher stage in the preset's settings must be what the from-scratch 6-6 run is, the
    stage the driver reuses: the same recipe (:mod:`aiokd.train.loop`'s ``stage_config``) and
    the same cap, 2U updates."""
    updates = preset.train_config().train.teacher_updates
    wanted = 2 * preset.updates_per_stage
    if updates not in (0, wanted):
        raise SystemExit(f"run.py: preset {preset.name}: train.teacher_updates="
                         f"{updates}, but its from-scratch 6-6 trains for "
                         f"{wanted} updates (2U); they must be equal")


def sort_students(names: list[str], with_teacher: bool = True) -> list[str]:
    """``names`` (checked) in the paper's order, with the teacher 6-6 unless not
    ``with_teacher``."""
    wanted = set()
    for name in names:
        try:
            wanted.add(student_name(parse_student(name)))
        except UserError as error:
            raise SystemExit(f"run.py: {error}") from None
    unknown = sorted(wanted - set(CANDIDATES))
    if unknown:
        raise SystemExit(f"run.py: {unknown[0]} is not one of the paper's students: "
                         f"{' '.join(CANDIDATES)}")
    if with_teacher:
        wanted.add(TEACHER)
    return [s for s in CANDIDATES if s in wanted]


def same_as_default(preset: Preset, system: str) -> bool:
    """Whether a run of ``system`` would be the default's (``aiokd``) run again in ``preset``:
    an AIO-KD row whose options the default has already (``aiokd-uniform`` where it samples
    uniformly, ``aiokd-sandwich`` where it sandwiches, ``aiokd-paper`` where the paper's
    settings are the default), ``aiokd-init`` where the default starts from the teacher anyway,
    and ``aiokd-capped`` where the default's stage 2 is no longer than U."""
    default = preset.train_config()
    if system == "aiokd-capped":
        return "aiokd" not in preset.long_stage2
    if system == "aiokd-init":
        return default.train.teacher_updates > 0
    return bool(ABLATIONS.get(system)) and preset.train_config(system) == default


def default_systems(preset: Preset) -> list[str]:
    """The systems run when none are named: :data:`DEFAULT_SYSTEMS`, less those that would be
    the default's run again (:func:`same_as_default`)."""
    return [s for s in DEFAULT_SYSTEMS if not same_as_default(preset, s)]


def selection(preset: Preset, systems: list[str] | None, groups: list[str],
              students: list[str]) -> list[tuple[str, list[str]]]:
    """``(system, students)`` pairs to run: named groups (less the systems that would be the
    default's run again, :func:`same_as_default`), or ``systems`` (default: all but
    selective-kd) for ``students``."""
    items = []
    for group in groups:
        if group in preset.groups:
            items += [item for item in preset.groups[group]
                      if not same_as_default(preset, item.partition(":")[0])]
        elif group in ORDER:
            items.append(group)
        else:
            known = sorted(preset.groups) + list(ORDER)
            raise SystemExit(f"run.py: unknown group {group!r}; known: {', '.join(known)}")
    if not groups:
        items = list(systems or default_systems(preset))
    chosen = []
    for item in items:
        system, _, names = item.partition(":")
        if system not in ORDER:
            raise SystemExit(f"run.py: unknown system {system!r}; known: {', '.join(ORDER)}")
        chosen.append((system, sort_students(names.split(","), False) if names else students))
    return chosen


@dataclass
class Step:
    """One ``aiokd`` command (or, with ``action``, work done by the driver itself: ``title``
    says what); ``done()`` tells whether its output is already there."""

    key: str
    title: str
    args: list[str]
    done: Callable[[], bool]
    run: str | None = None
    action: Callable[[], None] | None = None


@dataclass
class Run:
    """One ``aiokd train`` run and the file its evaluation writes."""

    name: str
    system: str
    students: list[str]
    path: Path
    results: Path
    seed: int = 1
    compared: list[str] = field(default_factory=list)
    """The students of the comparison (``students`` may hold more: every student scored)."""
    teacher_run: str | None = None
    """The from-scratch 6-6 run it distils or starts from (its cost is part of the system's)."""


@dataclass(frozen=True)
class TestSet:
    """What every ``aiokd evaluate`` scores: a split of the data directory, or a raw source and
    reference file.  ``key`` names the evaluation files (``results.json`` for the data
    directory's ``test`` split, else ``results-KEY.json``): the split, or the reference file's
    name up to its first dot."""

    split: str = "test"
    files: tuple[Path, Path] | None = None

    @property
    def key(self) -> str:
        return self.files[1].name.split(".")[0] if self.files else self.split

    def results_file(self, run_dir: Path) -> Path:
        return run_dir / ("results.json" if self.key == "test" else f"results-{self.key}.json")

    def step_key(self, run: str) -> str:
        """The key of ``run``'s evaluation step (its timings and log): ``evaluate:RUN``, or
        ``evaluate-KEY:RUN`` for another test set than the data's test split."""
        return f"evaluate:{run}" if self.key == "test" else f"evaluate-{self.key}:{run}"


class Work:
    """Paths of the work directory and the commands that fill it.

    ``data``: a data directory made by ``aiokd prepare`` (any language pair), used instead of
    preparing Multi30k; ``test``: what to evaluate on (default: the ``test`` split of the data).
    """

    def __init__(self, root: Path, preset: Preset, data: Path | None = None,
                 test: TestSet = TestSet()):
        self.root, self.preset, self.given_data, self.test = root, preset, data, test
        self.data = data or root / "data"
        self.subset_dir = root / "multi30k-subset"
        self.runs: dict[str, Run] = {}

    def run_dir(self, name: str) -> Path:
        return self.root / "runs" / name

    def prepare(self) -> list[Step]:
        """Preparing Multi30k (none with a given data directory)."""
        if self.given_data is not None:
            return []
        out = ["--out", str(self.data)]
        if self.preset.subset is None:
            args = ["prepare", "multi30k", *out]
        else:
            sub = self.subset_dir
            args = ["prepare", "--train", str(sub / "train"), "--valid", str(sub / "val"),
                    "--test", f"test_2016_flickr={sub / 'test_2016_flickr'}", "--vocab-size",
                    str(self.preset.data["vocab_size"]), *out]
        return [Step("prepare", "prepare Multi30k", args,
                     lambda: (self.data / "manifest.json").is_file())]

    def test_args(self) -> list[str]:
        """The test set of ``aiokd evaluate``: :attr:`test`; with the quick preset's Multi30k
        subset, the first lines of test_2016_flickr."""
        if self.test.files:
            return ["--src", str(self.test.files[0]), "--ref", str(self.test.files[1])]
        if self.preset.subset is None or self.given_data is not None:
            return ["--data", str(self.data), "--split", self.test.split]
        stem = self.subset_dir / "test_2016_flickr"
        return ["--src", f"{stem}.de", "--ref", f"{stem}.en"]

    def seqkd_data(self, seed: int) -> Path:
        """The Seq-KD data of ``seed``: the training data translated by its from-scratch 6-6."""
        return self.root / run_name("data-seqkd", seed)

    def distill(self, seed: int) -> Step:
        teacher, out = run_name(TEACHER_RUN, seed), self.seqkd_data(seed)
        args = ["distill-data", "--model", str(self.run_dir(teacher)), "--data",
                str(self.data), "--out", str(out), "--beam", "5"]
        return Step(run_name("distill-data", seed), f"distill-data (Seq-KD data from {teacher})",
                    args, lambda: (out / "manifest.json").is_file(),
                    run=run_name("aiokd-seqkd", seed))

    def train_steps(self, system: str, students: list[str], student: str | None,
                    seed: int = 1) -> list[Step]:
        """Train and evaluate one run of ``system`` (``student``: a separately trained one) with
        ``train.seed=seed``; seed 1 is the run's plain name, another ``NAME-seedS``."""
        p = self.preset
        name = run_name(f"{system}-{student}" if student else system, seed)
        path = self.run_dir(name)
        updates = p.last_stage_cap(system)
        data = self.seqkd_data(seed) if system == "aiokd-seqkd" else self.data
        args = ["train", "--data", str(data), "--preset", p.train_preset, "--out", str(path),
                "--max-updates", str(updates)]
        teacher = self.teacher_run(system, seed)
        if student:
            args += ["--method", system, "--student", student]
            if teacher:
                args += ["--teacher", str(self.run_dir(teacher))]
        if system == "aiokd-init" or self.has_teacher_stage(system):
            args += ["--init-from", str(self.run_dir(teacher))]
        args += [f"train.validate_every={p.validate_every}", f"train.patience={p.patience}",
                 *p.overrides, *ABLATIONS.get(system, [])]
        if system in p.long_stage2:
            args.append(f"train.stage1_updates={p.updates_per_stage}")
        if seed != 1:
            args.append(f"train.seed={seed}")
        compared = [student] if student else students
        evaluated = CANDIDATES if system in p.all_students and not student else compared
        results = self.test.results_file(path)
        self.runs[name] = Run(name, system, evaluated, path, results, seed, compared, teacher)
        evaluate = ["evaluate", "--model", str(path), *self.test_args(), "--students",
                    ",".join(evaluated), "--beam", "5", "--no-latency", "--out", str(results)]
        return [Step(f"train:{name}", f"train {name}", args,
                     lambda: (path / "model.safetensors").is_file(), run=name),
                Step(self.test.step_key(name), f"evaluate {name}", evaluate,
                     lambda: evaluated_all(results, evaluated), run=name)]

    def shares_stage1(self, system: str) -> str | None:
        """The AIO-KD run whose stage 1 is ``system``'s, so that ``system`` starts from a copy of
        it (:func:`continuation.copy_stage1`): the default at the same budget (``aiokd-capped``
        where the default's stage 2 is long, else ``aiokd``), where ``system`` differs from it
        only in :data:`STAGE2_ONLY` settings with mutual learning from stage 2 on; else None."""
        p = self.preset
        twin = "aiokd-capped" if "aiokd" in p.long_stage2 else "aiokd"
        if system in ("aiokd", "aiokd-capped", "aiokd-seqkd", *SEPARATE, *p.long_stage2) or (
                p.last_stage_cap(system) != p.last_stage_cap(twin)
                or p.train_config(system) == p.train_config(twin)):
            return None
        mine, theirs = (_stage1_settings(p.train_config(name)) for name in (system, twin))
        return twin if mine == theirs else None

    def stage1_copy(self, name: str, twin: str) -> Step:
        """The copy of the finished run ``twin``'s stage 1 as the start of the run ``name``."""
        source, target = self.run_dir(twin), self.run_dir(name)
        return Step(f"stage1:{name}", f"copy stage 1 of runs/{twin} to runs/{name}", [],
                    target.exists, run=name,
                    action=partial(copy_stage1, source, target, twin))

    def continues(self, system: str) -> str | None:
        """The capped twin that ``system``'s runs continue (:mod:`continuation`): ``aiokd``'s
        where its stage 2 is long, else None."""
        return "aiokd-capped" if system == "aiokd" and system in self.preset.long_stage2 else None

    def continuation(self, name: str, twin: str) -> Step:
        """The copy of the finished run ``twin`` as the start of the run ``name``."""
        source, target = self.run_dir(twin), self.run_dir(name)
        return Step(f"continue:{name}", f"copy runs/{twin} to runs/{name} to continue it", [],
                    target.exists, run=name,
                    action=partial(copy_to_continue, source, target, twin))

    def teacher_run(self, system: str, seed: int) -> str | None:
        """The from-scratch 6-6 run of ``seed`` if ``system``'s run of that seed needs it, else
        None: :data:`FROM_TEACHER` systems learn from it; an AIO-KD system whose settings ask for
        a teacher stage (``train.teacher_updates``) starts from it, since it is that stage (the
        same recipe and cap: :func:`check_teacher_stage`).  Each seed is a replicate of the
        whole comparison, its teacher included."""
        if system in FROM_TEACHER or self.has_teacher_stage(system):
            return run_name(TEACHER_RUN, seed)
        return None

    def has_teacher_stage(self, system: str) -> bool:
        """Whether the AIO-KD ``system``'s settings ask for a teacher stage (Seq-KD data aside:
        its teacher stage would train on other data than the from-scratch 6-6)."""
        if system in SEPARATE or system == "aiokd-seqkd":
            return False
        return self.preset.train_config(system).train.teacher_updates > 0

    def steps(self, chosen: list[tuple[str, list[str]]],
              seeds: Sequence[int] = (1,)) -> list[Step]:
        """Every step of ``chosen`` for each of ``seeds`` (seed by seed), dependencies first,
        each once.  The KD systems of each seed learn from (or start from) the from-scratch
        6-6 of that seed; a system with a capped twin (:meth:`continues`) goes on from a copy
        of the twin's run, and one that shares the default's stage 1 (:meth:`shares_stage1`)
        from a copy of that stage."""
        steps = self.prepare()
        for seed in seeds:
            for system, students in sorted(chosen, key=lambda item: ORDER.index(item[0])):
                teacher = self.teacher_run(system, seed)
                if teacher:
                    steps += self.train_steps("scratch", students, TEACHER, seed)
                if system == "aiokd-seqkd":
                    steps.append(self.distill(seed))
                twin, stage1 = self.continues(system), self.shares_stage1(system)
                if system in SEPARATE:
                    for student in students:
                        steps += self.train_steps(system, students, student, seed)
                elif twin or stage1:
                    copy = self.continuation if twin else self.stage1_copy
                    steps += self.train_steps(twin or stage1, students, None, seed)
                    steps.append(copy(run_name(system, seed), run_name(twin or stage1, seed)))
                    steps += self.train_steps(system, students, None, seed)
                else:
                    steps += self.train_steps(system, students, None, seed)
        unique: dict[str, Step] = {}
        for step in steps:
            unique.setdefault(step.key, step)
        return list(unique.values())


def _stage1_settings(cfg: Config) -> Config:
    """The settings stage 1 of ``cfg`` trains with, :data:`STAGE2_ONLY` set to their defaults
    where mutual learning starts in stage 2."""
    if cfg.distill.ml_stage == 2:
        defaults = type(cfg.distill)()
        cfg = dataclasses.replace(cfg, distill=dataclasses.replace(
            cfg.distill, **{key: getattr(defaults, key) for key in STAGE2_ONLY}))
    return stage_config(cfg, 1)


def run_name(name: str, seed: int) -> str:
    """The run directory's name of ``name`` trained with ``train.seed=seed``."""
    return name if seed == 1 else f"{name}-seed{seed}"


def parse_seeds(text: str) -> list[int]:
    """``"1,2"`` -> ``[1, 2]`` (checked: distinct whole numbers >= 0)."""
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise SystemExit(f"run.py: --seeds {text}: expected distinct whole numbers, e.g. 1,2")
    return seeds


def evaluated_all(path: Path, students: list[str]) -> bool:
    """Whether ``path`` is an ``aiokd evaluate`` results file covering ``students``."""
    if not path.is_file():
        return False
    try:
        found = {entry["student"] for entry in json.loads(path.read_text())["students"]}
    except (ValueError, KeyError, TypeError):
        return False
    return set(students) <= found
