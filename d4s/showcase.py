"""Renderer showcase: render a procedural 4D Gaussian scene along a camera trajectory.

    python -m d4s.showcase --out outputs/showcase [--trajectory spiral] [--frames 49] [--size 256]

Writes ``rgb.mp4``, ``depth.mp4`` (colour-mapped inverse depth), ``depth.npy`` (raw z-depth, metres),
``scene.npz`` (canonical Gaussians + deformations), ``scene_t0000.ply`` (the scene at time 0 as a standard
3DGS file) and ``cameras.json``. Frame ``t`` shows the scene at time ``t`` from camera ``t``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from d4s.export import follow_times, render_sequence, save_render
from d4s.gaussians.io import save_ply, save_scene
from d4s.gaussians.procedural import showcase_scene
from d4s.geometry.cameras import intrinsics_from_fov
from d4s.geometry.trajectories import TRAJECTORY_NAMES, make_trajectory
from d4s.render import Backend, resolve_backend
from d4s.utils.checks import choices


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line (``--frames >= 1``, ``--size >= 8``)."""
    parser = argparse.ArgumentParser(prog="python -m d4s.showcase", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/showcase"), help="output directory")
    parser.add_argument("--trajectory", default="spiral", choices=TRAJECTORY_NAMES, help="camera path")
    parser.add_argument("--trajectory-file", type=Path, help="camera file for --trajectory from_file")
    parser.add_argument("--frames", type=int, default=49, help="number of frames (and scene times)")
    parser.add_argument("--size", type=int, default=256, help="square image size in pixels")
    parser.add_argument("--fov", type=float, default=60.0, help="horizontal field of view in degrees")
    parser.add_argument("--scene-scale", type=float, default=4.0, help="distance to the scene centre (metres)")
    parser.add_argument("--fps", type=float, default=12.0, help="video frame rate")
    parser.add_argument("--backend", default="auto", choices=choices(Backend), help="renderer")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.size < 8:
        parser.error("--frames must be >= 1 and --size >= 8")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    scene = showcase_scene(args.frames).to(device)
    c2w = make_trajectory(args.trajectory, args.frames, args.scene_scale, path=args.trajectory_file).to(device)
    K = intrinsics_from_fov(args.size, args.size, args.fov).to(device)
    backend = resolve_backend(args.backend, device)
    print(f"{scene.num_gaussians} Gaussians, {args.frames} frames at {args.size}x{args.size}, {backend} renderer")

    background = torch.full((3,), 0.05, device=device)
    start = time.perf_counter()
    times = follow_times(args.frames, args.frames)
    result = render_sequence(scene, c2w, K, times, (args.size, args.size), backend, background, desc="rendering")
    seconds = time.perf_counter() - start

    save_render(result, args.out, fps=args.fps)
    save_scene(scene.to("cpu"), args.out / "scene.npz", compress=True)
    save_ply(scene.at(0).to("cpu"), args.out / "scene_t0000.ply")
    summary = {"frames": args.frames, "gaussians": scene.num_gaussians, "seconds": seconds, "backend": backend}
    print(f"wrote {args.out}/rgb.mp4 and depth.mp4: {seconds / args.frames * 1000:.0f} ms per frame ({backend})")
    return summary


if __name__ == "__main__":
    main()
