"""TensorBoard pictures of training: rendered vs ground-truth views and depth, as image grids and short videos."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from d4s.utils.video import colorize_depth, to_uint8_frames


def comparison_rows(rgb: Tensor, rgb_gt: Tensor, depth: Tensor, depth_gt: Tensor) -> Tensor:
    """One picture per view, ``[V, H, 4W, 3]`` in ``[0, 1]``: ground truth | render | GT depth | rendered depth.

    Args:
        rgb, rgb_gt: ``[V, 3, H, W]`` in ``[0, 1]``; depth, depth_gt: ``[V, H, W]`` z-depth (0 = none). Both
            depths share the ground truth's colour range, so scale errors show.
    """
    valid = depth_gt[depth_gt > 0]
    near = float(valid.quantile(0.02)) if valid.numel() else None
    far = float(valid.quantile(0.98)) if valid.numel() else None
    colours = [colorize_depth(d, near, far) for d in (depth_gt, depth)]
    images = [x.detach().float().cpu().clamp(0, 1).permute(0, 2, 3, 1) for x in (rgb_gt, rgb)]
    return torch.cat(images + colours, dim=2)


def comparison_grid(rgb: Tensor, rgb_gt: Tensor, depth: Tensor, depth_gt: Tensor) -> Tensor:
    """:func:`comparison_rows` stacked vertically: ``[3, V*H, 4W]`` (TensorBoard's CHW image)."""
    return comparison_rows(rgb, rgb_gt, depth, depth_gt).flatten(0, 1).permute(2, 0, 1)


def gif_bytes(frames: Tensor | np.ndarray, fps: float = 8.0) -> bytes:
    """An endlessly looping GIF of ``frames [T, H, W, 3]`` (float in ``[0, 1]`` or uint8)."""
    images = [Image.fromarray(frame) for frame in to_uint8_frames(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    return buffer.getvalue()


def log_video(writer, tag: str, frames: Tensor | np.ndarray, step: int, fps: float = 8.0) -> None:
    """Add ``frames [T, H, W, 3]`` to a ``SummaryWriter`` as an animated image (TensorBoard's video format).

    ``SummaryWriter.add_video`` needs moviepy for the same GIF; PIL is already here.
    """
    from tensorboard.compat.proto.summary_pb2 import Summary

    frames = to_uint8_frames(frames)
    _, H, W, C = frames.shape
    image = Summary.Image(height=H, width=W, colorspace=C, encoded_image_string=gif_bytes(frames, fps))
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)
