"""Generate a 4D scene from one image and a camera trajectory (paper Fig. 1): explicit deformable Gaussians, videos,
depth and novel views.

    python -m d4s.generate --ckpt outputs/stage3/checkpoints/last.ckpt --image room.jpg --trajectory spiral \\
        --prompt "a cat walks across the room" --out outputs/generate/room

``--image`` may also be a folder (every image in it) or a .txt list (one image per line, optionally followed by a tab
and its prompt); each image then gets its own folder ``OUT/<name>/``. A scene whose folder is complete for the same
settings is skipped (re-running resumes a batch), and a failing image is reported and skipped. Files per scene:

    scene.npz              canonical Gaussians + deformation to every frame time (d4s.render_scene, d4s.view)
    input.png              the condition image as the model saw it (resized and centre-cropped)
    ply/frame_XXXX.ply     the scene at each time as a standard 3DGS file (an animation for splat viewers)
    rgb.mp4, depth.mp4     frame t: the scene at time t from camera t (depth colour-mapped, near = warm)
    depth.npy              raw z-depth in metres, float32 [T, H, W], 0 where nothing was hit
    cameras.json           the generation cameras (c2w, K in pixels, time): a valid --trajectory file
    novel_bullet_time.mp4  the camera swings around the scene (--orbit-degrees) at one time (--bullet-time)
    novel_<name>.mp4       a second trajectory (--novel-trajectory), time playing; both with _depth.mp4, _cameras.json
    generation.json        the settings of this run; timings.json: seconds per stage and peak memory (written last)

The input image is resized to cover --resolution and centre-cropped. Its intrinsics: --intrinsics (pixels of the
original image), else --fov, else the trajectory file's, else a 60 degree horizontal field of view.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

from d4s.diffusion.sampler import Guidance, GuidanceSchedule, SamplingConfig
from d4s.export import BULLET_TIME_DEGREES
from d4s.generation import (
    DEFAULT_SCENE_SCALE,
    DONE_FILE,
    DTYPES,
    SETTINGS_FILE,
    GenerationSettings,
    Job,
    collect_jobs,
    generate_scene,
)
from d4s.geometry.cameras import DEFAULT_FOV_DEGREES
from d4s.render import Backend
from d4s.utils.checks import choices
from d4s.utils.cli import NAMED_TRAJECTORIES, doc_parser, parse_size, run_cli
from d4s.utils.fileio import as_json, reusable_record
from d4s.utils.image import load_photo

#: the options that change what a scene folder holds: a complete folder made with others is generated again
RESULT_SETTINGS = (
    "ckpt", "config", "trajectory", "frames", "resolution", "steps", "guidance", "guidance_schedule",
    "guidance_skip_below", "seed",
    "scene_scale", "fov", "intrinsics", "no_ema", "bullet_time", "orbit_degrees", "novel_trajectory", "fps",
    "no_ply", "gaussian_stride", "min_opacity", "compress",
)  # fmt: skip
ERRORS = (OSError, ValueError, KeyError)  # bad input of one scene: reported, the batch goes on


def build_parser() -> argparse.ArgumentParser:
    parser = doc_parser("python -m d4s.generate", __doc__)
    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--ckpt", required=True, type=Path, help="a checkpoint written by python -m d4s.fit")
    io.add_argument("--config", type=Path, help="model YAML to use instead of the one stored in the checkpoint")
    io.add_argument("--image", required=True, type=Path, help="an image, a folder of images, or a .txt list of images")
    io.add_argument(
        "--trajectory",
        default="spiral",
        help=f"camera path: {', '.join(NAMED_TRAJECTORIES)}, or a camera file (.json, RealEstate10K .txt)",
    )
    io.add_argument("--prompt", default="", help="caption (empty: the paper's generic prompt)")
    io.add_argument("--out", required=True, type=Path, help="output folder (one sub-folder per image in batch mode)")
    io.add_argument("--overwrite", action="store_true", help="regenerate scenes whose folder is already complete")

    gen = parser.add_argument_group("generation")
    gen.add_argument("--frames", type=int, default=49, help="frames T (4k + 1; 49 in the paper)")
    gen.add_argument("--resolution", default="512", help="frame size: 512 or HEIGHTxWIDTH (paper: 512)")
    gen.add_argument("--steps", type=int, default=30, help="Euler denoising steps (paper: 30)")
    gen.add_argument("--guidance", type=float, default=7.5, help="maximum CFG scale gamma_max of Eq. 6 (0: no CFG)")
    gen.add_argument("--guidance-schedule", default="cosine", choices=choices(GuidanceSchedule), help="CFG schedule")
    gen.add_argument(
        "--guidance-skip-below",
        type=float,
        default=Guidance.skip_below,
        help="skip the unconditional pass where gamma - 1 is below this (default %(default)s; 0: never)",
    )
    gen.add_argument("--seed", type=int, default=0, help="noise seed (the same noise on every device)")
    gen.add_argument(
        "--scene-scale",
        type=float,
        help=f"metres from the camera to the focus of a named trajectory (default {DEFAULT_SCENE_SCALE:g}); "
        "the factor on a camera file's translations (default 1)",
    )
    gen.add_argument(
        "--fov",
        type=float,
        help=f"horizontal field of view of the input image, degrees (default {DEFAULT_FOV_DEGREES:g})",
    )
    gen.add_argument(
        "--intrinsics", type=float, nargs=4, metavar=("FX", "FY", "CX", "CY"), help="in input-image pixels"
    )
    gen.add_argument("--no-ema", action="store_true", help="use the raw weights even if the checkpoint has an EMA")

    views = parser.add_argument_group("rendering")
    views.add_argument("--bullet-time", type=int, help="scene time of the orbit video (default: the middle frame)")
    views.add_argument(
        "--orbit-degrees", type=float, default=BULLET_TIME_DEGREES, help="sweep of the bullet-time orbit (360: a turn)"
    )
    views.add_argument(
        "--novel-trajectory",
        choices=NAMED_TRAJECTORIES,
        help="second novel path (default: spiral, or forward when generating along spiral)",
    )
    views.add_argument("--fps", type=float, default=12.0, help="video frame rate")
    views.add_argument("--backend", default="auto", choices=choices(Backend), help="renderer (auto: gsplat on CUDA)")
    views.add_argument("--no-ply", action="store_true", help="skip the per-time .ply files (large for big scenes)")

    memory = parser.add_argument_group("device and memory")
    memory.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    memory.add_argument("--dtype", default="auto", choices=DTYPES, help="DiT precision (auto: bfloat16 on CUDA)")
    memory.add_argument("--vae-tiling", action="store_true", help="encode the image in tiles (large inputs)")
    memory.add_argument("--offload-text", action="store_true", help="keep the text encoder on the CPU between prompts")
    memory.add_argument("--gaussian-stride", type=int, default=1, help="keep every k-th Gaussian per row and column")
    memory.add_argument("--min-opacity", type=float, default=0.0, help="drop Gaussians below this opacity")
    memory.add_argument("--compress", action="store_true", help="zip-compress scene.npz (smaller, slower)")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject option values that cannot work, before any model is loaded or any scene sampled."""
    if args.frames < 1 or (args.frames - 1) % 4:
        parser.error(f"--frames must be 4k + 1 (the VAE compresses time 4x), e.g. 49; got {args.frames}")
    if args.steps < 1 or min(args.guidance, args.guidance_skip_below) < 0 or args.gaussian_stride < 1:
        parser.error("--steps and --gaussian-stride must be >= 1, --guidance and --guidance-skip-below >= 0")
    if not 0 <= args.min_opacity < 1:
        parser.error("--min-opacity must be in [0, 1)")
    if args.bullet_time is not None and not 0 <= args.bullet_time < args.frames:
        parser.error(f"--bullet-time must be a frame time in [0, {args.frames}), got {args.bullet_time}")
    if args.scene_scale is not None and not (math.isfinite(args.scene_scale) and args.scene_scale > 0):
        parser.error(f"--scene-scale must be a positive number of metres, got {args.scene_scale}")
    if not 0 < args.orbit_degrees <= 360 or not args.fps > 0:
        parser.error(f"--orbit-degrees must be in (0, 360] and --fps > 0, got {args.orbit_degrees} and {args.fps}")
    if args.fov is not None and not 0 < args.fov < 180:
        parser.error(f"--fov must be in (0, 180) degrees, got {args.fov}")
    if args.intrinsics is not None and not (args.intrinsics[0] > 0 and args.intrinsics[1] > 0):
        parser.error(f"--intrinsics: the focal lengths FX and FY must be positive, got {args.intrinsics[:2]}")
    try:
        device = torch.device(args.device)
    except RuntimeError:
        parser.error(f"--device: not a torch device: {args.device!r} (e.g. cpu, cuda, cuda:1)")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible here; use --device cpu")


