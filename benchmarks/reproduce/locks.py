"""Locks that let drivers of one work directory run side by side on one machine."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def _flocked(path: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive ``flock`` of ``path`` (created if missing) for the ``with`` block;
    ``on_wait`` is called first when another process holds it."""
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait:
                on_wait()
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _step_lock(root: Path, key: str) -> Path:
    return root / "locks" / f"{key.replace('/', '_')}.lock"


def locked(root: Path) -> contextlib.AbstractContextManager[None]:
    """Exclusive use of the work directory's shared files (timings, results) while drivers of
    different groups run side by side on one machine."""
    return _flocked(root / ".lock")


def step_locked(root: Path, key: str, where: str) -> contextlib.AbstractContextManager[None]:
    """Exclusive use of one step: where two drivers side by side both need a run (the
    from-scratch 6-6, say), the second waits for the first to finish it instead of training the
    same run directory at the same time, and then finds it done."""
    (root / "locks").mkdir(exist_ok=True)
    return _flocked(_step_lock(root, key),
                    lambda: print(f"{where}: another driver runs it; waiting", flush=True))


def held(root: Path, key: str) -> bool:
    """Whether a driver holds the lock of step ``key`` now (it runs that step)."""
    path = _step_lock(root, key)
    if not path.is_file():
        return False
    with open(path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock, fcntl.LOCK_UN)
        return False
