"""Reading and writing Gaussian fields.

- ``.ply``: the standard 3DGS layout read by common splat viewers and tools: binary little-endian float32
  vertex properties ``x y z nx ny nz f_dc_0..2 f_rest_0..M opacity scale_0..2 rot_0..3`` with the opacity as a
  logit, log scales, the quaternion as ``wxyz`` and ``f_rest`` channel-major (all red coefficients, then green,
  then blue). Normals are written as zeros; reading needs none of them (other tools leave them out).
- ``.ply`` sequence: one such file per time, ``frame_0000.ply, frame_0001.ply, ...`` (what viewers such as
  SuperSplat import as an animation).
- scene ``.npz``: the canonical field plus the per-time deformations, lossless.

Every writer is atomic (temporary file, then rename); float32 values round-trip exactly.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from plyfile import PlyData, PlyElement

from d4s.gaussians.field import DeformableGaussianField, GaussianField
from d4s.gaussians.sh import sh_degree_from_bases
from d4s.utils.fileio import atomic_output

SCENE_FORMAT = "d4s-scene"
SCENE_VERSION = 1
_SCENE_FIELD_KEYS = ("means", "quats", "log_scales", "opacity_logits", "sh")
_SCENE_DEFORM_KEYS = ("dmu", "dq", "ds")
_NORMALS = ("nx", "ny", "nz")  # written as zeros; optional when reading


def ply_property_names(sh_degree: int) -> list[str]:
    """Vertex property names, in file order, of a standard 3DGS ``.ply`` of the given SH degree."""
    num_rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(num_rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def _as_numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to(device="cpu", dtype=torch.float32).numpy()


def field_to_ply_array(field: GaussianField) -> np.ndarray:
    """The field as a structured float32 array with the standard 3DGS vertex properties."""
    n = field.num_gaussians
    rest = field.sh[:, 1:, :].transpose(1, 2).reshape(n, -1)  # channel-major [N, 3 * (K - 1)]
    columns = torch.cat(
        [
            field.means,
            torch.zeros_like(field.means),
            field.sh[:, 0, :],
            rest,
            field.opacity_logits[:, None],
            field.log_scales,
            field.quats,
        ],
        dim=1,
    )
    names = ply_property_names(field.sh_degree)
    array = np.empty(n, dtype=[(name, "<f4") for name in names])
    values = _as_numpy(columns)
    for i, name in enumerate(names):
        array[name] = values[:, i]
    return array


def save_ply(field: GaussianField, path: str | Path) -> Path:
    """Write ``field`` as a standard binary 3DGS ``.ply``; returns the path."""
    path = Path(path)
    element = PlyElement.describe(field_to_ply_array(field), "vertex")
    with atomic_output(path) as tmp:
        PlyData([element], text=False, byte_order="<").write(str(tmp))
    return path


def load_ply(path: str | Path) -> GaussianField:
    """Read a standard 3DGS ``.ply`` into a float32 CPU ``GaussianField``.

    Properties are read by name, in any order and any numeric type; the normals ``nx ny nz`` are optional (3DGS
    writes zeros there and tools such as @playcanvas/splat-transform leave them out).

    Raises ``FileNotFoundError`` if the file is missing and ``ValueError`` if it is not a PLY file, is a compressed
    (chunked) splat PLY, or lacks the 3DGS vertex properties (the message lists the missing ones).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"PLY file not found: {path}")
    try:
        ply = PlyData.read(str(path))
        vertex = ply["vertex"]
    except Exception as err:  # plyfile raises many types for corrupt input
        raise ValueError(f"{path}: not a readable PLY file with a 'vertex' element ({err})") from err
    if "chunk" in [element.name for element in ply.elements]:
        raise ValueError(
            f"{path}: a compressed splat PLY (quantised in chunks, as SuperSplat and splat-transform write it); "
            "decompress it first, e.g. `splat-transform <file> <plain>.ply`"
        )
    names = {prop.name for prop in vertex.properties}
    num_rest = sum(name.startswith("f_rest_") for name in names)
    try:
        degree = sh_degree_from_bases(num_rest // 3 + 1) if num_rest % 3 == 0 else -1
    except ValueError:
        degree = -1
    if degree < 0:
        raise ValueError(f"{path}: {num_rest} f_rest_* properties; a 3DGS file has 0, 9, 24 or 45")
    missing = [name for name in ply_property_names(degree) if name not in names and name not in _NORMALS]
    if missing:
        raise ValueError(f"{path}: not a 3DGS PLY, missing vertex properties {missing}")

    def columns(*wanted: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.asarray(vertex.data[name], dtype=np.float32) for name in wanted], 1))

    n, k = vertex.count, (degree + 1) ** 2
    rest = torch.zeros(n, 0, 3)  # f_rest is channel-major: all red coefficients, then green, then blue
    if k > 1:
        rest = columns(*(f"f_rest_{i}" for i in range(3 * (k - 1)))).reshape(n, 3, k - 1).transpose(1, 2)
    return GaussianField(
        means=columns("x", "y", "z"),
        quats=columns("rot_0", "rot_1", "rot_2", "rot_3"),
        log_scales=columns("scale_0", "scale_1", "scale_2"),
        opacity_logits=columns("opacity")[:, 0].contiguous(),
        sh=torch.cat([columns("f_dc_0", "f_dc_1", "f_dc_2")[:, None], rest], dim=1).contiguous(),
    )


