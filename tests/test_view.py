"""The interactive viewer (python -m d4s.view): the CLI end to end, the in-process server, camera conversion."""

import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
import torch

viser = pytest.importorskip("viser")

from d4s import view
from d4s.gaussians.io import save_scene
from d4s.gaussians.procedural import showcase_scene
from d4s.geometry.cameras import intrinsics_from_fov, look_at, project_points
from d4s.geometry.trajectories import CameraPath, make_trajectory, save_camera_path
from d4s.render import render
from d4s.render.projection import quat_scale_to_covariance

REPO = Path(__file__).resolve().parents[1]
FRAMES = 4


@pytest.fixture(scope="module")
def field():
    return showcase_scene(FRAMES)


@pytest.fixture(scope="module")
def cameras():
    c2w = make_trajectory("orbit", FRAMES, 4.0, orbit_degrees=30.0)
    return c2w, intrinsics_from_fov(64, 48, 60.0)


@pytest.fixture
def scene_dir(tmp_path, field, cameras):
    save_scene(field, tmp_path / "scene.npz")
    c2w, K = cameras
    save_camera_path(tmp_path / "cameras.json", c2w, K, (48, 64), list(range(FRAMES)))
    return tmp_path


@pytest.fixture
def make_viewer():
    viewers = []

    def make(*args, **kwargs):
        viewers.append(view.SceneViewer(*args, host="127.0.0.1", port=0, **kwargs))
        return viewers[-1]

    yield make
    for viewer in viewers:
        viewer.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cli(*args: str, **kwargs) -> subprocess.Popen:
    # faulthandler: a viewer that hangs can be made to print every thread's stack (SIGABRT), for the failure report
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONFAULTHANDLER": "1"}
    return subprocess.Popen([sys.executable, "-m", "d4s.view", *args], cwd=REPO, env=env, text=True, **kwargs)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_cli_serves_the_viewer_page_and_stops_cleanly(scene_dir, field, stop_signal):
    port = free_port()
    log = scene_dir / "stdout.txt"
    with open(log, "w") as stdout:
        proc = run_cli(str(scene_dir / "scene.npz"), "--port", str(port), stdout=stdout, stderr=subprocess.STDOUT)
    try:
        deadline, page = time.monotonic() + 60.0, None
        while page is None and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2.0) as response:
                    page = (response.status, response.headers.get("Content-Type", ""), response.read())
            except OSError:
                time.sleep(0.2)
        assert page is not None, f"no page within 60 s:\n{log.read_text()}"
        status, content_type, body = page
        assert status == 200 and "text/html" in content_type and b"<html" in body.lower()
        while "viewer at" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        out = log.read_text()
        assert f"{field.num_gaussians} Gaussians, {FRAMES} times" in out
        assert f"cameras: {FRAMES} from" in out
        assert "mode: splats (no CUDA" in out
        assert f"viewer at http://127.0.0.1:{port}" in out
        proc.send_signal(stop_signal)
        try:
            code = proc.wait(timeout=60.0)  # it takes about a second; a full make test once hung here (60 s and more)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler writes where every thread waits into the log
            proc.wait(timeout=30.0)
            pytest.fail(f"the viewer did not stop within 60 s of {stop_signal.name}:\n{log.read_text()}")
        assert code == 0, log.read_text()
        assert "viewer stopped" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_missing_scene_file_is_a_one_line_error(tmp_path):
    proc = run_cli(str(tmp_path / "missing.npz"), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60.0)
    assert proc.returncode == 2
    assert err.splitlines() == [f"error: scene file not found: {tmp_path / 'missing.npz'}"]
    assert out == ""


@pytest.mark.parametrize("case", ["corrupt scene", "bad cameras.json", "missing --cameras", "bad --host"])
def test_bad_input_is_a_one_line_error(scene_dir, capsys, case):
    args = [str(scene_dir / "scene.npz"), "--port", "0"]
    if case == "corrupt scene":
        (scene_dir / "scene.npz").write_bytes(b"not a zip file")
        expected = "not a readable .npz file"
    elif case == "bad cameras.json":
        (scene_dir / "cameras.json").write_text('{"frames": [{"c2w": [[1, 0], [0, 1]]}]}')
        expected = "cameras.json"
    elif case == "missing --cameras":
        args += ["--cameras", str(scene_dir / "nowhere.json")]
        expected = "trajectory file not found"
    else:
        args += ["--host", "192.0.2.1"]  # TEST-NET-1: never an address of this machine
        expected = "--host 192.0.2.1: cannot listen"
    assert view.main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], captured.err


