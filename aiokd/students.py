"""Students by name, the candidate space and the seeded sampler.

A student ``S(l_e, l_d)`` is the bottom ``l_e`` encoder layers and bottom ``l_d`` decoder layers of
the teacher, written ``"l_e-l_d"``.  The paper's candidate set is

    C = { S(l_e, l_d) : 2 <= l_d <= l_e <= 6 }     (15 students, the teacher 6-6 included)

listed in the order ``2-2 3-2 4-2 5-2 6-2 3-3 4-3 ... 6-6`` (by ``l_d``, then ``l_e``).  Every
training step draws ``K`` students from ``C`` with a generator seeded by (seed, stage, update), so
every process draws the same students without communicating and a resumed run draws what an
uninterrupted one would have.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiokd.errors import UserError

if TYPE_CHECKING:
    from aiokd.config import DistillConfig

Student = tuple[int, int]
"""``(l_e, l_d)``: number of encoder and decoder layers."""


def parse_student(text: str) -> Student:
    """``"6-2"`` -> ``(6, 2)``; a UserError for anything else."""
    parts = text.strip().split("-")
    if len(parts) != 2 or not all(part.isascii() and part.isdigit() for part in parts):
        raise UserError(f"student {text!r} is not of the form l_e-l_d, e.g. 6-2")
    return int(parts[0]), int(parts[1])


def student_name(student: Student) -> str:
    return f"{student[0]}-{student[1]}"


def choose_student(name: str | None, students: list[Student], source: str | os.PathLike) -> Student:
    """The student called ``name`` (``None``: the largest, i.e. the teacher), if ``students``
    holds it; otherwise a UserError that lists them."""
    if name is None:
        return max(students)
    try:
        student = parse_student(name)
    except UserError:
        student = None
    if student not in students:
        listed = " ".join(student_name(s) for s in students)
        raise UserError(f"unknown student {name!r} for {source}; its students are: {listed}")
    return student


@dataclass(frozen=True)
class CandidateSpace:
    """Which ``(l_e, l_d)`` are candidates.

    Attributes:
        enc_layers: encoder depth of the teacher.
        dec_layers: decoder depth of the teacher.
        min_enc: smallest student encoder depth.
        min_dec: smallest student decoder depth.
        dec_le_enc: require ``l_d <= l_e`` (deep-encoder / shallow-decoder students).
        include_teacher: whether the teacher itself is a candidate (it is in the paper).
    """

    enc_layers: int = 6
    dec_layers: int = 6
    min_enc: int = 2
    min_dec: int = 2
    dec_le_enc: bool = True
    include_teacher: bool = True

    @property
    def teacher(self) -> Student:
        return (self.enc_layers, self.dec_layers)

    @property
    def candidates(self) -> list[Student]:
        """All candidates in the paper's order: by ``l_d``, then by ``l_e``."""
        found = [
            (le, ld)
            for ld in range(self.min_dec, self.dec_layers + 1)
            for le in range(self.min_enc, self.enc_layers + 1)
            if not (self.dec_le_enc and ld > le)
            and (self.include_teacher or (le, ld) != self.teacher)
        ]
        return found

    @property
    def evaluated(self) -> list[Student]:
        """Candidates plus the teacher: what validation and evaluation report."""
        found = self.candidates
        return found if self.teacher in found else found + [self.teacher]


def smallest(candidates: list[Student]) -> Student:
    """The candidate with the fewest layers in all; ties go to the first in ``candidates``."""
    return min(candidates, key=lambda student: student[0] + student[1])


def sample_students(candidates: list[Student], distill: DistillConfig, seed: int, stage: int,
                    update: int) -> list[Student]:
    """Draw ``distill.k`` students uniformly from ``candidates`` for one update, with or without
    replacement (``distill.replacement``).

    The generator depends only on ``(seed, stage, update)``, so every process and every resumed
    run draws the same students for the same update.  With ``distill.sandwich`` the first student
    is always :func:`smallest` and the other ``k - 1`` are drawn as usual (without replacement:
    from the other candidates).
    """
    k, replacement = distill.k, distill.replacement
    rng = random.Random(f"aiokd-students/{seed}/{stage}/{update}")
    fixed = [smallest(candidates)] if distill.sandwich else []
    pool = [s for s in candidates if s not in fixed] if fixed and not replacement else candidates
    if replacement:
        return fixed + [rng.choice(pool) for _ in range(k - len(fixed))]
    return fixed + rng.sample(pool, k - len(fixed))
