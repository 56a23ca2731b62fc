"""Interactive viewer for a generated 4D scene: a viser server that a browser connects to.

    python -m d4s.view DIR/scene.npz [--mode auto] [--host 127.0.0.1] [--port 8080] [--cameras FILE]

Shows the deformable Gaussian field with a time slider, play/pause and a frame-rate setting, the generation
trajectory (``DIR/cameras.json`` beside the scene, or ``--cameras``) as camera frusta, and a readout of the
milliseconds spent producing the current frame. Three ways to draw the Gaussians (``--mode``):

- ``render``: the server renders every connected client's view with ``d4s.render.render`` (gsplat on CUDA, the
  PyTorch rasteriser elsewhere) and sends it as that client's background image, with depth so that the frusta
  are occluded correctly. Full SH colour, exactly what the model's renderer produces.
- ``splats``: viser's browser-side Gaussian splatting; the server pushes centres and covariances per time.
- ``points``: a point cloud of the Gaussian centres in their colours (the cheap fallback).

``auto`` picks ``render`` when CUDA is available, otherwise ``splats``, or ``points`` when the scene has more
than ``--max-splats`` Gaussians. The world frame is d4s's: OpenCV axes, metres, up is -y. viser's cameras use
the same axes (x right, y down, z forward), so a client camera ``(wxyz, position)`` is a camera-to-world pose
as it stands, and the scene's up direction is set to -y so that the world looks upright.
"""

from __future__ import annotations

import argparse
import math
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import Tensor

from d4s.export import focus_depth
from d4s.gaussians.field import DeformableGaussianField, GaussianField
from d4s.gaussians.io import load_scene
from d4s.geometry.quaternion import quat_to_rotmat, rotmat_to_quat
from d4s.geometry.trajectories import CameraPath, load_camera_path
from d4s.render import RenderOutput, render, resolve_backend
from d4s.render.projection import quat_scale_to_covariance
from d4s.utils.checks import check_choice, choices

if TYPE_CHECKING:
    import viser

DrawMode = Literal["render", "splats", "points"]  # how the viewer draws the Gaussians
RequestedMode = Literal["auto", "render", "splats", "points"]  # auto: chosen by choose_mode
# Browser-side splatting sorts every Gaussian on the client and each time step pushes 32 bytes per Gaussian
# (16 MB at this count); above it, auto mode shows points.
DEFAULT_MAX_SPLATS = 500_000
BACKGROUND = (1.0, 1.0, 1.0)  # rendered background: white, as viser's empty canvas
EMPTY_DEPTH = 1e3  # metres sent where a rendered pixel is empty, so scene nodes there stay visible
FALLBACK_FOV_Y = math.radians(50.0)  # frustum field of view for camera files without intrinsics
HIGHLIGHT = (230, 90, 20)  # the frustum of the camera that showed the current time
FRUSTUM_COLOR = (40, 70, 160)
FRUSTUM_THICKNESS = 1.5  # screen pixels
READOUT_HINTS = {  # what the "Frame latency" readout measures, per mode
    "render": "time to render this view on the server and copy it to host memory",
    "splats": "server time to deform the Gaussians and push centres and covariances to the browsers",
    "points": "server time to deform the Gaussians and push their centres to the browsers",
}


def choose_mode(requested: RequestedMode, num_gaussians: int, max_splats: int, cuda: bool) -> tuple[DrawMode, str]:
    """The concrete mode for ``requested`` and the reason for it, in words."""
    check_choice(requested, "mode", RequestedMode)
    if requested != "auto":
        return requested, "requested with --mode"
    if cuda:
        return "render", "CUDA is available: server-side rendering"
    if num_gaussians > max_splats:
        return "points", f"no CUDA, and {num_gaussians:,} Gaussians exceed --max-splats {max_splats:,}"
    return "splats", f"no CUDA: browser-side splatting of {num_gaussians:,} <= --max-splats {max_splats:,} Gaussians"


