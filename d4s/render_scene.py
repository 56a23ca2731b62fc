"""Re-render a saved 4D scene along any camera path and time schedule, without the diffusion model.

    python -m d4s.render_scene outputs/generate/room/scene.npz --trajectory orbit --time 24
    python -m d4s.render_scene outputs/generate/room/scene.npz --trajectory outputs/generate/room/cameras.json

Writes rgb.mp4, depth.mp4 (colour-mapped), depth.npy (raw z-depth in metres, float32 [F, H, W]) and cameras.json
into --out (default: renders/<trajectory> beside the scene).

Time schedules (--time): ``follow`` plays the scene once over the frames (frame f of an F-frame path shows time
f (T - 1) / (F - 1)); a number holds that time (bullet time); ``A:B`` sweeps from time A to time B; ``auto`` (the
default) takes the times a camera file stores (generate's cameras files do), else follows. Times are scene time
indices in [0, T - 1]; fractional times interpolate the deformation.

Cameras: named trajectories start at the generation's first camera and move around the scene's focus
(--scene-scale, default: the opacity-weighted median depth of the scene at time 0; orbits swing by
--orbit-degrees); a camera file is used as written (relative to its first camera, which generate's cameras files
already are), with its intrinsics and image size when it has them. Otherwise the intrinsics come from --fov, else
from the cameras.json that generate wrote beside the scene, else a 60 degree horizontal field of view; the size from
--resolution, else the same sources, else 512 x 512. Intrinsics of another frame size are carried over as an image
is: resized to cover the new size, then centre-cropped.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from torch import Tensor

from d4s.export import BULLET_TIME_DEGREES, focus_depth, follow_times, render_sequence, save_render
from d4s.gaussians.io import load_scene
from d4s.geometry.cameras import DEFAULT_FOV_DEGREES, intrinsics_from_fov, resize_intrinsics
from d4s.geometry.crop import crop_box
from d4s.geometry.trajectories import CameraPath, load_camera_path, make_trajectory
from d4s.render import Backend
from d4s.utils.checks import choices
from d4s.utils.cli import NAMED_TRAJECTORIES, doc_parser, parse_size, parse_trajectory, run_cli

DEFAULT_SIZE = (512, 512)


def build_parser() -> argparse.ArgumentParser:
    parser = doc_parser("python -m d4s.render_scene", __doc__)
    parser.add_argument(
        "scene", type=Path, help="a scene.npz written by python -m d4s.generate, or a 3DGS .ply (a static scene)"
    )
    parser.add_argument(
        "--trajectory",
        default="orbit",
        help=f"camera path: {', '.join(NAMED_TRAJECTORIES)}, or a camera file (.json, RealEstate10K .txt)",
    )
    parser.add_argument("--time", default="auto", help="time schedule: auto, follow, a time (e.g. 24), or A:B")
    parser.add_argument("--frames", type=int, help="frames to render (default: the camera file's, else the scene's)")
    parser.add_argument("--resolution", help="frame size: 512 or HEIGHTxWIDTH (default: as generated)")
    parser.add_argument("--fov", type=float, help="horizontal field of view in degrees (default: as generated)")
    parser.add_argument("--scene-scale", type=float, help="metres to the trajectory focus (default: scene depth)")
    parser.add_argument(
        "--orbit-degrees", type=float, default=BULLET_TIME_DEGREES, help="orbit sweep (360: a full turn)"
    )
    parser.add_argument("--out", type=Path, help="output folder (default: renders/<trajectory> beside the scene)")
    parser.add_argument("--fps", type=float, default=12.0, help="video frame rate")
    parser.add_argument("--background", type=float, nargs=3, metavar=("R", "G", "B"), help="colour in [0, 1]")
    parser.add_argument("--backend", default="auto", choices=choices(Backend), help="renderer (auto: gsplat on CUDA)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    return parser


def parse_times(spec: str, num_frames: int, scene_frames: int, stored: Tensor | None = None) -> list[float]:
    """The scene time of each of ``num_frames`` frames for ``--time`` (module docstring; ``stored``: the camera
    file's times); ``ValueError`` for a malformed schedule or a time outside ``[0, scene_frames - 1]``."""
    last = scene_frames - 1
    if spec == "auto":
        if stored is None or len(stored) != num_frames:
            return follow_times(num_frames, scene_frames)
        if not bool((stored <= last).all()):
            raise ValueError(f"time: the camera file's times reach {float(stored.max()):g}, the scene's end at {last}")
        return stored.tolist()
    if spec == "follow":
        return follow_times(num_frames, scene_frames)
    try:
        ends = [float(part) for part in spec.split(":")]
    except ValueError:
        ends = []
    if len(ends) not in (1, 2) or not all(math.isfinite(t) for t in ends):
        raise ValueError(f"time: expected auto, follow, a time such as 12, or a range A:B; got {spec!r}")
    if not all(0.0 <= t <= last for t in ends):
        raise ValueError(f"time: {spec!r} leaves the scene's times [0, {last}]")
    if len(ends) == 1:
        return [ends[0]] * num_frames
    return torch.linspace(ends[0], ends[1], num_frames, dtype=torch.float64).tolist()


def generated_cameras(scene: Path) -> CameraPath | None:
    """The cameras generate wrote beside the scene, when they are there."""
    path = scene.parent / "cameras.json"
    return load_camera_path(path) if path.is_file() else None


def cameras(
    args: argparse.Namespace, name: str, path: Path | None, file: CameraPath | None, scene_frames: int, focus: float
) -> tuple:
    """``(c2w [F, 4, 4], K [F, 3, 3], (H, W))`` of the render (module docstring) along the trajectory ``name``
    (``path``: its camera file, read as ``file``)."""
    reference = generated_cameras(args.scene)
    frames = args.frames or (len(file.c2w) if file is not None else scene_frames)
    size = parse_size(args.resolution) if args.resolution else None
    default_size = reference.image_size if reference is not None and reference.image_size else DEFAULT_SIZE
    if args.fov is None and file is not None and file.K is not None:
        if file.image_size in (None, (1, 1)):  # normalised (RealEstate10K) or unsized: for the frame we render
            source = size or default_size
            K = resize_intrinsics(file.K.float(), file.image_size or source, source)
        else:
            source, K = file.image_size, file.K.float()
    elif args.fov is None and reference is not None and reference.K is not None and reference.image_size is not None:
        source, K = reference.image_size, reference.K[:1].float()
    else:
        source = size or default_size
        K = intrinsics_from_fov(source[1], source[0], DEFAULT_FOV_DEGREES if args.fov is None else args.fov)[None]
    size = size or source
    K = crop_box(source, size).intrinsics(K)
    K = K if len(K) == frames else K[:1].expand(frames, 3, 3)
    scale = args.scene_scale or (1.0 if path is not None else focus)
    c2w = make_trajectory(name, frames, scale, path=path, orbit_degrees=args.orbit_degrees)
    return c2w, K, size


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.frames is not None and args.frames < 1:
        parser.error(f"--frames must be >= 1, got {args.frames}")
    scene = load_scene(args.scene).to(args.device)
    name, path = parse_trajectory(args.trajectory)
    file = load_camera_path(path) if path is not None else None
    c2w, K, size = cameras(args, name, path, file, scene.num_frames, focus_depth(scene.at(0)))
    times = parse_times(args.time, len(c2w), scene.num_frames, file.times if file is not None else None)
    background = torch.tensor(args.background) if args.background else None
    result = render_sequence(scene, c2w, K, times, size, args.backend, background, desc="rendering")
    out = args.out or args.scene.parent / "renders" / (path.stem if path is not None else name)
    save_render(result, out, fps=args.fps)
    print(f"wrote {out}: {len(c2w)} frames at {size[0]}x{size[1]}, times {times[0]:g} to {times[-1]:g}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
