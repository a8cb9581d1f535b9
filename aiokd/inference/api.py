"""Translating text with any student of a model, in PyTorch or CTranslate2.

    model = aiokd.load("runs/multi30k")     # run directory, checkpoint, extracted student,
    model.students                          # or CTranslate2 export; ["2-2", "3-2", ..., "6-6"]
    model.translate(["Ein Hund rennt."], student="6-2", beam=5)

Lines are stripped, encoded with the model's tokenizer (:mod:`aiokd.data.tokenizer`: a joint
SentencePiece model, or a Marian model's two) and translated in batches of similar length (at
most ``max_tokens`` padded source tokens each); outputs come back decoded and in input order, one
per line; an empty line gives an empty output.  A source longer than the model's
``max_positions - 1`` tokens (one position is the EOS) is truncated to that length.

The PyTorch engine decodes with :func:`aiokd.inference.generate.generate`; the CTranslate2 engine
with
``ctranslate2.Translator.translate_batch`` under the same search rules: pad and BOS suppressed,
``min_decoding_length=1``, ``max_decoding_length`` per source length (sources are grouped by it),
and CTranslate2's length penalty, which divides by the length with the EOS as ours does.  Given a
model that is not a CTranslate2 export, the CTranslate2 engine exports each student it is asked
for, in float32, to a temporary directory that is removed once the model is loaded.

``dtype`` sets the precision of the weights and activations: ``float32``, ``bfloat16`` or
``float16``, or ``auto`` (the default).  The PyTorch engine casts the model to it (the beam scores
stay float32); ``auto`` there is what translates fastest on this machine, measured on the
teacher (:mod:`aiokd.inference.precision`: bfloat16 only where the hardware multiplies bf16
natively and it was clearly faster than float32; a few outputs then differ,
``benchmarks/decoding_precision.py`` measures both).  The CTranslate2 engine passes ``dtype`` as
``compute_type`` (``auto``: the type the export was saved in) and accepts only those this
CTranslate2 build supports on the device.

``threads``: the CPU threads of CTranslate2 (``intra_threads``); by default PyTorch's thread
count or 1, whichever translated faster on this machine (on small virtual machines one thread
can be many times faster).  :attr:`Translator.settings` says what was chosen and why.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from aiokd.config import ModelConfig
from aiokd.data.batching import token_batches
from aiokd.data.tokenizer import SENTENCEPIECE, TokenizerFiles
from aiokd.errors import UserError
from aiokd.inference.generate import SearchOptions, generate
from aiokd.inference.precision import ctranslate2_threads, decoding_precision
from aiokd.model.checkpoint import ModelFiles, load_model_files
from aiokd.model.transformer import Transformer
from aiokd.students import Student, choose_student, student_name

Progress = Callable[[int], object]
"""Called with the number of lines just finished."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The precisions a model can translate in, by name."""


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


def set_threads(threads: int | None) -> None:
    """``--threads``: the CPU threads of PyTorch and of CTranslate2 (``intra_threads``) for the
    models loaded after it; ``None`` leaves PyTorch's default."""
    if threads is None:
        return
    if threads < 1:
        raise UserError(f"--threads {threads}: must be at least 1")
    torch.set_num_threads(threads)


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


def _ctranslate2_options(device: str | None, dtype: str | None,
                         threads: int | None) -> dict[str, object]:
    """The ``ctranslate2.Translator`` arguments for ``--device``, ``--dtype`` and ``--threads``,
    checked; without ``dtype`` (or with ``auto``) the export's own type
    (``compute_type="default"``), without ``threads`` PyTorch's thread count."""
    import ctranslate2

    kind, index = _ctranslate2_device(device)
    supported = ctranslate2.get_supported_compute_types(kind)
    dtype = None if dtype == "auto" else dtype
    if dtype is not None and dtype not in supported:
        raise UserError(f"--dtype {dtype}: CTranslate2 cannot compute in it on {kind} here "
                        f"(it can in: {', '.join(sorted(supported))})")
    return {"device": kind, "device_index": index, "compute_type": dtype or "default",
            "intra_threads": threads or torch.get_num_threads()}


def _open_ctranslate2(directory: Path, options: dict[str, object]):
    import ctranslate2

    try:
        return ctranslate2.Translator(str(directory), **options)
    except (RuntimeError, ValueError) as error:
        raise UserError(f"{directory}: CTranslate2 cannot load it ({error})") from None


def _fastest_threads(directory: Path, options: dict[str, object], threads: int | None,
                     pieces: list[str], question: str) -> dict[str, str]:
    """Set ``options["intra_threads"]``: ``threads`` if given, else the faster of PyTorch's
    thread count and 1 on a CPU (measured once per machine and model); returns the setting and
    why."""
    if threads is not None or options["device"] != "cpu":
        return {"ctranslate2_threads": str(options["intra_threads"]),
                "ctranslate2_threads_reason": "as given"}
    torch_threads = torch.get_num_threads()
    choice = ctranslate2_threads(
        lambda n: _open_ctranslate2(directory, {**options, "intra_threads": n}), pieces,
        f"{question}|{options['compute_type']}", int(options["intra_threads"]))
    torch.set_num_threads(torch_threads)  # CTranslate2 sets OpenMP's count, PyTorch's too
    options["intra_threads"] = int(choice.value)
    return {"ctranslate2_threads": choice.value, "ctranslate2_threads_reason": choice.reason}


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
                 students: list[Student], source: Path, settings: dict[str, str]):
        self._engine = engine
        self.settings = settings
        """The precision (``dtype``) and, for CTranslate2, the thread count
        (``ctranslate2_threads``) it translates with, each with its ``..._reason``; with
        CTranslate2 exporting on the fly, the threads appear once a student was opened."""
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
        sources = self._processor.encode_source(texts)
        longest = self.cfg.max_positions - 1
        too_long = sum(len(source) > longest for source in sources)
        if too_long:
            print(f"aiokd: warning: {too_long} line(s) longer than the {longest} tokens this "
                  f"model reads, truncated to {longest} tokens", file=sys.stderr)
        return [source[:longest] for source in sources]


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


