"""Data loader benchmark: training clips per second per core, our shards vs one PNG per frame, in one run.

    python bench/dataloader.py [--clips 4] [--repeats 3] [--data DIR] [--out PATH] [--quick]

For each training resolution (256² from 288x512 sources, 512² from 576x1024 sources: 16:9 like RealEstate10K at
reduced size) the script synthesises clips of T = 49 frames (the annotation default clip length) with natural-ish
content: a 1/f colour texture under a sub-pixel camera pan with mild per-frame grain, smooth metric depth with
invalid (zero) holes, per-frame intrinsics, camera-to-world poses and timestamps, and 1024 world-space tracks. The
texture is calibrated on compressibility, which sets decoding cost: PNG keeps about half of a frame's raw bytes, as
for typical photographs, and H.264 CRF 12 about 20 kB per 576x1024 frame. It writes every clip twice:

- **ours**: a webdataset tar shard of :func:`d4s.data.schema.encode_record` samples (H.264 CRF 12 video, float16
  depth, npz cameras and tracks), read by :class:`d4s.data.shards.ClipDataset` through
  :class:`d4s.data.datamodule.ClipLoader`, once with each video backend (decord, PyAV);
- **PNG**: the usual research layout, one directory per clip: ``rgb/00000.png ...`` (8-bit RGB),
  ``depth/00000.png ...`` (16-bit, millimetres, 0 = invalid), ``cameras.json`` (K, c2w and timestamps per frame),
  ``tracks.npy`` (xyz ``[N,T,3]`` float32) and ``visible.npy`` (``[N,T]`` bool), read by a map-style dataset in a
  torch DataLoader that decodes one PNG per frame with OpenCV.

Both loaders build the same :class:`~d4s.data.clips.ClipSample` (fixed clips: first frames, centre crop, cameras
relative to the first frame, up to 1024 tracks visible in the crop) with the same d4s functions, and both are
collated by :func:`d4s.data.batch.collate_clips` (batch size 1). Each runs on one core: the process is pinned to one
CPU and torch and OpenCV use one thread. Every loader first reads all clips once untimed (warm page cache, decoder
start-up), then the loaders take turns for ``--repeats`` timed passes; clips per second is the clip count over the
median pass time. A parity check compares the first clip of each resolution across the loaders. A table goes to
stdout and JSON to ``bench/results/dataloader.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import tarfile
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import av
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from annotation.writer import ShardWriter
from d4s.data.batch import Batch, collate_clips
from d4s.data.clips import ClipConfig, ClipSample, choose_frames, crop_box, select_tracks
from d4s.data.datamodule import ClipLoader
from d4s.data.schema import GENERIC_PROMPT, ClipMeta, ClipRecord, encode_record, sample_key
from d4s.data.shards import ClipDataset
from d4s.data.sources import ShardSource, resolve_source
from d4s.geometry.cameras import (
    check_c2w,
    check_intrinsics,
    project_points,
    relative_to_first,
    rigid_inverse,
    unproject_pixels,
)

RESULTS = Path(__file__).resolve().parent / "results" / "dataloader.json"
DATASET = "bench"
FPS = 30.0
# (training size, source height x width): the source is resized to cover the training size, then centre-cropped
RESOLUTIONS = ((256, (288, 512)), (512, (576, 1024)))
# texture amplitude spectrum ~ 1 / f**TEXTURE_SLOPE: PNG then keeps about half of a frame's raw bytes, as it does for
# typical photographs, and H.264 CRF 12 takes 20-30 kB per 576x1024 frame, as for real footage of that size
TEXTURE_SLOPE = 1.4
PAN_PER_FRAME = 0.005  # camera pan, in image widths per frame
GRAIN_SIGMA = 1.0  # per-frame sensor grain, in 8-bit levels
DEPTH_NOISE = 0.005  # relative per-pixel noise of estimated depth
SEED = 0
DECORD = importlib.util.find_spec("decord") is not None  # without it, ours is timed with PyAV only


def fractal_noise(shape: tuple[int, int], exponent: float, rng: np.random.Generator) -> np.ndarray:
    """A random field ``[H, W]`` whose amplitude spectrum falls as ``1 / f**exponent``; zero mean, unit std."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    amplitude = np.hypot(fy, fx).clip(1.0 / max(shape)) ** -exponent
    phase = rng.uniform(0.0, 2.0 * np.pi, amplitude.shape)
    field = np.fft.irfft2(amplitude * np.exp(1j * phase), s=shape)
    return ((field - field.mean()) / field.std()).astype(np.float32)


