"""Motion probe: can the LDRM learn to read object motion from its latents, apart from everything else?

    python bench/motion_probe.py --index data/toy4d/index.json [--init runs/demo/stage2/checkpoints/last.ckpt]
        [--steps 400] [--lr 3e-3] [--frame-step 2] [--pixels] [--out bench/results/motion_probe.json]

Trains the LDRM of ``--model`` (default the tiny one) on the motion loss alone (Eq. 5's squared error on the
dataset's 3D tracks, moving and static pairs averaged separately as ``LossWeights.motion_balance_threshold`` does)
over streamed dynamic training clips, and every ``--every`` steps reports, on fixed held-out clips (the val and test
splits), the mean cosine between each moving track's predicted and true displacement: in 3D, and in the image plane
(x, y of the first camera, whose frame the clips' world is). A model that reads motion raises both; a prior (a mean
direction along the depth axis, say) raises only the 3D one. ``--pixels`` replaces the VAE latents by the frames
themselves (pixel-unshuffled frames 0, 4, 8, ...: every pixel the latents could have kept), which separates what the
latents lose from what the LDRM fails to learn. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
import yaml
from common import machine_info

from d4s.data import ClipDataModule
from d4s.losses import track_motion
from d4s.stages import DynamicFinetune, LPIPSConfig

MOVING_METRES = 0.02  # a track pair moves when its true displacement is longer (motion_balance_threshold)
MOTION_SCALE = 0.1  # the squared error's scale, as configs/tiny/stage3.yaml's motion_squared_scale


def clips(index: str, split: str | None, frame_step: int, batch_size: int, work: Path) -> ClipDataModule:
    """Dynamic clips of 9 frames at 64² with all tracks, streamed from ``split`` (``None``: the training split)."""
    source = {"name": "toy4d", "index": index} | ({"split": split} if split else {})
    config = {
        "train": {"sources": [source], "motion": "dynamic", "resample": True, "samples_per_epoch": 10**6},
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
    path = work / f"data-{split or 'train'}.yaml"
    path.write_text(yaml.safe_dump(config))
    module = ClipDataModule.from_yaml(path)
    module.setup("fit")
    return module


def motion_terms(ldrm, video_dit, batch, pixels: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The balanced motion loss of a batch and ``[P, 2]`` cosines (3D, image plane) of its moving track pairs."""
    if pixels:
        frames = batch.video[:, ::4]  # [B, T', 3, H, W]: one frame per latent frame
        latents = torch.nn.functional.pixel_unshuffle(frames.flatten(0, 1), 8).unflatten(0, frames.shape[:2])
    else:
        with torch.no_grad():
            latents = video_dit.encode(batch.video)
    B, T = batch.video.shape[:2]
    frames = torch.arange(T).expand(B, T)
    out = ldrm(latents, batch.plucker, batch.K, batch.c2w, frames.float() / (T - 1))
    s = ldrm.config.gaussian_stride
    size = tuple(batch.video.shape[-2:])
    predicted, true, supervised = track_motion(
        out.dmu, (size[0] // s, size[1] // s), batch.track_xyz, batch.track_visible, batch.track_valid, batch.c2w,
        batch.K, size, frames,
    )  # fmt: skip
    moving = supervised & (true.norm(dim=-1) > MOVING_METRES)
    static = supervised & ~moving
    error = (predicted - true).pow(2).sum(-1) / MOTION_SCALE
    loss = (error * moving).sum() / moving.sum().clamp_min(1) + (error * static).sum() / static.sum().clamp_min(1)
    p, t = predicted[moving], true[moving]
    cosines = [torch.nn.functional.cosine_similarity(p[:, :k], t[:, :k], dim=-1, eps=1e-9) for k in (3, 2)]
    return loss, torch.stack(cosines, dim=-1).detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", required=True, help="toy4d index.json with dynamic val and test clips")
    parser.add_argument("--model", type=Path, default=Path("configs/tiny/model.yaml"))
    parser.add_argument("--init", default=None, help="a training checkpoint whose LDRM to start from")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--frame-step", type=int, default=2)
    parser.add_argument("--pixels", action="store_true", help="frames instead of VAE latents (see the docstring)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/motion_probe.json"))
    args = parser.parse_args()
    if args.pixels and args.init:
        parser.error("--pixels changes the LDRM's input layer: it cannot start from --init")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as work:
        model = yaml.safe_load(args.model.read_text())
        if args.pixels:  # 3 x 8 x 8 pixel values per latent cell
            model["ldrm"]["latent_channels"] = 3 * 64
        model_path = Path(work) / "model.yaml"
        model_path.write_text(yaml.safe_dump(model))
        stage = DynamicFinetune(
            str(model_path), lpips=LPIPSConfig(net="alex", backbone_path=None, random_backbone=True)
        )
        if args.init:
            stage.load_init(args.init)
        ldrm, video_dit = stage.ldrm.train(), stage.video_dit.eval()
        optimizer = torch.optim.AdamW(ldrm.parameters(), lr=args.lr)
        train = iter(clips(args.index, None, args.frame_step, args.batch_size, Path(work)).train_dataloader())
        held = []
        for split in ("val", "test"):
            stream = iter(clips(args.index, split, args.frame_step, args.batch_size, Path(work)).train_dataloader())
            held += [next(stream).prepare() for _ in range(3)]
        rows, recent, start = [], [], time.perf_counter()
        for step in range(args.steps + 1):
            loss, cosines = motion_terms(ldrm, video_dit, next(train).prepare(), args.pixels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            recent.append(cosines[:, 0].mean().item() if len(cosines) else 0.0)
            if step % args.every == 0:
                with torch.no_grad():
                    held_cosines = torch.cat([motion_terms(ldrm, video_dit, b, args.pixels)[1] for b in held])
                rows.append({"step": step, "seconds": time.perf_counter() - start,
                             "train_cos_3d": sum(recent) / len(recent), "held_cos_3d": held_cosines[:, 0].mean().item(),
                             "held_cos_image": held_cosines[:, 1].mean().item(), "held_pairs": len(held_cosines)})  # fmt: skip
                recent.clear()
                r = rows[-1]
                print(f"step {step:5d}  train 3D {r['train_cos_3d']:+.3f}  held-out 3D {r['held_cos_3d']:+.3f}  "
                      f"image plane {r['held_cos_image']:+.3f}  ({r['held_pairs']} moving pairs)", flush=True)  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine_info(), "args": vars(args) | {"out": str(args.out),
                                    "model": str(args.model)}, "rows": rows}, indent=1))  # fmt: skip
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
