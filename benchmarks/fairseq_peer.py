"""The fairseq peer of ``benchmarks/speed.py``: the same teacher trained and decoded by fairseq.

fairseq 0.12 (the ``fairseq-fixed`` package) lives in a virtual environment of its own, made by
``benchmarks/peers/install_fairseq.sh``; its command-line tools run here as subprocesses with the
same number of threads as the PyTorch of this process.

* **Data**: the token ids of our prepared data directory written out as SentencePiece pieces
  (exactly the text our training reads) and binarized by ``fairseq-preprocess`` with one joined
  dictionary.
* **Training**: ``fairseq-train --arch transformer_iwslt_de_en --share-all-embeddings`` (6+6
  layers, width 512, FFN 1024, 4 heads), label-smoothed cross-entropy 0.1, Adam (0.9, 0.98),
  inverse-sqrt schedule, dropout 0.3, weight decay 1e-4, ``--max-tokens 4096``, ``--cpu``, for
  ``--max-update N``; with ``--log-interval 1`` it logs every update's target tokens (``wpb``)
  and target tokens per second (``wps``, over the time since the previous update's log: one
  update's step with its batch loading).  The throughput is the tokens over the time, summed over
  the updates after the warm-up ones, as ``speed.py`` measures ours.
* **Decoding**: ``fairseq-generate`` with the checkpoint of that run (still in its learning-rate
  warm-up, so practically untrained: every sentence runs to the length limit), beam 5, batch 64,
  length penalty 1, on the same source sentences as ours, with the same fixed number of decoder
  steps; its own timer covers the search only, and it counts every hypothesis's tokens with the
  end-of-sentence token.

:func:`compare` sets these against our teacher, the ``fairseq`` section of ``speed.py``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
import torch
from speed_common import bench_config, training_batches
from speed_decoding import Search, decoding_model, decoding_sources, time_decoding, torch_decoder
from speed_training import TEACHER, bench_training

from aiokd.data.corpus import ParallelSplit, load_manifest

FAIRSEQ_MAX_TOKENS = 4096
FAIRSEQ_WARMUP_UPDATES = 2
TRAIN_ARGS = [
    "--arch", "transformer_iwslt_de_en", "--share-all-embeddings",
    "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--clip-norm", "0.0",
    "--lr", "5e-4", "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "4000",
    "--dropout", "0.3", "--weight-decay", "0.0001",
    "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
    "--max-tokens", str(FAIRSEQ_MAX_TOKENS), "--seed", "1", "--num-workers", "0",
    "--log-format", "json", "--log-interval", "1", "--disable-validation",
    "--no-epoch-checkpoints", "--no-progress-bar",
]
_GENERATED = re.compile(r"Translated ([\d,]+) sentences \(([\d,]+) tokens\) in ([\d.]+)s "
                        r"\(([\d.]+) sentences/s, ([\d.]+) tokens/s\)")


def fairseq_tools(venv: Path) -> dict[str, Path]:
    """Paths of ``fairseq-preprocess``, ``-train`` and ``-generate`` in ``venv``; FileNotFoundError
    naming the install script if they are missing."""
    tools = {name: venv / "bin" / f"fairseq-{name}" for name in ("preprocess", "train", "generate")}
    missing = [str(path) for path in tools.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]} not found; run benchmarks/peers/install_fairseq.sh")
    return tools


def fairseq_version(venv: Path) -> str:
    found = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import fairseq, torch; print(fairseq.__version__, torch.__version__)"],
                           check=True, capture_output=True, text=True)
    fairseq, torch_version = found.stdout.split()[-2:]
    return f"{fairseq} (torch {torch_version})"


def environment(threads: int) -> dict[str, str]:
    """This process's environment with the thread count pinned and fairseq's checkpoint loading
    allowed under torch >= 2.6 (which loads ``weights_only`` by default)."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1", PYTHONWARNINGS="ignore")
    return env


def write_pieces(split: ParallelSplit, processor: spm.SentencePieceProcessor, prefix: Path,
                 indices: list[int] | None = None) -> None:
    """``prefix.{src,tgt}``: the pairs' token ids as space-separated SentencePiece pieces."""
    m = split.manifest
    chosen = range(len(split)) if indices is None else indices
    for lang, side in ((m["src_lang"], split.src), (m["tgt_lang"], split.tgt)):
        lines = (" ".join(processor.id_to_piece(int(t)) for t in side(i)) for i in chosen)
        Path(f"{prefix}.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")