def _question(cfg: ModelConfig, student: Student) -> str:
    """What a thread-count probe of ``student`` of a model of ``cfg`` is cached under."""
    return (f"V={cfg.vocab_size}|C={cfg.d_model}|F={cfg.ffn_dim}|H={cfg.heads}|"
            f"student={student_name(student)}")


def _exporting(files: ModelFiles, options: dict[str, object], threads: int | None,
               settings: dict[str, str]) -> Callable[[Student], object]:
    """Opens a student of ``files`` in CTranslate2 by exporting it to a temporary directory;
    the thread count is chosen on the first student opened and recorded in ``settings``."""
    from aiokd.formats.export import write_ctranslate2

    pieces = files.tokenizer.load(files.source).pieces

    def open_student(student: Student):
        with tempfile.TemporaryDirectory(prefix="aiokd-ctranslate2-") as directory:
            write_ctranslate2(Path(directory), files, student, "none")
            if "ctranslate2_threads" not in settings:
                settings.update(_fastest_threads(Path(directory), options, threads, pieces,
                                                 _question(files.model.cfg, student)))
            return _open_ctranslate2(Path(directory), options)

    return open_student


def _load_export(directory: Path, options: dict[str, object], threads: int | None) -> Translator:
    from aiokd.formats.export import read_export_info

    info = read_export_info(directory)
    cfg = ModelConfig(**info["model"])
    tokenizer = TokenizerFiles.read(directory, info.get("tokenizer", SENTENCEPIECE))
    processor = tokenizer.load(directory)
    student = (cfg.enc_layers, cfg.dec_layers)
    settings = {"dtype": str(options["compute_type"]), "dtype_reason": "the export's own"
                if options["compute_type"] == "default" else "as given",
                **_fastest_threads(directory, options, threads, processor.pieces,
                                   _question(cfg, student))}
    translator = _open_ctranslate2(directory, options)
    engine = _CTranslate2Engine(lambda student: translator, processor.pieces, cfg)
    return Translator(engine, processor, cfg, [student], directory, settings)


def load(path: str | os.PathLike, device: str | None = None, engine: str | None = None,
         dtype: str | None = None, threads: int | None = None) -> Translator:
    """Load a model to translate with.

    Args:
        path: a run directory, a checkpoint ``.safetensors`` file, an extracted student, or a
            CTranslate2 export (``aiokd export``).
        device: ``cpu``, ``cuda`` or ``cuda:N``; default: CUDA when available.
        engine: ``torch`` or ``ctranslate2``; default: ``ctranslate2`` for an export, else
            ``torch``.
        dtype: ``auto`` (the default), ``float32``, ``bfloat16`` or ``float16`` (see the module
            docstring).
        threads: CTranslate2's CPU threads (default: measured, see the module docstring).

    Raises:
        UserError: the path is not a model, a file is damaged, ``engine="torch"`` for an
            export, or a ``dtype`` the engine cannot compute in.
    """
    from aiokd.formats.export import is_ctranslate2_export

    path = Path(path)
    if engine not in (None, "torch", "ctranslate2"):
        raise UserError(f"--engine {engine}: expected torch or ctranslate2")
    if dtype not in (None, "auto", *DTYPES):
        raise UserError(f"--dtype {dtype}: expected auto or one of {', '.join(DTYPES)}")
    if is_ctranslate2_export(path):
        if engine == "torch":
            raise UserError(f"{path} is a CTranslate2 export; translate with --engine ctranslate2")
        return _load_export(path, _ctranslate2_options(device, dtype, threads), threads)
    files = load_model_files(path)
    processor = files.tokenizer.load(files.source)
    cfg = files.model.cfg
    if engine == "ctranslate2":
        options = _ctranslate2_options(device, dtype, threads)
        settings = {"dtype": str(options["compute_type"]), "dtype_reason": "as given"
                    if dtype not in (None, "auto") else "float32, as exported on the fly"}
        chosen = _CTranslate2Engine(_exporting(files, options, threads, settings),
                                    processor.pieces, cfg)
    else:
        model = files.model.to(_torch_device(device))
        if dtype in (None, "auto"):
            choice = decoding_precision(model, model.teacher, next(model.parameters()).device)
            dtype, reason = choice.value, choice.reason
        else:
            reason = "as given"
        settings = {"dtype": dtype, "dtype_reason": reason}
        chosen = _TorchEngine(model.to(DTYPES[dtype]))
    return Translator(chosen, processor, cfg, files.students, files.source, settings)
