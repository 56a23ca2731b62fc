"""The shard record: one clip of ``T`` frames, exactly as the annotation writer stores it and training reads it.

This module is the single source of truth for both sides. A webdataset sample holds these members:

==============  ===============================================================================================
``rgb.mp4``     H.264 (yuv420p, CRF 12) video of the clip, ``[T, H, W, 3]`` uint8 once decoded.
``cameras.npz`` ``K [T,3,3]`` float32 pixels, ``c2w [T,4,4]`` float32 OpenCV camera-to-world in metres,
                ``timestamps [T]`` float64 seconds.
``depth.npy.zst`` ``depth [T,H,W]`` float16 z-depth in metres, 0 = invalid, as a zstd-compressed ``.npy`` (absent
                when the clip has no depth). zstd's window spans several frames, so it finds what consecutive depth
                maps share, and it decompresses several times faster than zlib. Schema 1 stored ``depth.npz``
                (deflate); both read.
``masks.npz``   dynamic-object mask ``[T,H,W]`` bool, bit-packed along W (optional).
``tracks.npz``  ``xyz [N,T,3]`` float32 world metres (NaN where unknown, only where not visible),
                ``visible [N,T]`` bool (optional).
``meta.json``   :class:`ClipMeta`: schema version, provenance, alignment result, QC scores, caption, licence.
==============  ===============================================================================================

Keys are ``<dataset>__<scene>__<first frame, 6 digits>``: stable, unique and free of dots (webdataset splits
member names at the first dot).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from backports import zstd

from d4s.geometry.cameras import unproject_depth
from d4s.utils.video import encode_video, read_video

SCHEMA_VERSION = 2  # 2: depth as depth.npy.zst (schema 1: depth.npz)
DEPTH_ZSTD_LEVEL = 9  # ~45 ms to decompress 49 frames at 576 x 1024; level 19 compresses ~10% better, 20x slower
VIDEO_CRF = 12  # "high quality": visually lossless H.264; round trips stay well above 35 dB PSNR
FLOAT16_MAX = float(np.finfo(np.float16).max)

RGB, CAMERAS, DEPTH, MASKS, TRACKS, META = (
    "rgb.mp4",
    "cameras.npz",
    "depth.npy.zst",
    "masks.npz",
    "tracks.npz",
    "meta.json",
)
DEPTH_V1 = "depth.npz"
REQUIRED_MEMBERS = (RGB, CAMERAS, META)
OPTIONAL_MEMBERS = (DEPTH, MASKS, TRACKS)

# a clip is dynamic when its dynamic masks cover at least this fraction of its pixels (0.1%: a few dozen pixels per
# 256 px frame, above the speckle that flow-based masks leave on static scenes); shard indexes count clips with it
DYNAMIC_MIN_FRACTION = 1e-3
# the caption of a clip that has none: the paper's generic high-fidelity prompt (Appendix C.1)
GENERIC_PROMPT = (
    "a scene with 4K ultra HD, surround motion, realistic tone, panoramic shot, wide-angle view, cinematic quality"
)

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def sample_key(dataset: str, scene: str, first_frame: int) -> str:
    """The stable, unique webdataset key of the clip of ``scene`` that starts at ``first_frame``.

    Characters other than letters, digits, ``_`` and ``-`` become ``-``; when that changes the scene name a short
    hash of the original is appended, so two scenes never share a key.
    """
    if first_frame < 0:
        raise ValueError(f"first_frame: must be >= 0, got {first_frame}")
    safe = _UNSAFE.sub("-", scene).replace("__", "_-")
    if safe != scene:
        safe = f"{safe}-{hashlib.sha1(scene.encode()).hexdigest()[:8]}"
    return f"{_UNSAFE.sub('-', dataset)}__{safe}__{first_frame:06d}"


@dataclass
class ClipMeta:
    """Provenance and quality of one clip (``meta.json``).

    ``alignment`` holds the metric alignment result (scale, shift, space, residual, anchors) or is ``None`` when
    the depth was metric already; ``quality`` holds the QC scores that the clip passed.
    """

    dataset: str
    scene: str
    frame_indices: list[int]
    fps: float
    height: int
    width: int
    pose_source: str
    depth_source: str | None
    metric: bool
    alignment: dict[str, Any] | None = None
    quality: dict[str, Any] = field(default_factory=dict)
    caption: str = ""
    licence: str = ""
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> ClipMeta:
        values = json.loads(data)
        version = values.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise ValueError(
                f"meta.json: schema version {version!r} is newer than this code reads (<= {SCHEMA_VERSION})"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        missing = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING} - values.keys()
        if missing:
            raise ValueError(f"meta.json: missing fields {sorted(missing)}")
        return cls(**{name: value for name, value in values.items() if name in known})


@dataclass
class ClipRecord:
    """One clip in memory, numpy arrays in the project conventions (see the module docstring for shapes)."""

    key: str
    frames: np.ndarray
    K: np.ndarray
    c2w: np.ndarray
    timestamps: np.ndarray
    meta: ClipMeta
    depth: np.ndarray | None = None
    dynamic_mask: np.ndarray | None = None
    track_xyz: np.ndarray | None = None
    track_visible: np.ndarray | None = None

    @property
    def num_frames(self) -> int:
        return self.frames.shape[0]

    def validate(self) -> ClipRecord:
        """Check shapes, dtypes and finiteness against each other; raise ``ValueError`` naming the field."""
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3 or self.frames.dtype != np.uint8:
            raise ValueError(f"frames: expected uint8 [T, H, W, 3], got {self.frames.dtype} {list(self.frames.shape)}")
        check_arrays(
            self.frames.shape[:3],
            self.meta,
            K=self.K,
            c2w=self.c2w,
            timestamps=self.timestamps,
            depth=self.depth,
            dynamic_mask=self.dynamic_mask,
            track_xyz=self.track_xyz,
            track_visible=self.track_visible,
        )
        return self

    def pointmaps(self) -> tuple[np.ndarray, np.ndarray]:
        """World-space pointmaps ``[T, H, W, 3]`` (metres) and their validity ``[T, H, W]`` (depth > 0).

        Built by :func:`d4s.geometry.cameras.unproject_depth`, the one place depth becomes points.
        """
        if self.depth is None:
            raise ValueError(f"{self.key}: the clip has no depth, so it has no pointmaps")
        points = unproject_depth(
            torch.from_numpy(self.depth.astype(np.float32)),
            torch.from_numpy(self.K.astype(np.float32)),
            torch.from_numpy(self.c2w.astype(np.float32)),
        )
        return points.numpy(), self.depth > 0


def check_arrays(
    size: tuple[int, int, int],
    meta: ClipMeta,
    K: np.ndarray,
    c2w: np.ndarray,
    timestamps: np.ndarray,
    depth: np.ndarray | None = None,
    dynamic_mask: np.ndarray | None = None,
    track_xyz: np.ndarray | None = None,
    track_visible: np.ndarray | None = None,
    check_depth_values: bool = True,
) -> None:
    """Check a clip's arrays against its size ``(T, H, W)`` and its meta; raise ``ValueError`` naming the field.

    Values must be finite (tracks: where visible); ``check_depth_values=False`` leaves depth values to a caller that
    checks only the part it uses.
    """
    T, H, W = size
    expected = {
        "K": (K, (T, 3, 3)),
        "c2w": (c2w, (T, 4, 4)),
        "timestamps": (timestamps, (T,)),
        "depth": (depth, (T, H, W)),
        "dynamic_mask": (dynamic_mask, (T, H, W)),
    }
    if track_xyz is not None or track_visible is not None:
        if track_xyz is None or track_visible is None:
            raise ValueError("tracks: track_xyz and track_visible come together")
        expected["track_xyz"] = (track_xyz, (track_xyz.shape[0], T, 3))
        expected["track_visible"] = (track_visible, (track_xyz.shape[0], T))
    for name, (value, shape) in expected.items():
        if value is not None and tuple(value.shape) != shape:
            raise ValueError(f"{name}: expected shape {list(shape)}, got {list(value.shape)}")
    for name, value in (
        ("K", K),
        ("c2w", c2w),
        ("timestamps", timestamps),
        ("depth", depth if check_depth_values else None),
    ):
        if value is not None and not np.isfinite(value).all():
            raise ValueError(f"{name}: holds NaN or inf")
    if track_xyz is not None and not np.isfinite(track_xyz[track_visible.astype(bool)]).all():
        raise ValueError("track_xyz: NaN or inf at a visible point")
    if (meta.height, meta.width) != (H, W) or len(meta.frame_indices) != T:
        raise ValueError("meta: size or frame_indices disagree with the frames")


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    """A compressed ``.npz`` with fixed member timestamps, so the same arrays always give the same bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w") as member:
                np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def _zstd_npy_bytes(array: np.ndarray) -> bytes:
    """``array`` as a zstd-compressed ``.npy`` (header and data; the same array always gives the same bytes)."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    return zstd.compress(buffer.getvalue(), DEPTH_ZSTD_LEVEL)


def _load_npz(data: bytes, member: str, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            missing = [name for name in names if name not in npz.files]
            if missing:
                raise ValueError(f"{member}: missing arrays {missing}")
            return {name: npz[name] for name in names}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as error:
        raise ValueError(f"{member}: cannot read ({error})") from error


def encode_record(record: ClipRecord) -> dict[str, Any]:
    """The webdataset sample (``__key__`` plus member bytes) of a validated record."""
    record.validate()
    sample: dict[str, Any] = {
        "__key__": record.key,
        RGB: encode_video(record.frames, fps=record.meta.fps, crf=VIDEO_CRF),
        CAMERAS: _npz_bytes(
            K=record.K.astype(np.float32),
            c2w=record.c2w.astype(np.float32),
            timestamps=record.timestamps.astype(np.float64),
        ),
        META: record.meta.to_json(),
    }
    if record.depth is not None:
        depth = np.where(record.depth < FLOAT16_MAX, record.depth, 0.0)  # beyond float16 range: invalid
        sample[DEPTH] = _zstd_npy_bytes(depth.astype(np.float16))
    if record.dynamic_mask is not None:
        mask = record.dynamic_mask.astype(bool)
        sample[MASKS] = _npz_bytes(packed=np.packbits(mask, axis=-1), shape=np.array(mask.shape, np.int64))
    if record.track_xyz is not None:
        sample[TRACKS] = _npz_bytes(xyz=record.track_xyz.astype(np.float32), visible=record.track_visible.astype(bool))
    return sample


def decode_cameras(sample: dict[str, Any]) -> dict[str, np.ndarray]:
    """``K [T,3,3]``, ``c2w [T,4,4]`` and ``timestamps [T]`` of a raw sample."""
    return _load_npz(sample[CAMERAS], CAMERAS, ("K", "c2w", "timestamps"))


def decode_depth(sample: dict[str, Any]) -> np.ndarray | None:
    """``depth [T,H,W]`` float16 metres (0 = invalid), as stored, of a raw sample; ``None`` when it has no depth."""
    if DEPTH in sample:
        try:
            with io.BytesIO(zstd.decompress(sample[DEPTH])) as buffer:
                depth = np.lib.format.read_array(buffer, allow_pickle=False)
        except (zstd.ZstdError, ValueError, EOFError) as error:
            raise ValueError(f"{DEPTH}: cannot read ({error})") from error
    elif DEPTH_V1 in sample:
        depth = _load_npz(sample[DEPTH_V1], DEPTH_V1, ("depth",))["depth"]
    else:
        return None
    if depth.dtype != np.float16 or depth.ndim != 3:
        raise ValueError(f"{DEPTH}: expected float16 [T, H, W], got {depth.dtype} {list(depth.shape)}")
    return depth


def _packed_masks(sample: dict[str, Any]) -> tuple[np.ndarray, tuple[int, ...]] | None:
    if MASKS not in sample:
        return None
    masks = _load_npz(sample[MASKS], MASKS, ("packed", "shape"))
    shape = tuple(int(n) for n in masks["shape"])
    if len(shape) != 3 or masks["packed"].shape != shape[:-1] + ((shape[-1] + 7) // 8,):
        raise ValueError(f"{MASKS}: packed array {list(masks['packed'].shape)} does not match shape {list(shape)}")
    return masks["packed"], shape


def decode_dynamic_mask(sample: dict[str, Any]) -> np.ndarray | None:
    """Dynamic-object masks ``[T,H,W]`` bool of a raw sample, or ``None`` when it has none."""
    packed = _packed_masks(sample)
    if packed is None:
        return None
    bits, shape = packed
    return np.unpackbits(bits, axis=-1, count=shape[-1]).astype(bool)


def decode_tracks(sample: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """``(xyz [N,T,3] float32, visible [N,T] bool)`` of a raw sample, or ``None`` when it has no tracks."""
    if TRACKS not in sample:
        return None
    tracks = _load_npz(sample[TRACKS], TRACKS, ("xyz", "visible"))
    return tracks["xyz"], tracks["visible"].astype(bool)


def dynamic_fraction(sample: dict[str, Any]) -> float:
    """Fraction of a raw sample's mask pixels marked dynamic (0 without masks), counted on the packed bits.

    Cheap: it reads ``masks.npz`` only, so a loader can select static or dynamic clips before decoding video.
    """
    packed = _packed_masks(sample)
    if packed is None:
        return 0.0
    bits, shape = packed
    return float(np.bitwise_count(bits).sum()) / max(1, int(np.prod(shape)))  # packbits pads with zero bits


def is_dynamic(sample: dict[str, Any]) -> bool:
    """Whether a raw sample shows motion: its dynamic masks cover at least :data:`DYNAMIC_MIN_FRACTION`.

    A clip without masks counts as static: annotation writes masks for every clip whose scene can move.
    """
    return dynamic_fraction(sample) >= DYNAMIC_MIN_FRACTION


def decode_record(sample: dict[str, Any]) -> ClipRecord:
    """Inverse of :func:`encode_record` for a raw webdataset sample (member name -> bytes)."""
    key = sample.get("__key__", "<unknown>")
    missing = [member for member in REQUIRED_MEMBERS if member not in sample]
    if missing:
        raise ValueError(f"sample {key}: missing members {missing}")
    meta = ClipMeta.from_json(sample[META])
    frames = read_video(sample[RGB])[:, : meta.height, : meta.width]  # drop the even-size padding
    record = ClipRecord(key=key, frames=frames, meta=meta, **decode_cameras(sample))
    depth = decode_depth(sample)
    record.depth = None if depth is None else depth.astype(np.float32)
    record.dynamic_mask = decode_dynamic_mask(sample)
    tracks = decode_tracks(sample)
    if tracks is not None:
        record.track_xyz, record.track_visible = tracks
    return record.validate()
