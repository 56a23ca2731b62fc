"""Clip sampling: one raw shard sample becomes one fixed-size training clip.

Steps (each a function below): pick ``T`` frames with a frame step; decode only those frames; resize so the image
covers the stage resolution and crop it, with the intrinsics following exactly; resize depth and masks by nearest
neighbour, so no output pixel mixes valid and invalid depth; re-express cameras and tracks relative to the first
frame; keep a fixed number of tracks that are visible in the crop; fall back to the paper's generic prompt when a
clip has no caption.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from d4s.data.schema import (
    DEPTH,
    GENERIC_PROMPT,
    META,
    REQUIRED_MEMBERS,
    RGB,
    ClipMeta,
    check_arrays,
    decode_cameras,
    decode_depth,
    decode_dynamic_mask,
    decode_tracks,
    is_dynamic,
)
from d4s.geometry.cameras import (
    check_c2w,
    check_intrinsics,
    intrinsics_from_fov,
    project_points,
    relative_to_first,
)
from d4s.geometry.crop import crop_box
from d4s.utils.checks import check_choice
from d4s.utils.video import VideoBackend, check_length, read_video


class ClipTooShort(ValueError):
    """The shard's clip holds fewer frames than ``(T - 1) * frame_step + 1``."""


@dataclass(frozen=True)
class ClipConfig:
    """What a training clip looks like.

    ``num_frames`` is ``T``; ``T - 1`` must be divisible by the VAE's ``temporal_compression`` (CogVideoX: 4, so
    ``T = 49`` at paper scale, Sec. 4.1). Random sampling draws the frame step from
    ``[frame_step, max_frame_step]`` (a larger step means faster camera motion); fixed sampling uses ``frame_step``.
    The clip is resized to cover ``height x width`` and cropped. ``num_tracks`` tracks are kept (padded when a clip
    has fewer). ``video_backend`` is ``auto`` (PyAV, then decord if PyAV fails), ``pyav`` or ``decord``
    (see :func:`d4s.utils.video.read_video` for why PyAV comes first).
    """

    num_frames: int = 49
    frame_step: int = 1
    max_frame_step: int | None = None
    height: int = 256
    width: int = 256
    num_tracks: int = 1024
    temporal_compression: int = 4
    video_backend: VideoBackend = "auto"

    def __post_init__(self) -> None:
        for name in ("num_frames", "frame_step", "height", "width", "temporal_compression"):
            if getattr(self, name) < 1:
                raise ValueError(f"clip.{name}: must be >= 1, got {getattr(self, name)}")
        if self.num_tracks < 0:
            raise ValueError(f"clip.num_tracks: must be >= 0, got {self.num_tracks}")
        if (self.num_frames - 1) % self.temporal_compression:
            raise ValueError(
                f"clip.num_frames: T - 1 must be divisible by the VAE's temporal compression "
                f"{self.temporal_compression} (e.g. 49, 25, 13, 9, 5), got T = {self.num_frames}"
            )
        if self.max_frame_step is not None and self.max_frame_step < self.frame_step:
            raise ValueError(f"clip.max_frame_step: must be >= frame_step {self.frame_step}, got {self.max_frame_step}")
        check_choice(self.video_backend, "clip.video_backend", VideoBackend)


@dataclass
class ClipSample:
    """One training clip, tensors in the project conventions (cameras relative to the first frame).

    ``video [T,3,H,W]`` uint8; ``K [T,3,3]`` pixels of the output size; ``c2w [T,4,4]`` with ``c2w[0] = I``;
    ``times [T]`` seconds since the first frame; ``frame_indices [T]`` positions in the shard's clip;
    ``depth [T,H,W]`` float16 metres as stored (0 = invalid) or ``None``; ``dynamic_mask [T,H,W]`` bool or ``None``;
    ``track_xyz [N,T,3]`` first-camera frame metres (0 where unknown) and ``track_visible [N,T]`` (inside the crop,
    in front of the camera) or ``None``, ``N <= num_tracks``. ``skipped`` counts, by reason, the samples the
    stream skipped since the clip before this one.
    """

    key: str
    dataset: str
    caption: str
    video: Tensor
    K: Tensor
    c2w: Tensor
    times: Tensor
    frame_indices: Tensor
    depth: Tensor | None
    dynamic_mask: Tensor | None
    track_xyz: Tensor | None
    track_visible: Tensor | None
    is_dynamic: bool
    is_padding: bool = False
    skipped: dict[str, int] = field(default_factory=dict)


