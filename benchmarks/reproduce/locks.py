"""Locks that let drivers of one work directory run side by side on one machine."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Exclusive use of the work directory's shared files (timings, results) while drivers of
    different groups run side by side on one machine."""
    with open(root / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def step_locked(root: Path, key: str, where: str) -> Iterator[None]:
    """Exclusive use of one step: where two drivers side by side both need a run (the
    from-scratch 6-6, say), the second waits for the first to finish it instead of training the
    same run directory at the same time, and then finds it done."""
    locks = root / "locks"
    locks.mkdir(exist_ok=True)
    with open(locks / f"{key.replace('/', '_')}.lock", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"{where}: another driver runs it; waiting", flush=True)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
