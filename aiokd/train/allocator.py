"""Freed memory kept in the process for its next tensors, on a CPU with glibc.

glibc's ``malloc`` serves a block above its mmap threshold (128 KiB, rising to at most 32 MiB as
blocks are freed) with a mapping of its own and unmaps it when the block is freed.  A training
step's largest tensors are above it: the ``(N, V)`` logits of the teacher and of every sampled
student, 131 MB each at 4,096 tokens and 8,000 words.  So every step maps them afresh, and the
kernel zeroes and maps each 4 KiB page on first touch: about 92,000 page faults per AIO-KD step
of the ``narrow`` preset, and the float32 product ``(4096, 128) x (128, 8000)`` into a new tensor
at 49 GFLOP/s against 85 into reused memory (``benchmarks/results/freed-memory-cpu.json``).

With ``M_MMAP_MAX = 0`` every block comes from the heap, and with ``M_TRIM_THRESHOLD`` at its
largest the heap is not given back: once it has grown to a step's peak, the next steps' blocks
come from freed ones, whose pages are already mapped (not every time: an aligned request is
padded, so a block freed alone may be too small for the next of its size, and a step maps a
fresh one now and then).  The price is that the process keeps its peak memory until it ends.
``benchmarks/freed_memory.py`` measures training steps both ways.
"""

from __future__ import annotations

import ctypes
import platform

M_TRIM_THRESHOLD = -1
"""``mallopt`` parameter: free memory at the top of the heap above this is returned."""
M_MMAP_MAX = -4
"""``mallopt`` parameter: the most blocks served by mappings of their own (0: none)."""
LARGEST_TRIM_THRESHOLD = 2**31 - 1
"""``mallopt`` takes an ``int``."""


_kept = False


def keep_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse (see the module docstring) in this
    process from now on; True if it did, False where the C library is not glibc."""
    global _kept
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)  # the symbols already loaded, glibc's among them
    _kept = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, LARGEST_TRIM_THRESHOLD))
    return _kept


def freed_memory_is_kept() -> bool:
    """Whether :func:`keep_freed_memory` took effect in this process."""
    return _kept
