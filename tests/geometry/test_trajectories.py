"""Named trajectories and camera files."""

import json
import math

import pytest
import torch

from d4s.geometry import TRAJECTORY_NAMES, load_camera_path, make_trajectory, resample_poses, rigid_inverse
from d4s.geometry.cameras import look_at
from d4s.geometry.trajectories import save_camera_path

GENERATED = [name for name in TRAJECTORY_NAMES if name != "from_file"]


@pytest.mark.parametrize("name", GENERATED)
@pytest.mark.parametrize("num_frames", [1, 2, 49])
def test_every_trajectory_starts_at_identity_with_valid_rotations(name, num_frames):
    c2w = make_trajectory(name, num_frames, scene_scale=2.5)
    assert c2w.shape == (num_frames, 4, 4) and c2w.dtype == torch.float32
    torch.testing.assert_close(c2w[0], torch.eye(4))
    R = c2w[:, :3, :3].double()
    torch.testing.assert_close(
        R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(R), atol=1e-6, rtol=0
    )
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(num_frames, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(c2w[:, 3], torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(num_frames, 4))


def test_orbit_is_a_closed_full_turn_around_the_focus():
    scale = 3.0
    c2w = make_trajectory("orbit", 37, scene_scale=scale).double()
    torch.testing.assert_close(c2w[-1], c2w[0], atol=1e-6, rtol=0)
    focus = torch.tensor([0.0, 0.0, scale], dtype=torch.float64)
    distance = (c2w[:, :3, 3] - focus).norm(dim=-1)
    torch.testing.assert_close(distance, torch.full_like(distance, scale))
    forward = c2w[:, :3, 2]
    to_focus = torch.nn.functional.normalize(focus - c2w[:, :3, 3], dim=-1)
    torch.testing.assert_close(forward, to_focus, atol=1e-6, rtol=0)
    # half-way round, the camera is behind the focus looking back
    torch.testing.assert_close(
        c2w[18, :3, 3], torch.tensor([0.0, 0.0, 2 * scale], dtype=torch.float64), atol=1e-6, rtol=0
    )


@pytest.mark.parametrize(
    "name,direction",
    [("forward", (0, 0, 1)), ("backward", (0, 0, -1)), ("upward", (0, -1, 0)), ("downward", (0, 1, 0))],
)
def test_translations_move_along_their_axis_by_travel_times_scale(name, direction):
    c2w = make_trajectory(name, 11, scene_scale=4.0, travel=0.25)
    torch.testing.assert_close(c2w[-1, :3, 3], torch.tensor(direction, dtype=torch.float32) * 1.0)
    torch.testing.assert_close(c2w[:, :3, :3], torch.eye(3).expand(11, 3, 3))


def test_spiral_keeps_looking_at_the_focus():
    scale = 2.0
    c2w = make_trajectory("spiral", 25, scene_scale=scale).double()
    focus = torch.tensor([0.0, 0.0, scale], dtype=torch.float64)
    to_focus = torch.nn.functional.normalize(focus - c2w[:, :3, 3], dim=-1)
    torch.testing.assert_close(c2w[:, :3, 2], to_focus, atol=1e-6, rtol=0)
    assert c2w[1:, :3, 3].norm(dim=-1).min() > 0


def write_realestate10k(path, w2c: torch.Tensor, intrinsics=(0.5, 0.9, 0.5, 0.5)):
    lines = ["https://www.youtube.com/watch?v=xyz"]
    for i, m in enumerate(w2c):
        numbers = [str(1000 * i), *map(str, intrinsics), "0", "0", *(f"{x:.10f}" for x in m[:3].flatten().tolist())]
        lines.append(" ".join(numbers))
    path.write_text("\n".join(lines) + "\n")


def test_realestate10k_file_is_inverted_and_made_relative(tmp_path):
    g = torch.Generator().manual_seed(0)
    eye = torch.randn(5, 3, generator=g, dtype=torch.float64)
    c2w_true = look_at(eye, eye + torch.randn(5, 3, generator=g, dtype=torch.float64))
    path = tmp_path / "clip.txt"
    write_realestate10k(path, rigid_inverse(c2w_true))
    cameras = load_camera_path(path)
    torch.testing.assert_close(cameras.c2w, c2w_true, atol=1e-8, rtol=0)
    assert cameras.image_size == (1, 1)
    torch.testing.assert_close(
        cameras.K[0], torch.tensor([[0.5, 0, 0.5], [0, 0.9, 0.5], [0, 0, 1]], dtype=torch.float64)
    )
    traj = make_trajectory("from_file", 5, scene_scale=2.0, path=path).double()
    expected = rigid_inverse(c2w_true[:1]) @ c2w_true
    expected[:, :3, 3] *= 2.0
    torch.testing.assert_close(traj, expected, atol=1e-5, rtol=0)


def test_json_file_and_resampling(tmp_path):
    c2w = make_trajectory("orbit", 9, scene_scale=1.0)
    K = [[100.0, 0.0, 32.0], [0.0, 100.0, 24.0], [0.0, 0.0, 1.0]]
    path = tmp_path / "cams.json"
    path.write_text(json.dumps({"width": 64, "height": 48, "frames": [{"c2w": m.tolist(), "K": K} for m in c2w]}))
    cameras = load_camera_path(path)
    assert cameras.image_size == (48, 64) and cameras.K.shape == (9, 3, 3)
    same = make_trajectory("from_file", 9, path=path)
    torch.testing.assert_close(same, c2w, atol=1e-6, rtol=0)
    dense = make_trajectory("from_file", 17, path=path)  # every other pose is an original one
    torch.testing.assert_close(dense[::2], c2w, atol=1e-5, rtol=0)
    # in-between poses: half-way rotation (slerp) and mid-point translation
    mid = dense[1].double()
    a, b = c2w[0].double(), c2w[1].double()
    torch.testing.assert_close(mid[:3, 3], (a[:3, 3] + b[:3, 3]) / 2, atol=1e-6, rtol=0)
    angle = lambda R: torch.arccos(((torch.trace(R) - 1) / 2).clamp(-1, 1))  # noqa: E731
    torch.testing.assert_close(angle(a[:3, :3].T @ mid[:3, :3]), angle(b[:3, :3].T @ a[:3, :3]) / 2, atol=1e-5, rtol=0)
    assert resample_poses(c2w, 3).shape == (3, 4, 4)


def test_json_list_without_intrinsics(tmp_path):
    path = tmp_path / "list.json"
    path.write_text(json.dumps([{"c2w": torch.eye(4).tolist()}, {"c2w": torch.eye(4).tolist()}]))
    cameras = load_camera_path(path)
    assert cameras.K is None and cameras.image_size is None and cameras.c2w.shape == (2, 4, 4)


@pytest.mark.parametrize(
    "name,content,needle",
    [
        ("bad.json", "{not json", "not valid JSON"),
        ("empty.json", "[]", "non-empty list"),
        ("nokey.json", json.dumps([{"pose": 1}]), "c2w"),
        ("nan.json", json.dumps([{"c2w": [[math.nan] * 4] * 4}]), "non-finite"),
        ("shear.json", json.dumps([{"c2w": [[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}]), "orthonormal"),
        ("short.txt", "url\n1 2 3\n", "line 2: expected 19 numbers"),
        ("nan.txt", "url\n" + " ".join(["0"] * 7 + ["nan"] * 12) + "\n", "frame 0 has a non-finite pose"),
        (
            "zero_focal.txt",
            "url\n"
            + " ".join(
                ["0", "0", "0.5", "0.5", "0.5", "0", "0"] + ["1", "0", "0", "0", "0", "1", "0", "0", "0", "0", "1", "0"]
            ),
            "focal",
        ),
        ("none.txt", "url only\n", "no camera lines"),
    ],
)
def test_malformed_camera_files_raise_value_error_naming_the_file(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=needle) as info:
        load_camera_path(path)
    assert name in str(info.value)


def test_missing_file_and_unknown_names():
    with pytest.raises(FileNotFoundError, match="nowhere.json"):
        make_trajectory("from_file", 4, path="nowhere.json")
    with pytest.raises(ValueError, match="unknown trajectory 'zigzag'"):
        make_trajectory("zigzag", 4)
    with pytest.raises(ValueError, match="path"):
        make_trajectory("from_file", 4)
    with pytest.raises(ValueError, match="num_frames"):
        make_trajectory("spiral", 0)
    with pytest.raises(ValueError, match="scene_scale"):
        make_trajectory("spiral", 4, scene_scale=-1.0)
    with pytest.raises(ValueError, match="travel"):
        make_trajectory("forward", 4, travel=math.nan)
    with pytest.raises(ValueError, match="spiral_forward"):
        make_trajectory("spiral", 4, spiral_forward=1.0, spiral_radius=0.0)


def test_orbit_below_360_degrees_swings_and_closes():
    scale, degrees = 2.0, 40.0
    c2w = make_trajectory("orbit", 41, scene_scale=scale, orbit_degrees=degrees).double()
    assert torch.equal(c2w[-1], c2w[0])
    focus = torch.tensor([0.0, 0.0, scale], dtype=torch.float64)
    offset = c2w[:, :3, 3] - focus
    torch.testing.assert_close(offset.norm(dim=-1), torch.full((41,), scale, dtype=torch.float64))
    angle = torch.rad2deg(torch.atan2(-offset[:, 0], -offset[:, 2]))  # 0 at the start, about the vertical axis
    assert angle.max().item() == pytest.approx(degrees / 2, abs=1e-4)
    assert angle.min().item() == pytest.approx(-degrees / 2, abs=1e-4)
    forward = c2w[:, :3, 2]
    torch.testing.assert_close(forward, torch.nn.functional.normalize(-offset, dim=-1), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="orbit_degrees"):
        make_trajectory("orbit", 5, orbit_degrees=0.0)


def test_saved_cameras_load_back_exactly(tmp_path):
    c2w = make_trajectory("spiral", 7, scene_scale=1.7)
    K = torch.tensor([[50.5, 0.0, 31.25], [0.0, 51.0, 24.0], [0.0, 0.0, 1.0]])
    path = save_camera_path(tmp_path / "cameras.json", c2w, K, (48, 64), times=[0, 1, 2, 3, 4, 5, 6.5])
    loaded = load_camera_path(path)
    assert torch.equal(loaded.c2w.float(), c2w) and torch.equal(loaded.K.float(), K.expand(7, 3, 3))
    assert loaded.image_size == (48, 64)
    assert json.loads(path.read_text())["frames"][-1]["time"] == 6.5
    # a camera file replays as given: from_file keeps the poses (they already start at the identity)
    assert torch.equal(make_trajectory("from_file", 7, path=path), c2w)
    with pytest.raises(ValueError, match="times"):
        save_camera_path(tmp_path / "bad.json", c2w, K, (48, 64), times=[0.0])
