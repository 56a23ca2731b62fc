"""Wall-clock seconds per named stage of a job, and its peak memory (what ``timings.json`` files report)."""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch


class StageTimer:
    """Accumulates seconds per stage: ``with timer("sampling"): ...``; CUDA work is synchronised at both ends.

    Attributes:
        seconds: ``{stage: seconds}`` in the order the stages first ran (a stage run twice adds up).
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.seconds: dict[str, float] = {}

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def peak_memory(device: torch.device | str = "cpu") -> dict[str, float]:
    """Peak memory in GiB: the process's resident set since it started (``peak_rss_gib``) and, on CUDA, the
    largest allocation of the device since the last ``torch.cuda.reset_peak_memory_stats`` (``peak_cuda_gib``)."""
    device = torch.device(device)
    peaks = {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # ru_maxrss: KiB (Linux)
    if device.type == "cuda":
        peaks["peak_cuda_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return peaks
