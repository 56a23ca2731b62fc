"""Peak memory of a process tree (this process and every process it starts), sampled from ``/proc``.

``resource.getrusage`` reports the largest *single* process; a training run is a main process plus DataLoader
workers, so what a machine must hold is their sum. Summing resident sets would count the pages forked workers share
with their parent once per process, so each process contributes its proportional set size (PSS: shared pages split
among the processes that map them; ``/proc/<pid>/smaps_rollup``, Linux 4.14+), or its resident set where PSS is not
available. :class:`TreeMemoryMonitor` samples the sum in a background thread. Linux only: elsewhere it reports
``None``.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Self

_PROC = Path("/proc")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _parents() -> dict[int, int]:
    """``{pid: parent pid}`` of every process visible in ``/proc``."""
    parents = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
        parents[int(entry.name)] = int(fields[1])
    return parents


def _memory_bytes(pid: int) -> int:
    """The process's proportional set size, else its resident set size, in bytes (0 once it has exited)."""
    try:
        for line in (_PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, IndexError, ValueError):
        pass
    try:
        return int((_PROC / str(pid) / "statm").read_text().split()[1]) * _PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return 0


def tree_memory_bytes(root: int | None = None) -> int:
    """Memory of process ``root`` (default: this one) plus all its descendants, now: the sum of their proportional
    set sizes (module docstring)."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += _memory_bytes(pid)
        stack.extend(children.get(pid, []))
    return total


class TreeMemoryMonitor:
    """Context manager: the peak of :func:`tree_memory_bytes` while it is open, sampled every ``interval`` seconds.

    ``peak_gib`` is ``None`` where ``/proc`` is not available. Short spikes between samples can be missed. A sample
    is not free: the kernel walks each process's page tables for its PSS (17 ms for a process with 2 GiB resident on
    our 2-core machine), so every 0.25 s a training run's tree of a few GiB takes ~15% of a core; the default of 1 s
    takes a few percent.
    """

    def __init__(self, interval: float = 1.0, root: int | None = None):
        self.interval, self.root = interval, root
        self.available = (_PROC / "self" / "statm").exists()
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def peak_gib(self) -> float | None:
        return self._peak / 2**30 if self.available else None

    def sample(self) -> None:
        self._peak = max(self._peak, tree_memory_bytes(self.root))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> Self:
        if self.available:
            self.sample()
            self._thread = threading.Thread(target=self._run, name="tree-memory", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.sample()
