"""Translating text with any student of a model, in PyTorch or CTranslate2.

    model = aiokd.load("runs/multi30k")     # run directory, checkpoint, extracted student,
    model.students                          # or CTranslate2 export; ["2-2", "3-2", ..., "6-6"]
    model.translate(["Ein Hund rennt."], student="6-2", beam=5)

Lines are stripped, encoded with the model's SentencePiece model and translated in batches of
similar length (at most ``max_tokens`` padded source tokens each); outputs come back decoded and in
input order, one per line; an empty line gives an empty output.  A source longer than the model's
``max_positions - 1`` tokens (one position is the EOS) is truncated to that length.

The PyTorch engine decodes with :func:`aiokd.generate.generate`; the CTranslate2 engine with
``ctranslate2.Translator.translate_batch`` under the same search rules: pad and BOS suppressed,
``min_decoding_length=1``, ``max_decoding_length`` per source length (sources are grouped by it),
and CTranslate2's length penalty, which divides by the length with the EOS as ours does.  Given a
model that is not a CTranslate2 export, the CTranslate2 engine exports each student it is asked
for, in float32, to a temporary directory that is removed once the model is loaded.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import sentencepiece as spm
import torch

from aiokd.batching import token_batches
from aiokd.checkpoint import ModelFiles, load_model_files
from aiokd.config import ModelConfig
from aiokd.errors import UserError
from aiokd.generate import SearchOptions, generate
from aiokd.model import Transformer
from aiokd.students import Student, parse_student, student_name

Progress = Callable[[int], object]
"""Called with the number of lines just finished."""


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


class _TorchEngine:
    def __init__(self, model: Transformer):
        self.model = model

    def run(self, sources: list[list[int]], student: Student, options: SearchOptions,
            max_tokens: int, progress: Progress) -> list[list[int]]:
        outputs: list[list[int]] = [[] for _ in sources]
        lengths = np.array([len(source) for source in sources], dtype=np.int64)
        for batch in token_batches(lengths, lengths, max_tokens, shuffle=False):
            translated = generate(self.model, [sources[i] for i in batch], student, options)
            for i, tokens in zip(batch, translated, strict=True):
                outputs[i] = tokens
            progress(len(batch))
        return outputs


def _ctranslate2_device(device: str | None) -> tuple[str, int]:
    import ctranslate2

    if device is None:
        return ("cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"), 0
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or not (index.isdigit() or not index):
        raise UserError(f"--device {device}: expected cpu, cuda or cuda:N")
    if kind == "cuda" and ctranslate2.get_cuda_device_count() <= int(index or 0):
        raise UserError(f"--device {device}: no such CUDA device for CTranslate2")
    return kind, int(index or 0)


def _open_ctranslate2(directory: Path, device: str | None):
    import ctranslate2

    kind, index = _ctranslate2_device(device)
    try:
        return ctranslate2.Translator(str(directory), device=kind, device_index=index,
                                      intra_threads=torch.get_num_threads())
    except (RuntimeError, ValueError) as error:
        raise UserError(f"{directory}: CTranslate2 cannot load it ({error})") from None


class _CTranslate2Engine:
    """``open_student(student)`` gives the ``ctranslate2.Translator`` of a student."""

    def __init__(self, open_student: Callable[[Student], object], pieces: list[str],
                 cfg: ModelConfig):
        self._open_student = open_student
        self._translators: dict[Student, object] = {}
        self.pieces = pieces
        self.ids = {piece: i for i, piece in enumerate(pieces)}
        self.cfg = cfg

    def run(self, sources: list[list[int]], student: Student, options: SearchOptions,
            max_tokens: int, progress: Progress) -> list[list[int]]:
        if student not in self._translators:
            self._translators[student] = self._open_student(student)
        translator = self._translators[student]
        by_limit: dict[int, list[int]] = {}
        for i, source in enumerate(sources):
            limit = options.max_length(len(source), self.cfg.max_positions)
            by_limit.setdefault(limit, []).append(i)
        outputs: list[list[int]] = [[] for _ in sources]
        suppressed = [[self.pieces[self.cfg.pad_id]], [self.pieces[self.cfg.bos_id]]]
        for limit, members in sorted(by_limit.items()):
            results = translator.translate_batch(
                [[self.pieces[t] for t in sources[i]] for i in members],
                max_batch_size=max_tokens, batch_type="tokens", beam_size=options.beam,
                length_penalty=options.lenpen, max_input_length=0, max_decoding_length=limit,
                min_decoding_length=1, suppress_sequences=suppressed, return_scores=False)
            for i, result in zip(members, results, strict=True):
                outputs[i] = [self.ids[piece] for piece in result.hypotheses[0]]
            progress(len(members))
        return outputs


class Translator:
    """A loaded model: text in, text out, with any of its students (see the module docstring)."""

    def __init__(self, engine: _TorchEngine | _CTranslate2Engine, processor, cfg: ModelConfig,
                 students: list[Student], source: Path):
        self._engine = engine
        self._processor = processor
        self.cfg = cfg
        self._students = students
        self.source = source

    @property
    def students(self) -> list[str]:
        """Names ``"l_e-l_d"`` of the students this model can translate with."""
        return [student_name(s) for s in self._students]

    def check_student(self, name: str | None) -> Student:
        """``(l_e, l_d)`` of the student ``name`` (``None``: the teacher), or a UserError."""
        return choose_student(name, self._students, self.source)

    def translate(self, lines: list[str], student: str | None = None, beam: int = 5,
                  lenpen: float = 1.0, max_tokens: int = 4096, max_len_a: float = 1.2,
                  max_len_b: int = 10, progress: Progress | None = None) -> list[str]:
        """One translation per line of ``lines``, in order (see the module docstring).

        ``progress``, if given, is called with the number of lines finished, as they finish.
        """
        chosen = self.check_student(student)
        if beam < 1:
            raise UserError(f"--beam {beam}: must be at least 1")
        if max_tokens < 1:
            raise UserError(f"--max-tokens {max_tokens}: must be at least 1")
        progress = progress or (lambda count: None)
        texts = [line.strip() for line in lines]
        todo = [i for i, text in enumerate(texts) if text]
        progress(len(lines) - len(todo))
        sources = self._encode([texts[i] for i in todo])
        options = SearchOptions(beam, lenpen, max_len_a, max_len_b)
        outputs = self._engine.run(sources, chosen, options, max_tokens, progress)
        translations = [""] * len(lines)
        for i, tokens in zip(todo, outputs, strict=True):
            translations[i] = self._processor.decode(tokens)
        return translations

    def _encode(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, truncated to ``max_positions - 1`` with a note on stderr."""
        sources = self._processor.encode(texts)
        longest = self.cfg.max_positions - 1
        too_long = sum(len(source) > longest for source in sources)
        if too_long:
            print(f"aiokd: warning: {too_long} line(s) longer than the {longest} tokens this "
                  f"model reads, truncated to {longest} tokens", file=sys.stderr)
        return [source[:longest] for source in sources]


