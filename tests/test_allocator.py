"""Freed memory kept for reuse (``train.keep_freed_memory``): a training step's large tensors stop
faulting in fresh pages, and training says when it keeps freed memory."""

import platform
import subprocess
import sys

import pytest

from tests.conftest import TINY_MODEL, run_aiokd

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")

STEPS = """
import resource, sys, torch
import torch.nn.functional as F
from aiokd.train.allocator import freed_memory_is_kept, keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory() and freed_memory_is_kept()
torch.manual_seed(0)
hidden = torch.randn(2048, 128, requires_grad=True)
weight = torch.randn(8000, 128, requires_grad=True)  # logits of 64 MB: above any mmap threshold
gold = torch.randint(0, 8000, (2048,))
faults = []
for _ in range(16):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    F.cross_entropy(hidden @ weight.T, gold).backward()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[-10:]))
"""


def page_faults_of_late_steps(side: str) -> int:
    result = subprocess.run([sys.executable, "-c", STEPS, side], capture_output=True, text=True,
                            check=True)
    return int(result.stdout)


@glibc_only
def test_kept_freed_memory_serves_the_next_steps_without_new_pages():
    returned = page_faults_of_late_steps("return")
    kept = page_faults_of_late_steps("keep")
    # Returned, each step maps its logits and their gradient afresh: 16,000 pages of 4 KiB per
    # 64 MB (32 where transparent huge pages back every mapping).  Kept, the heap's free blocks
    # serve most requests once it has grown, a fresh block now and then (glibc pads an aligned
    # request, so a freed block of exactly its size does not serve the next one alone).
    assert returned >= 10 * 2 * 32
    assert kept < returned / 4


@glibc_only
@pytest.mark.slow
def test_training_says_whether_it_keeps_freed_memory(tmp_path, tiny_data_dir):
    said = "memory: freed memory kept"
    for keep, expected in (("true", True), ("false", False)):
        result = run_aiokd("train", "--data", tiny_data_dir, "--out", tmp_path / keep,
                           "--preset", "tiny", *TINY_MODEL, "--max-updates", "1",
                           "train.stages=1", f"train.keep_freed_memory={keep}")
        assert result.returncode == 0, result.stderr[-2000:]
        assert (said in result.stdout + result.stderr) == expected
