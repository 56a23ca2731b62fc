"""RealEstate10K reader: native camera files and frame folders/videos to the project conventions."""

import av
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from annotation.errors import InputError
from annotation.readers import frames as frames_module
from annotation.readers import make_reader
from annotation.readers.realestate10k import RealEstate10KReader
from d4s.geometry import project_points
from d4s.utils.video import write_video

W, H = 48, 32
NORMALISED = (0.9, 1.2, 0.45, 0.55)  # fx/W, fy/H, cx/W, cy/H
TIMESTAMPS = (1_000_000, 1_033_367, 1_066_733, 1_100_100)  # microseconds, 29.97 fps
POINT = np.array([0.3, -0.2, 4.0])  # a world point in front of every camera


def native_w2c() -> np.ndarray:
    """``[T, 3, 4]`` world-to-camera ``[R | t]`` with rotations about several axes."""
    rotvecs = [[0.0, 0.0, 0.0], [0.05, -0.1, 0.02], [0.1, -0.2, 0.05], [0.12, -0.3, 0.1]]
    R = Rotation.from_rotvec(rotvecs).as_matrix()
    t = np.array([[0.0, 0.0, 0.0], [0.1, 0.02, -0.05], [0.2, 0.03, -0.1], [0.3, 0.05, -0.2]])
    return np.concatenate([R, t[:, :, None]], axis=2)


def camera_lines(w2c: np.ndarray, timestamps=TIMESTAMPS, intrinsics=NORMALISED) -> list[str]:
    """Native 19-field lines: timestamp, fx fy cx cy (normalised), two zeros, row-major 3x4 w2c."""
    return [
        " ".join([str(ts), *map(repr, intrinsics), "0", "0", *map(repr, m.flatten().tolist())])
        for ts, m in zip(timestamps, w2c)
    ]


def write_camera_file(path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(["https://www.youtube.com/watch?v=abcdefghijk", *lines]) + "\n")


