"""What the benchmark scripts share: the machine description stored with every result, and the common options."""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch


def machine_info() -> dict:
    """CPU, torch threads, torch version and GPU name (``None`` without CUDA) of this run."""
    return {
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }


def bench_parser(doc: str, name: str, repeats: int, quick_help: str) -> argparse.ArgumentParser:
    """A parser with ``--out bench/results/<name>.json``, ``--repeats`` and ``--quick`` (a smoke run)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(f"bench/results/{name}.json"))
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    return parser