def test_choose_mode():
    assert view.choose_mode("auto", 10, 100, cuda=True)[0] == "render"
    assert view.choose_mode("auto", 100, 100, cuda=False)[0] == "splats"
    mode, reason = view.choose_mode("auto", 101, 100, cuda=False)
    assert mode == "points" and "101" in reason and "--max-splats 100" in reason
    assert view.choose_mode("points", 10, 100, cuda=True)[0] == "points"
    with pytest.raises(ValueError, match="mode"):
        view.choose_mode("mesh", 10, 100, cuda=False)


def test_set_time_pushes_the_field_at_that_time(field, cameras, make_viewer):
    c2w, K = cameras
    viewer = make_viewer(field, CameraPath(c2w, K.expand(FRAMES, 3, 3), (48, 64)), mode="splats", device="cpu")
    node = viewer.gaussians_node
    for t in (2, 0, FRAMES - 1):
        ms = viewer.set_time(t)
        frame = field.at(t)
        assert viewer.time == t and ms >= 0.0
        np.testing.assert_array_equal(node.centers, frame.means.numpy())
        # viser keeps the upper triangle of each covariance as float16
        reference = quat_scale_to_covariance(frame.rotations, frame.scales).numpy().astype(np.float16)
        rows, cols = np.triu_indices(3)
        np.testing.assert_array_equal(node.covariances[:, rows, cols], reference[:, rows, cols].astype(np.float32))
    with pytest.raises(ValueError, match="time index"):
        viewer.set_time(FRAMES)
    # one frustum per generation camera, at its pose
    frustum = viewer.server.scene.get_handle_by_name("/cameras/0001")
    np.testing.assert_allclose(frustum.position, c2w[1, :3, 3].numpy(), atol=1e-6)
    R = viser.transforms.SO3(np.asarray(frustum.wxyz)).as_matrix()
    np.testing.assert_allclose(R, c2w[1, :3, :3].numpy(), atol=1e-5)


def test_points_mode_pushes_the_centres(field, make_viewer):
    viewer = make_viewer(field, mode="points", device="cpu")
    viewer.set_time(3)
    np.testing.assert_array_equal(viewer.gaussians_node.points, field.at(3).means.numpy())


def test_render_view_is_exactly_the_renderer(field, make_viewer):
    viewer = make_viewer(field, mode="render", device="cpu")
    assert viewer.gaussians_node is None
    viewer.set_time(2)
    c2w = look_at(torch.tensor([0.3, -0.4, 0.2]), torch.tensor([0.0, 0.5, 4.5]))
    K = intrinsics_from_fov(40, 30, 70.0)
    out, ms = viewer.render_view(c2w, K, 40, 30)
    reference = render(field.at(2), c2w[None], K[None], 40, 30, background=torch.tensor(view.BACKGROUND))
    assert ms > 0.0
    for name in ("rgb", "depth", "alpha"):
        assert torch.equal(getattr(out, name), getattr(reference, name)), name


def test_render_view_uses_gsplat_on_cuda(field, make_viewer):
    from d4s.render import gsplat_available

    if not gsplat_available():
        pytest.skip("needs CUDA and gsplat's compiled kernels")
    viewer = make_viewer(field, mode="render", device="cuda")
    assert viewer.backend == "gsplat"
    viewer.set_time(2)
    c2w, K = torch.eye(4), intrinsics_from_fov(64, 48, 60.0)
    out, _ = viewer.render_view(c2w, K, 64, 48)
    reference = render(field.at(2), c2w[None], K[None], 64, 48, "torch", torch.tensor(view.BACKGROUND))
    assert out.rgb.device.type == "cpu"
    torch.testing.assert_close(out.rgb, reference.rgb, atol=1e-4, rtol=1e-4)


