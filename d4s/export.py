"""Rendering a 4D scene along cameras and a time schedule, and writing the result (``generate``, ``render_scene``).

A render of ``F`` frames pairs camera ``f`` with scene time ``times[f]`` (a time index of the scene, fractional
times interpolate the deformation: :meth:`~d4s.gaussians.field.DeformableGaussianField.at_time`). Frame ``t`` of a
generation's own video is the scene at time ``t`` seen from camera ``t``; a bullet-time render keeps one time while
the camera moves.

Files of a render (names chosen by the caller): an RGB video, a colour-mapped depth video (inverse depth, one range
for the whole video), optionally the raw z-depth in metres as ``float32 [F, H, W]`` ``.npy`` (0 where nothing was
hit) and the cameras as JSON that ``--trajectory`` reads back (with each frame's time). Every file is written
atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from d4s.gaussians.field import DeformableGaussianField, GaussianField
from d4s.geometry.trajectories import save_camera_path
from d4s.render import render
from d4s.utils.fileio import atomic_output
from d4s.utils.video import colorize_depth, write_video

#: cameras rendered together when consecutive frames show the same time (bullet time)
CAMERAS_PER_CALL = 8
#: default sweep of orbits around a generated scene: a swing (a single image never shows the scene's back)
BULLET_TIME_DEGREES = 30.0


@dataclass
class SequenceRender:
    """A rendered camera path: ``rgb [F, H, W, 3]`` in ``[0, 1]`` and ``depth [F, H, W]`` (metres, 0 = empty) on the
    CPU, the cameras ``c2w [F, 4, 4]``, ``K [F, 3, 3]`` and the scene time of each frame."""

    rgb: Tensor
    depth: Tensor
    c2w: Tensor
    K: Tensor
    times: list[float]

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.rgb.shape[1:3])


def render_sequence(
    scene: DeformableGaussianField,
    c2w: Tensor,
    K: Tensor,
    times: Sequence[float],
    size: tuple[int, int],
    backend: str = "auto",
    background: Tensor | None = None,
    desc: str | None = None,
) -> SequenceRender:
    """Render frame ``f`` of the scene at ``times[f]`` from camera ``f``.

    Args:
        scene: the 4D scene (on the device to render on).
        c2w: ``[F, 4, 4]`` camera-to-world; K: ``[F, 3, 3]`` or ``[3, 3]`` intrinsics of ``size = (H, W)`` images.
        times: ``F`` scene times in ``[0, scene.num_frames - 1]``.
        backend, background: as :func:`d4s.render.render`.
        desc: a progress-bar label (no bar when ``None``).
    """
    F = c2w.shape[0]
    if len(times) != F:
        raise ValueError(f"times: {len(times)} values for {F} cameras")
    K = K.expand(F, 3, 3) if K.dim() == 2 else K
    device = scene.canonical.device
    c2w_device, K_device = c2w.to(device, torch.float32), K.to(device, torch.float32)
    (H, W), rgbs, depths = size, [], []
    with torch.no_grad(), tqdm(total=F, desc=desc, unit="frame", disable=desc is None, leave=False) as bar:
        start = 0
        while start < F:
            end = start + 1
            while end < F and end - start < CAMERAS_PER_CALL and times[end] == times[start]:
                end += 1
            field: GaussianField = scene.at_time(float(times[start]))
            out = render(field, c2w_device[start:end], K_device[start:end], W, H, backend, background)
            rgbs.append(out.rgb.cpu())
            depths.append(out.depth.cpu())
            bar.update(end - start)
            start = end
    return SequenceRender(
        torch.cat(rgbs), torch.cat(depths), c2w.cpu().float(), K.cpu().float(), [float(t) for t in times]
    )


def follow_times(num_frames: int, scene_frames: int) -> list[float]:
    """Times that play the scene once over ``num_frames`` frames: ``linspace(0, scene_frames - 1, num_frames)``
    (integers when the counts match, so frame ``t`` is exactly time ``t``)."""
    if num_frames == scene_frames:
        return [float(t) for t in range(num_frames)]
    return torch.linspace(0.0, scene_frames - 1, num_frames, dtype=torch.float64).tolist()


def focus_depth(field: GaussianField, c2w: Tensor | None = None) -> float:
    """The opacity-weighted median z-depth (metres) of the Gaussians in front of the camera ``c2w [4, 4]`` (default:
    the identity, a generation's first camera), the natural ``scene_scale`` of trajectories around a scene."""
    means = field.means
    if c2w is not None:
        c2w = c2w.to(means.device, means.dtype)
        means = (means - c2w[:3, 3]) @ c2w[:3, :3]  # into the camera's frame
    z, weight = means[:, 2], field.opacities
    front = (z > 0) & torch.isfinite(z)
    if not front.any():
        raise ValueError("scene: no Gaussian lies in front of the first camera, so it has no focus depth")
    z, weight = z[front].double().cpu(), weight[front].double().cpu()
    order = z.argsort()
    cumulative = weight[order].cumsum(0)
    middle = torch.searchsorted(cumulative, cumulative[-1] / 2).clamp(max=len(z) - 1)
    return float(z[order][middle])


def save_render(
    result: SequenceRender,
    directory: str | Path,
    rgb_name: str = "rgb.mp4",
    depth_name: str = "depth.mp4",
    raw_depth_name: str | None = "depth.npy",
    cameras_name: str | None = "cameras.json",
    fps: float = 12.0,
) -> list[Path]:
    """Write a render's files into ``directory`` (module docstring); returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = [
        write_video(directory / rgb_name, result.rgb, fps=fps),
        write_video(directory / depth_name, colorize_depth(result.depth), fps=fps),
    ]
    if raw_depth_name is not None:
        with atomic_output(directory / raw_depth_name) as tmp, open(tmp, "wb") as handle:
            np.save(handle, result.depth.numpy().astype(np.float32))
        paths.append(directory / raw_depth_name)
    if cameras_name is not None:
        paths.append(save_camera_path(directory / cameras_name, result.c2w, result.K, result.size, result.times))
    return paths