def choose_frames(num_available: int, config: ClipConfig, rng: np.random.Generator, random: bool) -> np.ndarray:
    """Indices ``[T]`` of the frames to use: ``start + step * arange(T)``.

    Random sampling draws the step (up to the largest that fits) and the start; fixed sampling takes
    ``frame_step`` from frame 0. Raises :class:`ClipTooShort` when even ``frame_step`` does not fit.
    """
    T = config.num_frames
    if (T - 1) * config.frame_step + 1 > num_available:
        raise ClipTooShort(
            f"needs {(T - 1) * config.frame_step + 1} frames for T = {T} at step {config.frame_step}, "
            f"the clip holds {num_available}"
        )
    step = config.frame_step
    if random:
        largest = config.frame_step if config.max_frame_step is None else config.max_frame_step
        largest = min(largest, (num_available - 1) // (T - 1)) if T > 1 else largest
        step = int(rng.integers(config.frame_step, largest + 1))
    span = (T - 1) * step + 1
    start = int(rng.integers(0, num_available - span + 1)) if random else 0
    return start + step * np.arange(T)


def finite_float16(array: np.ndarray) -> bool:
    """Whether a float16 array holds no NaN or inf (those have all five exponent bits set); 3x ``np.isfinite``."""
    return not ((array.view(np.uint16) & 0x7C00) == 0x7C00).any()


def select_tracks(
    xyz: Tensor, visible: Tensor, c2w: Tensor, K: Tensor, size: tuple[int, int], count: int, rng: np.random.Generator
) -> tuple[Tensor, Tensor]:
    """Keep up to ``count`` tracks that are visible in the output crop at least once.

    Args:
        xyz: ``[N, T, 3]`` points in the frame of ``c2w`` (NaN allowed where not visible).
        visible: ``[N, T]`` bool, the dataset's visibility.
        c2w, K: ``[T, 4, 4]``, ``[T, 3, 3]`` the output cameras; ``size`` the output ``(h, w)``.
    Returns:
        ``xyz [n, T, 3]`` (0 where unknown) and ``visible [n, T]``: the dataset's visibility, restricted to points
        in front of the camera whose projection lies inside the crop; ``n = min(count, candidates)``, a random subset.
    """
    finite = torch.isfinite(xyz).all(-1)
    xyz = torch.where(finite[..., None], xyz, 0.0)
    uv, z = project_points(xyz.transpose(0, 1), c2w, K)  # [T, N, 2], [T, N]
    h, w = size
    inside = (z > 0) & (uv[..., 0] >= 0) & (uv[..., 0] < w) & (uv[..., 1] >= 0) & (uv[..., 1] < h)
    visible = visible & finite & inside.transpose(0, 1)
    candidates = np.flatnonzero(visible.any(1).numpy())
    chosen = np.sort(rng.permutation(candidates)[:count])
    index = torch.from_numpy(chosen)
    return xyz[index], visible[index]


@dataclass
class DecodedSample:
    """A raw shard sample's members decoded and checked, at the stored size: what every clip cut from it reads.

    ``cameras``: ``K [N,3,3]``, ``c2w [N,4,4]``, ``timestamps [N]``; ``depth [N,H,W]`` float16 metres, ``mask
    [N,H,W]`` bool and ``tracks`` ``(xyz [M,N,3], visible [M,N])``, each ``None`` when the sample has none. The video
    stays encoded (``rgb``: the mp4's bytes; a clip decodes only the frames it uses) until :meth:`decode_frames`
    keeps every frame (``frames [N,H,W,3]`` uint8) for a cache that cuts many clips from one sample.
    """

    key: str
    meta: ClipMeta
    cameras: dict[str, np.ndarray]
    depth: np.ndarray | None
    mask: np.ndarray | None
    tracks: tuple[np.ndarray, np.ndarray] | None
    dynamic: bool
    rgb: bytes
    frames: np.ndarray | None = None

    def decode_frames(self, backend: str) -> DecodedSample:
        """Decode every frame once (``frames``) and drop the encoded bytes; returns ``self``."""
        self.frames, self.rgb = read_video(self.rgb, backend=backend), b""
        return self

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (what a cache counts)."""
        arrays = [*self.cameras.values(), self.depth, self.mask, self.frames, *(self.tracks or ())]
        return sum(a.nbytes for a in arrays if a is not None) + len(self.rgb)


def decode_sample(sample: dict) -> DecodedSample:
    """Decode and check a raw shard sample (member name -> bytes), all but the video frames.

    Raises ``ValueError`` on a corrupt sample, naming the member.
    """
    missing = [member for member in REQUIRED_MEMBERS if member not in sample]
    if missing:
        raise ValueError(f"missing members {missing}")
    meta = ClipMeta.from_json(sample[META])
    cameras = decode_cameras(sample)
    depth, mask, tracks = decode_depth(sample), decode_dynamic_mask(sample), decode_tracks(sample)
    xyz, visible = tracks if tracks is not None else (None, None)
    # depth values are checked by sample_clip, after frame selection and cropping: only the part a clip uses must be
    # finite
    check_arrays(
        (len(meta.frame_indices), meta.height, meta.width),
        meta,
        **cameras,
        depth=depth,
        dynamic_mask=mask,
        track_xyz=xyz,
        track_visible=visible,
        check_depth_values=False,
    )
    key = sample.get("__key__", "<unknown>")
    return DecodedSample(key, meta, cameras, depth, mask, tracks, is_dynamic(sample), sample[RGB])


def sample_clip(sample: dict | DecodedSample, config: ClipConfig, rng: np.random.Generator, random: bool) -> ClipSample:
    """Turn a raw shard sample (member name -> bytes), or one already decoded (:func:`decode_sample`), into a
    :class:`ClipSample`.

    ``random`` draws the frame step, start and crop from ``rng``; otherwise they are fixed (first frames, centre
    crop). The track subset always comes from ``rng``. Raises ``ValueError`` on a corrupt sample (naming the
    member) and :class:`ClipTooShort` when the clip has too few frames.
    """
    decoded = sample if isinstance(sample, DecodedSample) else decode_sample(sample)
    meta, cameras, depth, tracks = decoded.meta, decoded.cameras, decoded.depth, decoded.tracks
    indices = choose_frames(len(meta.frame_indices), config, rng, random)
    box = crop_box((meta.height, meta.width), (config.height, config.width), rng, random)

    def fit_frame(frame: np.ndarray) -> np.ndarray:
        """Drop the encoder's even-size padding, then resize and crop: each frame as it is decoded."""
        if frame.shape[0] < meta.height or frame.shape[1] < meta.width:
            raise ValueError(f"{RGB}: frames are {list(frame.shape[:2])}, meta.json says {[meta.height, meta.width]}")
        return box.resize_image(frame[: meta.height, : meta.width])

    if decoded.frames is None:
        frames = read_video(decoded.rgb, indices.tolist(), backend=config.video_backend, transform=fit_frame)
    else:
        check_length(RGB, len(decoded.frames), indices.tolist())
        frames = np.stack([fit_frame(decoded.frames[i]) for i in indices])

    K = box.intrinsics(torch.from_numpy(cameras["K"][indices]).double())
    c2w = relative_to_first(torch.from_numpy(cameras["c2w"][indices]).double())
    check_intrinsics(K, f"{RGB}: K")
    check_c2w(c2w, "cameras.npz: c2w")
    times = cameras["timestamps"][indices] - cameras["timestamps"][indices[0]]

    clip_depth = None
    if depth is not None:
        clip_depth = box.resize_nearest(depth, indices)
        if not finite_float16(clip_depth):
            raise ValueError(f"{DEPTH}: holds NaN or inf")

    track_xyz = track_visible = None
    if tracks is not None:
        xyz, visible = tracks
        first = torch.from_numpy(cameras["c2w"][indices[0]]).double()
        points = torch.from_numpy(xyz[:, indices]).double()
        points = (points - first[:3, 3]) @ first[:3, :3]  # world -> first camera: R0^T (x - t0)
        track_xyz, track_visible = select_tracks(
            points, torch.from_numpy(visible[:, indices]), c2w, K, box.size, config.num_tracks, rng
        )
    return ClipSample(
        key=decoded.key,
        dataset=meta.dataset,
        caption=meta.caption or GENERIC_PROMPT,
        video=torch.from_numpy(frames).permute(0, 3, 1, 2),
        K=K.float(),
        c2w=c2w.float(),
        times=torch.from_numpy(times.astype(np.float32)),
        frame_indices=torch.from_numpy(indices),
        depth=None if clip_depth is None else torch.from_numpy(clip_depth),
        dynamic_mask=None if decoded.mask is None else torch.from_numpy(box.resize_nearest(decoded.mask, indices)),
        track_xyz=None if track_xyz is None else track_xyz.float(),
        track_visible=track_visible,
        is_dynamic=decoded.dynamic,
    )


def blank_sample(config: ClipConfig) -> ClipSample:
    """A zero clip flagged ``is_padding``: identity cameras, 60 degree intrinsics, no depth, masks or tracks.

    Ranks that run out of real samples yield these so every rank runs the same number of steps (no DDP hang);
    losses and metrics give them zero weight.
    """
    T, h, w = config.num_frames, config.height, config.width
    K = intrinsics_from_fov(w, h, 60.0).expand(T, 3, 3).clone()
    return ClipSample(
        key="__padding__",
        dataset="",
        caption=GENERIC_PROMPT,
        video=torch.zeros(T, 3, h, w, dtype=torch.uint8),
        K=K,
        c2w=torch.eye(4).expand(T, 4, 4).clone(),
        times=torch.zeros(T),
        frame_indices=torch.zeros(T, dtype=torch.int64),
        depth=None,
        dynamic_mask=None,
        track_xyz=None,
        track_visible=None,
        is_dynamic=False,
        is_padding=True,
    )
