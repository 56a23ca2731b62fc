"""Annotation throughput on toy4d: frames per second per core for each non-neural stage, and bytes per clip.

Stages: reading (toy4d ray casting stands in for decoding), Algorithm 1 alignment (SLIC superpixels + fit),
optical flow, flow tracks, quality control (flow-residual masks, reprojection filter), encoding a shard record
and writing it to a tar shard. Runs on one core (torch, OpenCV and BLAS threads pinned to 1) so the figures are
per core; a table goes to stdout and JSON to ``bench/results/annotate.json``.

    python bench/annotate.py [--clips 4] [--frames 49] [--size 128]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import cv2
import numpy as np
import torch

from annotation.align import align_to_oracle, mask_labels
from annotation.estimators.flow import DISFlow
from annotation.quality import (
    QualityThresholds,
    assess,
    dynamic_mask_from_flow,
    filter_depth,
    mask_flow_pairs,
)
from annotation.readers import make_reader
from annotation.tracks import flow_tracks
from annotation.writer import ShardWriter
from d4s.data.schema import ClipMeta, ClipRecord, encode_record

RESULTS = Path(__file__).resolve().parent / "results" / "annotate.json"


def timed(seconds: dict[str, float], stage: str, function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - start
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=4, help="toy4d clips to process (default 4)")
    parser.add_argument("--frames", type=int, default=49, help="frames per clip (default 49)")
    parser.add_argument("--size", type=int, default=128, help="frame size in pixels (default 128)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)

    reader = make_reader(
        "toy4d", None, num_scenes=args.clips, num_frames=args.frames, size=args.size, dynamic_fraction=0.5
    )
    flow = DISFlow("medium")
    thresholds = QualityThresholds()
    seconds: dict[str, float] = {}
    sizes, baseline_sizes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        writer = ShardWriter(Path(tmp), "toy4d", 0, max_samples=10**6, max_bytes=2**40, first_number=0)
        for name in reader.scene_names():
            scene = reader.open_scene(name)
            indices = list(range(scene.num_frames))
            frames = timed(seconds, "read", scene.frames, indices)
            depth = timed(seconds, "read", scene.depth, indices)
            K, c2w = scene.K.astype(np.float64), scene.c2w.astype(np.float64)
            relative = 3.0 / depth + 0.2  # a relative disparity with an unknown affine transform

            def align(frames=frames, relative=relative, depth=depth):
                labels = mask_labels(frames, "superpixels", num_segments=256)
                return align_to_oracle(relative, depth, labels, "disparity")

            aligned, results = timed(seconds, "align (Alg. 1)", align)
            forward, backward = timed(seconds, "optical flow", flow.forward_backward, frames)
            pairs = mask_flow_pairs(len(frames), thresholds.flow_gap)
            mask_flows = timed(seconds, "optical flow", flow.pairs, frames, pairs)
            dynamic = timed(seconds, "QC", dynamic_mask_from_flow, pairs, mask_flows, aligned, K, c2w, thresholds)
            filtered, consistency = timed(seconds, "QC", filter_depth, aligned, K, c2w, dynamic, thresholds)
            timed(seconds, "QC", assess, c2w, filtered, consistency, results[0].depth_absrel, thresholds)
            xyz, visible = timed(seconds, "tracks", flow_tracks, forward, backward, filtered, K, c2w, dynamic)
            meta = ClipMeta(
                dataset="toy4d",
                scene=name,
                frame_indices=indices,
                fps=scene.fps,
                height=args.size,
                width=args.size,
                pose_source="gt",
                depth_source="bench",
                metric=True,
            )
            record = ClipRecord(
                key=f"toy4d__{name}__000000",
                frames=frames,
                K=K.astype(np.float32),
                c2w=c2w.astype(np.float32),
                timestamps=scene.timestamps,
                meta=meta,
                depth=filtered,
                dynamic_mask=dynamic,
                track_xyz=xyz,
                track_visible=visible,
            )
            sample = timed(seconds, "encode", encode_record, record)
            sizes.append(sum(len(v) for k, v in sample.items() if not k.startswith("__")))
            png_bytes = sum(len(cv2.imencode(".png", frame)[1]) for frame in frames)
            baseline_sizes.append(png_bytes + filtered.astype(np.float32).nbytes)  # PNG frames + float32 depth .npy
            timed(seconds, "write", writer.write, "train", sample)
        timed(seconds, "write", writer.close)

    frames_total = args.clips * args.frames
    total = sum(seconds.values())
    rows = [(stage, s, frames_total / s) for stage, s in seconds.items()] + [
        ("all stages", total, frames_total / total)
    ]
    print(
        f"toy4d, {args.clips} clips x {args.frames} frames at {args.size} px, one core ({platform.processor() or platform.machine()})"
    )
    print(f"{'stage':<16} {'seconds':>9} {'frames/s/core':>14}")
    for stage, s, fps in rows:
        print(f"{stage:<16} {s:>9.2f} {fps:>14.1f}")
    ratio = np.mean(baseline_sizes) / np.mean(sizes)
    print(
        f"bytes per clip: {np.mean(sizes) / 1e6:.2f} MB ({np.mean(sizes) / args.frames / 1e3:.1f} kB per frame); "
        f"PNG frames + float32 depth would take {ratio:.1f}x more"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "clips": args.clips,
                "frames_per_clip": args.frames,
                "size": args.size,
                "threads": 1,
                "stages": {stage: {"seconds": s, "frames_per_second_per_core": fps} for stage, s, fps in rows},
                "bytes_per_clip": float(np.mean(sizes)),
                "png_plus_float32_depth_bytes_per_clip": float(np.mean(baseline_sizes)),
            },
            indent=1,
        )
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
