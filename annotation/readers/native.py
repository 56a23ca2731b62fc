"""Strict readers of the native files several datasets share the shape of: text tables of numbers, npz archives
of named arrays, and world-to-camera matrices. Every failure is an InputError naming the file and what was expected.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from annotation.errors import InputError
from d4s.geometry.cameras import check_c2w, check_intrinsics, rigid_inverse


def read_text_table(path: Path, width: int, what: str, header: tuple[str, ...] | None = None) -> np.ndarray:
    """The whitespace-separated numbers of a text file, ``width`` per non-empty line, as float64 ``[n, width]``.

    ``what`` describes a line (for messages); ``header``, when given, must be the file's first line exactly (split
    on whitespace). Raises InputError naming the file (and the line) when it is missing or unreadable, its header
    differs, it holds no rows, or a line has the wrong count of values or a value that is not a finite number.
    """
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError as error:
        raise InputError(path, f"file is missing (expected lines of {what})") from error
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(path, f"cannot read ({error})") from error
    first = 1
    if header is not None:
        if not lines or tuple(lines[0].split()) != header:
            got = lines[0] if lines else "an empty file"
            raise InputError(path, f"expected the header {' '.join(header)!r}, got {got!r}")
        first = 2
    rows = []
    for number, line in enumerate(lines[first - 1 :], start=first):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != width:
            raise InputError(path, f"line {number}: expected {width} values ({what}), got {len(fields)}")
        try:
            row = [float(field) for field in fields]
        except ValueError as error:
            raise InputError(path, f"line {number}: not a number ({error})") from error
        if not np.isfinite(row).all():
            raise InputError(path, f"line {number}: non-finite value in {line.strip()!r}")
        rows.append(row)
    if not rows:
        raise InputError(path, f"holds no lines of {what}")
    return np.array(rows, dtype=np.float64)


def read_npz_arrays(path: Path, shapes: dict[str, tuple], num_frames: int | None = None) -> dict[str, np.ndarray]:
    """The arrays ``shapes`` names from an ``.npz`` file, as stored, with their shapes checked.

    ``shapes`` maps a key to its shape, where strings (``"T"``, ``"N"``) stand for sizes that must agree across
    keys (``T`` must equal ``num_frames`` when that is given). Raises InputError naming the file.
    """
    if not path.is_file():
        raise InputError(path, "annotation file is missing")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in shapes}
    except KeyError as error:
        raise InputError(path, f"missing array {error}") from error
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise InputError(path, f"cannot read ({error})") from error
    sizes: dict[str, int] = {} if num_frames is None else {"T": num_frames}
    for key, shape in shapes.items():
        if not _shape_matches(arrays[key].shape, shape, sizes):
            raise InputError(path, f"{key}: expected shape {list(shape)} where {sizes}, got {list(arrays[key].shape)}")
    return arrays


def _shape_matches(got: tuple[int, ...], want: tuple, sizes: dict[str, int]) -> bool:
    """Whether ``got`` fits ``want``; a named size takes its first value in ``sizes`` and must keep it."""
    if len(got) != len(want):
        return False
    for n, w in zip(got, want):
        expected = sizes.setdefault(w, n) if isinstance(w, str) else w
        if n != expected:
            return False
    return True


def pinhole_intrinsics(rows: np.ndarray) -> np.ndarray:
    """Intrinsics ``K [T, 3, 3]`` float64 from rows ``[T, 4]`` of ``fx fy cx cy`` (pixels, no skew)."""
    K = np.tile(np.eye(3), (len(rows), 1, 1))
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2] = rows.T
    return K


def cameras_from_w2c(path: Path, intrinsics: np.ndarray, w2c: np.ndarray, atol: float) -> tuple[np.ndarray, np.ndarray]:
    """``K [T,3,3]`` and OpenCV ``c2w [T,4,4]`` (both float32) from intrinsics and world-to-camera matrices.

    The rotations are checked (finite, orthonormal within ``atol``: the storage error of the file, det = +1), then
    replaced by the nearest rotation before inversion. Raises InputError naming ``path``.
    """
    K = torch.from_numpy(intrinsics.astype(np.float64))
    w2c = torch.from_numpy(w2c.astype(np.float64))
    try:
        check_intrinsics(K, "intrinsics")
        check_c2w(w2c, "extrinsics (world-to-camera)", atol=atol)
    except ValueError as error:
        raise InputError(path, str(error)) from error
    U, _, Vh = torch.linalg.svd(w2c[:, :3, :3])
    w2c[:, :3, :3] = U @ Vh
    return K.float().numpy(), rigid_inverse(w2c).float().numpy()
