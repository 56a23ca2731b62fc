"""python -m d4s.generate and python -m d4s.render_scene end to end with a tiny random checkpoint on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from plyfile import PlyData

from d4s import generate, render_scene
from d4s.gaussians import load_ply, load_scene
from d4s.geometry.trajectories import load_camera_path
from d4s.render import render
from d4s.utils.cli import run_cli
from d4s.utils.video import read_video
from tests.helpers import save_tiny_checkpoint

FRAMES, SIZE = 9, 64
FAST = ["--frames", str(FRAMES), "--resolution", str(SIZE), "--steps", "3", "--device", "cpu", "--fps", "4"]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def write_photo(path, height: int = 90, width: int = 150, seed: int = 0):
    """A smooth non-square picture (an input of any size gets resized and cropped)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = rng.uniform(0, 255, 3)
    pixels = (base + 80 * np.sin(x[..., None] / 9.0 + np.arange(3)) + 60 * np.cos(y[..., None] / 7.0)) % 255
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt")


@pytest.fixture(scope="module")
def generated(tmp_path_factory, checkpoint):
    root = tmp_path_factory.mktemp("generated")
    image = write_photo(root / "photo.jpg")
    out = root / "scene"
    args = ["--ckpt", str(checkpoint), "--image", str(image), "--trajectory", "orbit", "--out", str(out), *FAST]
    assert run_cli(generate.main, args + ["--prompt", "a small test scene"]) == 0
    return out