def camera_from_viser(
    wxyz: np.ndarray, position: np.ndarray, fov_y: float, aspect: float, long_side: int
) -> tuple[Tensor, Tensor, int, int]:
    """The pinhole camera of a viser client view, rendered with ``long_side`` pixels along its longer side.

    Args:
        wxyz: ``[4]`` rotation camera-to-world; viser's cameras use OpenCV axes, as d4s.
        position: ``[3]`` camera centre in world coordinates.
        fov_y: vertical field of view in radians.
        aspect: width over height of the client's canvas.
        long_side: pixels along the longer image side.
    Returns:
        ``c2w [4, 4]`` and ``K [3, 3]`` (float32, principal point at the image centre, square pixels), width, height.
    """
    if aspect >= 1.0:
        width, height = long_side, max(1, round(long_side / aspect))
    else:
        width, height = max(1, round(long_side * aspect)), long_side
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, :3] = quat_to_rotmat(torch.as_tensor(np.asarray(wxyz), dtype=torch.float64))
    c2w[:3, 3] = torch.as_tensor(np.asarray(position), dtype=torch.float64)
    focal = 0.5 * height / math.tan(0.5 * fov_y)
    K = torch.tensor([[focal, 0.0, width / 2.0], [0.0, focal, height / 2.0], [0.0, 0.0, 1.0]], dtype=torch.float32)
    return c2w.float(), K, width, height


def frustum_fov_aspect(K: Tensor | None, image_size: tuple[int, int] | None) -> tuple[float, float]:
    """Vertical field of view (radians) and width / height of a camera with intrinsics ``K [3, 3]`` of an
    ``image_size = (H, W)`` image; without a size the principal point is taken as the image centre, without
    ``K`` a 50 degree square frustum."""
    if K is None:
        return FALLBACK_FOV_Y, 1.0
    height, width = image_size if image_size is not None else (2.0 * float(K[1, 2]), 2.0 * float(K[0, 2]))
    return 2.0 * math.atan(0.5 * height / float(K[1, 1])), width / height


def _to_numpy(tensor: Tensor) -> np.ndarray:
    return tensor.detach().to(device="cpu", dtype=torch.float32).numpy()


def _import_viser():
    try:
        import viser
    except ImportError as err:
        raise ImportError("the viewer needs viser, the 'viewer' extra: pip install -e '.[viewer]'") from err
    return viser


