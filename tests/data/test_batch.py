"""Batches: collation with padding and supervision flags, and Plücker maps that match the batch cameras."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from d4s.data.batch import collate_clips
from d4s.data.clips import blank_sample, sample_clip
from tests.data.conftest import small_clip
from tests.data.test_clips import raw_samples


def brute_force_plucker(c2w: np.ndarray, K: np.ndarray, height: int, width: int) -> np.ndarray:
    """``[6, H, W]`` Plücker coordinates, one pixel at a time, straight from the definition."""
    out = np.zeros((6, height, width))
    R, origin = c2w[:3, :3], c2w[:3, 3]
    for v in range(height):
        for u in range(width):
            direction = R @ np.linalg.solve(K, [u + 0.5, v + 0.5, 1.0])
            direction /= np.linalg.norm(direction)
            out[:3, v, u], out[3:, v, u] = np.cross(origin, direction), direction
    return out


@pytest.fixture(scope="module")
def clips(toy4d_shards):
    samples = raw_samples(toy4d_shards)[:3]
    return [sample_clip(s, small_clip(num_tracks=50), np.random.default_rng(i), True) for i, s in enumerate(samples)]


def test_plucker_maps_match_the_batch_cameras(clips):
    batch = collate_clips(clips).prepare()
    B, T, _, H, W = batch.video.shape
    assert batch.plucker.shape == (B, T, 6, H, W)
    for b, t in [(0, 0), (1, 3), (2, 4)]:
        expected = brute_force_plucker(batch.c2w[b, t].double().numpy(), batch.K[b, t].double().numpy(), H, W)
        np.testing.assert_allclose(batch.plucker[b, t].numpy(), expected, atol=1e-5)


def test_prepare_gives_float_video_once(clips):
    batch = collate_clips(clips)
    assert batch.video.dtype == torch.uint8 and batch.plucker is None
    prepared = batch.prepare()
    assert prepared.video.dtype == torch.float32 and prepared.video.max() <= 1.0
    assert batch.depth.dtype == torch.float16 and prepared.depth.dtype == torch.float32
    torch.testing.assert_close(prepared.video * 255.0, batch.video.float())
    assert prepared.prepare() is prepared
    torch.testing.assert_close(prepared.condition_image, prepared.video[:, 0])


def test_collation_pads_missing_supervision_and_flags_it(clips):
    no_depth = dataclasses.replace(clips[1], depth=None, dynamic_mask=None, track_xyz=None, track_visible=None)
    fewer_tracks = dataclasses.replace(
        clips[2], track_xyz=clips[2].track_xyz[:7], track_visible=clips[2].track_visible[:7]
    )
    blank = blank_sample(small_clip())
    batch = collate_clips([clips[0], no_depth, fewer_tracks, blank])
    assert batch.has_depth.tolist() == [True, False, True, False]
    assert batch.has_dynamic_mask.tolist() == [True, False, True, False]
    assert batch.has_tracks.tolist() == [True, False, True, False]
    assert batch.is_padding.tolist() == [False, False, False, True] and batch.weight.tolist() == [1, 1, 1, 0]
    assert batch.track_valid.sum(1).tolist() == [50, 0, 7, 0]
    assert (batch.depth[1] == 0).all() and not batch.dynamic_mask[1].any()
    torch.testing.assert_close(batch.track_xyz[2, :7], clips[2].track_xyz[:7])
    assert (batch.track_xyz[2, 7:] == 0).all() and not batch.track_visible[2, 7:].any()
    assert batch.keys[3] == "__padding__" and len(batch) == 4
    fixed = collate_clips([fewer_tracks, blank], num_tracks=64)  # the DataModule fixes N: same shapes every batch
    assert fixed.track_xyz.shape == (2, 64, 5, 3) and fixed.track_valid.sum(1).tolist() == [7, 0]
    with pytest.raises(ValueError, match="more than num_tracks"):
        collate_clips([clips[0]], num_tracks=10)


def test_skip_counts_are_summed(clips):
    first = dataclasses.replace(clips[0], skipped={"corrupt": 2})
    second = dataclasses.replace(clips[1], skipped={"corrupt": 1, "too short": 4})
    assert collate_clips([first, second]).skipped == {"corrupt": 3, "too short": 4}


def test_clips_of_different_sizes_are_refused(clips):
    other = blank_sample(small_clip(height=16))
    with pytest.raises(ValueError, match="expected"):
        collate_clips([clips[0], other])


def test_batch_moves_between_devices_as_one(clips):
    batch = collate_clips(clips).to("cpu")
    assert isinstance(batch.keys, list) and batch.video.device.type == "cpu"


def test_take_keeps_the_first_clips_of_every_field(clips):
    batch = collate_clips(clips).prepare()
    first = batch.take(1)
    assert first.keys == batch.keys[:1] and first.captions == batch.captions[:1] and len(first) == 1
    for name in ("video", "K", "c2w", "depth", "plucker", "track_xyz", "is_padding"):
        assert torch.equal(getattr(first, name), getattr(batch, name)[:1]), name
