"""The scenes of an evaluation: clips from annotated shards (with their real video) or images."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from d4s.eval.config import GenerationConfig, SceneConfig

log = logging.getLogger(__name__)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")  # characters a scene name cannot keep in a folder name


# ------------------------------------------------------------------------------------------------------- scenes
@dataclass
class Scene:
    """One evaluation scene. ``image [3, H, W]`` in [0, 1] and its intrinsics ``K [3, 3]``; with a real video also
    ``video [T, 3, H, W]`` uint8, ``c2w [T, 4, 4]`` (frame 0 = identity), ``K_video [T, 3, 3]``, ``depth [T, H, W]``
    metres (0 = invalid) or ``None``, and ``track_xyz [N, T, 3]`` (first-camera frame, metres) with ``track_visible
    [N, T]``, or ``None``."""

    name: str
    caption: str
    image: Tensor
    K: Tensor
    video: Tensor | None = None
    c2w: Tensor | None = None
    K_video: Tensor | None = None
    depth: Tensor | None = None
    track_xyz: Tensor | None = None
    track_visible: Tensor | None = None

    def focus(self) -> float | None:
        """The median valid real depth of frame 0 (metres), or ``None``."""
        if self.depth is None:
            return None
        valid = self.depth[0][self.depth[0] > 0]
        return float(valid.float().median()) if valid.numel() else None


def _shard_scenes(
    config: SceneConfig, generation: GenerationConfig, limit: int, num_tracks: int = 0
) -> Iterator[Scene]:
    from d4s.data.clips import ClipConfig, ClipTooShort, sample_clip
    from d4s.data.shards import read_shard
    from d4s.data.sources import ShardSource, resolve_source

    source = ShardSource(name="eval", index=config.index, shards=config.shards, split=config.split)
    clip = ClipConfig(
        num_frames=generation.frames,
        frame_step=generation.frame_step,
        height=generation.height,
        width=generation.width,
        num_tracks=num_tracks,
    )
    count, skipped = 0, Counter()
    for shard in resolve_source(source):
        for raw in read_shard(shard.url, skipped):
            if count >= limit:
                return
            try:
                clip_sample = sample_clip(raw, clip, np.random.default_rng(0), random=False)
            except ClipTooShort as error:
                log.warning("scene %s skipped: %s", raw.get("__key__"), error)
                continue
            video = clip_sample.video
            count += 1
            yield Scene(
                name=_UNSAFE.sub("-", clip_sample.key),
                caption=clip_sample.caption,
                image=video[0].float() / 255.0,
                K=clip_sample.K[0],
                video=video,
                c2w=clip_sample.c2w,
                K_video=clip_sample.K,
                depth=None if clip_sample.depth is None else clip_sample.depth.float(),
                track_xyz=clip_sample.track_xyz,
                track_visible=clip_sample.track_visible,
            )


def _image_scenes(config: SceneConfig, generation: GenerationConfig, limit: int) -> Iterator[Scene]:
    from d4s.generation import collect_jobs, input_image
    from d4s.geometry.cameras import intrinsics_from_fov
    from d4s.geometry.crop import crop_box
    from d4s.utils.image import load_photo

    images = Path(config.images)
    if not images.exists():
        raise FileNotFoundError(f"scenes.images: not found: {images} (a folder of images or a .txt list)")
    size = (generation.height, generation.width)
    for job in collect_jobs(images, config.prompt, Path(""))[:limit]:
        photo = load_photo(job.image)
        K = crop_box(photo.shape[:2], size).intrinsics(intrinsics_from_fov(photo.shape[1], photo.shape[0], config.fov))
        yield Scene(name=_UNSAFE.sub("-", job.out.name), caption=job.prompt, image=input_image(photo, size), K=K)


def load_scenes(config: SceneConfig, generation: GenerationConfig, num_tracks: int = 0) -> list[Scene]:
    """The evaluation scenes: shard clips first, then images, at most ``max_scenes`` (module docstring), with up to
    ``num_tracks`` 3D tracks per clip that has them."""
    has_shards = config.index is not None or config.shards is not None
    if not has_shards and config.images is None:
        raise ValueError("scenes: no source; give scenes.index (or scenes.shards) and/or scenes.images")
    if config.index is not None and config.shards is not None:
        raise ValueError("scenes: give one of scenes.index and scenes.shards, not both")
    scenes: list[Scene] = []
    if has_shards:
        scenes.extend(_shard_scenes(config, generation, config.max_scenes, num_tracks))
    if config.images is not None and len(scenes) < config.max_scenes:
        scenes.extend(_image_scenes(config, generation, config.max_scenes - len(scenes)))
    if not scenes:
        raise ValueError("scenes: the configured sources hold no usable scene (clips too short for generation.frames?)")
    names = Counter(scene.name for scene in scenes)
    if len(names) < len(scenes):
        raise ValueError(f"scenes: repeated scene names {[n for n, c in names.items() if c > 1][:3]}")
    return scenes
