"""Plücker embeddings against a per-pixel brute-force computation."""

import pytest
import torch

from d4s.geometry import plucker_embedding
from tests.helpers import orbit_cameras


def brute_force_plucker(c2w: torch.Tensor, K: torch.Tensor, height: int, width: int) -> torch.Tensor:
    out = torch.zeros(6, height, width, dtype=torch.float64)
    R, o = c2w[:3, :3], c2w[:3, 3]
    K_inv = torch.linalg.inv(K)
    for v in range(height):
        for u in range(width):
            d = R @ (K_inv @ torch.tensor([u + 0.5, v + 0.5, 1.0], dtype=torch.float64))
            d = d / d.norm()
            out[:3, v, u] = torch.linalg.cross(o, d)
            out[3:, v, u] = d
    return out


def test_matches_brute_force():
    c2w, K = orbit_cameras(3, 9, 7, dtype=torch.float64)
    c2w[:, :3, 3] += torch.tensor([0.4, -1.0, 2.0], dtype=torch.float64)
    emb = plucker_embedding(c2w, K, 7, 9)
    assert emb.shape == (3, 6, 7, 9)
    for i in range(3):
        torch.testing.assert_close(emb[i], brute_force_plucker(c2w[i], K[i], 7, 9), atol=1e-12, rtol=0)


def test_batch_dimensions_are_kept():
    c2w, K = orbit_cameras(4, 5, 4)
    emb = plucker_embedding(c2w.reshape(2, 2, 4, 4), K.reshape(2, 2, 3, 3), 4, 5)
    assert emb.shape == (2, 2, 6, 4, 5)
    torch.testing.assert_close(emb.reshape(4, 6, 4, 5), plucker_embedding(c2w, K, 4, 5))


def test_moment_is_invariant_to_moving_the_origin_along_the_ray():
    c2w, K = orbit_cameras(1, 8, 6, dtype=torch.float64)
    emb = plucker_embedding(c2w, K, 6, 8)
    v, u = 2, 5
    d = emb[0, 3:, v, u]
    for step in (-3.0, 0.7, 12.0):
        moved = c2w.clone()
        moved[0, :3, 3] += step * d
        moved_emb = plucker_embedding(moved, K, 6, 8)
        torch.testing.assert_close(moved_emb[0, :, v, u], emb[0, :, v, u], atol=1e-12, rtol=0)
    # but not to moving it sideways
    sideways = c2w.clone()
    sideways[0, :3, 3] += torch.linalg.cross(d, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    assert not torch.allclose(plucker_embedding(sideways, K, 6, 8)[0, :3, v, u], emb[0, :3, v, u])


def test_directions_are_unit_and_identity_centre_ray_is_forward():
    K = torch.tensor([[10.0, 0.0, 2.0], [0.0, 10.0, 2.0], [0.0, 0.0, 1.0]])
    emb = plucker_embedding(torch.eye(4)[None], K[None], 4, 4)
    torch.testing.assert_close(emb[0, 3:].norm(dim=0), torch.ones(4, 4))
    # the principal point (2, 2) is the corner shared by pixels (1,1),(1,2),(2,1),(2,2): symmetric rays
    torch.testing.assert_close(emb[0, 3:, 1, 1] * torch.tensor([-1.0, -1.0, 1.0]), emb[0, 3:, 2, 2])
    assert emb[0, :3].abs().max() == 0  # camera at the origin: zero moment


def test_mixed_precision_inputs_follow_c2w():
    c2w, K = orbit_cameras(1, 5, 4)
    emb = plucker_embedding(c2w, K.double(), 4, 5)
    assert emb.dtype == torch.float32
    torch.testing.assert_close(emb, plucker_embedding(c2w, K, 4, 5))


def test_bad_input():
    K = torch.eye(3)[None]
    with pytest.raises(ValueError, match="c2w"):
        plucker_embedding(torch.ones(1, 4, 4), K, 4, 4)
    with pytest.raises(ValueError, match="K"):
        plucker_embedding(torch.eye(4)[None], torch.zeros(1, 3, 3), 4, 4)
    with pytest.raises(ValueError, match="batch shape"):
        plucker_embedding(torch.eye(4)[None].repeat(2, 1, 1), K, 4, 4)
    with pytest.raises(ValueError, match="height"):
        plucker_embedding(torch.eye(4)[None], K, 0, 4)
