"""Beam search with incremental decoding, for any student ``(l_e, l_d)`` of a model.

The bottom ``l_e`` encoder layers run once; the keys and values of the memory are computed once
for each of the bottom ``l_d`` decoder layers; each step then runs
:meth:`~aiokd.model.transformer.Transformer.decode_step` on the last token of every beam, whose
self-attention keys and values grow in a per-layer cache that is reordered with the beams.

The search follows CTranslate2's beam search, so that an exported student decodes the same tokens
(``K`` beams, source of ``S`` tokens without EOS):

* Decoding takes at most ``L = min(int(a * S + b), max_positions)`` steps; the EOS, when
  produced, is one of them.
* A beam's score is ``s = sum_t log p(y_t | y_<t, x)``.  At step ``t`` the ``2K`` best
  continuations ``s_k + log p(v | y_k, x)`` over all beams ``k`` and tokens ``v`` are the
  candidates, best first.  At step 0 only one beam per sentence exists.
* Each of the first ``K`` candidates that ends in EOS is a finished hypothesis; at the last step
  (``t = L - 1``) the first ``K`` candidates all finish as they are.  The ``K`` best candidates
  that do not end in EOS are the next beams.
* A sentence is done when ``K`` hypotheses have finished (with ``lenpen = 0``: as soon as the
  best candidate has finished), or after its last step.  Its output is the finished hypothesis
  with the best ``s / n^lenpen``, ``n`` its number of tokens with the EOS (fairseq's length
  penalty).
* EOS is forbidden at step 0 (no empty output); pad and BOS are never produced.  A forbidden
  token is removed before the softmax: ``log p`` is renormalised over the other tokens.

Finished sentences leave the batch, so a sentence's output does not depend on the others.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from aiokd.data.batching import pad_sequences
from aiokd.model.transformer import Transformer
from aiokd.students import Student


@dataclass(frozen=True)
class SearchOptions:
    """Beam size ``K``, length penalty, and the maximum output length ``a * S + b``."""

    beam: int = 5
    lenpen: float = 1.0
    max_len_a: float = 1.2
    max_len_b: int = 10

    def max_length(self, source_length: int, max_positions: int) -> int:
        """``L = min(int(a * S + b), max_positions)``, at least 1: decoding steps, EOS included."""
        return min(max(int(self.max_len_a * source_length + self.max_len_b), 1), max_positions)


@dataclass
class _Beams:
    """The decoder state of the ``n`` unfinished sentences, ``w`` beams each (rows ``n * w``).

    Attributes:
        sentences: ``(n,)`` index of each unfinished sentence in the input (on the CPU).
        width: ``w``: 1 before the first step, then ``K``.
        scores: ``(n, w)`` sum of log-probabilities of each beam.
        tokens: ``(n * w, t + 1)`` BOS and the tokens of each beam.
        memory_kv: per decoder layer, keys and values of the memory, each ``(n, H, S, C/H)``
            (shared by the beams of a sentence).
        memory_mask: ``(n, 1, 1, S)``.
        caches: per decoder layer, the past self-attention keys and values, and the ``rows`` of
            them that the next step continues (see :class:`~aiokd.model.transformer.SelfAttention`).
    """

    sentences: Tensor
    width: int
    scores: Tensor
    tokens: Tensor
    memory_kv: list[tuple[Tensor, Tensor]]
    memory_mask: Tensor
    caches: list[dict[str, Tensor]]

    def select(self, kept: Tensor, origins: Tensor, words: Tensor, scores: Tensor) -> None:
        """Keep the sentences at positions ``kept (m,)``; their new beams continue beams
        ``origins (m, K)`` with ``words (m, K)`` and have ``scores (m, K)``."""
        beam = origins.shape[1]
        positions = kept.to(origins.device)
        rows = (origins + positions[:, None] * self.width).flatten()
        if len(kept) != len(self.sentences):
            self.memory_kv = [(k.index_select(0, positions), v.index_select(0, positions))
                              for k, v in self.memory_kv]
            self.memory_mask = self.memory_mask.index_select(0, positions)
        for cache in self.caches:
            cache["rows"] = rows
        self.tokens = torch.cat([self.tokens.index_select(0, rows), words.reshape(-1, 1)], dim=1)
        self.sentences, self.width, self.scores = self.sentences[kept], beam, scores


def _continuation_scores(logits: Tensor, scores: Tensor, forbidden: list[int]) -> Tensor:
    """``s_r + log p(v | beam r)`` for every beam ``r`` and token ``v``, ``(R, V)``, with ``log p``
    renormalised over the allowed tokens: ``log p(v) = z_v - log sum_{u allowed} exp(z_u)``,
    ``-inf`` for the ``forbidden`` ones. ``logits (R, V)`` float32 is overwritten (``log_softmax``
    in place: no new ``(R, V)`` buffer at each step), ``scores (R,)``.
    """
    logits[:, forbidden] = float("-inf")
    torch.log_softmax(logits, dim=-1, out=logits)
    return logits.add_(scores[:, None])


def _start(model: Transformer, sources: list[list[int]], student: Student) -> _Beams:
    """Encode ``sources`` (ids without EOS) and set up one beam per sentence."""
    cfg = model.cfg
    device = model.embed.weight.device
    src = pad_sequences([np.asarray(s, dtype=np.int64) for s in sources], cfg.pad_id,
                        suffix=cfg.eos_id).to(device)
    encoded = model.encode(src, student[0])
    memory = model.memory(encoded, student[0])
    n = len(sources)
    return _Beams(
        sentences=torch.arange(n),
        width=1,
        scores=torch.zeros(n, 1, device=device),
        tokens=torch.full((n, 1), cfg.bos_id, dtype=torch.long, device=device),
        memory_kv=model.memory_keys_values(memory, student[1]),
        memory_mask=encoded.mask,
        caches=[{} for _ in range(student[1])],
    )


class _Finished:
    """The finished hypotheses of every sentence: ``(s / n^lenpen, tokens)``."""

    def __init__(self, sentences: int, beam: int, lenpen: float):
        self.hypotheses: list[list[tuple[float, list[int]]]] = [[] for _ in range(sentences)]
        self.top_finished = [False] * sentences
        self.beam, self.lenpen = beam, lenpen

    def add(self, sentence: int, score: float, tokens: list[int], rank: int) -> None:
        """A hypothesis of ``len(tokens)`` tokens that was candidate ``rank`` of its step."""
        self.hypotheses[sentence].append((score / len(tokens) ** self.lenpen, tokens))
        self.top_finished[sentence] |= rank == 0

    def done(self, sentence: int) -> bool:
        """``K`` hypotheses finished or, without length penalty, the best candidate did."""
        count = len(self.hypotheses[sentence])
        return count >= self.beam or (self.lenpen == 0 and self.top_finished[sentence])

    def best(self, sentence: int, eos_id: int) -> list[int]:
        """The tokens of the best hypothesis (the first of equals), without the EOS."""
        _, tokens = max(self.hypotheses[sentence], key=lambda hypothesis: hypothesis[0])
        return tokens[:-1] if tokens[-1] == eos_id else tokens


@torch.inference_mode()
def generate(model: Transformer, sources: list[list[int]], student: Student | None = None,
             options: SearchOptions = SearchOptions()) -> list[list[int]]:
    """Translate one batch of ``sources`` (token ids without EOS, each at most
    ``max_positions - 1`` long) with student ``(l_e, l_d)`` (default: the teacher).

    Returns the output ids of each source, without BOS and EOS; see the module docstring.
    """
    if not sources:
        return []
    cfg, beam = model.cfg, options.beam
    limits = [options.max_length(len(s), cfg.max_positions) for s in sources]
    beams = _start(model, sources, student or model.teacher)
    finished = _Finished(len(sources), beam, options.lenpen)
    for step in range(max(limits)):
        logits = model.decode_step(beams.tokens[:, -1:], beams.memory_kv, beams.memory_mask,
                                   beams.caches, step)
        totals = _continuation_scores(logits, beams.scores.reshape(-1),
                                      [cfg.pad_id, cfg.bos_id] + [cfg.eos_id] * (step == 0))
        vocab = totals.shape[1]
        scores, flat = totals.reshape(-1, beams.width * vocab).topk(
            min(2 * beam, beams.width * vocab), dim=1)
        origins, words = flat // vocab, flat % vocab
        is_eos = (words == cfg.eos_id).cpu()
        ends = is_eos.clone()
        ends[:, beam:] = False
        sentences = beams.sentences.tolist()
        ends[torch.tensor([limits[s] == step + 1 for s in sentences]), :beam] = True
        if ends.any():
            cpu_scores, cpu_origins, cpu_words = scores.cpu(), origins.cpu(), words.cpu()
            for i, j in ends.nonzero().tolist():
                row = i * beams.width + int(cpu_origins[i, j])
                tokens = beams.tokens[row, 1:].tolist() + [int(cpu_words[i, j])]
                finished.add(sentences[i], float(cpu_scores[i, j]), tokens, j)
        kept = torch.tensor([i for i, s in enumerate(sentences)
                             if not finished.done(s) and limits[s] > step + 1], dtype=torch.long)
        if len(kept) == 0:
            break
        columns = scores.shape[1]
        order = (torch.arange(columns) + columns * is_eos).argsort(dim=1)[kept, :beam]
        order, rows = order.to(words.device), kept.to(words.device)
        beams.select(kept, origins[rows].gather(1, order), words[rows].gather(1, order),
                     scores[rows].gather(1, order))
    return [finished.best(s, cfg.eos_id) for s in range(len(sources))]