def result_settings(args: argparse.Namespace, job: Job) -> dict:
    """What decides a scene folder's content (``RESULT_SETTINGS``, the image and the prompt), as JSON values."""
    settings = {key: getattr(args, key) for key in RESULT_SETTINGS}
    settings.update(image=job.image, prompt=job.prompt)
    return as_json(settings)


def completed(job: Job, args: argparse.Namespace) -> bool:
    """The job's folder holds a finished scene made with the same settings."""
    return reusable_record(job.out / SETTINGS_FILE, result_settings(args, job), job.out / DONE_FILE) is not None


def settings_from(args: argparse.Namespace) -> GenerationSettings:
    """The typed settings the parsed options describe."""
    sampling = SamplingConfig(args.steps, args.guidance, args.guidance_schedule, args.guidance_skip_below, args.seed)
    return GenerationSettings(
        trajectory=args.trajectory,
        frames=args.frames,
        size=parse_size(args.resolution),
        sampling=sampling,
        scene_scale=args.scene_scale,
        fov=args.fov,
        intrinsics=None if args.intrinsics is None else tuple(args.intrinsics),
        bullet_time=args.bullet_time,
        orbit_degrees=args.orbit_degrees,
        novel_trajectory=args.novel_trajectory,
        fps=args.fps,
        backend=args.backend,
        ply=not args.no_ply,
        gaussian_stride=args.gaussian_stride,
        min_opacity=args.min_opacity,
        compress=args.compress,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    settings = settings_from(args)  # a bad size or trajectory name fails now, not after the model has loaded
    _ = settings.camera_file  # and so does a malformed camera file
    jobs = collect_jobs(args.image, args.prompt, args.out)
    batch = len(jobs) > 1 or args.image.is_dir() or args.image.suffix.lower() == ".txt"
    todo = [job for job in jobs if args.overwrite or not completed(job, args)]
    if len(todo) < len(jobs):
        print(f"{len(jobs) - len(todo)} of {len(jobs)} scenes already done in {args.out} (--overwrite redoes them)")
    if not todo:
        return 0
    photo = None if batch else load_photo(todo[0].image)  # an unreadable image fails now, before the model loads
    from d4s.pipeline import Diff4SplatPipeline  # imports diffusers: after the checks, so bad arguments answer at once

    pipeline = Diff4SplatPipeline.from_checkpoint(
        args.ckpt, args.config, args.device, DTYPES[args.dtype], not args.no_ema, args.offload_text, args.vae_tiling
    )
    failures = []
    for index, job in enumerate(todo, start=1):
        if batch:
            print(f"[{index}/{len(todo)}] {job.image}")
        try:
            timings = generate_scene(pipeline, job, settings, result_settings(args, job), photo)
        except ERRORS as error:
            if not batch:
                raise
            message = " ".join(str(error).split())
            failures.append(f"{job.image}: {message}")
            print(f"  skipped: {message}", file=sys.stderr)
            continue
        stages = ", ".join(
            f"{k} {timings[k]:.2f}s" for k in ("text", "encode", "sampling", "ldrm", "rendering", "writing")
        )
        print(f"wrote {job.out} ({timings['gaussians']} Gaussians; {stages})")
    if failures:
        print(f"{len(failures)} of {len(todo)} scenes failed:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