def test_camera_from_viser_at_the_origin_is_the_identity_camera():
    fov_y = math.radians(60.0)
    c2w, K, width, height = view.camera_from_viser(np.array([1.0, 0, 0, 0]), np.zeros(3), fov_y, 1.5, 300)
    assert (width, height) == (300, 200)
    assert torch.equal(c2w, torch.eye(4))
    # a point ahead on +z lands on the image centre, one at the top of the vertical field of view on the top edge
    points = torch.tensor([[0.0, 0.0, 5.0], [0.0, -5.0 * math.tan(fov_y / 2), 5.0]])
    uv, _ = project_points(points, c2w, K)
    torch.testing.assert_close(uv, torch.tensor([[150.0, 100.0], [150.0, 0.0]]))
    assert view.camera_from_viser(np.array([1.0, 0, 0, 0]), np.zeros(3), fov_y, 0.5, 300)[2:] == (150, 300)


def test_camera_from_viser_matches_an_independent_look_at():
    eye, target = torch.tensor([1.0, -0.5, -2.0], dtype=torch.float64), torch.tensor([0.2, 0.3, 4.0])
    reference = look_at(eye, target.double())  # OpenCV axes, up is -y
    wxyz = viser.transforms.SO3.from_matrix(reference[:3, :3].numpy()).wxyz  # viser's own quaternion convention
    c2w, K, width, height = view.camera_from_viser(wxyz, eye.numpy(), math.radians(50.0), 16 / 9, 512)
    torch.testing.assert_close(c2w, reference.float(), atol=1e-6, rtol=0)
    uv, depth = project_points(target[None], c2w, K)
    torch.testing.assert_close(uv[0], torch.tensor([width / 2, height / 2]), atol=1e-3, rtol=0)
    assert depth[0] > 0


def test_render_mode_sends_a_client_its_view(field, make_viewer):
    """A headless client speaking viser's websocket protocol gets its camera's render as background image."""
    from PIL import Image
    from websockets.sync.client import connect

    viewer = make_viewer(field, mode="render", device="cpu", render_size=64)
    viewer.set_time(1)
    fov = math.radians(55.0)
    message = viser._messages.ViewerCameraMessage(
        wxyz=(1.0, 0.0, 0.0, 0.0),
        position=(0.0, 0.0, 0.0),
        fov=fov,
        near=0.01,
        far=100.0,
        image_height=480,
        image_width=640,
        look_at=(0.0, 0.0, 1.0),
        up_direction=(0.0, -1.0, 0.0),
    )  # what a browser sends: its camera at the origin looking along +z, a 640x480 canvas
    url = f"ws://127.0.0.1:{viewer.port}"
    with connect(url, subprotocols=[f"viser-v{viser.__version__}"], max_size=None) as client:
        client.send(viser.infra._messages.msgspec.msgpack.encode(message.as_serializable_dict()))
        jpeg = receive_background_image(client, timeout=60.0)
    image = np.asarray(Image.open(BytesIO(jpeg)).convert("RGB"), dtype=np.float32) / 255.0
    assert image.shape == (48, 64, 3)
    c2w, K, width, height = view.camera_from_viser(np.array([1.0, 0, 0, 0]), np.zeros(3), fov, 640 / 480, 64)
    background = torch.tensor(view.BACKGROUND)
    error = []
    for t in (1, 3):
        expected = render(field.at(t), c2w[None], K[None], width, height, background=background).rgb[0]
        error.append(np.abs(image - expected.clamp(0, 1).numpy()))
    assert error[0].mean() < 0.03  # JPEG at quality 90; a flipped or shifted view is off by 0.2
    assert error[0].mean() < error[1].mean()  # and it shows the current time


def receive_background_image(client, timeout: float) -> bytes:
    """Read viser's message windows (zstd msgpack, then raw binary buffers) until a background image arrives."""
    import msgspec
    import zstandard

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        raw = client.recv(timeout=deadline - time.monotonic())
        inner_size, packed_size = int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:16], "little")
        window = msgspec.msgpack.decode(
            zstandard.ZstdDecompressor().decompress(raw[16 : 16 + packed_size], max_output_size=inner_size)
        )
        offset, buffers = 16 + packed_size, []
        for length in window["binaryBufferLengths"]:
            offset += -offset % 8
            buffers.append(raw[offset : offset + length])
            offset += length
        for message in window["messages"]:
            data = message.get("rgb_data") if message["type"] == "BackgroundImageMessage" else None
            if isinstance(data, dict):  # a placeholder for a binary buffer
                data = buffers[data["__binary_index"]]
            if data:
                return bytes(data)
    raise TimeoutError("no background image from the viewer")
