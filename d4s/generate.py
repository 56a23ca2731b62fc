"""Generate a 4D scene from one image and a camera trajectory (paper Fig. 1): explicit deformable Gaussians, videos,
depth and novel views.

    python -m d4s.generate --ckpt outputs/stage3/checkpoints/last.ckpt --image room.jpg --trajectory spiral \\
        --prompt "a cat walks across the room" --out outputs/generate/room

``--image`` may also be a folder (every image in it) or a .txt list (one image per line, optionally followed by a tab
and its prompt); each image then gets its own folder ``OUT/<name>/``, images already done are skipped (resumable),
and a failing image is reported and skipped. Files written per scene:

    scene.npz            canonical Gaussians + deformation to every frame time (python -m d4s.render_scene, d4s.view)
    ply/frame_XXXX.ply   the scene at each time as a standard 3DGS file (an animation for splat viewers)
    rgb.mp4, depth.mp4   frame t: the scene at time t from camera t (depth colour-mapped, near = warm)
    depth.npy            raw z-depth in metres, float32 [T, H, W], 0 where nothing was hit
    novel_orbit.mp4      bullet time: the camera swings around the scene (--orbit-degrees) at one time (--bullet-time)
    novel_<name>.mp4     a second trajectory (--novel-trajectory), time playing; both with *_depth.mp4 and cameras
    cameras.json         the generation cameras (c2w, K in pixels, time); a valid --trajectory file
    input.png            the condition image as the model saw it (resized and centre-cropped)
    generation.json      the settings of this run; timings.json: seconds per stage and peak memory (written last)

The input image is resized to cover --resolution and centre-cropped. Its intrinsics: --intrinsics (pixels of the
original image), else --fov, else the trajectory file's, else a 60 degree horizontal field of view.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from d4s.diffusion.sampler import GUIDANCE_SCHEDULES, Guidance
from d4s.export import focus_depth, follow_times, render_sequence, save_render
from d4s.gaussians.io import save_ply_sequence, save_scene
from d4s.geometry.cameras import intrinsics_from_fov, resize_intrinsics
from d4s.geometry.trajectories import load_camera_path, make_trajectory
from d4s.render import BACKENDS
from d4s.utils.cli import NAMED_TRAJECTORIES, parse_size, parse_trajectory, run_cli
from d4s.utils.fileio import atomic_output
from d4s.utils.image import IMAGE_SUFFIXES, load_photo
from d4s.utils.timing import StageTimer, peak_memory

DEFAULT_FOV = 60.0
DEFAULT_SCENE_SCALE = 2.0  # metres: a room-sized scene (the paper gives no trajectory scale)
DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DONE_FILE = "timings.json"


@dataclass(frozen=True)
class Job:
    """One scene to generate: its image, prompt and output folder."""

    image: Path
    prompt: str
    out: Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m d4s.generate",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[2:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    gen.add_argument("--guidance-schedule", default="cosine", choices=GUIDANCE_SCHEDULES, help="CFG schedule")
    gen.add_argument("--seed", type=int, default=0, help="noise seed (the same noise on every device)")
    gen.add_argument(
        "--scene-scale",
        type=float,
        help=f"metres from the camera to the focus of a named trajectory (default {DEFAULT_SCENE_SCALE:g}); "
        "the factor on a camera file's translations (default 1)",
    )
    gen.add_argument(
        "--fov", type=float, help=f"horizontal field of view of the input image, degrees (default {DEFAULT_FOV:g})"
    )
    gen.add_argument(
        "--intrinsics", type=float, nargs=4, metavar=("FX", "FY", "CX", "CY"), help="in input-image pixels"
    )
    gen.add_argument("--no-ema", action="store_true", help="use the raw weights even if the checkpoint has an EMA")

    views = parser.add_argument_group("rendering")
    views.add_argument("--bullet-time", type=int, help="scene time of the orbit video (default: the middle frame)")
    views.add_argument(
        "--orbit-degrees", type=float, default=30.0, help="sweep of the bullet-time orbit (360: full turn)"
    )
    views.add_argument(
        "--novel-trajectory",
        choices=NAMED_TRAJECTORIES,
        help="second novel path (default: spiral, or forward when generating along spiral)",
    )
    views.add_argument("--fps", type=float, default=12.0, help="video frame rate")
    views.add_argument("--backend", default="auto", choices=BACKENDS, help="renderer (auto: gsplat on CUDA)")
    views.add_argument("--no-ply", action="store_true", help="skip the per-time .ply files (large for big scenes)")

    memory = parser.add_argument_group("device and memory")
    memory.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    memory.add_argument("--dtype", default="auto", choices=DTYPES, help="DiT precision (auto: bfloat16 on CUDA)")
    memory.add_argument("--vae-tiling", action="store_true", help="encode the image in tiles (large inputs)")
    memory.add_argument("--vae-slicing", action="store_true", help="encode batch elements one at a time")
    memory.add_argument("--offload-text", action="store_true", help="keep the text encoder on the CPU between prompts")
    memory.add_argument("--gaussian-stride", type=int, default=1, help="keep every k-th Gaussian per row and column")
    memory.add_argument("--min-opacity", type=float, default=0.0, help="drop Gaussians below this opacity")
    memory.add_argument("--compress", action="store_true", help="zip-compress scene.npz (smaller, slower)")
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Reject option values that cannot work, before any model is loaded."""
    if args.frames < 1 or (args.frames - 1) % 4:
        parser.error(f"--frames must be 4k + 1 (the VAE compresses time 4x), e.g. 49; got {args.frames}")
    if args.steps < 1 or args.guidance < 0 or args.gaussian_stride < 1 or not 0 <= args.min_opacity < 1:
        parser.error("--steps and --gaussian-stride must be >= 1, --guidance >= 0 and --min-opacity in [0, 1)")
    if args.bullet_time is not None and not 0 <= args.bullet_time < args.frames:
        parser.error(f"--bullet-time must be a frame time in [0, {args.frames}), got {args.bullet_time}")
    if args.scene_scale is not None and not (math.isfinite(args.scene_scale) and args.scene_scale > 0):
        parser.error(f"--scene-scale must be a positive number of metres, got {args.scene_scale}")


