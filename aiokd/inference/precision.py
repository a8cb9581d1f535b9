"""``auto`` decoding settings, measured: the precision of the PyTorch engine and the thread
count of the CTranslate2 engine that translate fastest on this machine (see
:mod:`aiokd.model.probe` for how candidates are timed, compared and cached).

The workload timed is the one translation does: a few sentences one at a time (interactive use,
latency) and one batch (files), random source ids of 16 tokens, beam search, outputs capped at 8
tokens so that every candidate does the same number of steps.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from aiokd.inference.generate import SearchOptions, generate
from aiokd.model.probe import Choice, bf16_is_native, measured_choice
from aiokd.model.transformer import Transformer
from aiokd.students import Student

SOURCE_TOKENS = 16
SINGLE_SENTENCES = 4
BATCH_SENTENCES = 32
SEARCH = SearchOptions(beam=5, max_len_a=0.0, max_len_b=8)


def probe_sources(vocab_size: int, first_id: int = 4) -> list[list[int]]:
    """``BATCH_SENTENCES`` fixed random sources of ``SOURCE_TOKENS`` ids in
    ``[first_id, vocab_size)``."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(first_id, vocab_size, (BATCH_SENTENCES, SOURCE_TOKENS),
                        generator=generator)
    return ids.tolist()


def _translation_workload(translate: Callable[[list[list[int]]], object],
                          sources: list[list[int]]) -> Callable[[], None]:
    def run() -> None:
        for source in sources[:SINGLE_SENTENCES]:
            translate([source])
        translate(sources)

    return run


def decoding_precision(model: Transformer, student: Student, device: torch.device) -> Choice:
    """``--dtype auto`` for the PyTorch engine: ``bfloat16`` or ``float32``, timed on
    ``student`` of ``model`` (float32 weights on ``device``) where the device has native bf16."""
    if not bf16_is_native(device):
        return Choice("float32", f"float32: no native bf16 on this {device.type}")
    if device.type == "cuda":
        return Choice("bfloat16", "bfloat16: native on this GPU")
    cfg = model.cfg
    sources = probe_sources(cfg.vocab_size)
    @functools.cache
    def half() -> Transformer:
        """A bfloat16 copy, made on the first call only (none when the choice is cached)."""
        copy = Transformer(cfg).to(device, torch.bfloat16).eval()
        copy.load_state_dict(model.state_dict())
        return copy

    model.eval()
    engines = {name: _translation_workload(
        lambda batch, m=m: generate(m(), batch, student, SEARCH), sources)
        for name, m in (("float32", lambda: model), ("bfloat16", half))}
    question = (f"decode|V={cfg.vocab_size}|C={cfg.d_model}|F={cfg.ffn_dim}|H={cfg.heads}|"
                f"student={student[0]}-{student[1]}|pre={cfg.pre_norm}")
    with torch.inference_mode():
        return measured_choice(question, device, engines, reference="float32")


def ctranslate2_threads(open_translator: Callable[[int], object], pieces: list[str],
                        question: str, threads: int) -> Choice:
    """CTranslate2's ``intra_threads``: 1 or ``threads`` (PyTorch's count), timed on translators
    opened by ``open_translator(n)``; ``threads`` is kept unless 1 is clearly faster."""
    if threads <= 1:
        return Choice("1", "one thread available")
    sources = [[pieces[i] for i in source] for source in probe_sources(len(pieces))]
    runs = {}
    for n in (threads, 1):
        translator = open_translator(n)
        runs[str(n)] = _translation_workload(
            lambda batch, t=translator: t.translate_batch(
                batch, beam_size=SEARCH.beam, max_decoding_length=SEARCH.max_len_b,
                min_decoding_length=SEARCH.max_len_b), sources)
    return measured_choice(f"ctranslate2-threads|{question}|n={threads}", torch.device("cpu"),
                           runs, reference=str(threads))
