"""The training batch: clips stacked, with flags that say which supervision each clip carries."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from d4s.data.clips import ClipSample
from d4s.geometry.plucker import plucker_embedding


@dataclass
class Batch:
    """``B`` clips of ``T`` frames at ``H x W``, cameras relative to each clip's first frame (``c2w[:, 0] = I``).

    Fields (``B`` = batch, ``T`` = frames, ``N`` = tracks per clip):

    - ``keys``, ``datasets``, ``captions``: ``list[str]`` of length ``B`` (the paper's generic prompt when a clip
      has no caption).
    - ``video [B,T,3,H,W]``: uint8 as it leaves the workers; :meth:`prepare` (run by the DataModule once the batch
      is on its device) turns it into float in ``[0, 1]``. ``condition_image`` is frame 0.
    - ``K [B,T,3,3]`` pixels of ``H x W``; ``c2w [B,T,4,4]`` OpenCV camera-to-world; ``times [B,T]`` seconds since
      frame 0; ``frame_indices [B,T]`` positions in the annotated clip.
    - ``plucker [B,T,6,H,W]`` (``[o x d, d]``): ``None`` until :meth:`prepare` computes it from ``K`` and ``c2w``
      on the device, which keeps 6 float channels per pixel out of worker-to-trainer transfers.
    - ``depth [B,T,H,W]`` z-depth metres, 0 = invalid; all 0 where ``has_depth [B]`` is false. float16 (as stored)
      from the workers, float32 after :meth:`prepare`.
    - ``dynamic_mask [B,T,H,W]`` bool; all false where ``has_dynamic_mask [B]`` is false.
    - ``track_xyz [B,N,T,3]`` metres in the first camera's frame, ``track_visible [B,N,T]`` (inside the image, in
      front of the camera), ``track_valid [B,N]`` (false for padding: clips with fewer tracks, or none, where
      ``has_tracks [B]`` is false).
    - ``is_dynamic [B]``: the clip shows motion (:func:`d4s.data.schema.is_dynamic`).
    - ``is_padding [B]``: a blank clip that only balances DDP ranks; give it zero weight (see ``weight``).
    - ``skipped``: samples the workers skipped since their previous batch, by reason (corrupt, too short, ...).
    """

    keys: list[str]
    datasets: list[str]
    captions: list[str]
    video: Tensor
    K: Tensor
    c2w: Tensor
    times: Tensor
    frame_indices: Tensor
    depth: Tensor
    has_depth: Tensor
    dynamic_mask: Tensor
    has_dynamic_mask: Tensor
    track_xyz: Tensor
    track_visible: Tensor
    track_valid: Tensor
    has_tracks: Tensor
    is_dynamic: Tensor
    is_padding: Tensor
    plucker: Tensor | None = None
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def condition_image(self) -> Tensor:
        """The first frame ``[B,3,H,W]``, the model's input image."""
        return self.video[:, 0]

    @property
    def weight(self) -> Tensor:
        """Per-clip loss weight ``[B]``: 1 for real clips, 0 for padding.

        A batch can be all padding (a rank with fewer real clips, in a finite multi-rank epoch): normalise by
        ``weight.sum().clamp_min(1)``, and still run backward on that rank, or DDP waits for it forever.
        """
        return (~self.is_padding).to(torch.float32)

    def _map_tensors(self, fn) -> Batch:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **{k: fn(v) for k, v in values.items() if isinstance(v, Tensor)})

    def take(self, count: int) -> Batch:
        """The first ``count`` clips as a batch of their own."""
        sliced = self._map_tensors(lambda value: value[:count])
        return dataclasses.replace(
            sliced, keys=self.keys[:count], datasets=self.datasets[:count], captions=self.captions[:count]
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on ``device``."""
        return self._map_tensors(lambda value: value.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        """A copy in pinned host memory (the DataLoader calls this when ``pin_memory=True``)."""
        return self._map_tensors(lambda value: value.pin_memory())

    def prepare(self) -> Batch:
        """Float video in ``[0, 1]``, float32 depth and Plücker maps, computed on the batch's device; idempotent."""
        if self.plucker is not None:
            return self
        B, T, _, H, W = self.video.shape
        video = self.video.float() / 255.0 if self.video.dtype == torch.uint8 else self.video
        plucker = plucker_embedding(self.c2w.reshape(B * T, 4, 4), self.K.reshape(B * T, 3, 3), H, W)
        return dataclasses.replace(self, video=video, depth=self.depth.float(), plucker=plucker.reshape(B, T, 6, H, W))


def _stack_optional(values: Sequence[Tensor | None], shape: tuple[int, ...], dtype: torch.dtype) -> Tensor:
    """Stack per-clip tensors of ``shape``, zeros where a clip has none."""
    return torch.stack([torch.zeros(shape, dtype=dtype) if v is None else v.to(dtype) for v in values])


def collate_clips(samples: Sequence[ClipSample], num_tracks: int | None = None) -> Batch:
    """Stack :class:`ClipSample` s (same ``T``, ``H``, ``W``) into a :class:`Batch`, padding tracks to ``N``.

    ``N`` is ``num_tracks`` (the DataModule passes the clip config's, so every batch has the same shapes), or the
    largest track count in the batch; the samples' ``skipped`` counts are summed.
    """
    if not samples:
        raise ValueError("collate_clips: no samples")
    T, _, H, W = samples[0].video.shape
    for sample in samples:
        if sample.video.shape != (T, 3, H, W):
            raise ValueError(
                f"collate_clips: clip {sample.key} has video {list(sample.video.shape)}, expected {[T, 3, H, W]}"
            )
    most = max((0 if s.track_xyz is None else s.track_xyz.shape[0]) for s in samples)
    if num_tracks is not None and most > num_tracks:
        raise ValueError(f"collate_clips: a clip has {most} tracks, more than num_tracks = {num_tracks}")
    num_tracks = most if num_tracks is None else num_tracks
    track_xyz = torch.zeros(len(samples), num_tracks, T, 3)
    track_visible = torch.zeros(len(samples), num_tracks, T, dtype=torch.bool)
    track_valid = torch.zeros(len(samples), num_tracks, dtype=torch.bool)
    for i, sample in enumerate(samples):
        if sample.track_xyz is not None:
            n = sample.track_xyz.shape[0]
            track_xyz[i, :n], track_visible[i, :n], track_valid[i, :n] = sample.track_xyz, sample.track_visible, True
    total = Counter()
    for sample in samples:
        total.update(sample.skipped)
    return Batch(
        keys=[s.key for s in samples],
        datasets=[s.dataset for s in samples],
        captions=[s.caption for s in samples],
        video=torch.stack([s.video for s in samples]),
        K=torch.stack([s.K for s in samples]),
        c2w=torch.stack([s.c2w for s in samples]),
        times=torch.stack([s.times for s in samples]),
        frame_indices=torch.stack([s.frame_indices for s in samples]),
        depth=_stack_optional([s.depth for s in samples], (T, H, W), torch.float16),
        has_depth=torch.tensor([s.depth is not None for s in samples]),
        dynamic_mask=_stack_optional([s.dynamic_mask for s in samples], (T, H, W), torch.bool),
        has_dynamic_mask=torch.tensor([s.dynamic_mask is not None for s in samples]),
        track_xyz=track_xyz,
        track_visible=track_visible,
        track_valid=track_valid,
        has_tracks=torch.tensor([s.track_xyz is not None for s in samples]),
        is_dynamic=torch.tensor([s.is_dynamic for s in samples]),
        is_padding=torch.tensor([s.is_padding for s in samples]),
        skipped=dict(total),
    )
