"""Video writing and reading (both backends), and depth colour maps."""

import numpy as np
import pytest
import torch

from d4s.utils.video import colorize_depth, encode_video, read_video, to_uint8_frames, write_video


def test_video_round_trip_within_codec_tolerance(tmp_path):
    t = torch.linspace(0, 1, 6)[:, None, None, None]
    y = torch.linspace(0, 1, 33)[None, :, None, None]
    x = torch.linspace(0, 1, 47)[None, None, :, None]
    frames = torch.cat([x.expand(6, 33, 47, 1), y.expand(6, 33, 47, 1), t.expand(6, 33, 47, 1)], dim=-1)
    path = write_video(tmp_path / "clip.mp4", frames, fps=8)
    decoded = read_video(path)
    assert decoded.shape == (6, 34, 48, 3)  # odd sizes padded to even for yuv420p
    error = np.abs(decoded[:, :33, :47].astype(float) - to_uint8_frames(frames).astype(float))
    assert error.mean() < 3.0


def test_fractional_frame_rate(tmp_path):
    import av

    write_video(tmp_path / "ntsc.mp4", np.zeros((3, 8, 8, 3), np.uint8), fps=29.97)
    with av.open(str(tmp_path / "ntsc.mp4")) as container:
        assert abs(float(container.streams.video[0].average_rate) - 29.97) < 1e-3


def test_bad_frames_shape_and_rate(tmp_path):
    with pytest.raises(ValueError, match="frames"):
        to_uint8_frames(np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="fps"):
        write_video(tmp_path / "x.mp4", np.zeros((1, 4, 4, 3)), fps=0)


def test_colorize_depth_orders_near_warm_and_marks_invalid_black():
    depth = torch.tensor([[[1.0, 2.0, 4.0, 0.0]]])
    rgb = colorize_depth(depth, near=1.0, far=4.0)
    assert rgb.shape == (1, 1, 4, 3)
    assert torch.equal(rgb[0, 0, 3], torch.zeros(3))
    # turbo: red-dominant at the near end, blue-dominant at the far end
    assert rgb[0, 0, 0, 0] > rgb[0, 0, 0, 2] and rgb[0, 0, 2, 2] > rgb[0, 0, 2, 0]
    assert colorize_depth(torch.zeros(2, 3)).abs().max() == 0


def test_encoded_bytes_are_reproducible_and_decode_back():
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (6, 48, 48, 3), dtype=np.uint8)  # small frames: where x264's mbtree varied
    encoded = {encode_video(frames, fps=12.0, crf=12) for _ in range(10)}
    assert len(encoded) == 1
    decoded = read_video(encoded.pop())
    assert decoded.shape == frames.shape


def test_truncated_or_empty_video_bytes_are_a_clear_error():
    data = encode_video(np.zeros((3, 16, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="cannot decode video"):
        read_video(data[: len(data) // 2])


def _textured_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """Smooth moving colour gradients (codec-friendly, so decoded frames stay close to the originals)."""
    v, u = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    frames = [np.stack([u * 3 + t * 5, v * 3 + t * 2, (u + v) * 2], -1) % 256 for t in range(num_frames)]
    return np.stack(frames).astype(np.uint8)


@pytest.mark.parametrize("backend", ["pyav", "decord", "auto"])
def test_read_video_selects_frames_and_transforms_them(backend):
    data = encode_video(_textured_frames(12, 64, 96), fps=12)
    every = read_video(data, backend="pyav")
    assert every.shape == (12, 64, 96, 3)
    chosen = read_video(data, [7, 2, 9], backend=backend)
    np.testing.assert_array_equal(chosen, every[[7, 2, 9]])  # both backends: libavcodec, the same frames
    flipped = read_video(data, [1, 3], backend=backend, transform=lambda frame: frame[::2, ::-1])
    np.testing.assert_array_equal(flipped, every[[1, 3], ::2, ::-1])
    with pytest.raises(ValueError, match="asked for frame 12, but the video holds 12 frames"):
        read_video(data, [0, 12], backend=backend)


def test_decord_malformed_widths_are_caught_and_auto_still_reads_them():
    data = encode_video(_textured_frames(3, 48, 48), fps=12)
    with pytest.raises(ValueError, match="cannot decode video with decord"):
        read_video(data, backend="decord")
    assert read_video(data, backend="auto").shape == (3, 48, 48, 3)


@pytest.mark.parametrize("backend", ["pyav", "decord", "auto"])
def test_truncated_video_is_an_error_on_every_backend(backend):
    data = encode_video(_textured_frames(6, 64, 64), fps=12)
    with pytest.raises(ValueError, match="cannot decode video"):
        read_video(data[: len(data) // 2], backend=backend)
