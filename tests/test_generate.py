"""Beam search with the KV cache: agreement with the full forward pass, batch independence,
greedy decoding, lengths and forbidden tokens."""

from __future__ import annotations

import pytest
import sentencepiece as spm
import torch

from aiokd.data.batching import pad_sequences
from aiokd.inference.generate import SearchOptions, generate
from aiokd.model.checkpoint import load_model_files
from tests.conftest import make_corpus

STUDENTS = [(3, 3), (3, 2), (2, 2)]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    files = load_model_files(tiny_model_dir)
    return files.model, spm.SentencePieceProcessor(model_proto=files.spm_bytes)


@pytest.fixture(scope="module")
def sources(tiny):
    _, processor = tiny
    return processor.encode(make_corpus(7, seed=11)[0])


@pytest.mark.parametrize("student", STUDENTS)
def test_incremental_log_probs_equal_forward(tiny, sources, student):
    model, _ = tiny
    cfg = model.cfg
    targets = [source[::-1][:6] for source in sources]  # any prefixes will do
    src = pad_sequences(sources, cfg.pad_id, suffix=cfg.eos_id)
    prev = pad_sequences(targets, cfg.pad_id, prefix=cfg.bos_id)
    with torch.inference_mode():
        expected = torch.log_softmax(model(src, prev, *student), dim=-1)
        encoded = model.encode(src, student[0])
        memory_kv = model.memory_keys_values(model.memory(encoded, student[0]), student[1])
        caches = [{} for _ in range(student[1])]
        steps = [torch.log_softmax(model.decode_step(prev[:, t:t + 1], memory_kv, encoded.mask,
                                                     caches, t), dim=-1)
                 for t in range(prev.shape[1])]
    incremental = torch.stack(steps, dim=1)
    real = prev != cfg.pad_id
    assert torch.allclose(incremental[real], expected[real], atol=1e-5, rtol=0)


@pytest.mark.parametrize("student", STUDENTS)
@pytest.mark.parametrize("beam", [1, 5])
def test_output_does_not_depend_on_the_batch(tiny, sources, student, beam):
    model, _ = tiny
    options = SearchOptions(beam=beam)
    together = generate(model, sources, student, options)
    alone = [generate(model, [source], student, options)[0] for source in sources]
    assert together == alone
    assert generate(model, sources[::-1], student, options) == together[::-1]


def _naive_greedy(model, source, student, limit):
    """Greedy decoding by re-running the whole decoder at every step (no cache)."""
    cfg = model.cfg
    src = torch.tensor([source + [cfg.eos_id]])
    output = []
    for step in range(limit):
        prev = torch.tensor([[cfg.bos_id, *output]])
        logits = model(src, prev, *student)[0, -1]
        logits[[cfg.pad_id, cfg.bos_id] + ([cfg.eos_id] if step == 0 else [])] = float("-inf")
        token = int(logits.argmax())
        if token == cfg.eos_id:
            break
        output.append(token)
    return output


@pytest.mark.parametrize("student", STUDENTS)
def test_beam_one_is_greedy(tiny, sources, student):
    model, _ = tiny
    options = SearchOptions(beam=1)
    with torch.inference_mode():
        expected = [_naive_greedy(model, source, student,
                                  options.max_length(len(source), model.cfg.max_positions))
                    for source in sources]
    assert generate(model, sources, student, options) == expected


def test_outputs_hold_no_special_tokens_and_respect_the_length_limit(tiny, sources):
    model, _ = tiny
    for beam in (1, 4):
        for source, output in zip(sources, generate(model, sources, None, SearchOptions(beam)),
                                  strict=True):
            assert output and not {0, 2, 3} & set(output)
            assert len(output) < int(1.2 * len(source) + 10)
        short = generate(model, sources, None, SearchOptions(beam, max_len_a=0, max_len_b=2))
        assert all(1 <= len(output) <= 2 for output in short)


def test_max_length():
    options = SearchOptions(max_len_a=1.2, max_len_b=10)
    assert options.max_length(10, 1024) == 22
    assert options.max_length(2000, 1024) == 1024
    assert SearchOptions(max_len_a=0, max_len_b=0).max_length(5, 1024) == 1


def test_edge_cases(tiny):
    model, _ = tiny
    assert generate(model, [], None) == []
    assert len(generate(model, [[]], (2, 2))) == 1  # an empty source is just the EOS
    longest = [5] * (model.cfg.max_positions - 1)
    (output,) = generate(model, [longest], (2, 2), SearchOptions(beam=2))
    assert len(output) <= model.cfg.max_positions
