"""Gaussian fields, activations and the deformation of Sec. 3.3 (Eq. 7)."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from d4s.gaussians import DeformableGaussianField, GaussianField
from d4s.geometry import quat_to_rotmat
from tests.helpers import random_field


def test_activated_views_invert_from_activated():
    g = torch.Generator().manual_seed(0)
    scales = torch.rand(10, 3, generator=g) + 0.01
    opacities = torch.rand(10, generator=g) * 0.98 + 0.01
    rgb = torch.rand(10, 3, generator=g)
    field = GaussianField.from_activated(torch.randn(10, 3), torch.randn(10, 4), scales, opacities, rgb=rgb)
    torch.testing.assert_close(field.scales, scales)
    torch.testing.assert_close(field.opacities, opacities)
    torch.testing.assert_close(field.rgb, rgb)
    torch.testing.assert_close(field.rotations.norm(dim=-1), torch.ones(10))
    assert field.sh_degree == 0 and len(field) == 10


def test_deformation_follows_eq7():
    field = random_field(30, seed=1, dtype=torch.float64)
    g = torch.Generator().manual_seed(2)
    dmu = torch.randn(4, 30, 3, generator=g, dtype=torch.float64)
    dq = torch.randn(4, 30, 4, generator=g, dtype=torch.float64)
    ds = torch.randn(4, 30, 3, generator=g, dtype=torch.float64) * 0.1
    deformable = DeformableGaussianField(field, dmu, dq, ds)
    for t in range(4):
        at_t = deformable.at(t)
        torch.testing.assert_close(at_t.means, field.means + dmu[t])
        torch.testing.assert_close(at_t.scales, field.scales * torch.exp(ds[t]))
        # rotation: R(q_t) = R(q_0) R(dq), i.e. the delta is applied in the Gaussian's local frame
        expected = Rotation.from_matrix(quat_to_rotmat(field.quats).numpy()) * Rotation.from_quat(
            dq[t].numpy()[:, [1, 2, 3, 0]]
        )
        torch.testing.assert_close(quat_to_rotmat(at_t.quats), torch.from_numpy(expected.as_matrix()))
        torch.testing.assert_close(at_t.quats.norm(dim=-1), torch.ones(30, dtype=torch.float64))
        assert torch.equal(at_t.sh, field.sh) and torch.equal(at_t.opacity_logits, field.opacity_logits)


def test_static_field_is_identity_at_every_time():
    field = random_field(12, seed=3)
    static = DeformableGaussianField.static(field, 5)
    assert static.num_frames == 5 and static.num_gaussians == 12
    for frame in static.frames():
        torch.testing.assert_close(frame.means, field.means)
        torch.testing.assert_close(frame.log_scales, field.log_scales)
        torch.testing.assert_close(quat_to_rotmat(frame.quats), quat_to_rotmat(field.quats))


def test_deformation_is_differentiable():
    field = random_field(8, seed=4)
    dmu = torch.zeros(2, 8, 3, requires_grad=True)
    dq = torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(2, 8, 1).requires_grad_(True)
    ds = torch.zeros(2, 8, 3, requires_grad=True)
    at = DeformableGaussianField(field, dmu, dq, ds).at(1)
    (at.means.sum() + at.quats[:, 1].sum() + at.scales.sum()).backward()
    assert dmu.grad[1].abs().sum() > 0 and dq.grad[1].abs().sum() > 0 and ds.grad[1].abs().sum() > 0
    assert dmu.grad[0].abs().sum() == 0


def test_indexing_cat_and_device_moves():
    field = random_field(10, seed=5, sh_degree=2)
    part = field[torch.arange(10) < 4]
    assert len(part) == 4 and part.sh_degree == 2
    joined = GaussianField.cat([part, field[4:]])
    for a, b in zip(joined.tensors().values(), field.tensors().values()):
        assert torch.equal(a, b)
    assert field.to(torch.float64).dtype == torch.float64


@pytest.mark.parametrize(
    "changes,needle",
    [
        (dict(quats=torch.zeros(5, 3)), "quats"),
        (dict(log_scales=torch.zeros(4, 3)), "log_scales"),
        (dict(opacity_logits=torch.zeros(5, 1)), "opacity_logits"),
        (dict(sh=torch.zeros(5, 5, 3)), "degree"),
        (dict(means=torch.zeros(5, 3, dtype=torch.long)), "floating"),
        (dict(sh=torch.zeros(5, 1, 3, dtype=torch.float64)), "dtype"),
    ],
)
def test_bad_shapes_raise_value_error_naming_the_tensor(changes, needle):
    args = dict(
        means=torch.zeros(5, 3), quats=torch.zeros(5, 4), log_scales=torch.zeros(5, 3),
        opacity_logits=torch.zeros(5), sh=torch.zeros(5, 1, 3),
    )  # fmt: skip
    args.update(changes)
    with pytest.raises(ValueError, match=needle):
        GaussianField(**args)


def test_deformable_shapes_and_time_index_checked():
    field = random_field(6)
    with pytest.raises(ValueError, match="dq"):
        DeformableGaussianField(field, torch.zeros(3, 6, 3), torch.zeros(2, 6, 4), torch.zeros(3, 6, 3))
    static = DeformableGaussianField.static(field, 3)
    for index in (np.int64(2), torch.tensor(2)):
        torch.testing.assert_close(static.at(index).means, static.at(2).means)
    for bad in (-1, 3, 1.5, True, "1"):
        with pytest.raises(ValueError, match="time index"):
            static.at(bad)
    with pytest.raises(ValueError, match="field.dmu"):
        DeformableGaussianField(field, torch.full((3, 6, 3), float("nan")), static.dq, static.ds).check_finite()


def test_fractional_times_interpolate_the_deformation():
    field = random_field(20, seed=4, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    dmu = torch.randn(3, 20, 3, generator=g, dtype=torch.float64)
    ds = torch.randn(3, 20, 3, generator=g, dtype=torch.float64) * 0.1
    angles = torch.tensor([0.0, 0.8, 1.2], dtype=torch.float64)  # dq: rotations about z by these angles
    dq = torch.zeros(3, 20, 4, dtype=torch.float64)
    dq[..., 0], dq[..., 3] = torch.cos(angles / 2)[:, None], torch.sin(angles / 2)[:, None]
    deformable = DeformableGaussianField(field, dmu, dq, ds)
    for t in range(3):  # stored times: exactly at()
        assert torch.equal(deformable.at_time(float(t)).means, deformable.at(t).means)
    middle = deformable.at_time(1.25)
    torch.testing.assert_close(middle.means, field.means + 0.75 * dmu[1] + 0.25 * dmu[2])
    torch.testing.assert_close(middle.log_scales, field.log_scales + 0.75 * ds[1] + 0.25 * ds[2])
    # slerp between rotations about one axis turns by the interpolated angle: 0.8 + 0.25 * 0.4 = 0.9 rad
    expected = Rotation.from_matrix(quat_to_rotmat(field.quats).numpy()) * Rotation.from_rotvec([0.0, 0.0, 0.9])
    np.testing.assert_allclose(quat_to_rotmat(middle.quats).numpy(), expected.as_matrix(), atol=1e-10)
    with pytest.raises(ValueError, match="time"):
        deformable.at_time(2.5)


def test_select_keeps_the_deformations_of_the_selected_gaussians():
    field = random_field(10, seed=6)
    deformable = DeformableGaussianField.static(field, 4)
    deformable.dmu.normal_(generator=torch.Generator().manual_seed(0))
    mask = torch.arange(10) % 3 == 0
    selected = deformable.select(mask)
    assert selected.num_gaussians == 4 and selected.num_frames == 4
    assert torch.equal(selected.at(2).means, deformable.at(2).means[mask])
