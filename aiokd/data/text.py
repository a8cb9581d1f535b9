"""Reading raw text files (plain or gzip) strictly, with errors that name the file and the line."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

from aiokd.errors import UserError

_GZIP_MAGIC = b"\x1f\x8b"
_BYTE_ORDER_MARK = "\ufeff"


def _line_number(data: bytes, position: int) -> int:
    """The 1-based line holding byte ``position`` of ``data``."""
    return data.count(b"\n", 0, position) + 1


def _read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it starts with the gzip magic number."""
    if not path.exists():
        raise UserError(f"{path}: no such file")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a text file")
    try:
        data = path.read_bytes()
        if data.startswith(_GZIP_MAGIC):
            data = gzip.decompress(data)
    except PermissionError as error:
        raise UserError(f"{path}: permission denied") from error
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise UserError(f"{path}: damaged gzip file ({error})") from error
    return data


def _decode(path: Path, data: bytes) -> str:
    """Strict UTF-8 decoding; a NUL byte or an invalid byte is reported with its line."""
    nul = data.find(b"\0")
    if nul >= 0:
        line = _line_number(data, nul)
        raise UserError(f"{path}:{line}: NUL byte in text; is this a binary file?")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = _line_number(data, error.start)
        byte = data[error.start]
        raise UserError(f"{path}:{line}: not valid UTF-8 (byte 0x{byte:02x})") from error


def read_lines(path: str | os.PathLike) -> list[str]:
    """The lines of a UTF-8 text file, plain or gzip-compressed, without line endings.

    Lines end at ``\\n`` only (a ``\\r`` before it is dropped too); other Unicode line separators
    stay inside their line, so line numbers agree with ``wc -l`` and with the other side of a
    parallel corpus.  A leading byte-order mark is removed.

    Raises:
        UserError: the file is missing, a directory, empty, damaged gzip, binary (NUL byte), or
            not valid UTF-8; the message names the file and, where it applies, the line.
    """
    path = Path(path)
    data = _read_bytes(path)
    if not data:
        raise UserError(f"{path}: file is empty")
    text = _decode(path, data).removeprefix(_BYTE_ORDER_MARK)
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def find_side(prefix: str | os.PathLike, lang: str) -> Path:
    """The file ``PREFIX.lang``, or else ``PREFIX.lang.gz``.

    Raises:
        UserError: neither exists.
    """
    plain = Path(f"{os.fspath(prefix)}.{lang}")
    compressed = Path(f"{plain}.gz")
    for candidate in (plain, compressed):
        if candidate.exists():
            return candidate
    raise UserError(f"{plain}: no such file (nor {compressed.name})")


def read_parallel(
    prefix: str | os.PathLike, src_lang: str, tgt_lang: str
) -> tuple[list[str], list[str]]:
    """Both sides of the parallel corpus ``PREFIX.src_lang`` / ``PREFIX.tgt_lang``.

    Raises:
        UserError: a side is missing or unreadable, or the two sides differ in line count.
    """
    src_path, tgt_path = find_side(prefix, src_lang), find_side(prefix, tgt_lang)
    src_lines, tgt_lines = read_lines(src_path), read_lines(tgt_path)
    if len(src_lines) != len(tgt_lines):
        raise UserError(
            f"{src_path} has {len(src_lines)} lines but {tgt_path} has {len(tgt_lines)}; "
            "the two sides of a parallel corpus must have the same number of lines"
        )
    return src_lines, tgt_lines


def encode_lines(lines: list[str]) -> bytes:
    """The UTF-8 content of a text file holding ``lines``, each ended by ``\\n`` (what
    :func:`read_lines` reads back)."""
    return "".join(line + "\n" for line in lines).encode("utf-8")