def binarize(tools: dict[str, Path], data_dir: Path, work: Path, decode_indices: list[int],
             env: dict[str, str]) -> Path:
    """``fairseq-preprocess`` of our training and validation data, and of the validation pairs
    ``decode_indices`` as the ``test`` subset; returns the binarized directory."""
    manifest = load_manifest(data_dir)
    processor = spm.SentencePieceProcessor(model_file=str(data_dir / manifest["spm_model"]))
    text = work / "text"
    text.mkdir(parents=True, exist_ok=True)
    valid = ParallelSplit.load(data_dir, "valid")
    write_pieces(ParallelSplit.load(data_dir, "train"), processor, text / "train")
    write_pieces(valid, processor, text / "valid")
    write_pieces(valid, processor, text / "test", decode_indices)
    out = work / "bin"
    subprocess.run([str(tools["preprocess"]), "--source-lang", manifest["src_lang"],
                    "--target-lang", manifest["tgt_lang"], "--trainpref", str(text / "train"),
                    "--validpref", str(text / "valid"), "--testpref", str(text / "test"),
                    "--joined-dictionary", "--destdir", str(out), "--workers", "1"],
                   check=True, env=env, capture_output=True, text=True)
    return out


def train(tools: dict[str, Path], data: Path, save_dir: Path, updates: int, warmup: int,
          env: dict[str, str]) -> dict[str, Any]:
    """Run ``fairseq-train`` for ``updates`` updates; its throughput over the updates after the
    first ``warmup`` (see the module docstring)."""
    command = [str(tools["train"]), str(data), *TRAIN_ARGS, "--max-update", str(updates),
               "--save-dir", str(save_dir), "--cpu"]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"fairseq-train failed:\n{done.stderr[-3000:]}")
    logged = []
    for line in (done.stdout + done.stderr).splitlines():
        if "| train_inner |" in line:
            logged.append(json.loads(line[line.index("{"):]))
    steps = logged[warmup:]
    if not steps:
        raise RuntimeError("fairseq-train logged no update after the warm-up ones; "
                           "raise --fairseq-updates")
    tokens = [float(entry["wpb"]) for entry in steps]
    seconds = [float(entry["wpb"]) / float(entry["wps"]) for entry in steps]
    return {"updates": updates, "timed_updates": len(steps), "warmup_updates": warmup,
            "tokens_per_s": sum(tokens) / sum(seconds), "step_s_median": float(np.median(seconds)),
            "tokens_per_step": sum(tokens) / len(tokens),
            "process_wall_s": wall}


def generate(tools: dict[str, Path], data: Path, checkpoint: Path, beam: int, batch_size: int,
             length: int, env: dict[str, str]) -> dict[str, Any]:
    """``fairseq-generate`` of the ``test`` subset with at most ``length`` decoder steps (its
    ``--max-len-b`` counts the tokens before the end-of-sentence step); sentences/s and tokens/s
    as it reports them."""
    command = [str(tools["generate"]), str(data), "--path", str(checkpoint), "--gen-subset",
               "test", "--beam", str(beam), "--batch-size", str(batch_size), "--lenpen", "1",
               "--max-len-a", "0", "--max-len-b", str(length - 1), "--quiet", "--num-workers", "0",
               "--cpu"]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"fairseq-generate failed:\n{done.stderr[-3000:]}")
    match = _GENERATED.search(done.stdout + done.stderr)
    if match is None:
        raise RuntimeError("fairseq-generate printed no timing line:\n" + done.stderr[-2000:])
    sentences, tokens = (int(match.group(i).replace(",", "")) for i in (1, 2))
    return {"beam": beam, "batch_size": batch_size, "sentences": sentences, "tokens": tokens,
            "s": float(match.group(3)), "sentences_per_s": float(match.group(4)),
            "tokens_per_s": float(match.group(5)), "tokens_per_sentence": tokens / sentences}


