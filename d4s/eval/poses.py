"""Camera-trajectory errors: Umeyama alignment, relative pose error (paper Table 3) and absolute trajectory error.

Poses are camera-to-world ``c2w [T, 4, 4]`` (OpenCV axes, metres); the estimate is ``P``, the reference ``Q``.
Definitions follow Sturm et al. 2012 (TUM RGB-D benchmark) as implemented by ``evo``
(``evo.core.metrics.RPE`` / ``APE``, ``PosePath3D.align``); everything is computed in float64.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from d4s.geometry.cameras import check_c2w, rigid_inverse
from d4s.utils.checks import check_choice, check_finite, check_positive_int, check_shape

PoseAlignment = Literal["none", "se3", "sim3", "scale"]


def umeyama(source: Tensor, target: Tensor, with_scale: bool) -> tuple[Tensor, Tensor, float]:
    """Least-squares similarity ``target_i ~ s R source_i + t`` (Umeyama 1991, as ``evo.core.geometry``).

    Args:
        source: ``[N, 3]`` points, ``N >= 2``, not all equal when ``with_scale``.
        target: ``[N, 3]`` corresponding points.
        with_scale: estimate ``s``; otherwise ``s = 1`` (a rigid fit).
    Returns:
        ``R [3, 3]`` (a rotation, ``det = +1``), ``t [3]`` in the dtype of ``source``, and ``s`` as a float.
    """
    check_shape(source, "source", (None, 3))
    check_shape(target, "target", (source.shape[0], 3))
    check_finite(source, "source")
    check_finite(target, "target")
    if source.shape[0] < 2:
        raise ValueError(f"source: need at least 2 points, got {source.shape[0]}")
    x, y = source.detach().double(), target.detach().double()
    mean_x, mean_y = x.mean(0), y.mean(0)
    x_centred, y_centred = x - mean_x, y - mean_y
    variance_x = x_centred.square().sum(1).mean()
    if with_scale and not variance_x > 0:
        raise ValueError("source: all points coincide, the scale of the alignment is undefined")
    covariance = y_centred.T @ x_centred / x.shape[0]  # [3, 3], target x source
    U, singular_values, Vh = torch.linalg.svd(covariance)
    signs = torch.ones(3, dtype=torch.float64)
    if torch.linalg.det(U) * torch.linalg.det(Vh) < 0:
        signs[2] = -1.0  # the closest rotation, not a reflection
    R = U @ torch.diag(signs) @ Vh
    scale = float((singular_values * signs).sum() / variance_x) if with_scale else 1.0
    t = mean_y - scale * R @ mean_x
    return R.to(source.dtype), t.to(source.dtype), scale


def _check_pair(estimate: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
    """Validate two rigid trajectories ``[T, 4, 4]`` of the same length; return them in float64."""
    check_shape(estimate, "estimate", (None, 4, 4))
    check_shape(reference, "reference", (estimate.shape[0], 4, 4))
    check_c2w(estimate, "estimate")
    check_c2w(reference, "reference")
    if estimate.shape[0] == 0:
        raise ValueError("estimate: empty trajectory")
    return estimate.detach().double(), reference.detach().double()


def _align(estimate: Tensor, reference: Tensor, mode: PoseAlignment, name: str) -> Tensor:
    check_choice(mode, name, PoseAlignment)
    if mode == "none":
        return estimate
    R, t, scale = umeyama(estimate[:, :3, 3], reference[:, :3, 3], with_scale=mode != "se3")
    aligned = estimate.clone()
    if mode == "scale":  # evo's correct_only_scale: the Sim(3) fit's scale, applied to the positions alone
        aligned[:, :3, 3] = scale * estimate[:, :3, 3]
        return aligned
    aligned[:, :3, :3] = R @ estimate[:, :3, :3]
    aligned[:, :3, 3] = scale * estimate[:, :3, 3] @ R.T + t
    return aligned


def align_trajectory(estimate: Tensor, reference: Tensor, mode: PoseAlignment) -> Tensor:
    """The estimate moved onto the reference by an Umeyama fit of the camera centres (evo's ``PosePath3D.align``).

    ``"none"``: unchanged; ``"se3"``: rigid ``[R | t]`` applied to every pose; ``"sim3"``: also the scale ``s``
    (centres ``s R c + t``, rotations ``R R_i``; poses stay rigid); ``"scale"``: only the scale of the Sim(3) fit,
    centres ``s c`` (evo's ``correct_only_scale``), for trajectories known up to scale.

    Args:
        estimate: ``[T, 4, 4]`` estimated c2w poses.
        reference: ``[T, 4, 4]`` reference c2w poses.
        mode: ``"none"``, ``"se3"``, ``"sim3"`` or ``"scale"``.
    Returns:
        ``[T, 4, 4]`` aligned estimate, in the dtype of ``estimate``.
    """
    est, ref = _check_pair(estimate, reference)
    return _align(est, ref, mode, "mode").to(estimate.dtype)


def _rotation_angle_deg(R: Tensor) -> Tensor:
    """Angle in degrees of rotations ``[..., 3, 3]``: ``atan2(2 sin, 2 cos)``, accurate near 0 and 180 degrees."""
    two_sin = torch.stack(
        [R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]], dim=-1
    ).norm(dim=-1)
    two_cos = R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2] - 1.0
    return torch.rad2deg(torch.atan2(two_sin, two_cos))


def relative_pose_error(
    estimate: Tensor, reference: Tensor, delta: int = 1, align: PoseAlignment = "none", all_pairs: bool = True
) -> dict:
    """Relative pose error (Sturm et al. 2012; paper Table 3), as ``evo.core.metrics.RPE`` (delta unit: frames).

    ``E_i = (Q_i^-1 Q_{i+delta})^-1 (P_i^-1 P_{i+delta})`` for every ``i = 0 .. T-delta-1`` (the TUM definition;
    evo's ``all_pairs=True``) after aligning ``P`` to ``Q`` (:func:`align_trajectory`); the translational error
    is ``||trans(E_i)||`` and the rotational error the angle of ``rot(E_i)``. ``all_pairs=False`` keeps only the
    non-overlapping pairs ``i = 0, delta, 2 delta, ...`` (evo's default); both agree for ``delta = 1``. RPE does
    not change under a rigid transform of either trajectory, so ``"se3"`` equals ``"none"``; ``"sim3"`` or
    ``"scale"`` resolve the scale of up-to-scale estimates.

    Args:
        estimate: ``[T, 4, 4]`` estimated c2w poses ``P``.
        reference: ``[T, 4, 4]`` reference c2w poses ``Q``.
        delta: frame offset of each pair, ``1 <= delta < T``.
        align: ``"none"``, ``"se3"``, ``"sim3"`` or ``"scale"``.
        all_pairs: every pair ``(i, i + delta)`` (default), or only those with ``i`` a multiple of ``delta``.
    Returns:
        ``{"trans_rmse", "trans_mean"`` (reference units, metres), ``"rot_rmse_deg", "rot_mean_deg"`` (floats),
        ``"per_pair_trans": [P]``, ``"per_pair_rot_deg": [P]`` (float64 tensors; ``P = T - delta`` pairs, or
        ``(T - 1) // delta`` without ``all_pairs``)``}``.
    """
    est, ref = _check_pair(estimate, reference)
    delta = check_positive_int(delta, "delta")
    if delta >= est.shape[0]:
        raise ValueError(f"delta: must be smaller than the number of poses {est.shape[0]}, got {delta}")
    est = _align(est, ref, align, "align")
    step = 1 if all_pairs else delta
    first, second = slice(0, -delta, step), slice(delta, None, step)
    relative_ref = rigid_inverse(ref[first]) @ ref[second]
    relative_est = rigid_inverse(est[first]) @ est[second]
    error = rigid_inverse(relative_ref) @ relative_est
    trans = error[:, :3, 3].norm(dim=-1)
    rot = _rotation_angle_deg(error[:, :3, :3])
    return {
        "trans_rmse": math.sqrt(float(trans.square().mean())),
        "trans_mean": float(trans.mean()),
        "rot_rmse_deg": math.sqrt(float(rot.square().mean())),
        "rot_mean_deg": float(rot.mean()),
        "per_pair_trans": trans,
        "per_pair_rot_deg": rot,
    }


def absolute_trajectory_error(estimate: Tensor, reference: Tensor, align: PoseAlignment = "se3") -> float:
    """Absolute trajectory error: RMSE of camera-centre distances after alignment (evo's APE, translation part).

    Args:
        estimate: ``[T, 4, 4]`` estimated c2w poses.
        reference: ``[T, 4, 4]`` reference c2w poses.
        align: ``"none"``, ``"se3"`` (evo ``--align``), ``"sim3"`` (``--align --correct_scale``) or ``"scale"``.
    Returns:
        ``sqrt(mean_i ||c_i - c*_i||^2)`` in reference units.
    """
    est, ref = _check_pair(estimate, reference)
    est = _align(est, ref, align, "align")
    return math.sqrt(float((est[:, :3, 3] - ref[:, :3, 3]).square().sum(-1).mean()))