def frame_colours() -> np.ndarray:
    """``[T, H, W, 3]`` uint8 frames: a distinct colour per frame, a bright top-left quadrant to pin orientation."""
    frames = np.zeros((len(TIMESTAMPS), H, W, 3), np.uint8)
    for i in range(len(TIMESTAMPS)):
        frames[i] = (200, 40 * i, 10)
        frames[i, : H // 2, : W // 2] = (20, 220, 250)
    return frames


def write_image_frames(folder, frames: np.ndarray, suffix: str = ".png") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for ts, frame in zip(TIMESTAMPS, frames):
        Image.fromarray(frame).save(folder / f"{ts}{suffix}", quality=95)


@pytest.fixture
def dataset(tmp_path):
    """``root`` with clip ``alpha`` (train, png frames), ``beta`` (test, jpg frames) and ``gamma`` (no frames)."""
    lines = camera_lines(native_w2c())
    for split, clip in (("train", "alpha"), ("test", "beta"), ("train", "gamma")):
        write_camera_file(tmp_path / split / f"{clip}.txt", lines)
    write_image_frames(tmp_path / "frames" / "alpha", frame_colours())
    write_image_frames(tmp_path / "frames" / "beta", frame_colours(), ".jpg")
    return tmp_path


def expected_pixels(point: np.ndarray) -> np.ndarray:
    """The point's pixels ``[T, 2]`` by hand under the native convention: x = R X + t, u = fx W x/z + cx W."""
    fx, fy, cx, cy = NORMALISED
    pixels = []
    for m in native_w2c():
        x, y, z = m[:, :3] @ point + m[:, 3]
        pixels.append([fx * W * x / z + cx * W, fy * H * y / z + cy * H])
    return np.array(pixels)


def assert_known_point_projects(scene) -> None:
    point = torch.from_numpy(POINT)[None].float()
    uv, z = project_points(point, torch.from_numpy(scene.c2w), torch.from_numpy(scene.K))
    expected = expected_pixels(POINT)
    assert ((expected >= 0) & (expected < [W, H])).all()  # the fixture's point is inside every frame
    np.testing.assert_allclose(uv[:, 0].numpy(), expected, atol=1e-3)
    assert (z > 0).all()


def test_listing_splits_and_registry(dataset):
    reader = make_reader("realestate10k", dataset)
    assert isinstance(reader, RealEstate10KReader)
    assert reader.name == "realestate10k" and reader.licence.startswith("CC-BY-4.0")
    assert reader.scene_names() == ["alpha", "beta", "gamma"]
    assert [reader.split_of(n) for n in reader.scene_names()] == ["train", "test", "train"]
    with pytest.raises(ValueError, match="delta"):
        reader.open_scene("delta")
    with pytest.raises(InputError, match="no train/ or test/"):
        RealEstate10KReader(dataset / "elsewhere").scene_names()


def test_png_clip_cameras_project_known_point_and_frames_are_rgb(dataset):
    scene = RealEstate10KReader(dataset).open_scene("alpha")
    assert (scene.dataset, scene.name, scene.num_frames) == ("realestate10k", "alpha", 4)
    assert (scene.height, scene.width) == (H, W)
    assert not scene.metric and not (scene.has_depth or scene.has_dynamic_mask or scene.has_tracks)
    assert scene.c2w.shape == (4, 4, 4) and scene.c2w.dtype == np.float32 and scene.K.dtype == np.float32
    np.testing.assert_allclose(np.linalg.det(scene.c2w[:, :3, :3]), 1.0, atol=1e-6)
    np.testing.assert_allclose(scene.K[0], [[0.9 * W, 0, 0.45 * W], [0, 1.2 * H, 0.55 * H], [0, 0, 1]], rtol=1e-6)
    np.testing.assert_allclose(scene.timestamps, np.array(TIMESTAMPS) / 1e6)
    assert scene.fps == pytest.approx(29.97, abs=0.01)
    assert_known_point_projects(scene)
    frames = scene.frames([2, 0])
    assert frames.dtype == np.uint8 and frames.shape == (2, H, W, 3)
    np.testing.assert_array_equal(frames, frame_colours()[[2, 0]])  # exact: png is lossless, channels RGB


def test_jpg_frames_are_found_by_timestamp(dataset):
    frames = RealEstate10KReader(dataset).open_scene("beta").frames([1])
    error = np.abs(frames.astype(int) - frame_colours()[[1]].astype(int))
    assert error.mean() < 3


def test_video_frames_follow_camera_lines_and_set_K(tmp_path):
    write_camera_file(tmp_path / "test" / "clip.txt", camera_lines(native_w2c()))
    write_video(tmp_path / "videos" / "clip.mp4", frame_colours(), fps=30)
    scene = RealEstate10KReader(tmp_path, frames_root=tmp_path / "videos").open_scene("clip")
    assert (scene.height, scene.width) == (H, W)
    assert_known_point_projects(scene)
    frames = scene.frames([3, 1])
    assert frames.shape == (2, H, W, 3)
    assert np.abs(frames.astype(int) - frame_colours()[[3, 1]].astype(int)).mean() < 4


def test_clip_without_frames_is_listed_but_opening_raises(dataset):
    reader = RealEstate10KReader(dataset)
    assert "gamma" in reader.scene_names()
    with pytest.raises(InputError, match="gamma"):
        reader.open_scene("gamma")


def test_clip_in_both_splits_is_an_error(dataset):
    write_camera_file(dataset / "test" / "alpha.txt", camera_lines(native_w2c()))
    with pytest.raises(InputError, match="alpha") as info:
        RealEstate10KReader(dataset).scene_names()
    assert info.value.path.endswith("alpha.txt")


def negate_first_column(fields: list[str]) -> list[str]:
    """A camera line with ``R``'s first column negated: a reflection (det -1)."""
    matrix = [str(-float(x)) if i % 4 == 0 else x for i, x in enumerate(fields[7:])]
    return fields[:7] + matrix


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda fields: fields[:-1], "expected 19 numbers"),
        (lambda fields: fields[:8] + ["abc"] + fields[9:], "could not convert"),
        (lambda fields: ["12.5"] + fields[1:], "invalid literal"),
        (lambda fields: fields[:10] + ["nan"] + fields[11:], "non-finite"),
        (lambda fields: fields[:18] + ["inf"], "non-finite"),
        (negate_first_column, "not proper"),
        (lambda fields: fields[:7] + [repr(2 * float(x)) for x in fields[7:]], "not proper"),
    ],
    ids=["field_count", "non_numeric", "fractional_timestamp", "nan", "inf", "reflection", "scaled"],
)
def test_bad_camera_line_names_file_and_line(dataset, edit, needle):
    lines = camera_lines(native_w2c())
    lines[1] = " ".join(edit(lines[1].split()))  # the third line of the file
    write_camera_file(dataset / "train" / "alpha.txt", lines)
    with pytest.raises(InputError, match=needle) as info:
        RealEstate10KReader(dataset).open_scene("alpha")
    assert info.value.path.endswith("alpha.txt") and "line 3" in info.value.reason


def test_timestamps_must_increase(dataset):
    write_camera_file(dataset / "train" / "alpha.txt", camera_lines(native_w2c(), timestamps=(0, 10, 10, 30)))
    with pytest.raises(InputError, match="line 4: timestamps must increase"):
        RealEstate10KReader(dataset).open_scene("alpha")


