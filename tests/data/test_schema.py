"""The shard record: keys, exact round trips through the webdataset members, and clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from d4s.data.schema import (
    CAMERAS,
    DEPTH,
    META,
    RGB,
    SCHEMA_VERSION,
    ClipMeta,
    ClipRecord,
    decode_record,
    encode_record,
    sample_key,
)
from d4s.geometry import look_at, unproject_depth


def make_record(T: int = 4, H: int = 31, W: int = 42, seed: int = 0, **fields) -> ClipRecord:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W]

    def frame(t: int) -> np.ndarray:  # natural-image-like: detail in luminance, smooth low-saturation colour
        luminance = 120 + 70 * np.sin(x / 3 + t) * np.cos(y / 4)
        tint = 20 * np.stack([np.sin(x / 20), np.cos(y / 15), -np.sin((x + y) / 25)], -1)
        return luminance[..., None] + tint

    frames = np.stack([frame(t) for t in range(T)])
    K = np.tile(np.array([[40.0, 0, W / 2], [0, 40.0, H / 2], [0, 0, 1]], np.float32), (T, 1, 1))
    eye = torch.from_numpy(rng.normal(size=(T, 3)))
    c2w = look_at(eye, eye + torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)).float().numpy()
    meta = ClipMeta(
        dataset="toy",
        scene="s",
        frame_indices=list(range(T)),
        fps=12.0,
        height=H,
        width=W,
        pose_source="gt",
        depth_source="gt",
        metric=True,
        caption="a test",
        licence="CC0-1.0",
    )
    values = {
        "key": sample_key("toy", "s", 0),
        "frames": frames.astype(np.uint8),
        "K": K,
        "c2w": c2w,
        "timestamps": np.arange(T) / 12.0,
        "meta": meta,
        "depth": rng.uniform(0.5, 20.0, (T, H, W)).astype(np.float32),
        "dynamic_mask": rng.random((T, H, W)) > 0.7,
        "track_xyz": rng.normal(size=(7, T, 3)).astype(np.float32),
        "track_visible": rng.random((7, T)) > 0.3,
    }
    values.update(fields)
    return ClipRecord(**values)


def test_keys_are_stable_unique_and_dot_free():
    assert sample_key("re10k", "abc123", 49) == "re10k__abc123__000049"
    assert sample_key("po", "train/seq.v1", 0) == sample_key("po", "train/seq.v1", 0)
    odd = {sample_key("po", name, 0) for name in ("train/seq", "train-seq", "train_seq", "train.seq", "a__b", "a_-b")}
    assert len(odd) == 6
    assert all("." not in key and key.count("__") == 2 for key in odd)
    with pytest.raises(ValueError, match="first_frame"):
        sample_key("po", "s", -1)


def test_every_field_round_trips():
    record = make_record()  # odd height: the video is padded to even size and cropped back
    decoded = decode_record(encode_record(record))
    assert decoded.key == record.key and decoded.meta == record.meta
    mse = np.mean((decoded.frames.astype(float) - record.frames) ** 2)
    assert 10 * np.log10(255**2 / mse) > 35
    np.testing.assert_allclose(decoded.depth, record.depth, rtol=2**-11)  # float16
    for name in ("K", "c2w", "timestamps", "dynamic_mask", "track_xyz", "track_visible"):
        np.testing.assert_array_equal(getattr(decoded, name), getattr(record, name))


def test_optional_members_are_absent_when_missing():
    record = make_record(depth=None, dynamic_mask=None, track_xyz=None, track_visible=None)
    sample = encode_record(record)
    assert set(sample) == {"__key__", RGB, CAMERAS, META}
    decoded = decode_record(sample)
    assert decoded.depth is None and decoded.dynamic_mask is None and decoded.track_xyz is None
    with pytest.raises(ValueError, match="no depth"):
        decoded.pointmaps()


def test_depth_beyond_float16_is_invalid_and_encoding_is_deterministic():
    record = make_record()
    record.depth[0, 0, 0] = 1e5
    sample = encode_record(record)
    assert decode_record(sample).depth[0, 0, 0] == 0.0
    assert encode_record(record) == sample


def test_pointmaps_come_from_unproject_depth():
    record = make_record()
    record.depth[1, 2, 3] = 0.0
    points, valid = record.pointmaps()
    expected = unproject_depth(torch.from_numpy(record.depth), torch.from_numpy(record.K), torch.from_numpy(record.c2w))
    np.testing.assert_allclose(points, expected.numpy(), rtol=1e-6)
    assert not valid[1, 2, 3] and valid.sum() == valid.size - 1


def test_bad_records_and_samples_are_named():
    with pytest.raises(ValueError, match="c2w: expected shape"):
        make_record(c2w=np.zeros((3, 4, 4), np.float32)).validate()
    bad = make_record()
    bad.K[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="K: holds NaN"):
        encode_record(bad)
    hidden_nan = make_record()
    hidden_nan.track_visible[0, 0] = False
    hidden_nan.track_xyz[0, 0] = np.nan  # unknown where not visible: allowed
    hidden_nan.validate()
    hidden_nan.track_visible[0, 0] = True
    with pytest.raises(ValueError, match="track_xyz: NaN or inf at a visible point"):
        hidden_nan.validate()
    with pytest.raises(ValueError, match="track_xyz and track_visible"):
        make_record(track_visible=None).validate()
    sample = encode_record(make_record())
    with pytest.raises(ValueError, match=r"missing members \['cameras.npz'\]"):
        decode_record({k: v for k, v in sample.items() if k != CAMERAS})
    with pytest.raises(ValueError, match="depth.npy.zst: cannot read"):
        decode_record({**sample, DEPTH: b"not a zip"})
    with pytest.raises(ValueError, match="cannot decode video"):
        decode_record({**sample, RGB: sample[RGB][: len(sample[RGB]) // 2]})
    newer = json.loads(sample[META])
    newer["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match="newer than this code"):
        decode_record({**sample, META: json.dumps(newer).encode()})
