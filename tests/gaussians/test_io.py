"""3DGS .ply files, .ply sequences and scene .npz files."""

import numpy as np
import pytest
import torch
from plyfile import PlyData, PlyElement

from d4s.gaussians import (
    DeformableGaussianField,
    load_ply,
    load_ply_sequence,
    load_scene,
    save_ply,
    save_ply_sequence,
    save_scene,
)
from d4s.render import render
from tests.helpers import orbit_cameras, random_field


def assert_fields_equal(a, b):
    for (name, x), y in zip(a.tensors().items(), b.tensors().values()):
        assert torch.equal(x, y), name


@pytest.mark.parametrize("degree", [0, 1, 3])
def test_ply_has_exactly_the_standard_properties_and_values(tmp_path, degree):
    field = random_field(7, seed=degree, sh_degree=degree)
    path = save_ply(field, tmp_path / "scene.ply")
    vertex = PlyData.read(str(path))["vertex"]
    rest = 3 * ((degree + 1) ** 2 - 1)
    expected = (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )
    assert [p.name for p in vertex.properties] == expected
    assert all(vertex.data.dtype[name] == np.dtype("<f4") for name in expected)
    data = vertex.data
    np.testing.assert_array_equal(np.stack([data["x"], data["y"], data["z"]], 1), field.means.numpy())
    np.testing.assert_array_equal(data["opacity"], field.opacity_logits.numpy())  # logit
    np.testing.assert_array_equal(np.stack([data[f"scale_{i}"] for i in range(3)], 1), field.log_scales.numpy())
    np.testing.assert_array_equal(np.stack([data[f"rot_{i}"] for i in range(4)], 1), field.quats.numpy())  # wxyz
    np.testing.assert_array_equal(np.stack([data[f"f_dc_{i}"] for i in range(3)], 1), field.sh[:, 0].numpy())
    if degree:
        k = (degree + 1) ** 2 - 1
        # channel-major: f_rest_{c * k + j} is coefficient j + 1 of channel c
        for c in range(3):
            for j in range(k):
                np.testing.assert_array_equal(data[f"f_rest_{c * k + j}"], field.sh[:, j + 1, c].numpy())
    assert_fields_equal(load_ply(path), field)


def test_scene_npz_round_trip_is_exact(tmp_path):
    field = random_field(20, seed=1, sh_degree=1)
    g = torch.Generator().manual_seed(0)
    deformable = DeformableGaussianField(
        field,
        torch.randn(5, 20, 3, generator=g),
        torch.randn(5, 20, 4, generator=g),
        torch.randn(5, 20, 3, generator=g),
    )
    for compress in (False, True):
        path = save_scene(deformable, tmp_path / f"scene_{compress}.npz", compress=compress)
        loaded = load_scene(path)
        assert_fields_equal(loaded.canonical, field)
        for key in ("dmu", "dq", "ds"):
            assert torch.equal(getattr(loaded, key), getattr(deformable, key))


def test_scene_path_need_not_end_in_npz(tmp_path):
    deformable = DeformableGaussianField.static(random_field(4, seed=5), 2)
    loaded = load_scene(save_scene(deformable, tmp_path / "scene.bin"))
    assert_fields_equal(loaded.canonical, deformable.canonical)
    assert [p.name for p in tmp_path.iterdir()] == ["scene.bin"]


def test_a_shorter_sequence_replaces_a_longer_one(tmp_path):
    field = random_field(4, seed=6)
    save_ply_sequence(DeformableGaussianField.static(field, 5), tmp_path)
    (tmp_path / "notes.ply").write_text("not a frame")  # only zero-padded frame files are touched
    save_ply_sequence(DeformableGaussianField.static(field, 2), tmp_path)
    assert len(load_ply_sequence(tmp_path)) == 2
    assert (tmp_path / "notes.ply").exists()


def test_ply_sequence_frames_render_like_the_deformable_field(tmp_path):
    field = random_field(120, seed=2, sh_degree=1)
    g = torch.Generator().manual_seed(1)
    dq = torch.tensor([1.0, 0.0, 0.0, 0.0]) + 0.2 * torch.randn(3, 120, 4, generator=g)
    deformable = DeformableGaussianField(
        field, 0.1 * torch.randn(3, 120, 3, generator=g), dq, 0.1 * torch.randn(3, 120, 3, generator=g)
    )
    paths = save_ply_sequence(deformable, tmp_path / "ply")
    assert [p.name for p in paths] == ["frame_0000.ply", "frame_0001.ply", "frame_0002.ply"]
    frames = load_ply_sequence(tmp_path / "ply")
    c2w, K = orbit_cameras(2, 32, 24)
    for t, frame in enumerate(frames):
        assert_fields_equal(frame, deformable.at(t))
        expected = render(deformable.at(t), c2w, K, 32, 24, backend="torch")
        got = render(frame, c2w, K, 32, 24, backend="torch")
        for a, b in zip(got, expected):
            assert torch.equal(a, b)