def yaw_pose(angle: float, x: float) -> np.ndarray:
    """Camera-to-world ``[4, 4]`` of a camera turned by ``angle`` radians about the y axis, at ``(x, 0, 0)``."""
    c, s = np.cos(angle), np.sin(angle)
    pose = np.eye(4)
    pose[:3, :3] = [[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]]
    pose[0, 3] = x
    return pose


def synth_clip(key: str, size: tuple[int, int], num_frames: int, num_tracks: int, seed: int) -> ClipRecord:
    """A clip of ``num_frames`` frames of ``size (H, W)``: a textured scene seen by a panning camera.

    The frames are sub-pixel shifted windows of a 1/f colour texture plus grain, so a codec sees the motion and
    detail of real footage rather than noise. Depth is a smooth 1.5-12 m field moving with the texture, about 4%
    of it invalid (0), with 0.5% per-pixel noise like an estimator's. The camera turns and moves sideways as the
    image pans (valid poses, not an exact match of the pixels: no loader checks that). Tracks are world points lifted from frame 0 and projected into every
    frame; they are visible where they land inside the image, minus 10% random occlusions, and NaN where not
    visible.
    """
    rng = np.random.default_rng(seed)
    (H, W), T = size, num_frames
    pan = PAN_PER_FRAME * W
    canvas = (H, W + int(np.ceil(pan * (T - 1))) + 2)
    luma = fractal_noise(canvas, TEXTURE_SLOPE, rng)
    chroma = [0.25 * fractal_noise(canvas, TEXTURE_SLOPE + 0.4, rng) for _ in range(3)]  # colour varies smoothly
    texture = np.stack([luma + offset for offset in chroma], axis=-1)
    texture = np.clip(128.0 + 40.0 * texture, 0.0, 255.0).astype(np.float32)
    depth_field = np.interp(fractal_noise(canvas, 1.6, rng), (-2.5, 2.5), (1.5, 12.0)).astype(np.float32)
    depth_valid = (fractal_noise(canvas, 1.4, rng) <= 1.65).astype(np.float32)

    frames = np.empty((T, H, W, 3), np.uint8)
    depth = np.empty((T, H, W), np.float32)
    for t in range(T):
        centre = ((W - 1) / 2.0 + t * pan, (H - 1) / 2.0)
        image = cv2.getRectSubPix(texture, (W, H), centre) + rng.normal(0.0, GRAIN_SIGMA, (H, W, 3))
        frames[t] = np.clip(image + 0.5, 0.0, 255.0).astype(np.uint8)
        # like estimated depth: it follows the pan at sub-pixel precision, scales as the camera moves, and carries
        # per-frame estimator noise, so no two frames share bytes (an integer-shifted copy would flatter zstd)
        valid = cv2.getRectSubPix(depth_valid, (W, H), centre) > 0.5
        noise = 1.0 + DEPTH_NOISE * rng.standard_normal((H, W))
        depth[t] = np.where(valid, cv2.getRectSubPix(depth_field, (W, H), centre) * (1.0 - 0.002 * t) * noise, 0.0)

    K = np.tile(np.array([[0.9 * W, 0.0, W / 2.0], [0.0, 0.9 * W, H / 2.0], [0.0, 0.0, 1.0]]), (T, 1, 1))
    c2w = np.stack([yaw_pose(np.radians(0.2) * t, 0.02 * t) for t in range(T)])
    pixels = rng.choice(np.flatnonzero(depth[0] > 0), num_tracks, replace=False)
    uv = np.stack([pixels % W, pixels // W], axis=-1) + 0.5
    xyz = unproject_pixels(
        torch.from_numpy(uv),
        torch.from_numpy(depth[0].ravel()[pixels]).double(),
        torch.from_numpy(K[0]),
        torch.from_numpy(c2w[0]),
    )
    projected, z = project_points(xyz.expand(T, -1, -1), torch.from_numpy(c2w), torch.from_numpy(K))
    inside = (z > 0) & (projected >= 0).all(-1) & (projected[..., 0] < W) & (projected[..., 1] < H)
    visible = inside.numpy().T & (rng.random((num_tracks, T)) > 0.1)
    track_xyz = np.where(visible[..., None], xyz.numpy()[:, None, :], np.nan).astype(np.float32)

    meta = ClipMeta(
        dataset=DATASET,
        scene=key,
        frame_indices=list(range(T)),
        fps=FPS,
        height=H,
        width=W,
        pose_source="synthetic",
        depth_source="synthetic",
        metric=True,
    )
    return ClipRecord(
        key=key,
        frames=frames,
        K=K.astype(np.float32),
        c2w=c2w.astype(np.float32),
        timestamps=np.arange(T) / FPS,
        meta=meta,
        depth=depth,
        track_xyz=track_xyz,
        track_visible=visible,
    )


def write_png_clip(record: ClipRecord, directory: Path) -> None:
    """Write ``record`` in the research layout (see the module docstring) under ``directory``."""
    (directory / "rgb").mkdir(parents=True)
    (directory / "depth").mkdir()
    for t, (frame, depth) in enumerate(zip(record.frames, record.depth)):
        cv2.imwrite(str(directory / "rgb" / f"{t:05d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(directory / "depth" / f"{t:05d}.png"), np.round(depth * 1000.0).astype(np.uint16))
    cameras = {"K": record.K.tolist(), "c2w": record.c2w.tolist(), "timestamps": record.timestamps.tolist()}
    (directory / "cameras.json").write_text(json.dumps(cameras))
    np.save(directory / "tracks.npy", record.track_xyz)
    np.save(directory / "visible.npy", record.track_visible)


def world_to_camera(points: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
    """World points ``[..., 3]`` in the frame of the camera ``c2w [4, 4]``."""
    w2c = rigid_inverse(c2w)
    return points @ w2c[:3, :3].T + w2c[:3, 3]


def read_png_clip(directory: Path, config: ClipConfig, rng: np.random.Generator) -> ClipSample:
    """The fixed training clip (first frames, centre crop) of a clip directory, decoding one PNG per frame."""
    cameras = json.loads((directory / "cameras.json").read_text())
    K_all, c2w_all = np.asarray(cameras["K"]), np.asarray(cameras["c2w"])
    timestamps = np.asarray(cameras["timestamps"])
    indices = choose_frames(len(timestamps), config, rng, random=False)
    frames = np.stack(
        [cv2.cvtColor(cv2.imread(str(directory / "rgb" / f"{i:05d}.png")), cv2.COLOR_BGR2RGB) for i in indices]
    )
    depth_mm = np.stack([cv2.imread(str(directory / "depth" / f"{i:05d}.png"), cv2.IMREAD_UNCHANGED) for i in indices])
    box = crop_box(frames.shape[1:3], (config.height, config.width), rng, random=False)

    K = box.intrinsics(torch.from_numpy(K_all[indices]))
    c2w = relative_to_first(torch.from_numpy(c2w_all[indices]))
    check_intrinsics(K, "cameras.json: K")
    check_c2w(c2w, "cameras.json: c2w")
    times = timestamps[indices] - timestamps[indices[0]]

    xyz, visible = np.load(directory / "tracks.npy"), np.load(directory / "visible.npy")
    points = world_to_camera(torch.from_numpy(xyz[:, indices]).double(), torch.from_numpy(c2w_all[indices[0]]))
    track_xyz, track_visible = select_tracks(
        points, torch.from_numpy(visible[:, indices]), c2w, K, box.size, config.num_tracks, rng
    )
    return ClipSample(
        key=directory.name,
        dataset=DATASET,
        caption=GENERIC_PROMPT,
        video=torch.from_numpy(box.resize_images(frames)).permute(0, 3, 1, 2),
        K=K.float(),
        c2w=c2w.float(),
        times=torch.from_numpy(times.astype(np.float32)),
        frame_indices=torch.from_numpy(indices),
        depth=torch.from_numpy((box.resize_nearest(depth_mm, np.arange(len(indices))) / 1000.0).astype(np.float16)),
        dynamic_mask=None,
        track_xyz=track_xyz.float(),
        track_visible=track_visible,
        is_dynamic=False,
    )


class PngClipDataset(Dataset):
    """Map-style dataset over clip directories in the PNG layout, one :class:`ClipSample` per directory.

    A clip's track subset is drawn from ``(seed, crc32(key))``, the seeds :class:`ClipDataset` gives fixed clips,
    so both loaders return the same clips.
    """

    def __init__(self, root: Path, config: ClipConfig, seed: int = SEED):
        self.directories = sorted(path for path in root.iterdir() if path.is_dir())
        self.config, self.seed = config, seed

    def __len__(self) -> int:
        return len(self.directories)

    def __getitem__(self, index: int) -> ClipSample:
        directory = self.directories[index]
        rng = np.random.default_rng([self.seed, zlib.crc32(directory.name.encode())])
        return read_png_clip(directory, self.config, rng)


def shard_dataset(shard: Path, config: ClipConfig) -> ClipDataset:
    """Our finite, unshuffled stream of fixed clips over one shard, read in the main process."""
    sources = [resolve_source(ShardSource(name=DATASET, shards=str(shard)))]
    return ClipDataset(sources, [1.0], config, shuffle=False, random_clips=False, num_workers=0, seed=SEED)


def loaders(shard: Path, png_root: Path, config: ClipConfig, backends: Iterable[str]) -> dict[str, DataLoader]:
    """The loaders to compare, by name: ours with each video backend, then the PNG loader; batch size 1."""
    common = {"batch_size": 1, "num_workers": 0, "collate_fn": collate_clips}
    named: dict[str, DataLoader] = {}
    for backend in backends:
        dataset = shard_dataset(shard, dataclasses.replace(config, video_backend=backend))
        named[f"ours ({backend})"] = ClipLoader(dataset, **common)
    named["PNG per frame"] = DataLoader(PngClipDataset(png_root, config), **common)
    return named


@contextlib.contextmanager
def one_core() -> Iterator[None]:
    """Pin the process to one CPU, and torch and OpenCV to one thread, for the duration of the block."""
    cpus, threads, cv_threads = os.sched_getaffinity(0), torch.get_num_threads(), cv2.getNumThreads()
    os.sched_setaffinity(0, {min(cpus)})
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        os.sched_setaffinity(0, cpus)
        torch.set_num_threads(threads)
        cv2.setNumThreads(cv_threads)


def timed_pass(loader: DataLoader) -> tuple[int, float]:
    """Read every batch of ``loader`` once; returns the clip count and the seconds it took."""
    start = time.perf_counter()
    clips = 0
    for batch in loader:
        clips += len(batch)
    return clips, time.perf_counter() - start


def compare_loaders(named: dict[str, DataLoader], repeats: int, clips: int) -> dict[str, list[float]]:
    """Seconds per pass of each loader: one untimed pass each, then ``repeats`` timed passes, loaders in turn."""
    seconds: dict[str, list[float]] = {name: [] for name in named}
    for repeat in range(repeats + 1):
        for name, loader in named.items():
            count, elapsed = timed_pass(loader)
            if count != clips:
                raise RuntimeError(f"{name}: read {count} clips, expected {clips}")
            if repeat:
                seconds[name].append(elapsed)
    return seconds


def parity(ours: Batch, png: Batch) -> dict:
    """How far the PNG loader's batch is from ours (the same clip): exact except for video and depth coding."""
    error = (ours.video.float() - png.video.float()).pow(2).mean()
    depth_valid = (ours.depth > 0) == (png.depth > 0)
    return {
        "same_frames": bool(torch.equal(ours.frame_indices, png.frame_indices)),
        "video_psnr_db": float(10.0 * torch.log10(255.0**2 / error)),
        "depth_valid_agreement": float(depth_valid.float().mean()),
        "depth_max_abs_diff_m": float((ours.depth.float() - png.depth.float()).abs().max()),
        "K_max_abs_diff": float((ours.K - png.K).abs().max()),
        "c2w_max_abs_diff": float((ours.c2w - png.c2w).abs().max()),
        "tracks": [int(ours.track_valid.sum()), int(png.track_valid.sum())],
        "track_xyz_max_abs_diff_m": float((ours.track_xyz - png.track_xyz).abs().max()),
        "same_track_visibility": bool(torch.equal(ours.track_visible, png.track_visible)),
    }


def shard_storage(shard: Path, clips: int) -> dict:
    """Our layout's bytes per clip: the whole tar, and per member (``rgb.mp4``, ``depth.npz``, ...)."""
    parts: Counter = Counter()
    with tarfile.open(shard) as tar:
        for member in tar:
            parts[member.name.split(".", 1)[1]] += member.size / clips
    return {"bytes_per_clip": shard.stat().st_size / clips, "files_per_clip": 1 / clips, "parts": dict(parts)}


def png_storage(root: Path, clips: int) -> dict:
    """The PNG layout's bytes per clip (apparent file sizes): in all, and per part (``rgb``, ``depth``, files)."""
    files = [path for path in root.rglob("*") if path.is_file()]
    parts: Counter = Counter()
    for path in files:
        parts[path.relative_to(root).parts[1]] += path.stat().st_size / clips
    return {"bytes_per_clip": sum(parts.values()), "files_per_clip": len(files) / clips, "parts": dict(parts)}


def write_data(root: Path, size: int, source: tuple[int, int], args: argparse.Namespace) -> tuple[Path, Path, float]:
    """Synthesise the clips of one resolution and write both layouts; returns the shard, the PNG root, seconds."""
    start = time.perf_counter()
    writer = ShardWriter(root / "shards", DATASET, 0, max_samples=10**6, max_bytes=2**40, first_number=0)
    for i in range(args.clips):
        key = sample_key(DATASET, f"{size}px-clip{i:03d}", 0)
        record = synth_clip(key, source, args.frames, args.tracks, seed=zlib.crc32(key.encode()))
        writer.write("train", encode_record(record))
        write_png_clip(record, root / "png" / key)
    shard = root / "shards" / writer.close()["path"]
    return shard, root / "png", time.perf_counter() - start


def bench_resolution(size: int, source: tuple[int, int], root: Path, args: argparse.Namespace) -> dict:
    """Write the clips of one resolution, time every loader on one core, check parity; the JSON entry."""
    shard, png_root, write_seconds = write_data(root / f"{size}px", size, source, args)
    backends = ("decord", "pyav") if DECORD else ("pyav",)
    named = loaders(shard, png_root, ClipConfig(num_frames=args.frames, height=size, width=size), backends)
    with one_core():
        seconds = compare_loaders(named, args.repeats, args.clips)
    batches: dict[str, Batch] = {name: next(iter(loader)) for name, loader in named.items()}
    storage = {"ours": shard_storage(shard, args.clips), "PNG per frame": png_storage(png_root, args.clips)}
    png_rate = args.clips / statistics.median(seconds["PNG per frame"])
    rows = []
    for name, times in seconds.items():
        rate = args.clips / statistics.median(times)
        rows.append(
            {
                "loader": name,
                "seconds_per_pass": times,
                "clips_per_second_per_core": rate,
                "ms_per_clip": 1000.0 / rate,
                "speedup_vs_png": rate / png_rate,
                "workers_for_1_step_per_second": 1.0 / rate,
                "8_workers_feed_1_step_per_second": 8.0 * rate >= 1.0,
            }
        )
    reference = batches[f"ours ({backends[0]})"]
    return {
        "size": size,
        "source_height_width": list(source),
        "write_seconds": write_seconds,
        "rows": rows,
        "storage": storage,
        "parity_png_vs_ours": parity(reference, batches["PNG per frame"]),
        "decord_equals_pyav": (
            bool(torch.equal(reference.video, batches["ours (pyav)"].video)) if len(backends) == 2 else None
        ),
    }


HEADER = (
    f"{'size':>5} {'loader':<14} {'clips/s/core':>12} {'ms/clip':>8} {'vs PNG':>7} "
    f"{'workers for 1 step/s':>20} {'8 workers enough':>16}"
)


def format_row(size: int, row: dict) -> str:
    """One table line of a loader's timing."""
    enough = "yes" if row["8_workers_feed_1_step_per_second"] else "no"
    return (
        f"{size:>4}² {row['loader']:<14} {row['clips_per_second_per_core']:>12.2f} {row['ms_per_clip']:>8.0f} "
        f"{row['speedup_vs_png']:>6.2f}x {row['workers_for_1_step_per_second']:>20.2f} {enough:>16}"
    )


def format_storage(storage: dict) -> str:
    """One line per layout: MB per clip, its largest parts, and files per clip."""
    lines = []
    for layout, usage in storage.items():
        parts = sorted(usage["parts"].items(), key=lambda item: -item[1])
        shown = ", ".join(f"{name} {size / 1e6:.2f}" for name, size in parts[:2])
        lines.append(
            f"  {layout:<14} {usage['bytes_per_clip'] / 1e6:7.2f} MB/clip ({shown}); "
            f"{usage['files_per_clip']:g} files/clip"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=4, help="clips per resolution (default 4)")
    parser.add_argument("--frames", type=int, default=49, help="frames per clip, T (default 49)")
    parser.add_argument("--tracks", type=int, default=1024, help="tracks per clip (default 1024)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per loader (default 3)")
    parser.add_argument(
        "--data", type=Path, help="write the clips under this new directory and keep them (default: temporary)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON output (default {RESULTS})")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 clip per resolution, 1 timed pass")
    args = parser.parse_args()
    if args.quick:
        args.clips, args.repeats = 1, 1

    with contextlib.ExitStack() as stack:
        root = args.data if args.data else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        results = []
        print(HEADER)
        for size, source in RESOLUTIONS:
            results.append(bench_resolution(size, source, root, args))
            for row in results[-1]["rows"]:
                print(format_row(size, row), flush=True)

    print(
        f"\n{args.clips} clips per resolution of T = {args.frames} frames and {args.tracks} tracks, sources "
        + ", ".join(f"{h}x{w} -> {size}²" for size, (h, w) in RESOLUTIONS)
        + f"; median of {args.repeats} passes on one core; batch size 1"
    )
    for result in results:
        print(f"storage at {result['size']}²:\n{format_storage(result['storage'])}")
    for result in results:
        print(f"parity at {result['size']}² (PNG vs ours):", json.dumps(result["parity_png_vs_ours"]))
        print(f"decord and PyAV give the same video at {result['size']}²: {result['decord_equals_pyav']}")
    machine = {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cores_used": 1,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "opencv": cv2.__version__,
        "pyav": av.__version__,
        "decord": importlib.metadata.version("decord") if DECORD else None,
    }
    settings = {key: getattr(args, key) for key in ("clips", "frames", "tracks", "repeats", "quick")}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "settings": settings, "resolutions": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
