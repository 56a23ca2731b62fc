"""Procedural scenes: geometry known in closed form."""

import torch

from d4s.gaussians import DeformableGaussianField
from d4s.gaussians.procedural import plane, rigid_motion, showcase_scene, sphere
from d4s.geometry import axis_angle_to_quat, intrinsics_from_fov, quat_to_rotmat
from d4s.render import render


def test_plane_renders_its_distance_and_texture():
    wall = plane(
        (0.0, 0.0, 2.0),
        (1.0, 0.0, 0.0),
        (0.0, 1.0, 0.0),
        (6.0, 6.0),
        0.05,
        lambda u, v: torch.stack([u * 0 + 0.2, u * 0 + 0.4, u * 0 + 0.6], 1),
    )
    out = render(wall, torch.eye(4)[None], intrinsics_from_fov(32, 32, 60.0)[None], 32, 32, backend="torch")
    torch.testing.assert_close(out.depth, torch.full_like(out.depth, 2.0), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        out.rgb[0, 16, 16], torch.tensor([0.2, 0.4, 0.6]) * out.alpha[0, 16, 16], atol=1e-3, rtol=0
    )


def test_sphere_gaussians_lie_on_the_surface_facing_outwards():
    ball = sphere((1.0, 2.0, 3.0), 0.5, 300, lambda n: n.abs())
    offset = ball.means - torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(offset.norm(dim=1), torch.full((300,), 0.5))
    normal_axis = quat_to_rotmat(ball.quats)[:, :, 2]  # the thin axis
    torch.testing.assert_close(normal_axis, offset / 0.5, atol=1e-5, rtol=0)


def test_rigid_motion_moves_every_gaussian_rigidly():
    ball = sphere((0.0, 0.0, 3.0), 0.5, 100, lambda n: n.abs())
    center = torch.tensor([0.0, 0.0, 3.0])
    rotations = axis_angle_to_quat(torch.tensor([[0.0, 0.0, 0.0], [0.3, -1.0, 0.2]]))
    shifts = torch.tensor([[0.0, 0.0, 0.0], [0.5, -0.2, 0.1]])
    moved = DeformableGaussianField(ball, *rigid_motion(ball, center, rotations, shifts)).at(1)
    R = quat_to_rotmat(rotations[1])
    torch.testing.assert_close(moved.means, (ball.means - center) @ R.T + center + shifts[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(quat_to_rotmat(moved.quats), R @ quat_to_rotmat(ball.quats), atol=1e-5, rtol=0)


def test_showcase_scene_moves_only_the_ball():
    scene = showcase_scene(5)
    moving = scene.dmu.abs().amax(dim=(0, 2)) > 0
    assert 0 < moving.sum() < scene.num_gaussians
    torch.testing.assert_close(scene.at(0).means, scene.canonical.means, atol=1e-6, rtol=0)


def test_rgbd_field_renders_back_its_image_and_depth():
    from d4s.gaussians.procedural import rgbd_field

    H, W = 24, 32
    K = intrinsics_from_fov(W, H, 60.0)
    v, u = torch.meshgrid(torch.arange(H).float(), torch.arange(W).float(), indexing="ij")
    depth = 2.0 + 0.05 * u + 0.02 * v  # a tilted plane, metres
    image = torch.stack([u / W, v / H, 0.5 + 0.4 * torch.sin(u / 3)]).clamp(0, 1)  # smooth, so blur costs little
    depth_with_hole = depth.clone()
    depth_with_hole[0, 0] = 0.0
    field = rgbd_field(image, depth_with_hole, K)
    assert field.num_gaussians == H * W - 1  # no Gaussian where depth is invalid
    out = render(field, torch.eye(4)[None], K[None], W, H, backend="torch")
    inner = (slice(2, -2), slice(2, -2))  # away from the image border, where half of each footprint is missing
    rendered = out.rgb[0].permute(2, 0, 1)[:, inner[0], inner[1]]
    psnr = -10 * torch.log10((rendered - image[:, inner[0], inner[1]]).pow(2).mean())
    flipped = -10 * torch.log10((rendered - image.flip(-1)[:, inner[0], inner[1]]).pow(2).mean())
    assert psnr > 27.0 and flipped < 15.0  # the splats' blur (front discs spill a little onto the next pixel) only
    assert torch.allclose(out.depth[0][inner], depth[inner], rtol=0.03)  # nearer neighbours blend in a little
    assert (out.alpha[0][inner] > 0.95).all()