def test_generate_writes_every_file(generated):
    expected = [
        "scene.npz", "rgb.mp4", "depth.mp4", "depth.npy", "cameras.json", "timings.json", "generation.json",
        "input.png", "novel_bullet_time.mp4", "novel_bullet_time_depth.mp4", "novel_spiral.mp4",
        "novel_spiral_depth.mp4", "novel_bullet_time_cameras.json", "novel_spiral_cameras.json",
    ]  # fmt: skip
    for name in expected:
        assert (generated / name).is_file(), name
    scene = load_scene(generated / "scene.npz")
    assert scene.num_frames == FRAMES
    assert scene.num_gaussians == FRAMES * (SIZE // 2) ** 2  # pixel-aligned, gaussian_stride 2 in the tiny config
    assert read_video(generated / "rgb.mp4").shape == (FRAMES, SIZE, SIZE, 3)
    assert np.load(generated / "depth.npy").shape == (FRAMES, SIZE, SIZE)
    assert np.asarray(Image.open(generated / "input.png")).shape == (SIZE, SIZE, 3)
    timings = json.loads((generated / "timings.json").read_text())
    for stage in ("text", "encode", "sampling", "ldrm", "rendering", "writing", "total", "peak_rss_gib"):
        assert timings[stage] >= 0, stage
    assert timings["total"] >= timings["sampling"] + timings["rendering"]
    assert json.loads((generated / "generation.json").read_text())["settings"]["prompt"] == "a small test scene"


def test_ply_frames_are_standard_3dgs_files_of_the_scene_at_each_time(generated):
    scene = load_scene(generated / "scene.npz")
    paths = sorted((generated / "ply").glob("frame_*.ply"))
    assert [p.name for p in paths] == [f"frame_{t:04d}.ply" for t in range(FRAMES)]
    for t in (0, FRAMES - 1):
        vertex = PlyData.read(str(paths[t]))["vertex"]
        assert vertex.count == scene.num_gaussians
        np.testing.assert_array_equal(np.asarray(vertex["x"]), scene.at(t).means[:, 0].numpy())
        assert torch.equal(load_ply(paths[t]).means, scene.at(t).means)
    assert (scene.at(0).means - scene.at(FRAMES - 1).means).abs().max() > 1e-4  # the scene moves


def test_rendering_the_scene_with_the_input_cameras_reproduces_the_video(generated, tmp_path):
    scene = load_scene(generated / "scene.npz")
    cameras = load_camera_path(generated / "cameras.json")
    video = read_video(generated / "rgb.mp4")
    depth = np.load(generated / "depth.npy")
    for t in range(FRAMES):
        out = render(scene.at(t), cameras.c2w[t : t + 1].float(), cameras.K[t : t + 1].float(), SIZE, SIZE, "torch")
        frame = (out.rgb[0].numpy() * 255).round().clip(0, 255).astype(np.uint8)
        assert psnr(frame, video[t]) > 30, t  # H.264 at crf 18
        np.testing.assert_allclose(out.depth[0].numpy(), depth[t], atol=1e-5)
    # the same through the command line, from the cameras file alone
    assert run_cli(render_scene.main, [str(generated / "scene.npz"), "--trajectory", str(generated / "cameras.json"),
                                       "--out", str(tmp_path), "--device", "cpu"]) == 0  # fmt: skip
    np.testing.assert_allclose(np.load(tmp_path / "depth.npy"), depth, atol=1e-5)
    assert min(psnr(a, b) for a, b in zip(read_video(tmp_path / "rgb.mp4"), video)) > 30


def test_orbit_closes_the_loop(generated):
    cameras = load_camera_path(generated / "cameras.json")
    assert torch.equal(cameras.c2w[0], torch.eye(4, dtype=cameras.c2w.dtype))
    assert torch.equal(cameras.c2w[-1], cameras.c2w[0])
    assert not torch.allclose(cameras.c2w[FRAMES // 2], cameras.c2w[0], atol=1e-2)  # it went somewhere
    bullet = load_camera_path(generated / "novel_bullet_time_cameras.json")
    assert torch.equal(bullet.c2w[-1], bullet.c2w[0])
    assert bullet.times.tolist() == [FRAMES // 2] * FRAMES  # bullet time: one scene time
    video = read_video(generated / "novel_bullet_time.mp4")
    assert psnr(video[0], video[-1]) > 35  # the same camera and time: the same picture, up to the codec
    assert psnr(video[0], video[FRAMES // 4]) < 35  # the camera moved


def test_a_novel_view_re_renders_from_its_cameras_file_with_its_times(generated, tmp_path):
    cameras = generated / "novel_bullet_time_cameras.json"
    args = [str(generated / "scene.npz"), "--trajectory", str(cameras), "--out", str(tmp_path), "--device", "cpu"]
    assert run_cli(render_scene.main, args + ["--fps", "4"]) == 0
    assert json.loads((tmp_path / "cameras.json").read_text()) == json.loads(cameras.read_text())
    # the same frames through the same encoder: the same video
    np.testing.assert_array_equal(read_video(tmp_path / "rgb.mp4"), read_video(generated / "novel_bullet_time.mp4"))


def test_render_scene_time_schedules_and_defaults(generated, tmp_path):
    args = [str(generated / "scene.npz"), "--trajectory", "forward", "--time", "2:6", "--frames", "5"]
    assert run_cli(render_scene.main, args + ["--out", str(tmp_path), "--resolution", "32x48", "--device", "cpu"]) == 0
    frames = json.loads((tmp_path / "cameras.json").read_text())
    assert [f["time"] for f in frames["frames"]] == [2.0, 3.0, 4.0, 5.0, 6.0]
    assert (frames["height"], frames["width"]) == (32, 48)
    assert read_video(tmp_path / "rgb.mp4").shape == (5, 32, 48, 3)
    # the generation's intrinsics carry over to the new size: same field of view
    K_generated = load_camera_path(generated / "cameras.json").K[0]
    assert frames["frames"][0]["K"][0][0] == pytest.approx(float(K_generated[0, 0]) * 48 / SIZE)
    # a fractional time shows the interpolated scene
    args = [str(generated / "scene.npz"), "--trajectory", str(generated / "cameras.json"), "--time", "2.5"]
    assert run_cli(render_scene.main, args + ["--out", str(tmp_path / "half"), "--device", "cpu"]) == 0
    scene, cameras = load_scene(generated / "scene.npz"), load_camera_path(generated / "cameras.json")
    expected = render(scene.at_time(2.5), cameras.c2w[3:4].float(), cameras.K[3:4].float(), SIZE, SIZE, "torch")
    np.testing.assert_allclose(np.load(tmp_path / "half" / "depth.npy")[3], expected.depth[0].numpy(), atol=1e-5)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("follow", [0.0, 2.0, 4.0]), ("3", [3.0, 3.0, 3.0]), ("4:0", [4.0, 2.0, 0.0]), ("1.5", [1.5, 1.5, 1.5])],
)
def test_time_schedules(spec, expected):
    assert render_scene.parse_times(spec, 3, 5) == expected
    assert render_scene.parse_times("auto", 3, 5, torch.tensor([4.0, 1.0, 0.5])) == [4.0, 1.0, 0.5]
    assert render_scene.parse_times("auto", 3, 5) == [0.0, 2.0, 4.0]


@pytest.mark.parametrize("spec", ["5", "-1", "0:9", "soon", "1:2:3", "nan"])
def test_bad_time_schedules_are_refused(spec):
    with pytest.raises(ValueError, match="time"):
        render_scene.parse_times(spec, 3, 5)


def test_same_seed_same_scene_other_seed_other_scene(checkpoint, tmp_path):
    image = write_photo(tmp_path / "photo.png", 64, 64)
    common = ["--ckpt", str(checkpoint), "--image", str(image), "--trajectory", "forward", "--no-ply", *FAST]
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        assert run_cli(generate.main, common + ["--seed", str(seed), "--out", str(tmp_path / name)]) == 0
    a, b, c = (load_scene(tmp_path / name / "scene.npz") for name in "abc")
    assert torch.equal(a.canonical.means, b.canonical.means) and torch.equal(a.dmu, b.dmu)
    assert not torch.equal(a.canonical.means, c.canonical.means)
    assert not (tmp_path / "a" / "ply").exists()


def test_memory_options_thin_the_field(checkpoint, tmp_path):
    image = write_photo(tmp_path / "photo.png")
    args = ["--ckpt", str(checkpoint), "--image", str(image), "--no-ply", "--out", str(tmp_path / "thin"), *FAST]
    options = ["--gaussian-stride", "2", "--vae-tiling", "--offload-text", "--compress"]
    assert run_cli(generate.main, args + options) == 0
    scene = load_scene(tmp_path / "thin" / "scene.npz")
    assert scene.num_gaussians == FRAMES * (SIZE // 4) ** 2
    assert json.loads((tmp_path / "thin" / "timings.json").read_text())["gaussians"] == scene.num_gaussians


def test_batch_mode_reports_failures_and_resumes(checkpoint, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    write_photo(folder / "one.png", seed=1)
    write_photo(folder / "two.jpg", seed=2)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg at all")
    (folder / "notes.md").write_text("not an image")
    out = tmp_path / "out"
    args = ["--ckpt", str(checkpoint), "--image", str(folder), "--out", str(out), "--no-ply", *FAST]
    assert run_cli(generate.main, args) == 1  # one image failed, the others were generated
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "1 of 3 scenes failed" in err
    assert (out / "one" / "timings.json").is_file() and (out / "two" / "timings.json").is_file()
    assert not (out / "broken" / "timings.json").exists()
    done = (out / "one" / "timings.json").stat().st_mtime_ns
    (folder / "broken.jpg").unlink()
    assert run_cli(generate.main, args) == 0
    assert "2 of 2 scenes already done" in capsys.readouterr().out
    assert (out / "one" / "timings.json").stat().st_mtime_ns == done  # not regenerated

    assert run_cli(generate.main, args + ["--seed", "5"]) == 0  # other settings: the scenes are made again
    assert "already done" not in capsys.readouterr().out
    assert (out / "one" / "timings.json").stat().st_mtime_ns != done

    listing = tmp_path / "list.txt"
    listing.write_text("# image<TAB>prompt\nimages/one.png\ta red room\n\nimages/two.jpg\nimages/one.png\n")
    args = ["--ckpt", str(checkpoint), "--image", str(listing), "--out", str(tmp_path / "listed"), "--no-ply", *FAST]
    assert run_cli(generate.main, args + ["--prompt", "default prompt"]) == 0
    names = ("one_1", "two", "one_3")  # a repeated image gets its position, so no scene overwrites another
    settings = [json.loads((tmp_path / "listed" / n / "generation.json").read_text())["settings"] for n in names]
    assert [s["prompt"] for s in settings] == ["a red room", "default prompt", "default prompt"]


def one_line_error(capsys, main, args) -> str:
    assert run_cli(main, args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_inputs_give_one_line_errors(checkpoint, tmp_path, capsys):
    image = write_photo(tmp_path / "photo.png")
    base = ["--ckpt", str(checkpoint), "--out", str(tmp_path / "out"), *FAST]
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    assert "garbage.png" in one_line_error(capsys, generate.main, base + ["--image", str(garbage)])
    assert "not found" in one_line_error(capsys, generate.main, base + ["--image", str(tmp_path / "missing.png")])

    base += ["--image", str(image)]
    err = one_line_error(capsys, generate.main, base + ["--trajectory", "zigzag"])
    assert "zigzag" in err and "spiral" in err and "camera file" in err
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"frames": [{"c2w": [[1, 0, 0]]}]')
    assert "bad.json" in one_line_error(capsys, generate.main, base + ["--trajectory", str(bad_json)])
    sheared = tmp_path / "sheared.json"
    sheared.write_text(json.dumps({"frames": [{"c2w": [[1, 0.5, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}]}))
    assert "sheared.json" in one_line_error(capsys, generate.main, base + ["--trajectory", str(sheared)])
    assert "not found" in one_line_error(capsys, generate.main, base + ["--trajectory", str(tmp_path / "none.json")])

    other = tmp_path / "wider.yaml"
    other.write_text(Path("configs/tiny/model.yaml").read_text().replace("  width: 64", "  width: 96"))
    err = one_line_error(capsys, generate.main, base + ["--config", str(other)])
    assert "trained with another model config" in err and "ldrm.width: 64 in the checkpoint, 96" in err
    err = one_line_error(capsys, generate.main, [*base[:1], str(tmp_path / "none.ckpt"), *base[2:]])
    assert "checkpoint not found" in err
    err = one_line_error(capsys, generate.main, base + ["--resolution", "68"])
    assert "multiples of 8" in err  # the codec's 8 x 8 blocks times the tiny DiT's patch size 1
    for option, needle in (
        (["--frames", "10"], "4k + 1"),
        (["--orbit-degrees", "720"], "--orbit-degrees"),
        (["--fov", "180"], "--fov"),
        (["--intrinsics", "0", "50", "32", "32"], "--intrinsics"),
    ):
        with pytest.raises(SystemExit) as exit_info:  # argparse refuses impossible values before anything loads
            generate.main(base + option)
        assert exit_info.value.code == 2 and needle in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing was sampled, nothing written
    err = one_line_error(capsys, generate.main, base + ["--prompt", "a prompt the caption cache lacks"])
    assert "text cache" in err

    assert "not found" in one_line_error(capsys, render_scene.main, [str(tmp_path / "nothing.npz")])


def test_a_camera_file_replays_as_written_with_its_intrinsics(generated, checkpoint, tmp_path):
    """cameras.json of one generation drives another: same poses (no scene-scale factor), same intrinsics."""
    image = write_photo(tmp_path / "photo.png", 80, 80)
    args = ["--ckpt", str(checkpoint), "--image", str(image), "--out", str(tmp_path / "again"), "--no-ply", *FAST]
    assert run_cli(generate.main, args + ["--trajectory", str(generated / "cameras.json")]) == 0
    before, after = load_camera_path(generated / "cameras.json"), load_camera_path(tmp_path / "again" / "cameras.json")
    assert torch.equal(after.c2w, before.c2w)
    torch.testing.assert_close(after.K, before.K)
    # a wide photo takes the file's square-pixel intrinsics without stretching them
    wide = write_photo(tmp_path / "wide.png", 90, 150)
    args[args.index(str(image))] = str(wide)
    args[args.index(str(tmp_path / "again"))] = str(tmp_path / "wide")
    assert run_cli(generate.main, args + ["--trajectory", str(generated / "cameras.json")]) == 0
    torch.testing.assert_close(load_camera_path(tmp_path / "wide" / "cameras.json").K, before.K)
    # an explicit field of view wins over the file's intrinsics
    args[args.index(str(tmp_path / "wide"))] = str(tmp_path / "fov")
    args[args.index(str(wide))] = str(image)
    assert run_cli(generate.main, args + ["--trajectory", str(generated / "cameras.json"), "--fov", "90"]) == 0
    K = load_camera_path(tmp_path / "fov" / "cameras.json").K[0]
    assert float(K[0, 0]) == pytest.approx(SIZE / 2)  # tan(45 deg) = 1: fx is half the width
