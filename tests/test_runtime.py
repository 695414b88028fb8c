"""Run-time choices: the allocator setting of ``l2r predict``, checked against what the kernel counts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# A child process runs a small loop of three 64 MiB tensors twenty times, then prints the minor page
# faults per pass of ten more: with glibc's defaults each tensor is a fresh mmap (16 thousand faults of
# 4 KiB pages each, about 49 thousand a pass); with freed memory kept, the heap's pages are reused once
# it has grown to the loop's size.
CHILD = """
import resource, torch
from l2r_submit.core import runtime
print(runtime.keep_freed_memory())
torch.set_num_threads(1)
def one_pass():
    a = torch.ones(16 << 20)
    b = a * 2
    return (a + b).sum().item()
for _ in range(20):
    one_pass()
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    one_pass()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) // 10)
"""


def run_child(**env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-c", CHILD], env={**clean, **env}, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    return out[0], int(out[1])


def huge_pages_always() -> bool:
    """Transparent huge pages on every mapping: 64 MiB then faults in 2 MiB pages, too few to count."""
    try:
        return "[always]" in open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux") or huge_pages_always(),
                    reason="glibc's malloc is Linux's; with THP always the faults are too few to compare")
def test_kept_memory_stops_large_tensors_faulting_on_every_allocation():
    what, kept = run_child()
    if not what.startswith("glibc"):
        pytest.skip(f"not glibc: {what}")
    said, default = run_child(L2R_KEEP_FREED_MEMORY="0")
    assert said == "system default (L2R_KEEP_FREED_MEMORY=0)"
    assert default > 3 * 8000  # three times 64 MiB of fresh pages: about 49 thousand faults
    assert kept < default / 20


def test_a_user_s_own_malloc_tunable_wins():
    what, _ = run_child(MALLOC_ARENA_MAX="2")
    assert what.startswith("system default (MALLOC_")
