"""``aiokd distill-data``: sequence-level knowledge distillation data (Kim and Rush, 2016).

The training source of a data directory is translated with a model (the teacher by default, or
any student), and a new data directory is written that ``aiokd train`` accepts: the same
SentencePiece model, the same validation and test splits (copied), and ``train`` = (original
source, model translation), the translations encoded with that SentencePiece model.  Every pair is
kept, so ``train`` has as many pairs as before; the manifest notes the recipe (``distill-data``,
model, student, beam, dtype) and how many translations came out empty.

Translation is done in chunks of :data:`CHUNK_LINES` lines, each saved as soon as it is done
under ``.<out>.partial/`` beside the output; running the same command again after an
interruption continues from the last saved chunk (it starts over if the model, the data or the
options changed).  The output directory appears only once complete.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

import aiokd
from aiokd.data.corpus import (
    MANIFEST,
    ParallelSplit,
    data_tokenizer,
    ids_dtype,
    load_manifest,
    side_files,
    write_side,
)
from aiokd.data.text import encode_lines
from aiokd.data.tokenizer import FILES
from aiokd.errors import UserError
from aiokd.inference.api import Translator, load, set_threads
from aiokd.io import (
    atomic_directory,
    atomic_write_bytes,
    atomic_write_json,
    check_new_directory,
    make_directories,
)
from aiokd.lock import exclusive_lock
from aiokd.students import student_name

CHUNK_LINES = 1000
JOB = "job.json"


def _log(message: str) -> None:
    print(f"aiokd distill-data: {message}", file=sys.stderr, flush=True)


_MODEL_FILES = ("config.json", "model.safetensors", "spm.model", "model.bin", "aiokd.json")


def _fingerprint(path: Path) -> list[list[Any]]:
    """Name, size and modification time of a file, or of the model files of a directory:
    they change when the model does."""
    files = [path]
    if path.is_dir():
        files = [path / name for name in _MODEL_FILES if (path / name).is_file()]
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _chunk_path(work: Path, index: int) -> Path:
    return work / f"chunk-{index:06d}.txt"


def _read_chunk(path: Path, expected: int) -> list[str] | None:
    """The translations saved in ``path``, or None if absent or not ``expected`` lines long."""
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]
    return lines if len(lines) == expected else None


def _prepare_work(work: Path, job: dict[str, Any]) -> None:
    """Keep ``work`` if it belongs to the same job; else start it afresh."""
    job_path = work / JOB
    if job_path.is_file():
        try:
            same = json.loads(job_path.read_text(encoding="utf-8")) == job
        except (UnicodeDecodeError, json.JSONDecodeError):
            same = False
        if same:
            return
        _log(f"{work} holds translations of another model, data or options; starting over")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    atomic_write_json(job_path, job)


def translate_resumably(translator: Translator, sources: list[str], student: str, beam: int,
                        work: Path, job: dict[str, Any],
                        chunk_lines: int = CHUNK_LINES) -> list[str]:
    """Translations of ``sources``, chunk by chunk, reusing the chunks saved in ``work``."""
    _prepare_work(work, job)
    starts = range(0, len(sources), chunk_lines)
    saved = {i: _read_chunk(_chunk_path(work, i), len(sources[s:s + chunk_lines]))
             for i, s in enumerate(starts)}
    done = sum(len(chunk) for chunk in saved.values() if chunk is not None)
    if done:
        _log(f"resuming: {done:,} of {len(sources):,} lines already translated")
    translations: list[str] = []
    with tqdm(total=len(sources), initial=done, unit="sent", desc=f"translate ({student})",
              dynamic_ncols=True) as bar:
        for index, start in enumerate(starts):
            chunk = saved[index]
            if chunk is None:
                lines = sources[start:start + chunk_lines]
                chunk = [line.replace("\n", " ") for line in
                         translator.translate(lines, student=student, beam=beam,
                                              progress=bar.update)]
                atomic_write_bytes(_chunk_path(work, index), encode_lines(chunk))
            translations.extend(chunk)
    return translations


def _copy_split(data: Path, directory: Path, split: str, manifest: dict[str, Any],
                sides: tuple[str, ...] = ("src", "tgt")) -> None:
    for side in sides:
        for name in side_files(split, manifest[f"{side}_lang"]).values():
            shutil.copy2(data / name, directory / name)


def write_distilled(data: Path, out: Path, translations: list[str],
                    recipe: dict[str, Any], overwrite: bool = False) -> dict[str, Any]:
    """Write the data directory ``out``: ``data`` with its training targets replaced by
    ``translations``; return its manifest."""
    manifest = load_manifest(data)
    tokenizer = data_tokenizer(data)
    train = manifest["splits"]["train"]
    if train["pairs"] != len(translations):
        raise UserError(f"{data}: {train['pairs']} training pairs but {len(translations)} "
                        "translations")
    with atomic_directory(out, overwrite=overwrite) as directory:
        for name in {manifest.get("spm_model"), "spm.vocab", *FILES[tokenizer.kind]} - {None}:
            if (data / name).is_file():
                shutil.copy2(data / name, directory / name)
        for split in manifest["splits"]:
            _copy_split(data, directory, split, manifest,
                        ("src",) if split == "train" else ("src", "tgt"))
        ids = tokenizer.load(data).encode_target(translations)
        tgt_tokens = write_side(directory, "train", manifest["tgt_lang"], translations, ids,
                                ids_dtype(manifest["vocab_size"]))
        tgt_text = str(data / side_files("train", manifest["tgt_lang"])["text"])
        manifest["splits"]["train"] = {
            **train, "tgt_tokens": tgt_tokens, "dropped": {},
            "empty_translations": sum(not line for line in translations),
            "source_files": [str(data / side_files("train", manifest["src_lang"])["text"]),
                             f"translations by {recipe['model']} (instead of {tgt_text})"],
        }
        manifest["recipe"] = {**recipe, "data": str(data.resolve()),
                              "data_recipe": manifest.get("recipe")}
        manifest["created_with"] = f"aiokd {aiokd.__version__}"
        atomic_write_json(directory / MANIFEST, manifest)
    return manifest


def distill_data(model: str | Path, data: str | Path, out: str | Path, student: str | None = None,
                 beam: int = 5, device: str | None = None, overwrite: bool = False,
                 chunk_lines: int = CHUNK_LINES, dtype: str | None = None,
                 threads: int | None = None) -> dict[str, Any]:
    """``aiokd distill-data``: translate the training source of ``data`` with ``student`` of
    ``model`` (in precision ``dtype``, see :func:`aiokd.inference.api.load`, with ``threads``, see
    :func:`aiokd.inference.api.set_threads`) and write the sequence-level KD data directory
    ``out``; returns its manifest (see the module docstring).

    Raises:
        UserError: bad data, model or options, ``out`` exists and ``overwrite`` is false, or
            another process is writing ``out``.
    """
    shown, data, out = out, Path(data), Path(out)
    set_threads(threads)
    if beam < 1:
        raise UserError(f"--beam {beam}: must be at least 1")
    check_new_directory(out, overwrite)
    make_directories(out.parent)
    with exclusive_lock(out.parent / f".{out.name}.lock", str(out)):
        sources = ParallelSplit.load(data, "train").source_lines()
        translator = load(model, device=device, dtype=dtype, threads=threads)
        name = student_name(translator.check_student(student))
        recipe = {"name": "distill-data", "model": str(Path(model).resolve()), "student": name,
                  "beam": beam, "dtype": translator.settings["dtype"]}
        job = {**recipe, "model_files": _fingerprint(Path(model)),
               "data": str(data.resolve()), "train": _fingerprint(data / side_files(
                   "train", load_manifest(data)["src_lang"])["text"]), "chunk_lines": chunk_lines}
        work = out.parent / f".{out.name}.partial"
        translations = translate_resumably(translator, sources, name, beam, work, job,
                                           chunk_lines)
        manifest = write_distilled(data, out, translations, recipe, overwrite)
        shutil.rmtree(work, ignore_errors=True)
    train = manifest["splits"]["train"]
    print(f"wrote {shown}: {train['pairs']:,} training pairs translated by student {name} of "
          f"{recipe['model']} (beam {beam}); {train['empty_translations']:,} empty "
          f"translations; valid and test splits copied")
    return manifest
