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


def toy4d_clips(
    index: str,
    split: str | None,
    work: Path,
    frame_step: int = 2,
    batch_size: int = 4,
    motion="dynamic",
    fixed: bool = False,
):
    """An endless stream of toy4d batches (9 frames at 64², every track) from ``split`` (``None``: train), clips
    ``motion`` (``dynamic``, ``static`` or ``any``), frame step ``frame_step`` to 4; ``work`` holds its data YAML.
    ``fixed``: each clip of the split once, in order, at its first frames with step ``frame_step`` and centre-cropped
    (how ``make eval`` reads its scenes), then the stream ends."""
    import yaml

    from d4s.data import ClipDataModule

    source = {"name": "toy4d", "index": index} | ({"split": split} if split else {})
    config = {
        "train": {"sources": [source], "motion": motion, "resample": True, "samples_per_epoch": 10**6}
        if not fixed
        else {"sources": [source], "motion": motion, "shuffle": False, "random_clips": False},
        "clip": {
            "num_frames": 9,
            "frame_step": frame_step,
            "max_frame_step": max(frame_step, 4),
            "height": 64,
            "width": 64,
            "num_tracks": 256,
        },
        "batch_size": batch_size,
        "num_workers": 1,
        "seed": 0,
    }
    path = work / f"data-{split or 'train'}-{motion}-{'fixed' if fixed else 'random'}.yaml"
    path.write_text(yaml.safe_dump(config))
    module = ClipDataModule.from_yaml(path)
    module.setup("fit")
    return iter(module.train_dataloader())


def model_yaml(path: Path, overrides: list[str], work: Path) -> Path:
    """A copy of the model YAML ``path`` in ``work`` with ``KEY=VALUE`` overrides (dotted keys, YAML values), e.g.
    ``ldrm.deformation_time=target``; ``path`` itself when there are none."""
    import yaml

    if not overrides:
        return path
    values = yaml.safe_load(path.read_text())
    for override in overrides:
        key, _, value = override.partition("=")
        *parents, leaf = key.split(".")
        section = values
        for name in parents:
            section = section.setdefault(name, {})
        section[leaf] = yaml.safe_load(value)
    copy = work / "model.yaml"
    copy.write_text(yaml.safe_dump(values))
    return copy


def write_rows(args: argparse.Namespace, rows: list[dict]) -> None:
    """The probes' JSON: ``{"machine", "args", "rows"}`` to ``args.out`` (paths written as strings), then say where."""
    import json

    def plain(value):
        return (
            [plain(v) for v in value] if isinstance(value, list) else str(value) if isinstance(value, Path) else value
        )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {key: plain(value) for key, value in vars(args).items()}
    args.out.write_text(json.dumps({"machine": machine_info(), "args": settings, "rows": rows}, indent=1))
    print(f"wrote {args.out}")