class _ClientView:
    """One browser tab in ``render`` mode: a worker thread that re-renders its camera whenever asked.

    Requests coalesce: camera moves that arrive during a render are served by one render of the latest camera.
    """

    def __init__(self, viewer: SceneViewer, client: viser.ClientHandle) -> None:
        self._viewer, self._client = viewer, client
        self._wake = threading.Event()
        self._closed = False
        self._readout = client.gui.add_text("Frame latency", "", disabled=True, hint=READOUT_HINTS["render"])
        client.camera.on_update(lambda _: self.request())
        self._thread = threading.Thread(target=self._run, name=f"d4s-view-{client.client_id}", daemon=True)
        self._thread.start()
        self.request()

    def request(self) -> None:
        self._wake.set()

    def close(self, timeout: float) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closed:
                return
            camera = self._client.camera
            if camera.image_width <= 0 or camera.image_height <= 0:  # a collapsed canvas: nothing to show
                continue
            c2w, K, width, height = camera_from_viser(
                camera.wxyz, camera.position, camera.fov, camera.aspect, self._viewer.render_size
            )
            try:
                out, ms = self._viewer.render_view(c2w, K, width, height)
            except (RuntimeError, ValueError) as err:  # e.g. out of GPU memory: report it, keep serving
                self._readout.value = f"render failed: {err}"
                continue
            if self._closed:  # the tab went away during the render
                return
            image = (out.rgb[0].clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()
            depth = torch.where(out.alpha[0] > 0.5, out.depth[0], EMPTY_DEPTH).numpy()
            self._client.scene.set_background_image(image, format="jpeg", jpeg_quality=90, depth=depth)
            self._readout.value = f"{ms:.1f} ms render ({self._viewer.backend}, {width}x{height})"


class SceneViewer:
    """A viser server showing a deformable Gaussian field, its time controls and the generation cameras.

    The server starts on construction and runs in background threads until :meth:`stop`.

    Args:
        field: the 4D scene; its time indices ``0 .. num_frames - 1`` are what the slider shows.
        cameras: the generation trajectory, drawn as frusta; when it has one camera per time, the camera of the
            current time is highlighted.
        mode: ``"render"``, ``"splats"`` or ``"points"`` (see the module docstring; :func:`choose_mode` resolves
            ``"auto"``).
        host, port: where to listen; ``port=0`` takes a free port, a busy port the next free one (see :attr:`url`).
        device: where the field lives and renders; default CUDA when available.
        render_size: pixels along the longer side of server-side renders.
        fps: initial playback rate.
        title: shown at the top of the GUI panel.
    """

    def __init__(
        self,
        field: DeformableGaussianField,
        cameras: CameraPath | None = None,
        *,
        mode: DrawMode = "splats",
        host: str = "127.0.0.1",
        port: int = 8080,
        device: torch.device | str | None = None,
        render_size: int = 512,
        fps: float = 10.0,
        title: str = "d4s scene",
    ) -> None:
        check_choice(mode, "mode", DrawMode)
        if render_size < 1:
            raise ValueError(f"render_size: must be a positive number of pixels, got {render_size}")
        viser = _import_viser()
        self.mode = mode
        self.render_size = render_size
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
        self.backend = resolve_backend("auto", self.device)
        self._field = field.detach().to(self.device)
        self._rgb = _to_numpy(self._field.canonical.rgb.clamp(0.0, 1.0))
        self._opacities = _to_numpy(self._field.canonical.opacities[:, None])
        self._lock = threading.Lock()
        self._views: dict[int, _ClientView] = {}
        self._stopped = threading.Event()
        self._time = 0
        self._frame = self._field.at(0)
        self._node: viser.GaussianSplatHandle | viser.PointCloudHandle | None = None

        self._server = viser.ViserServer(host=host, port=port, label=title, verbose=False)
        self._server.scene.set_up_direction("-y")
        self._camera_nodes: list[viser.SceneNodeHandle] = []  # frusta and the path line, for "Show cameras"
        self._frusta = self._add_cameras(cameras)
        self._add_gui(title, fps)
        if mode == "render":
            self._server.on_client_connect(self._connect)
            self._server.on_client_disconnect(self._disconnect)
        self.set_time(0)
        self._player = threading.Thread(target=self._play, name="d4s-view-player", daemon=True)
        self._player.start()

    @property
    def num_frames(self) -> int:
        return self._field.num_frames

    @property
    def time(self) -> int:
        """The time index shown now."""
        return self._time

    @property
    def port(self) -> int:
        """The port the server listens on."""
        return self._server.get_port()

    @property
    def url(self) -> str:
        """Where a browser on this machine opens the viewer."""
        host = self._server.get_host()
        return f"http://{'localhost' if host in ('0.0.0.0', '::', '') else host}:{self.port}"

    @property
    def server(self) -> viser.ViserServer:
        return self._server

    @property
    def gaussians_node(self) -> viser.GaussianSplatHandle | viser.PointCloudHandle | None:
        """The scene node drawing the Gaussians in the browser (``splats`` and ``points`` modes; ``None`` when
        rendering on the server)."""
        return self._node

    def _add_cameras(self, cameras: CameraPath | None) -> list[viser.CameraFrustumHandle]:
        """Draw the trajectory's frusta and the path through their centres. The initial view looks over the
        first camera's shoulder (behind and above it) at the scene, so that the trajectory is in sight too."""
        c2w = cameras.c2w.float() if cameras is not None else torch.eye(4)[None]
        try:
            focus = focus_depth(self._frame, c2w[0])
        except ValueError:  # nothing in front of the first camera: frame the origin at a metre
            focus = 1.0
        centre, down, forward = c2w[0, :3, 3], c2w[0, :3, 1], c2w[0, :3, 2]
        initial = self._server.initial_camera
        initial.up = tuple((-down).tolist())
        initial.position = tuple((centre - focus * (0.35 * forward + 0.2 * down)).tolist())
        initial.look_at = tuple((centre + focus * forward).tolist())
        if cameras is None:
            return []
        frusta = []
        scale = 0.04 * focus
        quats = rotmat_to_quat(c2w[:, :3, :3])
        for i in range(c2w.shape[0]):
            fov, aspect = frustum_fov_aspect(cameras.K[i] if cameras.K is not None else None, cameras.image_size)
            frusta.append(
                self._server.scene.add_camera_frustum(
                    f"/cameras/{i:04d}",
                    fov=fov,
                    aspect=aspect,
                    scale=scale,
                    thickness=FRUSTUM_THICKNESS,
                    thickness_units="screen",
                    color=FRUSTUM_COLOR,
                    wxyz=quats[i].numpy(),
                    position=c2w[i, :3, 3].numpy(),
                )
            )
        if c2w.shape[0] > 1:
            centres = c2w[:, :3, 3].numpy()
            segments = np.stack([centres[:-1], centres[1:]], axis=1)
            path = self._server.scene.add_line_segments(
                "/cameras/path", segments, colors=FRUSTUM_COLOR, thickness=FRUSTUM_THICKNESS, thickness_units="screen"
            )
            self._camera_nodes.append(path)
        self._camera_nodes.extend(frusta)
        return frusta

    def _add_gui(self, title: str, fps: float) -> None:
        gui = self._server.gui
        field = self._field
        gui.add_markdown(
            f"**{title}**  \n{field.num_gaussians:,} Gaussians, {field.num_frames} times, `{self.mode}` mode"
        )
        self._time_slider = gui.add_slider("Time", 0, max(field.num_frames - 1, 0), 1, 0)
        self._time_slider.on_update(lambda event: self._on_time_slider(event.target.value))
        self._play_box = gui.add_checkbox("Play", False, disabled=field.num_frames < 2)
        self._fps = gui.add_number("FPS", fps, min=0.5, max=60.0, step=0.5)
        if self._frusta:
            show = gui.add_checkbox("Show cameras", True)
            show.on_update(lambda event: self._show_cameras(event.target.value))
        self._readout = None
        if self.mode != "render":  # in render mode every client gets its own readout
            self._readout = gui.add_text("Frame latency", "", disabled=True, hint=READOUT_HINTS[self.mode])

    def _show_cameras(self, visible: bool) -> None:
        for node in self._camera_nodes:
            node.visible = visible

    def _on_time_slider(self, t: int) -> None:
        if t != self._time:  # a slider moved in a browser, not our own assignment in set_time
            self.set_time(t)

    def set_time(self, t: int) -> float:
        """Show the scene at time index ``t``: ``field.at(t)``.

        In ``splats`` and ``points`` modes the new centres (and covariances) are pushed to every browser; in
        ``render`` mode every client view is re-rendered. Returns the milliseconds spent here (deforming and,
        in the browser modes, pushing: what the readout shows for those modes).
        """
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < self.num_frames:
            raise ValueError(f"t: expected a time index in [0, {self.num_frames}), got {t!r}")
        t = int(t)
        with self._lock:
            start = time.perf_counter()
            with torch.no_grad():
                self._frame = self._field.at(t)
                self._push(self._frame)
            ms = 1000.0 * (time.perf_counter() - start)
            previous, self._time = self._time, t
            self._time_slider.value = t
            if len(self._frusta) == self.num_frames:
                self._frusta[previous].color, self._frusta[previous].thickness = FRUSTUM_COLOR, FRUSTUM_THICKNESS
                self._frusta[t].color, self._frusta[t].thickness = HIGHLIGHT, 2.0 * FRUSTUM_THICKNESS
        if self._readout is not None:
            count = f"{self._field.num_gaussians:,} {'splats' if self.mode == 'splats' else 'points'}"
            self._readout.value = f"{ms:.1f} ms update ({count})"
        for view in list(self._views.values()):
            view.request()
        return ms

    def _push(self, frame: GaussianField) -> None:
        """Send ``frame`` to the browsers' Gaussian node (creating it on first use); nothing in render mode."""
        if self.mode == "render":
            return
        means = _to_numpy(frame.means)
        if self.mode == "points":
            if self._node is None:
                point_size = 2.0 * float(frame.scales.mean(dim=-1).median())
                self._node = self._server.scene.add_point_cloud(
                    "/gaussians", means, self._rgb, point_size=point_size, precision="float32", point_shape="circle"
                )
            else:
                self._node.points = means
            return
        covariances = _to_numpy(quat_scale_to_covariance(frame.rotations, frame.scales))
        if self._node is None:
            self._node = self._server.scene.add_gaussian_splats(
                "/gaussians", means, covariances, self._rgb, self._opacities
            )
        else:
            self._node.set_gaussians(means, covariances, self._rgb, self._opacities)

    def render_view(self, c2w: Tensor, K: Tensor, width: int, height: int) -> tuple[RenderOutput, float]:
        """Render the current time from one camera with ``d4s.render.render`` (gsplat on CUDA) over ``BACKGROUND``.

        Args:
            c2w: ``[4, 4]`` camera-to-world pose (OpenCV axes); K: ``[3, 3]`` intrinsics of a ``width x height`` image.
        Returns:
            the ``RenderOutput`` (``rgb [1, H, W, 3]``, ``depth [1, H, W]``, ``alpha [1, H, W]``) in CPU memory, and
            the milliseconds taken to render it and copy it there.
        """
        frame = self._frame
        background = torch.tensor(BACKGROUND, device=self.device)
        start = time.perf_counter()
        with torch.no_grad():
            out = render(frame, c2w[None].to(self.device), K[None].to(self.device), width, height, "auto", background)
            out = RenderOutput(*(x.cpu() for x in out))
        return out, 1000.0 * (time.perf_counter() - start)

    def _connect(self, client: viser.ClientHandle) -> None:
        view = _ClientView(self, client)
        with self._lock:
            self._views[client.client_id] = view
        if self._stopped.is_set():  # the server stopped while this client connected
            view.close(timeout=0.0)

    def _disconnect(self, client: viser.ClientHandle) -> None:
        with self._lock:
            view = self._views.pop(client.client_id, None)
        if view is not None:
            view.close(timeout=0.0)

    def _play(self) -> None:
        """Advance the time at the chosen rate while "Play" is ticked."""
        while not self._stopped.is_set():
            if not self._play_box.value:
                self._stopped.wait(0.05)
                continue
            start = time.perf_counter()
            self.set_time((self._time + 1) % self.num_frames)
            period = 1.0 / max(float(self._fps.value), 0.5)
            self._stopped.wait(max(0.0, period - (time.perf_counter() - start)))

    def stop(self) -> None:
        """Stop playback, the render workers and the server; idempotent."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._player.join(timeout=5.0)
        with self._lock:
            views, self._views = list(self._views.values()), {}
        for view in views:
            view.close(timeout=5.0)
        self._server.stop()


def _check_host(host: str) -> None:
    """Raise ``OSError`` unless the server can listen on ``host`` (viser would wait forever)."""
    try:
        family = socket.getaddrinfo(host, None)[0][0]
        with socket.create_server((host, 0), family=family):
            pass
    except OSError as err:
        raise OSError(f"--host {host}: cannot listen on this address ({err})") from err


def _cameras_for(scene: Path, cameras: Path | None) -> Path | None:
    """The camera file to draw: ``--cameras``, else ``cameras.json`` beside the scene when present."""
    if cameras is not None:
        return cameras
    beside = scene.parent / "cameras.json"
    return beside if beside.is_file() else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and check the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m d4s.view",
        description="Interactive browser viewer for a generated 4D scene (scene.npz), served by viser. "
        "Open the printed URL; stop with Ctrl-C.",
        epilog="modes: render = server-side rendering of each browser's view (gsplat on CUDA); splats = "
        "browser-side Gaussian splatting; points = Gaussian centres as a point cloud. auto = render with CUDA, "
        "else splats, else points above --max-splats. Remote machine: ssh -L 8080:localhost:8080 HOST, then "
        "open http://localhost:8080 locally.",
    )
    parser.add_argument(
        "scene",
        type=Path,
        help="scene .npz written by d4s (e.g. outputs/run/scene.npz), or a 3DGS .ply (a static scene)",
    )
    parser.add_argument(
        "--cameras",
        type=Path,
        metavar="FILE",
        help="camera path to draw as frusta, JSON or RealEstate10K .txt (default: cameras.json beside the scene)",
    )
    parser.add_argument(
        "--mode", default="auto", choices=choices(RequestedMode), help="how to draw the Gaussians (default auto)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; a busy port takes the next)")
    parser.add_argument("--fps", type=float, default=10.0, help="initial playback rate (default 10)")
    parser.add_argument(
        "--render-size",
        type=int,
        default=512,
        metavar="PX",
        help="render mode: pixels on the longer image side (default 512)",
    )
    parser.add_argument(
        "--max-splats",
        type=int,
        default=DEFAULT_MAX_SPLATS,
        metavar="N",
        help=f"auto mode without CUDA: points above this many Gaussians, else splats (default {DEFAULT_MAX_SPLATS:,})",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must lie in [0, 65535], got {args.port}")
    if not (math.isfinite(args.fps) and 0.5 <= args.fps <= 60.0):
        parser.error(f"--fps must lie in [0.5, 60], got {args.fps}")
    if args.render_size < 16:
        parser.error(f"--render-size must be at least 16 pixels, got {args.render_size}")
    if args.max_splats < 1:
        parser.error(f"--max-splats must be at least 1, got {args.max_splats}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the viewer until Ctrl-C or SIGTERM (exit code 0); bad input prints ``error: ...`` and returns 2."""
    args = parse_args(argv)
    try:
        _import_viser()
        field = load_scene(args.scene)
        camera_file = _cameras_for(args.scene, args.cameras)
        cameras = load_camera_path(camera_file) if camera_file is not None else None
        _check_host(args.host)
    except (OSError, ValueError, ImportError) as err:
        print("error: " + " ".join(str(err).split()), file=sys.stderr)
        return 2
    mode, reason = choose_mode(args.mode, field.num_gaussians, args.max_splats, torch.cuda.is_available())
    print(f"loaded {args.scene}: {field.num_gaussians} Gaussians, {field.num_frames} times", flush=True)
    if cameras is not None:
        print(f"cameras: {cameras.c2w.shape[0]} from {camera_file}", flush=True)
    print(f"mode: {mode} ({reason})", flush=True)

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    # SIGTERM stops the viewer as Ctrl-C does; SIGINT explicitly too: a shell starts background jobs with SIGINT
    # ignored, and Python then leaves it ignored (the viewer never stopped on SIGINT under `make test &`)
    for sig in handlers:
        signal.signal(sig, signal.default_int_handler)
    viewer = None
    try:
        viewer = SceneViewer(
            field,
            cameras,
            mode=mode,
            host=args.host,
            port=args.port,
            render_size=args.render_size,
            fps=args.fps,
            title=args.scene.name,
        )
        if mode == "render":
            print(f"renderer: {viewer.backend} on {viewer.device}", flush=True)
        if viewer.port != args.port and args.port != 0:
            print(f"port {args.port} is busy; using {viewer.port}", flush=True)
        print(f"viewer at {viewer.url} (Ctrl-C to stop)", flush=True)
        while True:
            time.sleep(3600.0)
    except KeyboardInterrupt:
        pass
    finally:
        for sig in handlers:  # a second signal must not interrupt the shutdown
            signal.signal(sig, signal.SIG_IGN)
        if viewer is not None:
            viewer.stop()
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    print("viewer stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