def collect_jobs(image: Path, prompt: str, out: Path) -> list[Job]:
    """One job for an image file; one per image for a folder or a .txt list (``path[<TAB>prompt]`` per line,
    relative to the list's folder), each writing to ``out/<image name>``."""
    if image.is_dir():
        entries = [(path, prompt) for path in sorted(image.iterdir()) if path.suffix.lower() in IMAGE_SUFFIXES]
        if not entries:
            raise ValueError(f"{image}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    elif image.suffix.lower() == ".txt":
        if not image.is_file():
            raise FileNotFoundError(f"image list not found: {image}")
        entries = []
        for line in image.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                path, _, own_prompt = line.partition("\t")
                entries.append((image.parent / path.strip(), own_prompt.strip() or prompt))
        if not entries:
            raise ValueError(f"{image}: the list names no images")
    else:
        return [Job(image, prompt, out)]
    stems = [path.stem for path, _ in entries]
    names = [path.stem if stems.count(path.stem) == 1 else path.name for path, _ in entries]
    return [Job(path, text, out / name) for (path, text), name in zip(entries, names)]


def input_view(args: argparse.Namespace, image: np.ndarray, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The condition image ``[3, H, W]`` in ``[0, 1]`` (resized to cover ``size``, centre-cropped) and its
    intrinsics ``[3, 3]`` (module docstring: which source they come from)."""
    source = image.shape[:2]
    camera_file = load_camera_path(args.trajectory_file) if args.trajectory_file is not None else None
    if args.intrinsics is not None:
        fx, fy, cx, cy = args.intrinsics
        K = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    elif args.fov is None and camera_file is not None and camera_file.K is not None:
        K = resize_intrinsics(camera_file.K[0].float(), camera_file.image_size or source, source)
    else:
        K = intrinsics_from_fov(source[1], source[0], DEFAULT_FOV if args.fov is None else args.fov)
    from d4s.data.clips import crop_box  # imports Lightning: loaded once needed, so --help answers at once

    box = crop_box(source, size, rng=None, random=False)
    crop = box.resize_image(image)
    return torch.from_numpy(crop).permute(2, 0, 1).float() / 255.0, box.intrinsics(K)


def second_trajectory(args: argparse.Namespace) -> str:
    if args.novel_trajectory is not None:
        return args.novel_trajectory
    return "forward" if args.trajectory_name == "spiral" else "spiral"


def generate_one(pipeline, job: Job, args: argparse.Namespace) -> dict:
    """Generate and write one scene (module docstring) with a :class:`~d4s.pipeline.Diff4SplatPipeline`; returns
    its timings."""
    from d4s.pipeline import thin_field

    size = parse_size(args.resolution)
    image, K = input_view(args, load_photo(job.image), size)
    scale = args.scene_scale or (1.0 if args.trajectory_file is not None else DEFAULT_SCENE_SCALE)
    c2w = make_trajectory(args.trajectory_name, args.frames, scale, path=args.trajectory_file)
    guidance = Guidance(args.guidance, args.guidance_schedule) if args.guidance > 0 else None
    start = time.perf_counter()
    if pipeline.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(pipeline.device)
    pipeline.check_inputs(image, c2w, K)
    with tqdm(total=args.steps, desc="denoising", unit="step", leave=False) as bar:
        result = pipeline(image, c2w, K, job.prompt, args.steps, guidance, args.seed, lambda step, total: bar.update(1))
    scene = thin_field(result.field, result.grid, args.gaussian_stride, args.min_opacity)
    timer = StageTimer(pipeline.device)
    with timer("rendering"):
        frames = args.frames
        main = render_sequence(scene, c2w, K, follow_times(frames, frames), size, args.backend, desc="rendering")
        bullet = frames // 2 if args.bullet_time is None else args.bullet_time
        focus = focus_depth(scene.at(bullet))
        orbit_c2w = make_trajectory("orbit", frames, focus, orbit_degrees=args.orbit_degrees)
        orbit = render_sequence(scene, orbit_c2w, K, [float(bullet)] * frames, size, args.backend, desc="orbit")
        novel_name = second_trajectory(args)
        novel_c2w = make_trajectory(novel_name, frames, focus)
        novel = render_sequence(scene, novel_c2w, K, follow_times(frames, frames), size, args.backend, desc=novel_name)
    with timer("writing"):
        job.out.mkdir(parents=True, exist_ok=True)
        (job.out / DONE_FILE).unlink(missing_ok=True)  # the folder is incomplete until timings.json is back
        cpu_scene = scene.to("cpu")
        save_scene(cpu_scene, job.out / "scene.npz", compress=args.compress)
        if not args.no_ply:
            save_ply_sequence(cpu_scene, job.out / "ply")
        save_render(main, job.out, fps=args.fps)
        for name, render in (("orbit", orbit), (novel_name, novel)):
            save_render(
                render,
                job.out,
                f"novel_{name}.mp4",
                f"novel_{name}_depth.mp4",
                None,
                f"novel_{name}_cameras.json",
                args.fps,
            )
        with atomic_output(job.out / "input.png") as tmp:
            Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(tmp, format="PNG")
        settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
        write_json(
            job.out / "generation.json",
            {**settings, "image": str(job.image), "prompt": job.prompt, "focus_depth": focus, "bullet_time": bullet},
        )
    timings = {
        **result.timings,
        **timer.seconds,
        "total": time.perf_counter() - start,
        "gaussians": scene.num_gaussians,
        "device": str(pipeline.device),
        "dtype": str(pipeline.dtype).removeprefix("torch."),
        **peak_memory(pipeline.device),
    }
    write_json(job.out / DONE_FILE, timings)
    return timings


def write_json(path: Path, document: dict) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(document, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    args.trajectory_name, args.trajectory_file = parse_trajectory(args.trajectory)
    parse_size(args.resolution)
    if args.trajectory_file is not None:
        load_camera_path(args.trajectory_file)  # a malformed file fails now, not after the model has loaded
    jobs = collect_jobs(args.image, args.prompt, args.out)
    batch = len(jobs) > 1 or args.image.is_dir() or args.image.suffix.lower() == ".txt"
    todo = [job for job in jobs if args.overwrite or not (job.out / DONE_FILE).is_file()]
    if len(todo) < len(jobs):
        print(f"{len(jobs) - len(todo)} of {len(jobs)} scenes already done in {args.out} (--overwrite redoes them)")
    if not todo:
        return 0
    if not batch:
        load_photo(todo[0].image)  # an unreadable image fails now, not after the model has loaded
    from d4s.pipeline import Diff4SplatPipeline  # imports diffusers: after the checks, so bad arguments answer at once

    pipeline = Diff4SplatPipeline.from_checkpoint(
        args.ckpt,
        args.config,
        args.device,
        DTYPES[args.dtype],
        not args.no_ema,
        args.offload_text,
        args.vae_tiling,
        args.vae_slicing,
    )
    failures = []
    for index, job in enumerate(todo, start=1):
        if batch:
            print(f"[{index}/{len(todo)}] {job.image}")
        try:
            timings = generate_one(pipeline, job, args)
        except (OSError, ValueError) as error:
            if not batch:
                raise
            failures.append(f"{job.image}: {error}")
            print(f"  skipped: {error}", file=sys.stderr)
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