@pytest.mark.parametrize("degree", [0, 2])
def test_a_3dgs_ply_without_normals_from_another_tool_reads_by_property_name(tmp_path, degree):
    """Written here with plyfile alone, as @playcanvas/splat-transform writes 3DGS files: the canonical property order
    without ``nx ny nz``; the opacity in float64 (any numeric type reads), an unrelated extra property ignored."""
    rng = np.random.default_rng(degree)
    n, rest = 5, 3 * ((degree + 1) ** 2 - 1)
    names = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", *(f"f_rest_{i}" for i in range(rest))]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3", "segment"]
    array = np.empty(n, dtype=[(name, "f8" if name == "opacity" else "f4") for name in names])
    values = {name: rng.normal(size=n).astype(np.float32) for name in names}
    for name in names:
        array[name] = values[name]
    path = tmp_path / "external.ply"
    PlyData([PlyElement.describe(array, "vertex")], byte_order="<").write(str(path))
    field = load_ply(path)

    def stack(*keys):
        return torch.from_numpy(np.stack([values[key] for key in keys], 1))

    assert torch.equal(field.means, stack("x", "y", "z"))
    assert torch.equal(field.quats, stack("rot_0", "rot_1", "rot_2", "rot_3"))
    assert torch.equal(field.log_scales, stack("scale_0", "scale_1", "scale_2"))
    assert torch.equal(field.opacity_logits, torch.from_numpy(values["opacity"]))
    assert torch.equal(field.sh[:, 0], stack("f_dc_0", "f_dc_1", "f_dc_2"))
    for channel in range(3):  # f_rest is channel-major: coefficient j of channel c is f_rest_{c (K - 1) + j}
        for j in range(1, (degree + 1) ** 2):
            expected = values[f"f_rest_{channel * ((degree + 1) ** 2 - 1) + j - 1}"]
            assert torch.equal(field.sh[:, j, channel], torch.from_numpy(expected))


def test_a_ply_loads_as_a_static_scene_of_one_time(tmp_path):
    field = random_field(6, seed=3, sh_degree=1)
    scene = load_scene(save_ply(field, tmp_path / "static.PLY"))
    assert scene.num_frames == 1
    assert_fields_equal(scene.canonical, field)  # with the identity deformation: at(0) is the field itself


def test_a_compressed_splat_ply_is_refused_with_the_way_to_decompress_it(tmp_path):
    chunk = np.zeros(1, dtype=[("min_x", "f4"), ("max_x", "f4")])
    vertex = np.zeros(4, dtype=[("packed_position", "u4"), ("packed_rotation", "u4")])
    path = tmp_path / "scene.compressed.ply"
    PlyData([PlyElement.describe(chunk, "chunk"), PlyElement.describe(vertex, "vertex")]).write(str(path))
    with pytest.raises(ValueError, match="compressed splat PLY .* splat-transform"):
        load_ply(path)


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.ply"):
        load_ply(tmp_path / "nope.ply")
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"this is not a ply file")
    with pytest.raises(ValueError, match="bad.ply"):
        load_ply(bad)
    points = tmp_path / "points.ply"
    array = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    PlyData([PlyElement.describe(array, "vertex")]).write(str(points))
    with pytest.raises(ValueError, match="missing vertex properties"):
        load_ply(points)
    with pytest.raises(FileNotFoundError):
        load_scene(tmp_path / "nope.npz")
    other = tmp_path / "other.npz"
    np.savez(other, means=np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="not a d4s scene"):
        load_scene(other)
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="broken.npz"):
        load_scene(broken)
    with pytest.raises(FileNotFoundError, match="frame_"):
        load_ply_sequence(tmp_path)


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = save_ply(random_field(5, seed=3), tmp_path / "keep.ply")
    before = path.read_bytes()

    def write_half_then_fail(self, target):
        with open(target, "wb") as handle:
            handle.write(b"ply\npartial")
        raise OSError("disk full")

    monkeypatch.setattr(PlyData, "write", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_ply(random_field(5, seed=4), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.ply"]
