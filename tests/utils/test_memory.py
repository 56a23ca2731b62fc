"""The process-tree memory monitor against child processes that hold a known amount of memory, shared or not."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from d4s.utils.memory import TreeMemoryMonitor, tree_memory_bytes

pytestmark = pytest.mark.skipif(not TreeMemoryMonitor().available, reason="needs Linux /proc")

HOLD = (
    "import sys, time; block = bytearray({size}); block[::4096] = b'x' * len(block[::4096]); "
    "print('ready', flush=True); sys.stdin.readline()"
)


def test_tree_memory_counts_a_childs_resident_memory():
    size = 300 * 2**20
    before = tree_memory_bytes()
    with TreeMemoryMonitor(interval=0.05) as monitor:
        child = subprocess.Popen(
            [sys.executable, "-c", HOLD.format(size=size)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert child.stdout.readline().strip() == "ready"
        during = tree_memory_bytes()
        deadline = time.monotonic() + 10  # the sampler thread gets the child's lifetime to see it, not one interval
        while monitor.peak_gib * 2**30 < before + 0.9 * size and time.monotonic() < deadline:
            time.sleep(0.05)
        child.communicate("\n")
    assert during - before > 0.9 * size  # the child's touched pages are counted with this process's
    assert monitor.peak_gib * 2**30 > before + 0.9 * size  # and the background sampler saw them too
    assert tree_memory_bytes() < during - 0.9 * size  # and no longer once it has exited


def test_pages_a_forked_child_shares_with_its_parent_count_once():
    size = 200 * 2**20
    block = bytearray(size)
    block[::4096] = b"x" * len(block[::4096])  # resident in this process
    before = tree_memory_bytes()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child only reads the shared block, then waits to be killed
        os.close(read)
        os.write(write, bytes([block[0]]))
        time.sleep(30)
        os._exit(0)
    os.close(write)
    os.read(read, 1)
    during = tree_memory_bytes()
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    assert during - before < 0.5 * size  # a resident-set sum would count the block twice
