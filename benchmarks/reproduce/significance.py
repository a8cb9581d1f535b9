"""Paired significance tests of the comparisons the targets make: a student of an AIO-KD system
against the same student trained on its own (Word-KD, from scratch), on the same test sentences.

The test is sacreBLEU's paired bootstrap resampling (Koehn, 2004): the test set is resampled
with replacement ``SAMPLES`` times, both systems are scored on every resample, and the p-value is
the share of resamples whose (centred) absolute BLEU difference is at least the observed one,
an estimate of how often a difference this large would arise by chance between two systems that
are equally good on sentences like these.  It speaks of the test set only: training one more
seed is the test of seed-to-seed variation.

Each run record (:mod:`report`) that was evaluated with translations written names their
directory (``translations``: ``STUDENT.txt`` and ``reference.txt``, see
:mod:`aiokd.evaluation.evaluate`; relative to the results directory, where the driver keeps a
copy); a pair of runs without them, or scored on different references, is not tested.  A test
recorded earlier whose translations are no longer on this machine is kept as it was, as long as
both runs still have the BLEU it was made with.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from report import OPTIONS
from sacrebleu.metrics import BLEU
from sacrebleu.significance import PairedTest

from aiokd.data.text import read_lines

SAMPLES = 1000
"""Bootstrap resamples per test (sacreBLEU's default)."""
BASELINES = ("word-kd", "scratch")
"""The separately trained systems each AIO-KD student is tested against."""
SYSTEMS = ("aiokd", "aiokd-paper", *OPTIONS)
"""The AIO-KD systems whose students are tested: the default, the paper's settings, and the
options the targets cover."""



def paired_bootstrap(references: Sequence[str], baseline: Sequence[str], system: Sequence[str],
                     tgt_lang: str = "", samples: int = SAMPLES) -> dict[str, Any]:
    """sacreBLEU BLEU of ``baseline`` and ``system`` (translations of the same sources, line by
    line) and the paired bootstrap p-value of their difference, with the test's signature."""
    test = PairedTest([("baseline", baseline), ("system", system)],
                      {"BLEU": BLEU(trg_lang=tgt_lang)}, [references], test_type="bs",
                      n_samples=samples)
    signatures, scores = test()
    base, mine = scores["BLEU"]
    return {"bleu": round(mine.score, 2), "baseline_bleu": round(base.score, 2),
            "delta": round(mine.score - base.score, 2), "p_value": round(mine.p_value, 4),
            "signature": str(signatures["BLEU"])}


Reader = Callable[[Path], tuple[str, ...]]
"""Reads a translation or reference file (once per :func:`tests`, however many tests use it)."""


def _translations(record: dict[str, Any], student: str, read: Reader,
                  base: Path) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """The reference and ``student``'s translation of a run record (its ``translations``
    directory, relative to ``base``), or None if not written or not on this machine."""
    directory = record.get("translations")
    if not directory:
        return None
    hypotheses, references = (base / directory / f"{student}.txt",
                              base / directory / "reference.txt")
    if not (hypotheses.is_file() and references.is_file()):
        return None
    return read(references), read(hypotheses)


def tests(runs: dict[str, dict[str, Any]], tgt_lang: str = "", samples: int = SAMPLES,
          systems: Sequence[str] = SYSTEMS, base: Path = Path("."),
          recorded: Iterable[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """One paired test per AIO-KD run of ``systems``, baseline run of :data:`BASELINES` and
    student both have (every pair of seeds), in that order; the translations are read below
    ``base``, and a pair whose translations are missing takes its test from ``recorded``."""
    read = functools.cache(lambda path: tuple(read_lines(path)))
    earlier = {(t["run"], t["baseline_run"], t["student"]): t for t in recorded}

    def of(system: str) -> list[dict[str, Any]]:
        return [r for r in runs.values() if r["system"] == system and not r.get("superseded_by")]

    found = []
    for system, baseline in itertools.product(systems, BASELINES):
        for mine, theirs in itertools.product(of(system), of(baseline)):
            for student in theirs.get("compared", theirs["bleu"]):
                entry = _test(mine, theirs, student, tgt_lang, samples, read, base)
                if entry is None:
                    entry = _still_valid(earlier.get((mine["run"], theirs["run"], student)),
                                         mine, theirs)
                if entry:
                    found.append(entry)
    return found


def _still_valid(entry: dict[str, Any] | None, mine: dict[str, Any],
                 theirs: dict[str, Any]) -> dict[str, Any] | None:
    """A recorded test, if both runs still have the BLEU it was made with (to its 2 digits)."""
    if not entry:
        return None
    now = [record["bleu"].get(entry["student"]) for record in (mine, theirs)]
    if None not in now and [round(b, 2) for b in now] == [entry["bleu"], entry["baseline_bleu"]]:
        return entry
    return None


def _test(mine: dict[str, Any], theirs: dict[str, Any], student: str, tgt_lang: str,
          samples: int, read: Reader, base: Path) -> dict[str, Any] | None:
    a, b = (_translations(mine, student, read, base),
            _translations(theirs, student, read, base))
    if a is None or b is None or a[0] != b[0]:
        return None
    result = paired_bootstrap(a[0], b[1], a[1], tgt_lang, samples)
    return {"student": student, "system": mine["system"], "run": mine["run"],
            "baseline": theirs["system"], "baseline_run": theirs["run"], **result}
