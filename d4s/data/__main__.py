"""Look at what the data pipeline feeds the model: ``python -m d4s.data --config configs/tiny/data.yaml``.

Prints each split's sources and epoch length, streams a few batches (clips per second, skipped samples, which
supervision each clip carries), and writes ``<out>/<split>_batch.png``: per clip, frames on top, depth below,
tracks drawn where they are visible.
"""

from __future__ import annotations

import argparse
import sys
import time
from argparse import ArgumentError
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from d4s.data.batch import Batch
from d4s.data.datamodule import ClipDataModule
from d4s.geometry.cameras import project_points
from d4s.utils.fileio import atomic_output
from d4s.utils.video import colorize_depth

MAX_FRAMES_SHOWN = 9


def preview_image(batch: Batch) -> Image.Image:
    """Rows of frames (first up to 9 per clip) with visible tracks as dots, each followed by its depth row."""
    B, T, _, H, W = batch.video.shape
    shown = list(range(0, T, max(1, T // MAX_FRAMES_SHOWN)))[:MAX_FRAMES_SHOWN]
    canvas = Image.new("RGB", (W * len(shown), 2 * H * B))
    draw = ImageDraw.Draw(canvas)
    for b in range(B):
        depth = colorize_depth(batch.depth[b]) if batch.has_depth[b] else torch.zeros(T, H, W, 3)
        uv, _ = project_points(batch.track_xyz[b].transpose(0, 1), batch.c2w[b], batch.K[b])  # [T, N, 2]
        for column, t in enumerate(shown):
            frame = batch.video[b, t].permute(1, 2, 0).numpy()
            canvas.paste(Image.fromarray(frame), (column * W, 2 * b * H))
            canvas.paste(Image.fromarray((depth[t].numpy() * 255).astype(np.uint8)), (column * W, (2 * b + 1) * H))
            visible = batch.track_visible[b, :, t] & batch.track_valid[b]
            for u, v in uv[t][visible].tolist():
                x, y = column * W + u, 2 * b * H + v
                draw.ellipse((x - 1, y - 1, x + 1, y + 1), fill=(255, 0, 255))
    return canvas


def describe_batch(batch: Batch) -> str:
    B, T, _, H, W = batch.video.shape
    flags = {
        "depth": batch.has_depth,
        "masks": batch.has_dynamic_mask,
        "tracks": batch.has_tracks,
        "dynamic": batch.is_dynamic,
        "padding": batch.is_padding,
    }
    summary = ", ".join(f"{name} {int(value.sum())}/{B}" for name, value in flags.items())
    return f"{B} clips of {T} x {H}x{W}, {batch.track_xyz.shape[1]} tracks; {summary}; keys {batch.keys}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="ClipDataModule YAML (configs/data/*.yaml, configs/tiny/)")
    parser.add_argument("--split", default="train", choices=("train", "val", "test"))
    parser.add_argument("--batches", type=int, default=4, help="batches to stream (default 4)")
    parser.add_argument("--num-workers", type=int, help="override the config's DataLoader workers")
    parser.add_argument("--out", type=Path, default=Path("outputs/data_preview"), help="where the preview PNG goes")
    args = parser.parse_args(argv)
    overrides = {} if args.num_workers is None else {"num_workers": args.num_workers}
    try:
        data = ClipDataModule.from_yaml(args.config, **overrides)
        print(data.describe())
        loader = data.build_loader(args.split)
    except (OSError, ValueError, ArgumentError) as error:  # missing files, bad values, unknown keys
        print(f"error: {error}", file=sys.stderr)
        return 2
    start, clips, batch = time.perf_counter(), 0, None
    for number, batch in enumerate(loader):
        data.on_before_batch_transfer(batch, 0)
        clips += len(batch)
        print(f"batch {number}: {describe_batch(batch)}")
        if number + 1 >= args.batches:
            break
    if batch is None:
        print(f"error: the {args.split} split yielded no batch", file=sys.stderr)
        return 1
    elapsed = time.perf_counter() - start
    print(f"{clips} clips in {elapsed:.1f} s ({clips / elapsed:.2f} clips/s, start-up included)")
    print(f"skipped: {dict(data.skipped) or 'none'}")
    path = args.out / f"{args.split}_batch.png"
    with atomic_output(path) as tmp:
        preview_image(batch).save(tmp, format="PNG")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
