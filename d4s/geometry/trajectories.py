"""Camera trajectories for generation and evaluation.

Every trajectory is ``c2w [T, 4, 4]`` float32 in OpenCV axes and starts at the identity camera. The paper's
evaluation uses ``spiral, forward, backward, upward, downward`` (Sec. 4.2); ``orbit`` is a closed 360 degree
loop for cycle-consistency checks; ``from_file`` reads a JSON camera list or a RealEstate10K camera file.

``scene_scale`` (metres) is the distance from the first camera to the point it looks at, the "focus" at
``(0, 0, scene_scale)``. Motions are proportional to it, so one set of defaults suits rooms and streets alike.
Our choices where the paper gives no definition (documented, configurable through keyword arguments):

- ``forward`` / ``backward``: dolly along +z / -z by ``travel * scene_scale``, orientation fixed.
- ``upward`` / ``downward``: pedestal along -y / +y (up is -y in OpenCV axes) by ``travel * scene_scale``.
- ``spiral``: the camera leaves the identity on an outward spiral (radius growing linearly to
  ``spiral_radius * scene_scale`` over ``spiral_turns`` turns) while dollying in by
  ``spiral_forward * scene_scale``, always looking at the focus.
- ``orbit``: a full revolution about the vertical axis through the focus. The last pose repeats the first, so
  ``T`` frames hold ``T - 1`` distinct views and close the loop (what cycle-consistency checks need). With
  ``orbit_degrees`` below 360 the camera swings instead (bullet-time views of a single-image scene, whose back is
  never seen): out to ``+orbit_degrees / 2`` about the same axis, across to ``-orbit_degrees / 2`` and back, a
  closed loop too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from d4s.geometry.cameras import check_c2w, check_intrinsics, look_at, relative_to_first, rigid_inverse
from d4s.geometry.quaternion import quat_slerp, quat_to_rotmat, rotmat_to_quat
from d4s.utils.checks import check_positive_int
from d4s.utils.fileio import write_json

TRAJECTORY_NAMES = ("spiral", "forward", "backward", "upward", "downward", "orbit", "from_file")


@dataclass(frozen=True)
class CameraPath:
    """Cameras read from a file, in the file's own world frame.

    Attributes:
        c2w: ``[T, 4, 4]`` camera-to-world poses.
        K: ``[T, 3, 3]`` intrinsics in pixels of an ``image_size`` image, or ``None`` if the file has none.
            RealEstate10K stores normalised intrinsics; they are returned as the intrinsics of a 1x1 image
            (``image_size == (1, 1)``), so ``resize_intrinsics(K, (1, 1), (H, W))`` gives pixels.
        image_size: ``(height, width)`` that ``K`` refers to, or ``None`` when unknown.
        times: ``[T]`` the scene time each frame shows, when the file says (the cameras ``d4s.generate`` and
            ``d4s.render_scene`` write do), else ``None``.
    """

    c2w: Tensor
    K: Tensor | None
    image_size: tuple[int, int] | None
    times: Tensor | None = None


def _translation_path(num_frames: int, direction: tuple[float, float, float], distance: float) -> Tensor:
    s = torch.linspace(0.0, 1.0, num_frames, dtype=torch.float64)
    c2w = torch.eye(4, dtype=torch.float64).repeat(num_frames, 1, 1)
    c2w[:, :3, 3] = s[:, None] * distance * torch.tensor(direction, dtype=torch.float64)
    return c2w


def _spiral(
    num_frames: int, scene_scale: float, spiral_radius: float, spiral_turns: float, spiral_forward: float
) -> Tensor:
    s = torch.linspace(0.0, 1.0, num_frames, dtype=torch.float64)
    theta = 2.0 * math.pi * spiral_turns * s
    radius = spiral_radius * scene_scale * s
    eye = torch.stack([radius * torch.cos(theta), radius * torch.sin(theta), spiral_forward * scene_scale * s], dim=-1)
    focus = torch.tensor([0.0, 0.0, scene_scale], dtype=torch.float64).expand_as(eye)
    return look_at(eye, focus)


def _orbit(num_frames: int, scene_scale: float, degrees: float) -> Tensor:
    s = torch.linspace(0.0, 1.0, num_frames, dtype=torch.float64)
    if degrees == 360.0:
        theta = 2.0 * math.pi * s
    else:  # a swing: out to +degrees/2, across to -degrees/2, back to the start
        theta = math.radians(degrees) / 2.0 * torch.sin(2.0 * math.pi * s)
    cos, sin = torch.cos(theta), torch.sin(theta)
    rot = torch.zeros(num_frames, 3, 3, dtype=torch.float64)
    rot[:, 0, 0], rot[:, 0, 2], rot[:, 1, 1], rot[:, 2, 0], rot[:, 2, 2] = cos, sin, 1.0, -sin, cos
    focus = torch.tensor([0.0, 0.0, scene_scale], dtype=torch.float64)
    c2w = torch.eye(4, dtype=torch.float64).repeat(num_frames, 1, 1)
    c2w[:, :3, :3] = rot
    c2w[:, :3, 3] = focus - rot @ focus  # rotate the camera centre (the origin) about the focus
    if num_frames > 1:
        c2w[-1] = c2w[0]  # exactly closed: cos(2 pi) and sin(2 pi) are not exact in floating point
    return c2w


def _read_json_path(path: Path) -> CameraPath:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    frames = data.get("frames") if isinstance(data, dict) else data
    if not isinstance(frames, list) or not frames:
        raise ValueError(f"{path}: expected a non-empty list of frames, each {{'c2w': 4x4, 'K': 3x3 (optional)}}")
    try:
        c2w = torch.tensor([frame["c2w"] for frame in frames], dtype=torch.float64)
        has_K = ["K" in frame for frame in frames]
        K = torch.tensor([frame["K"] for frame in frames], dtype=torch.float64) if all(has_K) else None
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: every frame needs 'c2w' as a 4x4 list of numbers ({err!s})") from err
    if any(has_K) and not all(has_K):
        raise ValueError(f"{path}: 'K' is given for some frames but not all")
    times = None
    if all(isinstance(frame, dict) and "time" in frame for frame in frames):
        try:
            times = torch.tensor([float(frame["time"]) for frame in frames], dtype=torch.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: every frame's 'time' must be a number ({err!s})") from err
        if not torch.isfinite(times).all() or (times < 0).any():
            raise ValueError(f"{path}: frame times must be finite and >= 0")
    size = None
    if isinstance(data, dict) and "width" in data and "height" in data:
        size = (int(data["height"]), int(data["width"]))
    return CameraPath(c2w=c2w, K=K, image_size=size, times=times)


@dataclass(frozen=True)
class RealEstate10KCameras:
    """The camera lines of a RealEstate10K file, as stored (no conversion beyond parsing).

    Attributes:
        timestamps_us: ``[T]`` int64 frame timestamps in microseconds of the source video.
        intrinsics: ``[T, 4]`` float64 ``fx, fy, cx, cy`` normalised by the image width and height.
        w2c: ``[T, 4, 4]`` float64 world-to-camera poses, OpenCV axes (checked finite and rigid).
        line_numbers: the 1-based line of the file each frame came from.
    """

    timestamps_us: Tensor
    intrinsics: Tensor
    w2c: Tensor
    line_numbers: tuple[int, ...]


def _check_realestate10k_pose(w2c: Tensor, intrinsics: Tensor, line_no: int, frame: int, atol: float) -> None:
    """Raise ``ValueError`` naming the line if a camera line has non-finite numbers or an improper rotation."""
    if not (torch.isfinite(w2c).all() and torch.isfinite(intrinsics).all()):
        raise ValueError(f"line {line_no}: frame {frame} has a non-finite pose or intrinsics")
    if (intrinsics[:2] <= 0).any():
        raise ValueError(f"line {line_no}: focal lengths fx, fy must be positive, got {intrinsics[:2].tolist()}")
    R = w2c[:3, :3]
    det = float(torch.linalg.det(R))
    ortho_err = float((R @ R.T - torch.eye(3, dtype=R.dtype)).abs().max())
    if abs(det - 1.0) > atol or ortho_err > atol:
        raise ValueError(
            f"line {line_no}: rotation is not proper "
            f"(det = {det:.6g}, max |R R^T - I| = {ortho_err:.3g}, tolerance {atol})"
        )


def parse_realestate10k_cameras(text: str, atol: float = 1e-3) -> RealEstate10KCameras:
    """Parse the text of a RealEstate10K camera file.

    Format: line 1 is the video URL; every further non-blank line holds 19 fields:
    ``timestamp_us fx fy cx cy 0 0`` then a row-major 3x4 world-to-camera ``[R | t]`` (OpenCV axes), intrinsics
    normalised by the image width (``fx, cx``) and height (``fy, cy``).

    Raises ``ValueError`` whose message starts with ``line N:`` for a wrong field count, a non-numeric value, a
    non-integer timestamp, a non-finite number, a non-positive focal length, a rotation that is not proper
    (``det(R) = +1`` and ``R R^T = I`` within ``atol``), or a file without camera lines.
    """
    lines = text.splitlines()
    if lines and len(lines[0].split()) == 19:
        raise ValueError("line 1: looks like a camera line; RealEstate10K files start with the video URL")
    timestamps, rows, line_numbers = [], [], []
    for line_no, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 19:
            raise ValueError(f"line {line_no}: expected 19 numbers (RealEstate10K camera line), got {len(fields)}")
        try:
            timestamps.append(int(fields[0]))
            rows.append([float(x) for x in fields[1:]])
        except ValueError as err:
            raise ValueError(f"line {line_no}: {err}") from err
        line_numbers.append(line_no)
    if not rows:
        raise ValueError("no camera lines (RealEstate10K files hold a URL line, then one line per frame)")
    table = torch.tensor(rows, dtype=torch.float64)
    w2c = torch.eye(4, dtype=torch.float64).repeat(len(rows), 1, 1)
    w2c[:, :3, :] = table[:, 6:].reshape(-1, 3, 4)
    for frame, line_no in enumerate(line_numbers):
        _check_realestate10k_pose(w2c[frame], table[frame, :4], line_no, frame, atol)
    return RealEstate10KCameras(
        timestamps_us=torch.tensor(timestamps, dtype=torch.int64),
        intrinsics=table[:, :4],
        w2c=w2c,
        line_numbers=tuple(line_numbers),
    )


def _read_realestate10k_path(path: Path) -> CameraPath:
    try:
        cameras = parse_realestate10k_cameras(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    fx, fy, cx, cy = cameras.intrinsics.unbind(-1)
    K = torch.zeros(len(fx), 3, 3, dtype=torch.float64)
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = fx, fy, cx, cy, 1.0
    return CameraPath(c2w=rigid_inverse(cameras.w2c), K=K, image_size=(1, 1))


def load_camera_path(path: str | Path) -> CameraPath:
    """Read cameras from a ``.json`` file or a RealEstate10K camera ``.txt`` file.

    JSON: a list of frames ``{"c2w": 4x4, "K": 3x3}`` (``K`` optional, in pixels), or an object
    ``{"width": W, "height": H, "frames": [...]}`` that also says which image size ``K`` refers to.
    RealEstate10K: a URL line, then per frame ``timestamp fx fy cx cy 0 0`` and a row-major 3x4 world-to-camera
    matrix, intrinsics normalised by the image size.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` (naming the file and, where it helps,
    the line or frame) for malformed content, non-finite numbers or poses that are not rigid.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trajectory file not found: {path}")
    camera_path = _read_json_path(path) if path.suffix.lower() == ".json" else _read_realestate10k_path(path)
    check_c2w(camera_path.c2w, f"{path}: c2w")
    if camera_path.K is not None:
        check_intrinsics(camera_path.K, f"{path}: K")
    return camera_path


def save_camera_path(
    path: str | Path, c2w: Tensor, K: Tensor, image_size: tuple[int, int], times: Sequence[float] | None = None
) -> Path:
    """Write cameras as the JSON that :func:`load_camera_path` reads (atomically); returns the path.

    Args:
        c2w: ``[T, 4, 4]`` camera-to-world poses; K: ``[T, 3, 3]`` or ``[3, 3]`` intrinsics in pixels of an
            ``image_size = (height, width)`` image.
        times: the scene time shown in each frame (stored as ``"time"``, which readers of camera paths ignore).
    """
    check_c2w(c2w, "c2w")
    K = check_intrinsics(K, "K").expand(c2w.shape[0], 3, 3)
    if times is not None and len(times) != c2w.shape[0]:
        raise ValueError(f"times: {len(times)} values for {c2w.shape[0]} cameras")
    frames = [{"c2w": pose.tolist(), "K": k.tolist()} for pose, k in zip(c2w.double().cpu(), K.double().cpu())]
    for frame, time in zip(frames, times if times is not None else []):
        frame["time"] = float(time)
    document = {"height": int(image_size[0]), "width": int(image_size[1]), "frames": frames}
    return write_json(path, document)


def resample_poses(c2w: Tensor, num_frames: int) -> Tensor:
    """Resample a pose sequence ``[T, 4, 4]`` to ``num_frames`` poses evenly spaced in frame index.

    Rotations are interpolated by slerp, translations linearly; the first and last poses are kept.
    """
    check_positive_int(num_frames, "num_frames")
    if c2w.shape[0] == num_frames:
        return c2w.clone()
    position = torch.linspace(0.0, c2w.shape[0] - 1, num_frames, dtype=c2w.dtype)
    lower = position.floor().long().clamp(max=c2w.shape[0] - 1)
    upper = (lower + 1).clamp(max=c2w.shape[0] - 1)
    frac = position - lower
    quats = rotmat_to_quat(c2w[:, :3, :3])
    out = torch.eye(4, dtype=c2w.dtype).repeat(num_frames, 1, 1)
    out[:, :3, :3] = quat_to_rotmat(quat_slerp(quats[lower], quats[upper], frac))
    out[:, :3, 3] = torch.lerp(c2w[lower, :3, 3], c2w[upper, :3, 3], frac[:, None])
    return out


def make_trajectory(
    name: str,
    num_frames: int,
    scene_scale: float = 1.0,
    *,
    path: str | Path | None = None,
    travel: float = 0.5,
    spiral_radius: float = 0.15,
    spiral_turns: float = 1.0,
    spiral_forward: float = 0.2,
    orbit_degrees: float = 360.0,
) -> Tensor:
    """Camera-to-world poses ``[num_frames, 4, 4]`` (float32) of a named trajectory; frame 0 is the identity.

    Args:
        name: one of ``TRAJECTORY_NAMES``.
        num_frames: number of poses.
        scene_scale: distance in metres from the first camera to its focus point; for ``from_file`` the factor
            applied to the file's translations (after re-expressing them relative to the file's first camera).
        path: the camera file, for ``from_file`` only.
        travel: dolly/pedestal distance as a fraction of ``scene_scale``.
        spiral_radius, spiral_turns, spiral_forward: the spiral's final radius (fraction of ``scene_scale``),
            number of turns and forward dolly (fraction of ``scene_scale``).
        orbit_degrees: the orbit's sweep in ``(0, 360]``: 360 is a full revolution, less a swing (module docstring).
    """
    check_positive_int(num_frames, "num_frames")
    if not (math.isfinite(scene_scale) and scene_scale > 0):
        raise ValueError(f"scene_scale: must be a positive number of metres, got {scene_scale}")
    for option, value in (("travel", travel), ("spiral_radius", spiral_radius), ("spiral_turns", spiral_turns)):
        if not math.isfinite(value):
            raise ValueError(f"{option}: must be a finite number, got {value}")
    if not (math.isfinite(spiral_forward) and spiral_forward < 1.0):
        raise ValueError(f"spiral_forward: must be below 1 (the camera would reach the focus), got {spiral_forward}")
    if not 0.0 < orbit_degrees <= 360.0:
        raise ValueError(f"orbit_degrees: must lie in (0, 360], got {orbit_degrees}")
    distance = travel * scene_scale
    if name == "forward":
        c2w = _translation_path(num_frames, (0.0, 0.0, 1.0), distance)
    elif name == "backward":
        c2w = _translation_path(num_frames, (0.0, 0.0, -1.0), distance)
    elif name == "upward":
        c2w = _translation_path(num_frames, (0.0, -1.0, 0.0), distance)
    elif name == "downward":
        c2w = _translation_path(num_frames, (0.0, 1.0, 0.0), distance)
    elif name == "spiral":
        c2w = _spiral(num_frames, scene_scale, spiral_radius, spiral_turns, spiral_forward)
    elif name == "orbit":
        c2w = _orbit(num_frames, scene_scale, orbit_degrees)
    elif name == "from_file":
        if path is None:
            raise ValueError("path: the 'from_file' trajectory needs a camera file (.json or RealEstate10K .txt)")
        c2w = relative_to_first(load_camera_path(path).c2w.double())
        c2w[:, :3, 3] *= scene_scale
        c2w = resample_poses(c2w, num_frames)
    else:
        raise ValueError(f"name: unknown trajectory {name!r}; choose one of {', '.join(TRAJECTORY_NAMES)}")
    return check_c2w(c2w.float(), f"{name} trajectory")
