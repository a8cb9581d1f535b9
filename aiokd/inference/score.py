"""Scoring given translations: the log-probability a student assigns to each target.

For a pair ``(x, y)`` with target tokens ``y_1..y_n`` and ``y_{n+1} = EOS``:

    log p(y | x) = sum_{t=1}^{n+1} log softmax(z_t)[y_t]

with ``z_t`` the student's logits (decoder input: BOS, i.e. ``model.bos_id``, then ``y_<t``), in
natural logarithm; the count is ``n + 1``.  Pairs are scored in batches of similar length (at most
``max_tokens`` padded tokens each); the log-softmax and the sums are in float64 whatever the
model's dtype (``float32`` by default, ``float64`` for reference values).

``aiokd score`` (:func:`score_files`) writes one line per pair: the total, a tab, the count; or,
with ``--json``, one object ``{"log_prob": total, "tokens": count}`` per line.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import torch

from aiokd.data.batching import collate, token_batches
from aiokd.errors import UserError
from aiokd.inference.api import set_threads
from aiokd.inference.translate import read_input, write_output
from aiokd.model.checkpoint import ModelFiles, load_model_files
from aiokd.model.transformer import Transformer
from aiokd.students import Student, choose_student

DTYPES = {"float32": torch.float32, "float64": torch.float64}
"""The precisions a model can score in, by name."""


@torch.inference_mode()
def score_ids(model: Transformer, student: Student, sources: list[list[int]],
              targets: list[list[int]], max_tokens: int = 4096) -> list[tuple[float, int]]:
    """``(log p(y | x), n + 1)`` of each pair of id sequences (without EOS), in input order, for
    student ``(l_e, l_d)`` of ``model`` as it is (device, dtype)."""
    cfg = model.cfg
    device = model.embed.weight.device
    results: list[tuple[float, int]] = [(0.0, 0)] * len(sources)
    src_lengths = np.array([len(s) for s in sources], dtype=np.int64)
    tgt_lengths = np.array([len(t) for t in targets], dtype=np.int64)
    for batch_rows in token_batches(src_lengths, tgt_lengths, max_tokens, shuffle=False):
        batch = collate([np.asarray(sources[i], dtype=np.int64) for i in batch_rows],
                        [np.asarray(targets[i], dtype=np.int64) for i in batch_rows],
                        cfg.pad_id, cfg.bos_id, cfg.eos_id).to(device)
        logits = model(batch.src, batch.prev_tgt, *student)  # (B, T, V)
        log_probs = torch.log_softmax(logits.double(), dim=-1)
        picked = log_probs.gather(-1, batch.target[..., None])[..., 0]  # (B, T)
        real = batch.target != cfg.pad_id
        totals = picked.masked_fill(~real, 0.0).sum(dim=1).tolist()
        counts = real.sum(dim=1).tolist()
        for i, total, count in zip(batch_rows, totals, counts, strict=True):
            results[i] = (total, count)
    return results


def score(files: ModelFiles, student: str | None, sources: list[str], targets: list[str],
          max_tokens: int = 4096, dtype: str = "float32") -> list[tuple[float, int]]:
    """``(total natural-log probability of the target, its token count with EOS)`` of each
    ``(source, target)`` line pair under ``student`` (default: the teacher) of ``files``.

    Lines are stripped and encoded with the model's tokenizer (targets with its target side).

    Raises:
        UserError: unequal numbers of lines, an unknown student or dtype, or a line too long
            for the model's positions (named by its number).
    """
    if len(sources) != len(targets):
        raise UserError(f"{len(sources)} source lines but {len(targets)} target lines")
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    if max_tokens < 1:
        raise UserError(f"--max-tokens {max_tokens}: must be at least 1")
    chosen = choose_student(student, files.students, files.source)
    tokenizer = files.tokenizer.load(files.source)
    src_ids = tokenizer.encode_source([line.strip() for line in sources])
    tgt_ids = tokenizer.encode_target([line.strip() for line in targets])
    longest = files.model.cfg.max_positions - 1
    for number, (src, tgt) in enumerate(zip(src_ids, tgt_ids, strict=True), 1):
        if max(len(src), len(tgt)) > longest:
            raise UserError(f"pair {number}: longer than the {longest} tokens this model reads")
    model = files.model
    if next(model.parameters()).dtype != DTYPES[dtype]:
        model = copy.deepcopy(model).to(DTYPES[dtype])
    return score_ids(model.eval(), chosen, src_ids, tgt_ids, max_tokens)


def score_files(model: str | Path, src: str, tgt: str, *, output_file: str = "-",
                student: str | None = None, json_lines: bool = False, dtype: str = "float32",
                max_tokens: int = 4096, threads: int | None = None) -> list[tuple[float, int]]:
    """``aiokd score``: the log-probability of each line of ``tgt`` given the same line of
    ``src`` under ``student`` (default: the teacher) of ``model`` (a run or model directory or a
    checkpoint), written to ``output_file`` (``-``: stdout) as the module docstring says; returns
    the scores.

    Raises:
        UserError: an unreadable model or file, files of unequal line counts (both named), or
            bad options.
    """
    set_threads(threads)
    files = load_model_files(model)
    sources, targets = read_input(src), read_input(tgt)
    if len(sources) != len(targets):
        raise UserError(f"{src} has {len(sources)} lines but {tgt} has {len(targets)}; give "
                        "one target line per source line")
    scores = score(files, student, sources, targets, max_tokens, dtype)
    if json_lines:
        lines = [json.dumps({"log_prob": total, "tokens": count}) for total, count in scores]
    else:
        lines = [f"{total!r}\t{count}" for total, count in scores]
    write_output(output_file, lines)
    return scores