def ply_sequence_paths(directory: str | Path, num_frames: int, prefix: str = "frame_") -> list[Path]:
    """File names ``prefix + zero-padded index + .ply`` (at least 4 digits) for ``num_frames`` times."""
    digits = max(4, len(str(num_frames - 1)))
    return [Path(directory) / f"{prefix}{t:0{digits}d}.ply" for t in range(num_frames)]


def save_ply_sequence(field: DeformableGaussianField, directory: str | Path, prefix: str = "frame_") -> list[Path]:
    """Write the field at every time as one standard ``.ply`` per frame; returns the paths in time order.

    Frames of an earlier sequence with the same prefix in ``directory`` are removed, so the directory holds
    exactly this sequence."""
    paths = ply_sequence_paths(directory, field.num_frames, prefix)
    for t, path in enumerate(paths):
        save_ply(field.at(t), path)
    frame_name = re.compile(rf"{re.escape(prefix)}\d+\.ply")
    for stale in set(Path(directory).glob(f"{prefix}*.ply")) - set(paths):  # frames of an older, longer sequence
        if frame_name.fullmatch(stale.name):
            stale.unlink()
    return paths


def load_ply_sequence(directory: str | Path, prefix: str = "frame_") -> list[GaussianField]:
    """Read every ``prefix*.ply`` of a directory in name (time) order."""
    paths = sorted(Path(directory).glob(f"{prefix}*.ply"))
    if not paths:
        raise FileNotFoundError(f"no {prefix}*.ply files in {directory}")
    return [load_ply(path) for path in paths]


def save_scene(field: DeformableGaussianField, path: str | Path, compress: bool = False) -> Path:
    """Write a deformable field (canonical Gaussians + deformations, float32) to a scene ``.npz``."""
    path = Path(path)
    arrays = {key: _as_numpy(value) for key, value in field.canonical.tensors().items()}
    arrays.update({key: _as_numpy(getattr(field, key)) for key in _SCENE_DEFORM_KEYS})
    writer = np.savez_compressed if compress else np.savez
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:  # a handle: numpy adds no ".npz" suffix
        writer(handle, format=np.array(SCENE_FORMAT), version=np.array(SCENE_VERSION), **arrays)
    return path


def load_scene(path: str | Path) -> DeformableGaussianField:
    """Read a scene ``.npz`` written by ``save_scene`` into a CPU ``DeformableGaussianField``; a 3DGS ``.ply`` (from
    d4s or any other tool, :func:`load_ply`) becomes a static scene of one time.

    Raises ``FileNotFoundError`` if missing and ``ValueError`` if the file is not a d4s scene, lacks arrays,
    or has inconsistent shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scene file not found: {path}")
    if path.suffix.lower() == ".ply":
        return DeformableGaussianField.static(load_ply(path), num_frames=1)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except Exception as err:  # zipfile / numpy raise many types for corrupt input
        raise ValueError(f"{path}: not a readable .npz file ({err})") from err
    if str(arrays.get("format", "")) != SCENE_FORMAT:
        raise ValueError(f"{path}: not a d4s scene file (no format={SCENE_FORMAT!r} entry)")
    version = int(arrays.get("version", -1))
    if not 1 <= version <= SCENE_VERSION:
        raise ValueError(f"{path}: scene format version {version} is not one this d4s reads (1..{SCENE_VERSION})")
    missing = [key for key in _SCENE_FIELD_KEYS + _SCENE_DEFORM_KEYS if key not in arrays]
    if missing:
        raise ValueError(f"{path}: scene file lacks arrays {missing}")
    tensors = {key: torch.from_numpy(arrays[key]) for key in _SCENE_FIELD_KEYS + _SCENE_DEFORM_KEYS}
    try:
        canonical = GaussianField(**{key: tensors[key] for key in _SCENE_FIELD_KEYS})
        return DeformableGaussianField(canonical, *(tensors[key] for key in _SCENE_DEFORM_KEYS))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
