"""Clip sampling: frame choice, resize and crop with exact intrinsics, depth without mixing, cameras and tracks."""

from __future__ import annotations

import glob
import io
import json
from collections import Counter

import numpy as np
import pytest
import torch

from d4s.data.clips import ClipConfig, ClipTooShort, blank_sample, choose_frames, crop_box, sample_clip
from d4s.data.schema import DEPTH, DEPTH_V1, GENERIC_PROMPT, META, decode_cameras, decode_depth, decode_tracks
from d4s.data.shards import read_shard
from d4s.geometry.cameras import project_points, unproject_pixels
from tests.data.conftest import small_clip


def raw_samples(shards, split: str = "train") -> list[dict]:
    return [s for url in sorted(glob.glob(str(shards / split / "*.tar"))) for s in read_shard(url, Counter())]


def source_coordinates(K_out: torch.Tensor, K_src: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Where each output pixel centre lies in the source image, by the intrinsics alone: ``[h, w, 2]``."""
    v, u = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    pixels = torch.stack([u + 0.5, v + 0.5, torch.ones_like(u)], -1)
    return (pixels @ (K_src @ torch.linalg.inv(K_out)).T)[..., :2]


@pytest.mark.parametrize(
    ("source", "size"),
    [((160, 200), (40, 64)), ((160, 200), (64, 40)), ((20, 30), (48, 64)), ((90, 160), (90, 90))],
    ids=["shrink-wide", "shrink-tall", "grow", "crop-only"],
)
def test_resized_images_and_maps_sit_where_the_new_intrinsics_say(source, size):
    H, W = source
    v, u = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    ramp = np.stack([u, v, np.zeros_like(u)], -1).astype(np.uint8)[None]  # R = column, G = row (1 level per pixel)
    ids = (v * W + u)[None]  # a unique id per source pixel
    K_src = torch.tensor([[90.0, 0.0, 0.47 * W], [0.0, 95.0, 0.52 * H], [0.0, 0.0, 1.0]], dtype=torch.float64)
    for seed in range(4):
        box = crop_box(source, size, np.random.default_rng(seed), random=True)
        K_out = box.intrinsics(K_src)
        where = source_coordinates(K_out, K_src, *size)  # continuous source coordinates, pixel centres at +0.5
        image = box.resize_images(ramp)[0].astype(np.float64)
        # a linear ramp filtered by area averaging or bilinear interpolation keeps its value at the pixel centre;
        # away from the border, where filters clamp
        inner = (where[..., 0] > 2) & (where[..., 0] < W - 2) & (where[..., 1] > 2) & (where[..., 1] < H - 2)
        assert inner.sum() > 0.5 * inner.numel()
        assert np.abs(image[..., 0] - (where[..., 0].numpy() - 0.5))[inner.numpy()].max() <= 1.0
        assert np.abs(image[..., 1] - (where[..., 1].numpy() - 0.5))[inner.numpy()].max() <= 1.0
        # nearest neighbour: each output pixel holds exactly the source pixel that contains its centre
        picked = box.resize_nearest(ids, np.array([0]))[0]
        assert np.array_equal(picked % W, np.clip(np.floor(where[..., 0].numpy() + 1e-9), 0, W - 1))
        assert np.array_equal(picked // W, np.clip(np.floor(where[..., 1].numpy() + 1e-9), 0, H - 1))


def test_centre_crop_is_centred():
    box = crop_box((100, 300), (50, 50), np.random.default_rng(0), random=False)
    assert box.resized == (50, 150) and (box.top, box.left) == (0, 50)


def test_frame_choice_respects_steps_and_length():
    config = ClipConfig(num_frames=5, frame_step=2, max_frame_step=6)
    rng = np.random.default_rng(0)
    steps = set()
    for _ in range(200):
        indices = choose_frames(20, config, rng, random=True)
        step = np.diff(indices)
        assert len(indices) == 5 and (step == step[0]).all() and indices[0] >= 0 and indices[-1] < 20
        steps.add(int(step[0]))
    assert steps == {2, 3, 4}  # 6 and 5 do not fit in 20 frames
    assert choose_frames(20, config, rng, random=False).tolist() == [0, 2, 4, 6, 8]
    with pytest.raises(ClipTooShort, match="needs 9 frames"):
        choose_frames(8, config, rng, random=True)


def test_clip_config_needs_frames_the_vae_can_compress():
    with pytest.raises(ValueError, match="divisible by the VAE's temporal compression"):
        ClipConfig(num_frames=48)
    assert ClipConfig(num_frames=49).num_frames == 49
    with pytest.raises(ValueError, match="max_frame_step"):
        ClipConfig(frame_step=3, max_frame_step=2)


def depth_agreement(clip, K: torch.Tensor) -> torch.Tensor:
    """Per visible track point: does its depth lie within the depths of the 3x3 pixels around its projection?

    The window allows for the point sitting anywhere inside its pixel (toy4d's 48 px pixels are coarse, and
    surfaces seen at grazing angles change depth a lot across one).
    """
    uv, z = project_points(clip.track_xyz.transpose(0, 1), clip.c2w, K)  # [T, N, 2], [T, N]
    H, W = clip.depth.shape[-2:]
    inside = (uv[..., 0] >= 0) & (uv[..., 0] < W) & (uv[..., 1] >= 0) & (uv[..., 1] < H)
    t, n = torch.nonzero(clip.track_visible.transpose(0, 1) & inside, as_tuple=True)
    u, v = uv[t, n].floor().long().unbind(-1)
    padded = torch.nn.functional.pad(clip.depth, (1, 1, 1, 1), mode="replicate")
    window = torch.stack([padded[t, v + dv, u + du] for dv in range(3) for du in range(3)])
    return (z[t, n] >= 0.995 * window.min(0).values) & (z[t, n] <= 1.005 * window.max(0).values)


def test_tracks_reproject_onto_the_clip_depth(toy4d_shards):
    """A visible track point projects, through the clip's cameras, onto pixels whose depth is the point's depth."""
    agree, shifted = [], []
    for number, sample in enumerate(raw_samples(toy4d_shards)[:8]):
        clip = sample_clip(sample, small_clip(num_tracks=128), np.random.default_rng(number), random=True)
        assert clip.track_visible.any(0).all(), "every frame sees some tracks"
        agree.append(depth_agreement(clip, clip.K))
        shifted.append(depth_agreement(clip, clip.K + torch.tensor([[0.0, 0.0, 2.0], [0, 0, 0], [0, 0, 0]])))
        uv, z = project_points(clip.track_xyz.transpose(0, 1), clip.c2w, clip.K)
        lifted = unproject_pixels(uv, z, clip.K, clip.c2w)  # and back: the cameras are self-consistent
        torch.testing.assert_close(lifted, clip.track_xyz.transpose(0, 1), atol=1e-4, rtol=1e-4)
    assert torch.cat(agree).float().mean() > 0.95  # the rest sit on occlusion edges
    assert torch.cat(shifted).float().mean() < 0.9  # control: a principal point 2 px off is caught


def test_cameras_start_at_identity_and_keep_relative_motion(toy4d_shards):
    sample = raw_samples(toy4d_shards)[3]
    clip = sample_clip(sample, small_clip(), np.random.default_rng(1), random=True)
    assert torch.equal(clip.c2w[0], torch.eye(4))
    c2w = decode_cameras(sample)["c2w"].astype(np.float64)[clip.frame_indices.numpy()]
    expected = np.linalg.inv(c2w[0]) @ c2w
    np.testing.assert_allclose(clip.c2w.numpy(), expected, atol=1e-5)
    timestamps = decode_cameras(sample)["timestamps"][clip.frame_indices.numpy()]
    np.testing.assert_allclose(clip.times.numpy(), timestamps - timestamps[0], atol=1e-6)


def test_depth_is_resized_without_mixing_values(toy4d_shards):
    sample = raw_samples(toy4d_shards)[0]
    depth = decode_depth(sample)
    depth[:, ::3, ::2] = 0.0  # many invalid pixels
    # written the schema-1 way (depth.npz), which loaders still read
    sample = {**{k: v for k, v in sample.items() if k != DEPTH}, DEPTH_V1: _replace_depth(sample, depth)}
    clip = sample_clip(sample, small_clip(height=20, width=28), np.random.default_rng(0), random=True)
    for t, index in enumerate(clip.frame_indices.tolist()):
        assert set(np.unique(clip.depth[t].numpy())) <= set(np.unique(depth[index]))


def _replace_depth(sample: dict, depth: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, depth=depth.astype(np.float16))
    return buffer.getvalue()


def test_tracks_are_subsampled_and_visible_only_inside_the_crop(toy4d_shards):
    sample = raw_samples(toy4d_shards)[5]
    xyz, _ = decode_tracks(sample)
    clip = sample_clip(sample, small_clip(num_tracks=40), np.random.default_rng(2), random=True)
    assert clip.track_xyz.shape == (40, 5, 3) and xyz.shape[0] > 40
    uv, z = project_points(clip.track_xyz.transpose(0, 1), clip.c2w, clip.K)
    visible = clip.track_visible.transpose(0, 1)
    inside = (z > 0) & (uv >= 0).all(-1) & (uv[..., 0] < 40) & (uv[..., 1] < 32)
    assert inside[visible].all() and clip.track_visible.any(1).all()
    assert torch.isfinite(clip.track_xyz).all()


def test_a_clip_without_caption_gets_the_generic_prompt(toy4d_shards):
    sample = raw_samples(toy4d_shards)[0]
    meta = json.loads(sample[META])
    clip = sample_clip(sample, small_clip(), np.random.default_rng(0), random=False)
    assert clip.caption == meta["caption"] != ""
    sample = {**sample, META: json.dumps({**meta, "caption": ""}).encode()}
    assert sample_clip(sample, small_clip(), np.random.default_rng(0), random=False).caption == GENERIC_PROMPT


def test_video_backends_give_the_same_clip(toy4d_shards):
    sample = raw_samples(toy4d_shards)[2]
    clips = [
        sample_clip(sample, small_clip(video_backend=backend), np.random.default_rng(4), random=True)
        for backend in ("auto", "pyav")
    ]
    assert torch.equal(clips[0].video, clips[1].video)


def test_blank_padding_clip_has_valid_cameras():
    clip = blank_sample(small_clip())
    assert clip.is_padding and clip.video.shape == (5, 3, 32, 40) and torch.equal(clip.c2w[2], torch.eye(4))
    assert clip.K[0, 0, 2] == 20.0 and clip.K[0, 1, 2] == 16.0
