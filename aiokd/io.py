"""Crash-safe writing: a file or a whole directory appears complete, or not at all.

Every writer builds its output under a temporary name beside the target and renames it into place
with :func:`os.replace` only once everything is written and flushed to disk.  An error, a
``KeyboardInterrupt`` or a full disk therefore never leaves a half-written file or directory under
the name the user asked for.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiokd.errors import UserError


def _temporary_sibling(path: Path, tag: str) -> Path:
    """A hidden name in the same directory as ``path`` (so a rename never crosses devices)."""
    return path.parent / f".{path.name}.{tag}-{os.getpid()}"


def make_directories(directory: Path) -> None:
    """``mkdir -p directory``; a file in the way is an :class:`OSError` ``ENOTDIR`` naming it."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR),
                                 str(directory)) from None


def _name_target(error: OSError, temporary: Path, target: Path) -> None:
    """Make ``error`` name ``target`` where it names its temporary (or no file at all)."""
    name = error.filename
    if name is None or Path(name) == temporary:
        error.filename = str(target)
    elif temporary in Path(name).parents:
        error.filename = str(target / Path(name).relative_to(temporary))


def _fsync_directory(path: Path) -> None:
    """Flush a directory entry (the record of a rename) to disk where the platform allows it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: readers see the old file or the new one, never a mix.

    Missing parent directories are created.  An :class:`OSError` names ``path``, not the
    temporary file.
    """
    path = Path(path)
    make_directories(path.parent)
    temporary = _temporary_sibling(path, "tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        _name_target(error, temporary, path)
        raise
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def remove_temporaries(directory: str | os.PathLike) -> None:
    """Delete the temporary files that an interrupted :func:`atomic_write_bytes` left in
    ``directory``."""
    for path in Path(directory).glob(".*.tmp-*"):
        if path.is_file():
            path.unlink(missing_ok=True)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented UTF-8 JSON with a final newline, atomically."""
    text = json.dumps(obj, indent=2, ensure_ascii=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


def check_new_directory(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Fail early, before any long work, if :func:`atomic_directory` would refuse ``path``.

    Raises:
        UserError: ``path`` exists and ``overwrite`` is false, or ``path`` is not a directory.
    """
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise UserError(f"{path} exists and is not a directory")
        if not overwrite:
            raise UserError(f"{path} exists; pass --force to overwrite it")


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and move it to ``path`` only if the block succeeds.

    Yields the temporary directory (``.<name>.tmp-<pid>`` beside ``path``) to write into.  On
    success its files are flushed to disk and it is renamed to ``path``, replacing an existing
    directory when ``overwrite`` is true.  On any exception the temporary directory is removed
    and ``path`` is left as it was; an :class:`OSError` about a file below the temporary
    directory names the file below ``path`` instead.

    Raises:
        UserError: as :func:`check_new_directory`.
    """
    path = Path(path)
    check_new_directory(path, overwrite)
    make_directories(path.parent)
    temporary = _temporary_sibling(path, "tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        temporary.mkdir()
        yield temporary
        _sync_tree(temporary)
        _replace_directory(temporary, path)
    except OSError as error:
        shutil.rmtree(temporary, ignore_errors=True)
        _name_target(error, temporary, path)
        raise
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _sync_tree(root: Path) -> None:
    """Flush every regular file below ``root`` and the directories holding them."""
    for directory, _, files in os.walk(root):
        for name in files:
            _fsync_file(Path(directory, name))
        _fsync_directory(Path(directory))


def _replace_directory(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; an existing ``target`` is moved aside first, then deleted.

    POSIX cannot rename a directory over a non-empty one, so the old directory is renamed to a
    hidden sibling; if the final rename fails it is put back.
    """
    if not target.exists():
        os.replace(source, target)
        _fsync_directory(target.parent)
        return
    old = _temporary_sibling(target, "old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    try:
        os.replace(source, target)
    except BaseException:
        os.replace(old, target)
        raise
    _fsync_directory(target.parent)
    shutil.rmtree(old, ignore_errors=True)
