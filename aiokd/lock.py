"""One process at a time on an output: an exclusive ``flock`` on a lock file.

The lock is held for as long as the process works on the output.  The kernel drops it when the
process ends, however it ends, so a process killed with SIGKILL never leaves a lock that blocks the
next run; the file it leaves behind is simply taken over.  The file holds the process ID and host
of its holder, for the message of the process that is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from aiokd.errors import UserError


def _holder(fd: int) -> str:
    """``process PID on HOST`` as the holder wrote it, or ``another process`` if unreadable."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        pid, host = os.read(fd, 4096).decode("utf-8").split()
    except (OSError, UnicodeDecodeError, ValueError):
        return "another process"
    return f"process {pid} on {host}"


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (its holder may have removed it)."""
    try:
        on_disk = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _acquire(path: Path, what: str) -> int:
    """An open descriptor of ``path`` holding its exclusive lock, with our PID and host in it.

    Raises:
        UserError: another process holds the lock; the message names it.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise UserError(f"{what} is in use by {holder}; wait for it to end or choose "
                            "another --out") from None
        if _same_file(fd, path):
            break
        os.close(fd)  # locked a file its holder removed on release: lock the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    return fd


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold the lock file ``path`` for the block; ``what`` names the output it guards in the
    refusal.  The file is removed on release, unless another process has replaced it.

    Raises:
        UserError: another process holds the lock.
    """
    path = Path(path)
    fd = _acquire(path, what)
    try:
        yield
    finally:
        if _same_file(fd, path):
            path.unlink()
        os.close(fd)
