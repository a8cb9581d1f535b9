"""Shared fixtures: a tiny synthetic German-English corpus and a data directory prepared from it."""

from __future__ import annotations

import random

import pytest

from aiokd.prepare import prepare

_WORDS = [
    ("der", "the"), ("hund", "dog"), ("katze", "cat"), ("läuft", "runs"), ("schnell", "fast"),
    ("park", "park"), ("ein", "a"), ("mann", "man"), ("frau", "woman"), ("sieht", "sees"),
    ("rot", "red"), ("blau", "blue"), ("haus", "house"), ("groß", "big"), ("klein", "small"),
    ("und", "and"), ("spielt", "plays"), ("ball", "ball"), ("wasser", "water"), ("kind", "child"),
    ("straße", "street"), ("grün", "green"), ("isst", "eats"), ("brot", "bread"), ("alt", "old"),
    ("junge", "young"), ("mädchen", "girl"), ("trägt", "wears"), ("hut", "hat"), ("auto", "car"),
]
TINY_VOCAB = 100


def make_corpus(pairs: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``pairs`` word-for-word translated sentences of 3 to 10 words."""
    rng = random.Random(seed)
    src, tgt = [], []
    for _ in range(pairs):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 10))]
        src.append(" ".join(de for de, _ in words).capitalize() + " .")
        tgt.append(" ".join(en for _, en in words).capitalize() + " .")
    return src, tgt


@pytest.fixture(scope="session")
def tiny_corpus() -> dict[str, tuple[list[str], list[str]]]:
    """Train (300 pairs), valid and test (30 pairs each) of the synthetic corpus."""
    return {"train": make_corpus(300, seed=0), "valid": make_corpus(30, seed=1),
            "test": make_corpus(30, seed=2)}


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory, tiny_corpus):
    """A data directory prepared from :func:`tiny_corpus` (vocabulary 100); do not modify it."""
    out = tmp_path_factory.mktemp("tiny") / "data"
    prepare(out, "de", "en", tiny_corpus["train"], tiny_corpus["valid"],
            {"test": tiny_corpus["test"]}, vocab_size=TINY_VOCAB)
    return out
