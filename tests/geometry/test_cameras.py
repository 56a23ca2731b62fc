"""Camera conventions: rigid inverses, (un)projection, intrinsics under resize and crop, validation."""

import math

import pytest
import torch

from d4s.geometry import (
    check_c2w,
    check_intrinsics,
    crop_intrinsics,
    intrinsics_from_fov,
    look_at,
    pixel_centers,
    project_points,
    relative_to_first,
    resize_intrinsics,
    rigid_inverse,
    unproject_depth,
    unproject_pixels,
)
from tests.helpers import orbit_cameras


def random_poses(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    eye = torch.randn(n, 3, generator=g, dtype=torch.float64)
    target = eye + torch.randn(n, 3, generator=g, dtype=torch.float64)
    return look_at(eye, target)


def test_rigid_inverse_equals_matrix_inverse():
    c2w = random_poses(10)
    torch.testing.assert_close(rigid_inverse(c2w), torch.linalg.inv(c2w), atol=1e-12, rtol=0)


def test_look_at_identity_and_direction():
    c2w = look_at(torch.zeros(3, dtype=torch.float64), torch.tensor([0.0, 0.0, 5.0], dtype=torch.float64))
    torch.testing.assert_close(c2w, torch.eye(4, dtype=torch.float64))
    poses = random_poses(5)
    check_c2w(poses)


def test_unproject_then_project_returns_pixel_centres():
    c2w, K = orbit_cameras(2, 20, 12, dtype=torch.float64)
    depth = torch.rand(2, 12, 20, dtype=torch.float64) * 5 + 0.5
    points = unproject_depth(depth, K, c2w)  # [2, 12, 20, 3]
    uv, z = project_points(points.reshape(2, -1, 3), c2w, K)
    torch.testing.assert_close(z, depth.reshape(2, -1), atol=1e-10, rtol=0)
    torch.testing.assert_close(uv, pixel_centers(12, 20, dtype=torch.float64).reshape(1, -1, 2).expand(2, -1, -1))


def test_unproject_pixels_agrees_with_depth_maps():
    c2w, K = orbit_cameras(2, 20, 12, dtype=torch.float64)
    depth = torch.rand(2, 12, 20, dtype=torch.float64) * 5 + 0.5
    uv = pixel_centers(12, 20, dtype=torch.float64).reshape(1, -1, 2).expand(2, -1, -1)
    points = unproject_pixels(uv, depth.reshape(2, -1), K, c2w)
    torch.testing.assert_close(points, unproject_depth(depth, K, c2w).reshape(2, -1, 3))


def test_unprojection_brute_force_pixel():
    K = torch.tensor([[100.0, 0.0, 40.0], [0.0, 90.0, 30.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    depth = torch.full((60, 80), 2.0, dtype=torch.float64)
    points = unproject_depth(depth, K)
    u, v = 13, 47
    expected = torch.tensor([(u + 0.5 - 40.0) / 100.0 * 2.0, (v + 0.5 - 30.0) / 90.0 * 2.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(points[v, u], expected)


def test_resize_intrinsics_keeps_points_on_the_same_relative_position():
    K = intrinsics_from_fov(64, 48, 55.0, dtype=torch.float64)
    point = torch.tensor([[0.3, -0.2, 2.5]], dtype=torch.float64)
    eye = torch.eye(4, dtype=torch.float64)
    uv_small, _ = project_points(point, eye, K)
    uv_big, _ = project_points(point, eye, resize_intrinsics(K, (48, 64), (144, 256)))
    torch.testing.assert_close(uv_big, uv_small * torch.tensor([256 / 64, 144 / 48], dtype=torch.float64))


def test_crop_intrinsics_shifts_pixels():
    K = intrinsics_from_fov(64, 48, 55.0, dtype=torch.float64)
    point = torch.tensor([[0.3, -0.2, 2.5]], dtype=torch.float64)
    eye = torch.eye(4, dtype=torch.float64)
    uv, _ = project_points(point, eye, K)
    uv_crop, _ = project_points(point, eye, crop_intrinsics(K, top=5, left=9))
    torch.testing.assert_close(uv_crop, uv - torch.tensor([9.0, 5.0], dtype=torch.float64))


def test_intrinsics_from_fov():
    K = intrinsics_from_fov(100, 50, 90.0)
    assert K[0, 0].item() == pytest.approx(50.0) and K[0, 2].item() == 50.0 and K[1, 2].item() == 25.0
    with pytest.raises(ValueError, match="fov_x_degrees"):
        intrinsics_from_fov(100, 50, 180.0)


def test_relative_to_first_makes_frame_zero_identity():
    c2w = random_poses(6)
    rel = relative_to_first(c2w)
    torch.testing.assert_close(rel[0], torch.eye(4, dtype=torch.float64), atol=1e-12, rtol=0)
    # relative motion between frames is unchanged
    torch.testing.assert_close(rigid_inverse(rel[2]) @ rel[4], rigid_inverse(c2w[2]) @ c2w[4], atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    "pose,needle",
    [
        (torch.eye(3), "expected shape"),
        (torch.full((4, 4), math.nan), "non-finite"),
        (torch.diag(torch.tensor([1.0, 2.0, 1.0, 1.0])), "not orthonormal"),
        (torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0])), "determinant"),
        (torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]), "last row"),
    ],
)
def test_check_c2w_rejects_bad_poses(pose, needle):
    with pytest.raises(ValueError, match=needle):
        check_c2w(pose, "pose")


@pytest.mark.parametrize(
    "K,needle",
    [
        (torch.diag(torch.tensor([0.0, 1.0, 1.0])), "focal"),
        (torch.diag(torch.tensor([1.0, -1.0, 1.0])), "focal"),
        (torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 1, 1]]), "last row"),
        (torch.eye(4), "expected shape"),
        (torch.tensor([[math.inf, 0, 0], [0, 1, 0], [0, 0, 1]]), "non-finite"),
    ],
)
def test_check_intrinsics_rejects_bad_K(K, needle):
    with pytest.raises(ValueError, match=needle):
        check_intrinsics(K)
