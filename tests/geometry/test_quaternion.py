"""Quaternion utilities against scipy's Rotation (xyzw order there, wxyz here)."""

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation, Slerp

from d4s.geometry import (
    axis_angle_to_quat,
    quat_conjugate,
    quat_identity,
    quat_multiply,
    quat_slerp,
    quat_to_rotmat,
    rotmat_to_quat,
)


def to_scipy(q: torch.Tensor) -> Rotation:
    return Rotation.from_quat(q.double().numpy()[..., [1, 2, 3, 0]])


def from_scipy(r: Rotation) -> torch.Tensor:
    return torch.from_numpy(r.as_quat()[..., [3, 0, 1, 2]])


@pytest.fixture
def quats():
    q = torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return q / q.norm(dim=-1, keepdim=True)


def test_rotmat_matches_scipy(quats):
    np.testing.assert_allclose(quat_to_rotmat(quats).numpy(), to_scipy(quats).as_matrix(), atol=1e-12)


def test_hamilton_product_composes_rotations(quats):
    a, b = quats[:32], quats[32:]
    expected = to_scipy(a) * to_scipy(b)  # apply b, then a
    np.testing.assert_allclose(quat_to_rotmat(quat_multiply(a, b)).numpy(), expected.as_matrix(), atol=1e-12)
    # and the explicit product formula (scipy's composition is in xyzw; compare quaternions up to sign)
    product = quat_multiply(a, b)
    reference = from_scipy(expected)
    sign = torch.sign((product * reference).sum(-1, keepdim=True))
    torch.testing.assert_close(product, sign * reference, atol=1e-12, rtol=0)


def test_rotmat_to_quat_round_trip_including_half_turns(quats):
    half_turns = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    q = torch.cat([quats, half_turns, quat_identity(1, dtype=torch.float64)])
    recovered = rotmat_to_quat(quat_to_rotmat(q))
    assert (recovered[:, 0] >= 0).all()
    reference = from_scipy(Rotation.from_matrix(quat_to_rotmat(q).numpy()))
    # the same rotation: equal quaternions up to sign
    np.testing.assert_allclose((recovered * reference).sum(-1).abs().numpy(), 1.0, atol=1e-12)
    np.testing.assert_allclose(quat_to_rotmat(recovered).numpy(), quat_to_rotmat(q).numpy(), atol=1e-12)


def test_conjugate_is_inverse(quats):
    product = quat_multiply(quats, quat_conjugate(quats))
    torch.testing.assert_close(product, quat_identity(len(quats), dtype=torch.float64), atol=1e-12, rtol=0)


def test_axis_angle_matches_scipy():
    rotvec = torch.randn(16, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    rotvec[0] = 0.0
    rotvec[1] = 1e-10
    np.testing.assert_allclose(
        quat_to_rotmat(axis_angle_to_quat(rotvec)).numpy(), Rotation.from_rotvec(rotvec.numpy()).as_matrix(), atol=1e-12
    )


def test_slerp_matches_scipy(quats):
    q0, q1 = quats[:8], quats[8:16]
    t = torch.linspace(0, 1, 8, dtype=torch.float64)
    for i in range(8):
        ours = quat_to_rotmat(quat_slerp(q0[i], q1[i], t))
        reference = Slerp([0.0, 1.0], to_scipy(torch.stack([q0[i], q1[i]])))(t.numpy()).as_matrix()
        np.testing.assert_allclose(ours.numpy(), reference, atol=1e-9)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="q: expected shape"):
        quat_to_rotmat(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="R: expected shape"):
        rotmat_to_quat(torch.zeros(4, 4))
