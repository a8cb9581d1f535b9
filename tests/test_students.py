"""The seeded student sampler, with and without the sandwich rule; student names and the trained
space."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiokd.config import DistillConfig, load_config
from aiokd.errors import UserError
from aiokd.students import (
    CandidateSpace,
    choose_student,
    parse_student,
    sample_students,
    smallest,
)

PAPER = CandidateSpace().candidates


def sampling(k: int, replacement: bool, sandwich: bool = False) -> DistillConfig:
    return DistillConfig(k=k, replacement=replacement, sandwich=sandwich)


def test_default_sampling_is_the_papers():
    for update in range(50):
        rng = random.Random(f"aiokd-students/7/2/{update}")
        expected = [rng.choice(PAPER) for _ in range(2)]
        assert sample_students(PAPER, sampling(2, True), 7, 2, update) == expected
        assert sample_students(PAPER, DistillConfig(), 7, 2, update) == expected


def test_sandwich_always_contains_the_smallest_and_is_reproducible():
    seconds = set()
    sandwich = sampling(2, True, sandwich=True)
    for stage in (1, 2):
        for update in range(300):
            drawn = sample_students(PAPER, sandwich, 1, stage, update)
            assert len(drawn) == 2 and drawn[0] == (2, 2)
            assert drawn == sample_students(PAPER, sandwich, 1, stage, update)
            seconds.add(drawn[1])
    assert seconds == set(PAPER)


def test_sandwich_without_replacement_draws_the_others_from_the_rest():
    for update in range(100):
        drawn = sample_students(PAPER, sampling(4, False, sandwich=True), 3, 1, update)
        assert drawn[0] == (2, 2) and len(set(drawn)) == 4
    assert sample_students(PAPER, sampling(15, False, sandwich=True), 3, 1, 0)[0] == (2, 2)


def test_smallest_is_fewest_layers_ties_by_order():
    assert smallest(PAPER) == (2, 2)
    assert smallest([(4, 4), (3, 2), (2, 3)]) == (3, 2)
    assert smallest([(4, 4), (2, 3), (3, 2)]) == (2, 3)
    wide = CandidateSpace(min_enc=1, min_dec=1, dec_le_enc=False).candidates
    assert smallest(wide) == (1, 1)


def test_sandwich_option_defaults_off():
    assert load_config("tiny").distill.sandwich is False
    assert load_config("tiny", overrides=["distill.sandwich=true"]).distill.sandwich is True


def test_students_outside_the_trained_space_are_refused():
    trained = CandidateSpace(3, 3, 2, 2).evaluated  # 2-2 3-2 3-3 (l_d <= l_e)
    for name in ("7-2", "0-0", "2-5", "2-3", "1-1", "six", ""):
        with pytest.raises(UserError, match="its students are: 2-2 3-2 3-3") as error:
            choose_student(name, trained, "runs/r")
        assert repr(name) in str(error.value) and "runs/r" in str(error.value)
    assert choose_student("3-2", trained, "runs/r") == (3, 2)
    assert choose_student(None, trained, "runs/r") == (3, 3)


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
