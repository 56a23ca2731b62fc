"""Trajectory errors (paper Table 3: RPE, Sturm et al. 2012) against evo and known transforms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from evo.core.metrics import APE, RPE, PoseRelation, StatisticsType, Unit
from evo.core.trajectory import PosePath3D

from d4s.eval.poses import absolute_trajectory_error, align_trajectory, relative_pose_error, umeyama
from d4s.geometry import axis_angle_to_quat, quat_to_rotmat


def rigid(rotvec: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """``[..., 4, 4]`` poses from rotation vectors ``[..., 3]`` and translations ``[..., 3]``."""
    pose = torch.zeros(rotvec.shape[:-1] + (4, 4), dtype=torch.float64)
    pose[..., :3, :3] = quat_to_rotmat(axis_angle_to_quat(rotvec.double()))
    pose[..., :3, 3] = translation
    pose[..., 3, 3] = 1.0
    return pose


def smooth_trajectory(num: int, seed: int) -> torch.Tensor:
    """A random smooth c2w trajectory ``[T, 4, 4]``: smoothly varying angular and linear velocities, integrated."""
    generator = torch.Generator().manual_seed(seed)
    kernel = torch.ones(1, 1, 5, dtype=torch.float64) / 5
    velocities = torch.randn(6, 1, num + 4, generator=generator, dtype=torch.float64)
    velocities = torch.nn.functional.conv1d(velocities, kernel).squeeze(1).T  # [T, 6]
    steps = rigid(0.1 * velocities[:, :3], 0.2 * velocities[:, 3:])
    poses = [rigid(torch.randn(3, generator=generator), torch.randn(3, generator=generator))]
    for step in steps[1:]:
        poses.append(poses[-1] @ step)
    return torch.stack(poses)


def perturbed(poses: torch.Tensor, seed: int, rot: float = 0.02, trans: float = 0.03) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    noise = rigid(
        rot * torch.randn(len(poses), 3, generator=generator, dtype=torch.float64),
        trans * torch.randn(len(poses), 3, generator=generator, dtype=torch.float64),
    )
    return poses @ noise


def similarity(poses: torch.Tensor, scale: float, seed: int) -> torch.Tensor:
    """Poses moved by the similarity ``x -> s R x + t`` of the world (rotations ``R R_i``, centres ``s R c_i + t``)."""
    generator = torch.Generator().manual_seed(seed)
    G = rigid(torch.randn(3, generator=generator, dtype=torch.float64), torch.randn(3, generator=generator))
    out = G @ poses
    out[:, :3, 3] = scale * poses[:, :3, 3] @ G[:3, :3].T + G[:3, 3]
    return out


def evo_path(poses: torch.Tensor) -> PosePath3D:
    return PosePath3D(poses_se3=[pose for pose in poses.numpy()])


def evo_rpe(estimate, reference, relation, delta, stat, correct_scale=False, all_pairs=False):
    ref, est = evo_path(reference), evo_path(estimate)
    if correct_scale:
        est.align(ref, correct_scale=True)
    metric = RPE(relation, delta=delta, delta_unit=Unit.frames, all_pairs=all_pairs)
    metric.process_data((ref, est))
    return metric.get_statistic(stat), metric.error


# Umeyama


def test_umeyama_recovers_a_known_similarity():
    generator = torch.Generator().manual_seed(0)
    source = torch.randn(20, 3, generator=generator, dtype=torch.float64)
    R_true = quat_to_rotmat(axis_angle_to_quat(torch.tensor([0.4, -1.2, 2.0], dtype=torch.float64)))
    t_true = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    R, t, s = umeyama(source, 2.5 * source @ R_true.T + t_true, with_scale=True)
    torch.testing.assert_close(R, R_true)
    torch.testing.assert_close(t, t_true)
    assert s == pytest.approx(2.5)
    R, t, s = umeyama(source, source @ R_true.T + t_true, with_scale=False)
    torch.testing.assert_close(R, R_true)
    torch.testing.assert_close(t, t_true)
    assert s == 1.0
    # a mirrored target: the best rotation, never a reflection
    R, _, _ = umeyama(source, source * torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64), with_scale=False)
    assert torch.linalg.det(R) == pytest.approx(1.0)


def test_umeyama_rejects_bad_input():
    points = torch.randn(5, 3)
    with pytest.raises(ValueError, match="source"):
        umeyama(points[:, :2], points, with_scale=True)
    with pytest.raises(ValueError, match="target"):
        umeyama(points, points[:4], with_scale=True)
    with pytest.raises(ValueError, match="source"):
        umeyama(torch.ones(5, 3), points, with_scale=True)


# RPE (TUM definition) against evo


@pytest.mark.parametrize("delta", [1, 3])
@pytest.mark.parametrize("all_pairs", [False, True])
def test_rpe_matches_evo(delta, all_pairs):
    # evo's all_pairs=False takes the non-overlapping pairs (0, d), (d, 2d), ...; True every (i, i + d) as TUM
    reference = smooth_trajectory(25, seed=1)
    estimate = perturbed(reference, seed=2)
    ours = relative_pose_error(estimate, reference, delta=delta, all_pairs=all_pairs)
    for relation, (per_pair_key, rmse_key, mean_key), rtol in (
        (PoseRelation.translation_part, ("per_pair_trans", "trans_rmse", "trans_mean"), 1e-9),
        (PoseRelation.rotation_angle_deg, ("per_pair_rot_deg", "rot_rmse_deg", "rot_mean_deg"), 1e-7),
    ):
        rmse, per_pair = evo_rpe(estimate, reference, relation, delta, StatisticsType.rmse, all_pairs=all_pairs)
        mean, _ = evo_rpe(estimate, reference, relation, delta, StatisticsType.mean, all_pairs=all_pairs)
        assert ours[rmse_key] == pytest.approx(rmse, rel=rtol)
        assert ours[mean_key] == pytest.approx(mean, rel=rtol)
        np.testing.assert_allclose(ours[per_pair_key].numpy(), per_pair, rtol=rtol)
    pairs = 25 - delta if all_pairs else 24 // delta
    assert ours["per_pair_trans"].shape == ours["per_pair_rot_deg"].shape == (pairs,)
    assert relative_pose_error(estimate, reference, delta=delta)["per_pair_trans"].shape == (25 - delta,)


def test_rpe_with_sim3_alignment_matches_evo():
    reference = smooth_trajectory(20, seed=3)
    estimate = similarity(perturbed(reference, seed=4), scale=0.3, seed=5)  # up to scale, another world frame
    ours = relative_pose_error(estimate, reference, delta=2, align="sim3")
    rmse, _ = evo_rpe(estimate, reference, PoseRelation.translation_part, 2, StatisticsType.rmse, True, all_pairs=True)
    assert ours["trans_rmse"] == pytest.approx(rmse, rel=1e-8)
    rmse, _ = evo_rpe(
        estimate, reference, PoseRelation.rotation_angle_deg, 2, StatisticsType.rmse, True, all_pairs=True
    )
    assert ours["rot_rmse_deg"] == pytest.approx(rmse, rel=1e-7)
    # without resolving the scale the error is dominated by it
    assert relative_pose_error(estimate, reference, delta=2)["trans_rmse"] > 2 * ours["trans_rmse"]


def test_rpe_is_invariant_to_a_global_transform_of_the_estimate():
    reference = smooth_trajectory(20, seed=6)
    estimate = perturbed(reference, seed=7)
    base = relative_pose_error(estimate, reference)
    moved = relative_pose_error(similarity(estimate, scale=1.0, seed=8), reference)
    for key in ("trans_rmse", "trans_mean", "rot_rmse_deg", "rot_mean_deg"):
        assert moved[key] == pytest.approx(base[key], rel=1e-9)
        assert relative_pose_error(estimate, reference, align="se3")[key] == pytest.approx(base[key], rel=1e-9)
    for align in ("sim3", "scale"):
        base = relative_pose_error(estimate, reference, align=align)
        moved = relative_pose_error(similarity(estimate, scale=4.0, seed=9), reference, align=align)
        for key in ("trans_rmse", "rot_rmse_deg"):
            assert moved[key] == pytest.approx(base[key], rel=1e-8)


def test_rpe_of_a_shifted_copy_is_zero_and_ate_sees_the_shift():
    reference = smooth_trajectory(10, seed=10)
    shifted = reference.clone()
    shifted[:, :3, 3] += torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    result = relative_pose_error(shifted, reference)
    assert result["trans_rmse"] == pytest.approx(0.0, abs=1e-12) and result["rot_rmse_deg"] == pytest.approx(0.0)
    assert absolute_trajectory_error(shifted, reference, align="none") == pytest.approx(1.0)
    assert absolute_trajectory_error(shifted, reference) == pytest.approx(0.0, abs=1e-12)


# ATE against evo's APE after its own Umeyama alignment


@pytest.mark.parametrize(
    "align, evo_options",
    [("se3", {}), ("sim3", {"correct_scale": True}), ("scale", {"correct_only_scale": True})],
)
def test_ate_matches_evo_ape(align, evo_options):
    reference = smooth_trajectory(30, seed=11)
    estimate = similarity(perturbed(reference, seed=12, trans=0.1), scale=1.0 if align == "se3" else 0.5, seed=13)
    if align == "scale":  # only the scale is corrected: keep the world frame, change the scale
        estimate = perturbed(reference, seed=12, trans=0.1)
        estimate[:, :3, 3] *= 0.5
    ref, est = evo_path(reference), evo_path(estimate)
    est.align(ref, **evo_options)
    ape = APE(PoseRelation.translation_part)
    ape.process_data((ref, est))
    assert absolute_trajectory_error(estimate, reference, align=align) == pytest.approx(
        ape.get_statistic(StatisticsType.rmse), rel=1e-9
    )
    aligned = align_trajectory(estimate.float(), reference.float(), align)
    assert aligned.dtype == torch.float32
    np.testing.assert_allclose(aligned.double().numpy(), np.stack(est.poses_se3), atol=1e-5)


def test_pose_errors_reject_bad_input():
    reference = smooth_trajectory(6, seed=14)
    bad = reference.clone()
    bad[2, 0, 3] = math.nan
    with pytest.raises(ValueError, match="estimate"):
        relative_pose_error(bad, reference)
    with pytest.raises(ValueError, match="reference"):
        absolute_trajectory_error(reference, bad)
    with pytest.raises(ValueError, match="reference"):
        relative_pose_error(reference, reference[:5])
    with pytest.raises(ValueError, match="estimate"):
        relative_pose_error(reference[0], reference[0])
    with pytest.raises(ValueError, match="delta"):
        relative_pose_error(reference, reference, delta=6)
    with pytest.raises(ValueError, match="delta"):
        relative_pose_error(reference, reference, delta=0)
    with pytest.raises(ValueError, match="align"):
        relative_pose_error(reference, reference, align="sim2")
    with pytest.raises(ValueError, match="mode"):
        align_trajectory(reference, reference, "rigid")
    scaled = reference.clone()
    scaled[:, :3, :3] *= 2.0
    with pytest.raises(ValueError, match="estimate"):
        absolute_trajectory_error(scaled, reference)
