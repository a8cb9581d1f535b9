"""``aiokd translate``: UTF-8 lines in (a file or stdin), one translation per line out.

Input is decoded strictly: a byte that is not UTF-8 is reported with its line.  Lines end at
``\\n`` (a ``\\r`` before it is dropped, and so is a leading byte-order mark).  The output goes to
stdout, or to a file that appears only once complete.  A progress bar is drawn on stderr when
stderr is a terminal.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tqdm import tqdm

from aiokd.data.text import encode_lines
from aiokd.errors import UserError
from aiokd.inference.api import load, set_threads
from aiokd.io import atomic_write_bytes


def _read_bytes(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    path = Path(name)
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a text file")
    try:
        return path.read_bytes()
    except PermissionError:
        raise UserError(f"{path}: permission denied") from None


def read_input(name: str) -> list[str]:
    """The lines of file ``name`` (``-``: stdin), without line endings; none for empty input."""
    data = _read_bytes(name)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        where = "stdin" if name == "-" else name
        byte = data[error.start]
        raise UserError(f"{where}:{line}: not valid UTF-8 (byte 0x{byte:02x})") from None
    lines = text.removeprefix("\ufeff").split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def write_output(name: str, lines: list[str]) -> None:
    """One line per translation to file ``name`` (atomically) or, for ``-``, to stdout."""
    data = encode_lines(lines)
    if name == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        atomic_write_bytes(name, data)


def translate_files(model: str | Path, *, input_file: str = "-", output_file: str = "-",
                    student: str | None = None, beam: int = 5, engine: str = "torch",
                    max_tokens: int = 4096, lenpen: float = 1.0, device: str | None = None,
                    dtype: str | None = None, threads: int | None = None) -> None:
    """``aiokd translate``: translate the lines of ``input_file`` (``-``: stdin) with ``student``
    of ``model`` (None: the full model) into ``output_file`` (``-``: stdout).

    ``engine``, ``device``, ``dtype`` and ``threads`` are as :func:`aiokd.inference.api.load`;
    ``threads`` also sets PyTorch's (:func:`aiokd.inference.api.set_threads`).

    Raises:
        UserError: an unreadable model or input, an untrained student, or bad options.
    """
    if output_file != "-" and Path(output_file).is_dir():
        raise UserError(f"-o {output_file}: is a directory")
    set_threads(threads)
    translator = load(model, device=device, engine=engine, dtype=dtype, threads=threads)
    translator.check_student(student)
    lines = read_input(input_file)
    with tqdm(total=len(lines), unit="line", file=sys.stderr,
              disable=not sys.stderr.isatty()) as bar:
        translations = translator.translate(lines, student=student, beam=beam, lenpen=lenpen,
                                            max_tokens=max_tokens, progress=bar.update)
    write_output(output_file, translations)