def _sentencepiece(spm_bytes: bytes, where: Path):
    try:
        return spm.SentencePieceProcessor(model_proto=spm_bytes)
    except RuntimeError:
        raise UserError(f"{where}: damaged SentencePiece model") from None


def _torch_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device}: not a device (expected cpu, cuda or cuda:N)") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device available")
    return chosen


def _exporting(files: ModelFiles, device: str | None) -> Callable[[Student], object]:
    """Opens a student of ``files`` in CTranslate2 by exporting it to a temporary directory."""
    from aiokd.export import write_ctranslate2

    def open_student(student: Student):
        with tempfile.TemporaryDirectory(prefix="aiokd-ctranslate2-") as directory:
            write_ctranslate2(Path(directory), files, student, "none")
            return _open_ctranslate2(Path(directory), device)

    return open_student


def _load_export(directory: Path, device: str | None) -> Translator:
    from aiokd.export import read_export_info, sentencepiece_pieces

    info = read_export_info(directory)
    cfg = ModelConfig(**info["model"])
    spm_path = directory / "spm.model"
    if not spm_path.is_file():
        raise UserError(f"{spm_path}: missing SentencePiece model")
    spm_bytes = spm_path.read_bytes()
    processor = _sentencepiece(spm_bytes, spm_path)
    translator = _open_ctranslate2(directory, device)
    engine = _CTranslate2Engine(lambda student: translator, sentencepiece_pieces(spm_bytes)[0],
                                cfg)
    return Translator(engine, processor, cfg, [(cfg.enc_layers, cfg.dec_layers)], directory)


def load(path: str | os.PathLike, device: str | None = None,
         engine: str | None = None) -> Translator:
    """Load a model to translate with.

    Args:
        path: a run directory, a checkpoint ``.safetensors`` file, an extracted student, or a
            CTranslate2 export (``aiokd export``).
        device: ``cpu``, ``cuda`` or ``cuda:N``; default: CUDA when available.
        engine: ``torch`` or ``ctranslate2``; default: ``ctranslate2`` for an export, else
            ``torch``.

    Raises:
        UserError: the path is not a model, a file is damaged, or ``engine="torch"`` for an
            export.
    """
    from aiokd.export import is_ctranslate2_export, sentencepiece_pieces

    path = Path(path)
    if engine not in (None, "torch", "ctranslate2"):
        raise UserError(f"--engine {engine}: expected torch or ctranslate2")
    if is_ctranslate2_export(path):
        if engine == "torch":
            raise UserError(f"{path} is a CTranslate2 export; translate with --engine ctranslate2")
        return _load_export(path, device)
    files = load_model_files(path)
    processor = _sentencepiece(files.spm_bytes, files.source)
    cfg = files.model.cfg
    if engine == "ctranslate2":
        pieces = sentencepiece_pieces(files.spm_bytes)[0]
        chosen = _CTranslate2Engine(_exporting(files, device), pieces, cfg)
    else:
        chosen = _TorchEngine(files.model.to(_torch_device(device)))
    return Translator(chosen, processor, cfg, files.students, files.source)