def test_missing_corrupt_and_odd_sized_frames_raise_naming_the_file(dataset):
    folder = dataset / "frames" / "alpha"
    (folder / f"{TIMESTAMPS[3]}.png").unlink()
    with pytest.raises(InputError, match=str(TIMESTAMPS[3])) as info:
        RealEstate10KReader(dataset).open_scene("alpha")
    assert "missing" in info.value.reason

    write_image_frames(folder, frame_colours())
    (folder / f"{TIMESTAMPS[1]}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    Image.fromarray(np.zeros((H, W + 2, 3), np.uint8)).save(folder / f"{TIMESTAMPS[2]}.png")
    scene = RealEstate10KReader(dataset).open_scene("alpha")
    with pytest.raises(InputError, match="cannot decode") as info:
        scene.frames([0, 1])
    assert info.value.path == str(folder / f"{TIMESTAMPS[1]}.png")
    with pytest.raises(InputError, match=f"{W + 2}x{H}") as info:
        scene.frames([2])
    assert info.value.path == str(folder / f"{TIMESTAMPS[2]}.png")


def test_truncated_video_raises_naming_it(tmp_path):
    write_camera_file(tmp_path / "train" / "clip.txt", camera_lines(native_w2c()))
    video = write_video(tmp_path / "frames" / "clip.mp4", frame_colours(), fps=30)
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    with pytest.raises(InputError) as info:
        RealEstate10KReader(tmp_path).open_scene("clip")
    assert info.value.path == str(video)


def write_long_clip(root, count: int, video_frames: int | None = None, container: str = "mp4"):
    """Camera file of ``count`` frames for clip ``long`` and its video of ``video_frames`` (default ``count``) frames,
    frame ``i`` filled with grey level ``5 * i``; returns the video's path."""
    w2c = np.repeat(native_w2c()[:1], count, axis=0)
    write_camera_file(root / "train" / "long.txt", camera_lines(w2c, timestamps=[33_367 * i for i in range(count)]))
    frames = np.repeat(np.arange(video_frames or count, dtype=np.uint8)[:, None, None, None] * 5, 3, axis=3)
    frames = np.broadcast_to(frames, (len(frames), H, W, 3))
    path = root / "frames" / "long.mp4"
    if container == "mp4":
        return write_video(path, frames, fps=30)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format=container) as output:  # matroska states no frame count
        stream = output.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        for frame in frames:
            output.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")))
        output.mux(stream.encode())
    return path


def test_video_frames_are_decoded_lazily(tmp_path, monkeypatch):
    """Opening a scene decodes one frame; windows read in order decode each frame once, never the whole video."""
    write_long_clip(tmp_path, 60)
    decoded = []
    real_open = frames_module.av.open

    class CountingContainer:
        def __init__(self, *args, **kwargs):
            self.container = real_open(*args, **kwargs)
            self.streams, self.close = self.container.streams, self.container.close

        def decode(self, *args, **kwargs):
            for frame in self.container.decode(*args, **kwargs):
                decoded.append(frame)
                yield frame

    monkeypatch.setattr(frames_module.av, "open", CountingContainer)
    scene = RealEstate10KReader(tmp_path).open_scene("long")
    assert (scene.height, scene.width) == (H, W) and len(decoded) == 1
    for start in (0, 5, 10):
        window = list(range(start, start + 10))
        frames = scene.frames(window)
        assert frames.shape == (10, H, W, 3) and frames.dtype == np.uint8
        assert np.abs(frames[:, 0, 0, 0].astype(int) - 5 * np.array(window)).max() <= 3
    assert len(decoded) == 20  # frames 0-19 once each, not all 60
    assert np.abs(scene.frames([2, 0])[:, 0, 0, 0].astype(int) - [10, 0]).max() <= 3  # passed: decoding restarts
    assert len(decoded) == 23
    video = frames_module.VideoFrames(tmp_path / "frames" / "long.mp4", 60, "the camera file has")
    assert abs(int(video.read([50])[0, 0, 0, 0]) - 250) <= 3
    assert list(video._held) == [50]  # a jump forward decodes the frames before it but does not keep them


@pytest.mark.parametrize("container", ["mp4", "matroska"])
def test_short_video_raises_naming_it(tmp_path, container):
    """A stated frame count (mp4) is checked at open; without one (matroska), the first read past the end fails."""
    video = write_long_clip(tmp_path, 12, video_frames=8, container=container)
    if container == "mp4":
        with pytest.raises(InputError, match="video holds 8 frames, the camera file 12") as info:
            RealEstate10KReader(tmp_path).open_scene("long")
    else:
        scene = RealEstate10KReader(tmp_path).open_scene("long")
        assert scene.frames([7, 3]).shape == (2, H, W, 3)
        with pytest.raises(InputError, match="video holds 8 frames, the camera file 12") as info:
            scene.frames([6, 9])
    assert info.value.path == str(video)