def bench_fairseq(venv: Path, data_dir: Path, work: Path, threads: int, updates: int,
                  warmup: int, decode_indices: list[int], length: int) -> dict[str, Any]:
    """Binarize, train for ``updates`` updates, then decode the validation pairs
    ``decode_indices`` (beam 5, batch 64, ``length`` decoder steps) with fairseq."""
    tools = fairseq_tools(venv)
    env = environment(threads)
    print("  fairseq: binarizing ...", file=sys.stderr, flush=True)
    data = binarize(tools, data_dir, work / "fairseq", decode_indices, env)
    dictionary = 4 + sum(1 for _ in (data / "dict.en.txt").open(encoding="utf-8"))
    print(f"  fairseq: training {updates} updates ...", file=sys.stderr, flush=True)
    save_dir = work / "fairseq" / "checkpoints"
    trained = train(tools, data, save_dir, updates, warmup, env)
    print("  fairseq: generating ...", file=sys.stderr, flush=True)
    decoded = generate(tools, data, save_dir / "checkpoint_last.pt", 5, 64, length, env)
    return {"version": fairseq_version(venv), "threads": threads,
            "dictionary_size": dictionary, "train": trained, "generate_beam5_batch64": decoded}


def compare(venv: Path, data_dir: Path, work: Path, device: torch.device, runs: int,
            warmup: int, sentences: int, updates: int,
            ours: dict[str, Any] | None) -> dict[str, Any]:
    """The fairseq peer against our ``iwslt`` teacher in float32 on the CPU: training tokens/s,
    and decoding tokens/s at beam 5, batch 64 with both models untrained (fixed length).

    ``ours`` is our teacher's training row if already measured (``speed_training``); else it is
    measured here on fairseq's batch size.
    """
    if device.type != "cpu":
        return {"skipped": "the fairseq peer is measured on the CPU only (fairseq-train --cpu)"}
    manifest = load_manifest(data_dir)
    if ours is None:
        print("  iwslt float32 teacher for the fairseq comparison ...", file=sys.stderr)
        cfg = TEACHER.config("iwslt", manifest, [])
        batches = training_batches(ParallelSplit.load(data_dir, "train"), FAIRSEQ_MAX_TOKENS,
                                   runs, cfg.train.seed, device)
        ours = bench_training([(TEACHER, cfg)], batches, warmup, device, None)["teacher"]
    sources, length = decoding_sources(data_dir, sentences)
    files, _ = decoding_model(None, bench_config("iwslt", manifest, []), data_dir)
    print("  our beam 5 batch 64 decoding for the fairseq comparison ...", file=sys.stderr)
    ours_decoding = time_decoding(torch_decoder(files.model, files.model.teacher,
                                                Search(5, 0.0, length)),
                                  sources, 64, lambda source: length, runs)
    peer = bench_fairseq(venv, data_dir, work, torch.get_num_threads(), updates,
                         FAIRSEQ_WARMUP_UPDATES, list(range(len(sources))), length)
    return {
        **peer,
        "ours_train": {key: ours[key] for key in ("tokens_per_s", "step_s_median",
                                                   "tokens_per_step")},
        "ours_generate_beam5_batch64": ours_decoding,
        "decode_length": length,
        "ratio_train_ours_vs_fairseq": ours["tokens_per_s"] / peer["train"]["tokens_per_s"],
        "ratio_generate_ours_vs_fairseq": (ours_decoding["tokens_per_s"]
                                           / peer["generate_beam5_batch64"]["tokens_per_s"]),
    }


def format_comparison(fairseq: dict[str, Any]) -> list[str]:
    """The lines of :func:`compare`'s figures."""
    if not fairseq:
        return []
    if "skipped" in fairseq:
        return ["", f"fairseq: skipped ({fairseq['skipped']})"]
    train, ours = fairseq["train"], fairseq["ours_train"]
    decode, ours_decode = fairseq["generate_beam5_batch64"], fairseq["ours_generate_beam5_batch64"]
    return [
        "", f"fairseq {fairseq['version']}, {fairseq['threads']} threads, iwslt teacher, float32",
        f"training: fairseq {train['tokens_per_s']:.0f} tok/s ({train['timed_updates']} updates), "
        f"ours {ours['tokens_per_s']:.0f} tok/s: ours/fairseq "
        f"{fairseq['ratio_train_ours_vs_fairseq']:.2f}",
        f"decoding beam 5 batch 64, {fairseq['decode_length']} steps: fairseq "
        f"{decode['tokens_per_s']:.0f} tok/s, ours {ours_decode['tokens_per_s']:.0f} tok/s: "
        f"ours/fairseq {fairseq['ratio_generate_ours_vs_fairseq']:.2f}",
    ]
