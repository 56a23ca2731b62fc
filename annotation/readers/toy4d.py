"""toy4d: the built-in synthetic dataset, generated procedurally and exactly from a seed (no files on disk).

A scene is a closed box room of ``ROOM_MIN .. ROOM_MAX`` (6 x 3 x 8 m, world axes as OpenCV: x right, y down, so
the floor is the plane ``y = +1.5``) with procedural textures, 2-4 textured rigid objects (spheres and oriented
boxes) near a focus point, and a camera that follows one of the named trajectories of
:func:`d4s.geometry.make_trajectory`, placed in the room so that it starts looking at the focus. Dynamic scenes move
their objects (smooth translation plus constant-rate rotation); static scenes keep them still.

Frames are rendered by exact ray casting through pixel centres ``(u + 0.5, v + 0.5)``, one ray per pixel (no
anti-aliasing), so depth, cameras, dynamic masks and 3D tracks are exact. Textures are evaluated in each surface's
own frame, so they move with the objects. Scene ``i`` depends only on ``np.random.default_rng([seed, i])`` and on
whether it is dynamic: not on the other scenes, the order they are opened in, or ``num_scenes``. Object motion is a
function of time in seconds, the camera path is sampled at ``num_frames`` poses.

Two kinds of object motion (``Toy4DReader(motion=...)``, :data:`MOTIONS`):

- ``by_colour`` (the default): red, orange, yellow and purple objects rise, green, blue, cyan and white ones sink
  (:data:`RISING_COLOURS`), each at its own constant speed, without spinning. The direction is a function of what
  the object looks like, so one image says how the scene will move, as single-image-to-4D generation needs (paper
  Sec. 5, "motion ambiguity"), and a tiny model learns the rule in minutes on a CPU (``make demo``). Colour rather
  than shape: a small network tells colours apart long before it tells spheres from boxes.
- ``random``: smooth oscillating translation in a random direction plus constant-rate spin about a random axis. Only
  the video shows where an object goes; learning to read that needs far more training than a CPU allows
  (``bench/motion_probe.py``, ``bench/RESULTS.md``).
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import torch

from annotation.readers.base import Reader, Scene
from d4s.geometry import TRAJECTORY_NAMES, intrinsics_from_fov, look_at, make_trajectory

ROOM_MIN = np.array([-3.0, -1.5, -4.0])
ROOM_MAX = np.array([3.0, 1.5, 4.0])
NUM_ROOM_FACES = 6  # surface ids 2 * axis + (max side): -x, +x, ceiling (-y), floor (+y), -z, +z walls
CAMERA_TRAJECTORIES = tuple(name for name in TRAJECTORY_NAMES if name != "from_file")
CAMERA_TRAVEL = 0.3  # make_trajectory's dolly / pedestal distance, a fraction of the scene scale
FOV_X_DEGREES = 60.0
TRACK_GRID = 16
LICENCE = "CC0-1.0"

_PROBE_FRAMES = 145  # dense samples of a camera path for the clearance checks
_CAMERA_WALL_MARGIN = 0.25
_CAMERA_OBJECT_MARGIN = 0.4
_OBJECT_MARGIN = 0.05
_MAX_ATTEMPTS = 200
MOTIONS = ("by_colour", "random")
DEFAULT_DURATION = 49 / 12.0  # seconds: the default scene, 49 frames at 12 fps
_RISE_SPEED = (0.1, 0.2)  # by_colour: metres per second, up for RISING_COLOURS and down for the others
_LIGHT = np.array([0.3, -1.0, -0.4]) / np.linalg.norm([0.3, -1.0, -0.4])  # towards the light, from above
_AMBIENT, _DIFFUSE = 0.65, 0.35
_VISIBILITY_RTOL = 1e-6
_CACHED_FRAMES = 64
_PALETTE = {  # moderately saturated, so object edges survive chroma subsampling reasonably
    "red": (0.8, 0.3, 0.25),
    "green": (0.35, 0.7, 0.35),
    "blue": (0.3, 0.4, 0.8),
    "yellow": (0.8, 0.75, 0.3),
    "orange": (0.85, 0.55, 0.25),
    "purple": (0.6, 0.35, 0.75),
    "cyan": (0.3, 0.7, 0.75),
    "white": (0.85, 0.85, 0.83),
}
RISING_COLOURS = frozenset({"red", "orange", "yellow", "purple"})  # by_colour motion: the other colours sink


@dataclass(frozen=True, eq=False)
class ProceduralTexture:
    """Colour as a function of a surface's local coordinates ``p`` (metres): smooth waves plus grey random tiles.

    ``colour(p) = clip(base + sin(p @ wave_vectors.T + wave_phases) @ wave_colours + checker_contrast (c(p) - 1/2))``
    where ``c(p)`` in ``[0, 1)`` is a hash of the tile ``floor(p / checker_size)``: a checker whose tiles have
    random brightness. ``base [3]``, ``wave_vectors [k, 3]`` (radians per metre), ``wave_phases [k]``,
    ``wave_colours [k, 3]``. The tiles change brightness only, so their edges survive chroma subsampling (yuv420
    video); they are not periodic, so optical flow cannot lock on to the wrong tile.
    """

    base: np.ndarray
    wave_vectors: np.ndarray
    wave_phases: np.ndarray
    wave_colours: np.ndarray
    checker_size: float
    checker_contrast: float

    def colour(self, points: np.ndarray) -> np.ndarray:
        """RGB in ``[0, 1]``, ``[N, 3]``, of local points ``[N, 3]``."""
        waves = np.sin(points @ self.wave_vectors.T + self.wave_phases)
        tiles = np.floor(points / self.checker_size)
        brightness = np.modf(np.abs(np.sin(tiles @ np.array([12.9898, 78.233, 37.719])) * 43758.5453))[0]
        rgb = self.base + waves @ self.wave_colours + (self.checker_contrast * (brightness - 0.5))[:, None]
        return np.clip(rgb, 0.0, 1.0)


@dataclass(frozen=True, eq=False)
class Sphere:
    """A sphere of ``radius`` metres centred on its object's origin."""

    radius: float
    kind = "sphere"

    @property
    def bounding_radius(self) -> float:
        return self.radius

    def intersect(self, origin: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """First positive hit of rays ``origin [3] + t directions [N, 3]`` (object frame).

        Returns ``t [N]`` (``inf`` on a miss), hit points ``[N, 3]`` and unit normals ``[N, 3]`` (object frame).
        """
        a = np.einsum("ij,ij->i", directions, directions)
        b = directions @ origin
        disc = b * b - a * (origin @ origin - self.radius**2)
        t = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
        hit = (disc >= 0.0) & (t > 0.0)
        points = origin + np.where(hit, t, 0.0)[:, None] * directions
        return np.where(hit, t, np.inf), points, points / self.radius


@dataclass(frozen=True, eq=False)
class Box:
    """An axis-aligned box (in its object's frame) of ``half_extents [3]`` metres centred on the origin."""

    half_extents: np.ndarray
    kind = "box"

    @property
    def bounding_radius(self) -> float:
        return float(np.linalg.norm(self.half_extents))

    def intersect(self, origin: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """First positive hit of rays ``origin [3] + t directions [N, 3]`` (object frame), by the slab method.

        Returns ``t [N]`` (``inf`` on a miss), hit points ``[N, 3]`` snapped exactly onto the entry face, and unit
        normals ``[N, 3]`` (object frame).
        """
        with np.errstate(divide="ignore", invalid="ignore"):
            inverse = 1.0 / directions
            t_low = (-self.half_extents - origin) * inverse
            t_high = (self.half_extents - origin) * inverse
        t_enter = np.minimum(t_low, t_high)
        axis = np.argmax(t_enter, axis=-1)
        rows = np.arange(len(directions))
        t_near = t_enter[rows, axis]
        t_far = np.maximum(t_low, t_high).min(axis=-1)
        hit = (t_near <= t_far) & (t_near > 0.0)
        points = origin + np.where(hit, t_near, 0.0)[:, None] * directions
        side = -np.sign(directions[rows, axis])
        points[rows, axis] = side * self.half_extents[axis]
        normals = np.zeros_like(points)
        normals[rows, axis] = side
        return np.where(hit, t_near, np.inf), points, normals


@dataclass(frozen=True, eq=False)
class RigidMotion:
    """Pose over time ``t`` (seconds): ``R(t) = rot(spin_axis, spin_rate t) rotation`` and
    ``c(t) = centre + velocity t + amplitude * sin(2 pi frequency t + phase)`` (per axis). ``rotation [3, 3]``, the
    rest ``[3]`` except ``spin_rate`` (radians per second). Zero velocity, amplitude and spin rate make the object
    still."""

    centre: np.ndarray
    rotation: np.ndarray
    amplitude: np.ndarray
    frequency: np.ndarray
    phase: np.ndarray
    spin_axis: np.ndarray
    spin_rate: float
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def pose(self, time: float) -> tuple[np.ndarray, np.ndarray]:
        """Object-to-world rotation ``[3, 3]`` and translation ``[3]`` at ``time`` seconds."""
        rotation = _axis_angle_matrix(self.spin_axis, self.spin_rate * time) @ self.rotation
        swing = self.amplitude * np.sin(2.0 * math.pi * self.frequency * time + self.phase)
        return rotation, self.centre + self.velocity * time + swing

    def reach(self, duration: float) -> tuple[np.ndarray, np.ndarray, float]:
        """Where the centre goes in ``[0, duration]`` seconds, bounded by a middle point ``[3]`` and the per-axis
        half extent ``[3]`` of a box around the path, and by the radius of a sphere around that middle point."""
        middle = self.centre + 0.5 * duration * self.velocity
        half = 0.5 * duration * np.abs(self.velocity) + np.abs(self.amplitude)
        return middle, half, float(np.linalg.norm(0.5 * duration * self.velocity) + np.linalg.norm(self.amplitude))


@dataclass(frozen=True, eq=False)
class SceneObject:
    """A textured rigid object: ``shape`` (a :class:`Sphere` or :class:`Box`), its ``motion``, its ``texture``
    (evaluated in object coordinates) and the ``colour_name`` its caption uses."""

    shape: Sphere | Box
    motion: RigidMotion
    texture: ProceduralTexture
    colour_name: str

    def intersect(
        self, origin: np.ndarray, directions: np.ndarray, time: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """First hits of world rays ``origin [3] + t directions [N, 3]`` at ``time`` seconds.

        Returns the indices ``[M]`` of the rays that hit, their ``t [M]``, hit points in object coordinates
        ``[M, 3]`` and world unit normals ``[M, 3]``. Only rays that meet the bounding sphere are tested exactly.
        """
        rotation, centre = self.motion.pose(time)
        offset = origin - centre
        b = directions @ offset
        near_sphere = b * b >= np.einsum("ij,ij->i", directions, directions) * (
            offset @ offset - self.shape.bounding_radius**2
        )
        rays = np.flatnonzero(near_sphere)
        t, points, normals = self.shape.intersect(offset @ rotation, directions[rays] @ rotation)
        hit = np.isfinite(t)
        return rays[hit], t[hit], points[hit], normals[hit] @ rotation.T


@dataclass(frozen=True, eq=False)
class SceneLayout:
    """Everything that defines a scene except its frame count, image size and frame rate.

    ``trajectory`` names a :data:`CAMERA_TRAJECTORIES` path of scale ``scene_scale`` (metres from the first camera to
    its focus), placed in the room by ``placement [4, 4]`` (the first camera's camera-to-world pose).
    ``room_textures`` holds one texture per room face, indexed by surface id (see :data:`NUM_ROOM_FACES`).
    """

    trajectory: str
    placement: np.ndarray
    scene_scale: float
    objects: tuple[SceneObject, ...]
    room_textures: tuple[ProceduralTexture, ...]
    is_dynamic: bool

    def camera_poses(self, num_frames: int) -> np.ndarray:
        """Camera-to-world poses ``[num_frames, 4, 4]`` float64 (OpenCV axes, metres, exact rotations)."""
        return self.placement @ _trajectory(self.trajectory, num_frames, self.scene_scale)

    @property
    def caption(self) -> str:
        """A short description: ``"a room with a red sphere rising and a blue box sinking"`` (``by_colour`` motion),
        ``"a room with a red sphere and a blue box moving"`` (``random``), without the motion when still."""
        names = [f"{_article(obj.colour_name)} {obj.colour_name} {obj.shape.kind}" for obj in self.objects]
        if not names:
            return "an empty room"
        vertical = [obj.motion.velocity[1] for obj in self.objects]  # by_colour motion: all non-zero
        if self.is_dynamic and all(vertical):  # y points down
            names = [f"{name} {'rising' if dy < 0 else 'sinking'}" for name, dy in zip(names, vertical, strict=True)]
        listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        moving = self.is_dynamic and not all(vertical)
        return f"a room with {listed}" + (" moving" if moving else "")


@dataclass
class _Hits:
    """First hits of ``N`` rays: ray parameter ``t [N]``, ``surface [N]`` id (room faces ``0..5``, then objects),
    hit points in the surface's own frame ``local [N, 3]`` and world unit ``normal [N, 3]``."""

    t: np.ndarray
    surface: np.ndarray
    local: np.ndarray
    normal: np.ndarray


@dataclass(frozen=True)
class _Frame:
    rgb: np.ndarray
    depth: np.ndarray
    dynamic_mask: np.ndarray


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _axis_angle_matrix(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation ``[3, 3]`` by ``angle`` radians about the unit ``axis [3]`` (Rodrigues)."""
    x, y, z = axis
    cross = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + math.sin(angle) * cross + (1.0 - math.cos(angle)) * (cross @ cross)


def _trajectory(name: str, num_frames: int, scene_scale: float) -> np.ndarray:
    """``make_trajectory`` poses ``[T, 4, 4]`` in float64, rotations projected back onto exact rotations."""
    c2w = make_trajectory(name, num_frames, scene_scale, travel=CAMERA_TRAVEL).double().numpy()
    u, _, vt = np.linalg.svd(c2w[:, :3, :3])
    c2w[:, :3, :3] = u @ vt
    return c2w


def _room_hits(origin: np.ndarray, directions: np.ndarray) -> _Hits:
    """Where rays from ``origin [3]`` (inside the room) leave it; hit points are snapped exactly onto the face."""
    towards_min = np.signbit(directions)  # with signed zeros, a zero component gives t = +inf on that axis
    bound = np.where(towards_min, ROOM_MIN, ROOM_MAX)
    with np.errstate(divide="ignore"):
        t_axis = (bound - origin) / directions
    axis = np.argmin(t_axis, axis=-1)
    rows = np.arange(len(directions))
    t = t_axis[rows, axis]
    local = origin + t[:, None] * directions
    local[rows, axis] = bound[rows, axis]
    to_max = ~towards_min[rows, axis]
    normal = np.zeros_like(local)
    normal[rows, axis] = np.where(to_max, -1.0, 1.0)
    return _Hits(t=t, surface=2 * axis + to_max, local=local, normal=normal)


def _cast_rays(layout: SceneLayout, origin: np.ndarray, directions: np.ndarray, time: float) -> _Hits:
    """Nearest positive hits of rays ``origin [3] + t directions [N, 3]`` in ``layout`` at ``time`` seconds.

    With directions scaled to camera-frame ``z = 1`` (``R K^-1 [u, v, 1]``), ``t`` is the hit's z-depth.
    """
    hits = _room_hits(origin, directions)
    for index, obj in enumerate(layout.objects):
        rays, t, local, normal = obj.intersect(origin, directions, time)
        closer = t < hits.t[rays]
        rays = rays[closer]
        hits.t[rays] = t[closer]
        hits.surface[rays] = NUM_ROOM_FACES + index
        hits.local[rays] = local[closer]
        hits.normal[rays] = normal[closer]
    return hits


def _shade(layout: SceneLayout, hits: _Hits) -> np.ndarray:
    """RGB ``[N, 3]`` uint8 of hits: each surface's texture at its local hit point, times Lambertian shading."""
    textures = layout.room_textures + tuple(obj.texture for obj in layout.objects)
    order = np.argsort(hits.surface, kind="stable")
    counts = np.bincount(hits.surface, minlength=len(textures))
    ends = np.cumsum(counts)
    colour = np.empty_like(hits.local)
    for surface, (start, end) in enumerate(zip(ends - counts, ends, strict=True)):
        if end > start:
            rays = order[start:end]
            colour[rays] = textures[surface].colour(hits.local[rays])
    light = _AMBIENT + _DIFFUSE * np.clip(hits.normal @ _LIGHT, 0.0, None)
    return np.round(np.clip(colour * light[:, None], 0.0, 1.0) * 255.0).astype(np.uint8)


def _pixel_centres(height: int, width: int) -> np.ndarray:
    """Pixel centres ``uv [H * W, 2]`` in row-major order, ``(u + 0.5, v + 0.5)``."""
    v, u = np.mgrid[0:height, 0:width] + 0.5
    return np.stack([u.ravel(), v.ravel()], axis=-1)


def track_grid(height: int, width: int, count: int = TRACK_GRID) -> np.ndarray:
    """A regular ``count x count`` grid of pixel centres ``uv [count * count, 2]`` (continuous, centres at +0.5)."""
    u = np.floor((np.arange(count) + 0.5) * width / count) + 0.5
    v = np.floor((np.arange(count) + 0.5) * height / count) + 0.5
    uu, vv = np.meshgrid(u, v, indexing="xy")
    return np.stack([uu.ravel(), vv.ravel()], axis=-1)


class Toy4DScene(Scene):
    """One generated scene of ``num_frames`` square ``size x size`` frames at ``fps``.

    ``K [T, 3, 3]`` float64 (60 degree horizontal FoV), ``c2w [T, 4, 4]`` float64 OpenCV camera-to-world in metres,
    ``timestamps [T] = arange(T) / fps``; ``is_dynamic`` says whether the objects move. Rendered frames are cached,
    so asking for rgb, depth and masks of the same frames renders them once.
    """

    has_depth = True
    has_dynamic_mask = True
    has_tracks = True

    def __init__(self, name: str, layout: SceneLayout, num_frames: int, size: int, fps: float):
        self.dataset = "toy4d"
        self.name = name
        self.layout = layout
        self.is_dynamic = layout.is_dynamic
        self.fps = fps
        self.height = self.width = size
        intrinsics = intrinsics_from_fov(size, size, FOV_X_DEGREES, dtype=torch.float64).numpy()
        self.K = np.repeat(intrinsics[None], num_frames, axis=0)
        self.c2w = layout.camera_poses(num_frames)
        self.timestamps = np.arange(num_frames) / fps
        self.metric = True
        self.licence = LICENCE
        self.caption = layout.caption
        self._pixel_rays = self._camera_rays(_pixel_centres(size, size), intrinsics)
        self._cache: dict[int, _Frame] = {}

    def frames(self, indices: Sequence[int]) -> np.ndarray:
        """RGB ``[t, H, W, 3]`` uint8."""
        return np.stack([self._render(i).rgb for i in self._check_indices(indices)])

    def depth(self, indices: Sequence[int]) -> np.ndarray:
        """Exact z-depth ``[t, H, W]`` float32 metres; every pixel hits the closed room, so all are positive."""
        return np.stack([self._render(i).depth for i in self._check_indices(indices)])

    def dynamic_mask(self, indices: Sequence[int]) -> np.ndarray:
        """``[t, H, W]`` bool: pixels whose first hit is a moving object (all ``False`` in static scenes)."""
        return np.stack([self._render(i).dynamic_mask for i in self._check_indices(indices)])

    def tracks(self, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Tracks of a :data:`TRACK_GRID` x :data:`TRACK_GRID` grid of pixel centres of frame ``indices[0]``;
        see :meth:`tracks_from_pixels`."""
        return self.tracks_from_pixels(track_grid(self.height, self.width), indices)

    def tracks_from_pixels(self, uv: np.ndarray, indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """Exact 3D tracks of the surface points seen through pixels ``uv [N, 2]`` of frame ``indices[0]``.

        ``uv`` are continuous pixel coordinates (pixel centres at +0.5). Each point is lifted to the first surface
        its ray hits and moves with that surface (room points are world-fixed, object points move rigidly).
        Returns ``xyz [N, t, 3]`` float32 world metres and ``visible [N, t]`` bool: the point projects inside frame
        ``j`` (``0 <= u < W``, ``0 <= v < H``, in front of the camera) and the ray through its projection hits
        nothing before it (z-depths agree to a relative ``1e-6``).
        """
        frames = self._check_indices(indices)
        uv = np.asarray(uv, dtype=np.float64)
        if uv.ndim != 2 or uv.shape[1] != 2 or not np.isfinite(uv).all():
            raise ValueError(f"uv: expected finite pixel coordinates of shape [N, 2], got shape {list(uv.shape)}")
        first = frames[0]
        origin, rotation = self.c2w[first, :3, 3], self.c2w[first, :3, :3]
        directions = self._camera_rays(uv, self.K[first]) @ rotation.T
        hits = _cast_rays(self.layout, origin, directions, self.timestamps[first])
        start = origin + hits.t[:, None] * directions
        xyz = np.stack([self._surface_points(start, hits.surface, first, j) for j in frames], axis=1)
        visible = np.stack([self._visible(xyz[:, k], j) for k, j in enumerate(frames)], axis=1)
        return xyz.astype(np.float32), visible

    def _check_indices(self, indices: Sequence[int]) -> list[int]:
        try:
            frames = [operator.index(i) for i in indices]
        except TypeError as err:
            raise ValueError(f"indices: expected integer frame indices ({err})") from err
        if not frames:
            raise ValueError("indices: expected at least one frame index")
        bad = [i for i in frames if not 0 <= i < self.num_frames]
        if bad:
            raise ValueError(f"indices: {bad} outside [0, {self.num_frames}) for scene {self.name}")
        return frames

    @staticmethod
    def _camera_rays(uv: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
        """Camera-frame rays ``K^-1 [u, v, 1]`` (so ``z = 1``) of pixel coordinates ``uv [N, 2]``: ``[N, 3]``."""
        homogeneous = np.concatenate([uv, np.ones_like(uv[:, :1])], axis=-1)
        return homogeneous @ np.linalg.inv(intrinsics).T

    def _render(self, frame: int) -> _Frame:
        if frame not in self._cache:
            if len(self._cache) >= _CACHED_FRAMES:
                self._cache.pop(next(iter(self._cache)))
            self._cache[frame] = self._render_uncached(frame)
        return self._cache[frame]

    def _render_uncached(self, frame: int) -> _Frame:
        origin, rotation = self.c2w[frame, :3, 3], self.c2w[frame, :3, :3]
        hits = _cast_rays(self.layout, origin, self._pixel_rays @ rotation.T, self.timestamps[frame])
        shape = (self.height, self.width)
        moving = self.is_dynamic & (hits.surface >= NUM_ROOM_FACES)
        return _Frame(
            rgb=_shade(self.layout, hits).reshape(*shape, 3),
            depth=hits.t.astype(np.float32).reshape(shape),
            dynamic_mask=moving.reshape(shape),
        )

    def _surface_points(self, start: np.ndarray, surface: np.ndarray, first: int, frame: int) -> np.ndarray:
        """World positions ``[N, 3]`` at ``frame`` of surface points ``start [N, 3]`` seen at frame ``first``."""
        points = start.copy()
        if not self.is_dynamic or first == frame:
            return points
        for index, obj in enumerate(self.layout.objects):
            on_object = surface == NUM_ROOM_FACES + index
            rotation_first, centre_first = obj.motion.pose(self.timestamps[first])
            rotation, centre = obj.motion.pose(self.timestamps[frame])
            local = (start[on_object] - centre_first) @ rotation_first
            points[on_object] = local @ rotation.T + centre
        return points

    def _visible(self, points: np.ndarray, frame: int) -> np.ndarray:
        """``[N]`` bool: world ``points [N, 3]`` project inside ``frame`` and are its first hits along their rays."""
        origin, rotation = self.c2w[frame, :3, 3], self.c2w[frame, :3, :3]
        offsets = points - origin
        z = offsets @ rotation[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = (offsets @ rotation @ self.K[frame].T)[:, :2] / z[:, None]
            directions = offsets / z[:, None]
        size = np.array([self.width, self.height])
        in_image = (z > 0.0) & (uv >= 0.0).all(axis=-1) & (uv < size).all(axis=-1)
        visible = np.zeros(len(points), dtype=bool)
        if in_image.any():
            hits = _cast_rays(self.layout, origin, directions[in_image], self.timestamps[frame])
            visible[in_image] = np.abs(hits.t - z[in_image]) <= _VISIBILITY_RTOL * z[in_image]
        return visible


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)


def _mostly_grey(colours: np.ndarray, saturation: float) -> np.ndarray:
    """Colours ``[..., 3]`` moved towards their grey (channel mean), keeping ``saturation`` of their colourfulness."""
    grey = colours.mean(axis=-1, keepdims=True)
    return grey + saturation * (colours - grey)


def _random_texture(
    rng: np.random.Generator, base: np.ndarray, wavelengths: tuple[float, float], checker_size: float, contrast: float
) -> ProceduralTexture:
    """Three plane waves of random direction and wavelength (metres) around ``base [3]``, plus a checker.

    The waves are mostly brightness with a faint tint: sharp colour detail would not survive yuv420 video.
    """
    directions = np.stack([_unit(rng.normal(size=3)) for _ in range(3)])
    return ProceduralTexture(
        base=np.asarray(base, dtype=np.float64),
        wave_vectors=directions * (2.0 * math.pi / rng.uniform(*wavelengths, size=3))[:, None],
        wave_phases=rng.uniform(0.0, 2.0 * math.pi, size=3),
        wave_colours=_mostly_grey(rng.uniform(-0.12, 0.12, size=(3, 3)), 0.25),
        checker_size=checker_size,
        checker_contrast=contrast,
    )


def _room_texture(rng: np.random.Generator) -> ProceduralTexture:
    """A softly tinted grey face texture."""
    base = _mostly_grey(rng.uniform(0.35, 0.8, size=3), 0.4)
    return _random_texture(rng, base, (0.6, 2.5), rng.uniform(0.35, 0.6), 0.3)


def _sample_camera(rng: np.random.Generator) -> tuple[str, np.ndarray, float]:
    """A trajectory name, a placement ``[4, 4]`` and a scale whose whole path keeps clear of the room's faces."""
    name = CAMERA_TRAJECTORIES[rng.integers(len(CAMERA_TRAJECTORIES))]
    for _ in range(_MAX_ATTEMPTS):
        scale = rng.uniform(2.2, 3.2)
        focus = rng.uniform([-1.5, 0.0, -2.0], [1.5, 0.6, 2.0])
        azimuth, elevation = rng.uniform(0.0, 2.0 * math.pi), rng.uniform(0.0, math.radians(12.0))
        horizontal = np.array([math.sin(azimuth), 0.0, math.cos(azimuth)])
        view = math.cos(elevation) * horizontal + np.array([0.0, math.sin(elevation), 0.0])  # y down: looks down
        eye = focus - scale * view
        placement = look_at(torch.from_numpy(eye), torch.from_numpy(focus)).numpy()
        positions = (placement @ _trajectory(name, _PROBE_FRAMES, scale))[:, :3, 3]
        inside = (positions >= ROOM_MIN + _CAMERA_WALL_MARGIN) & (positions <= ROOM_MAX - _CAMERA_WALL_MARGIN)
        if inside.all():
            return name, placement, scale
    raise RuntimeError("toy4d: found no camera placement inside the room")


def _sample_object(rng: np.random.Generator, focus: np.ndarray, colour: str, motion_kind: str | None) -> SceneObject:
    """A sphere or box near ``focus [3]`` with a random pose and texture, moving as ``motion_kind`` says (one of
    :data:`MOTIONS`; ``None``: still)."""
    shape = Sphere(rng.uniform(0.25, 0.45)) if rng.random() < 0.5 else Box(rng.uniform(0.15, 0.4, size=3))
    amplitude = rng.uniform([0.1, 0.05, 0.1], [0.4, 0.2, 0.4])
    spin_rate = rng.uniform(0.3, 1.0) * rng.choice([-1.0, 1.0])
    motion = RigidMotion(
        centre=focus + rng.uniform([-1.2, -0.5, -1.2], [1.2, 0.4, 1.2]),
        rotation=_axis_angle_matrix(_unit(rng.normal(size=3)), rng.uniform(0.0, 2.0 * math.pi)),
        amplitude=amplitude if motion_kind == "random" else np.zeros(3),
        frequency=rng.uniform(0.08, 0.2, size=3),
        phase=rng.uniform(0.0, 2.0 * math.pi, size=3),
        spin_axis=_unit(rng.normal(size=3)),
        spin_rate=spin_rate if motion_kind == "random" else 0.0,
    )
    texture = _random_texture(rng, np.array(_PALETTE[colour]), (0.15, 0.5), rng.uniform(0.08, 0.15), 0.4)
    if motion_kind == "by_colour":  # drawn last: random and still scenes keep their earlier draws
        rise = rng.uniform(*_RISE_SPEED) * (-1.0 if colour in RISING_COLOURS else 1.0)  # y points down
        motion = dataclasses.replace(motion, velocity=np.array([0.0, rise, 0.0]))
    return SceneObject(shape=shape, motion=motion, texture=texture, colour_name=colour)


def _check_motion(motion: str) -> str:
    if motion not in MOTIONS:
        raise ValueError(f"motion: expected one of {MOTIONS}, got {motion!r}")
    return motion


def _object_fits(candidate: SceneObject, placed: list[SceneObject], camera_poses: np.ndarray, duration: float) -> bool:
    """Whether ``candidate`` stays inside the room, apart from ``placed`` objects and clear of every camera
    position ``camera_poses [T, 4, 4]`` over its whole motion in ``[0, duration]`` seconds, and starts in the middle
    of the first view."""
    motion, radius = candidate.motion, candidate.shape.bounding_radius
    middle, half, swept = motion.reach(duration)
    reach = half + radius + _OBJECT_MARGIN
    if (middle - reach < ROOM_MIN).any() or (middle + reach > ROOM_MAX).any():
        return False
    swept += radius
    for other in placed:
        other_middle, _, other_swept = other.motion.reach(duration)
        gap = swept + other_swept + other.shape.bounding_radius + _OBJECT_MARGIN
        if np.linalg.norm(middle - other_middle) < gap:
            return False
    if np.linalg.norm(camera_poses[:, :3, 3] - middle, axis=-1).min() < swept + _CAMERA_OBJECT_MARGIN:
        return False
    in_camera = (motion.centre - camera_poses[0, :3, 3]) @ camera_poses[0, :3, :3]
    half_view = 0.8 * math.tan(math.radians(FOV_X_DEGREES) / 2.0)
    return in_camera[2] > 0.0 and bool((np.abs(in_camera[:2]) <= half_view * in_camera[2]).all())


def sample_layout(
    seed: int, index: int, dynamic: bool, motion: str = "by_colour", duration: float = DEFAULT_DURATION
) -> SceneLayout:
    """The layout of scene ``index`` for ``seed``, from ``np.random.default_rng([seed, index])`` alone.

    2-4 objects of distinct colours are placed near the camera's focus; an object that finds no valid place in
    :data:`_MAX_ATTEMPTS` tries is left out. ``dynamic`` gives them ``motion`` (one of :data:`MOTIONS`, see the module
    docstring); otherwise they stand still. Objects keep clear of the room, each other and the camera for
    ``duration`` seconds (a ``by_colour`` object keeps going; later it may leave the room).
    """
    _check_motion(motion)
    rng = np.random.default_rng([seed, index])
    room_textures = tuple(_room_texture(rng) for _ in range(NUM_ROOM_FACES))
    trajectory, placement, scale = _sample_camera(rng)
    camera_poses = placement @ _trajectory(trajectory, _PROBE_FRAMES, scale)
    focus = placement[:3, 3] + scale * placement[:3, 2]
    colours = rng.permutation(list(_PALETTE))[: rng.integers(2, 5)]
    objects: list[SceneObject] = []
    for colour in colours:
        for _ in range(_MAX_ATTEMPTS):
            candidate = _sample_object(rng, focus, str(colour), motion if dynamic else None)
            if _object_fits(candidate, objects, camera_poses, duration):
                objects.append(candidate)
                break
    return SceneLayout(
        trajectory=trajectory,
        placement=placement,
        scene_scale=scale,
        objects=tuple(objects),
        room_textures=room_textures,
        is_dynamic=dynamic,
    )


def _check_integer(value: object, name: str, low: int, high: int | None = None) -> int:
    if not isinstance(value, Integral) or isinstance(value, bool) or value < low or (high is not None and value > high):
        limits = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name}: expected an integer {limits}, got {value!r}")
    return int(value)


def _check_real(value: object, name: str, low: float, high: float, low_open: bool = False) -> float:
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        raise ValueError(f"{name}: expected a number in {'(' if low_open else '['}{low}, {high}], got {value!r}")
    return float(value)


class Toy4DReader(Reader):
    """The generated toy4d dataset: ``num_scenes`` scenes ``scene_0000 ...`` of ``num_frames`` frames of
    ``size x size`` pixels at ``fps``. ``root`` is ignored (nothing is read from disk).

    Scene ``i`` is dynamic when ``floor((i + 1) f) > floor(i f)`` for ``f = dynamic_fraction``, which spreads the
    dynamic scenes evenly (alternating at 0.5). Splits: the last ~10% of scenes are ``test``, the ~10% before them
    ``val`` (at least one each from 3 scenes on), the rest ``train``. ``motion`` (:data:`MOTIONS`) says how dynamic
    scenes move (module docstring).
    """

    name = "toy4d"
    licence = LICENCE
    needs_root = False

    def __init__(
        self,
        root: str | Path | None = None,
        num_scenes: int = 48,
        num_frames: int = 49,
        size: int = 128,
        seed: int = 0,
        dynamic_fraction: float = 0.5,
        fps: float = 12.0,
        motion: str = "by_colour",
    ):
        super().__init__(root)
        self.num_scenes = _check_integer(num_scenes, "num_scenes", 1, 10_000)
        self.num_frames = _check_integer(num_frames, "num_frames", 1)
        self.size = _check_integer(size, "size", TRACK_GRID)
        self.seed = _check_integer(seed, "seed", 0)
        self.dynamic_fraction = _check_real(dynamic_fraction, "dynamic_fraction", 0.0, 1.0)
        self.fps = _check_real(fps, "fps", 0.0, math.inf, low_open=True)
        self.motion = _check_motion(motion)

    def scene_names(self) -> list[str]:
        return [f"scene_{i:04d}" for i in range(self.num_scenes)]

    def split_of(self, name: str) -> str:
        index = self._index(name)
        held_out = max(1, round(0.1 * self.num_scenes)) if self.num_scenes >= 3 else 0
        if index >= self.num_scenes - held_out:
            return "test"
        if index >= self.num_scenes - 2 * held_out:
            return "val"
        return "train"

    def is_dynamic(self, name: str) -> bool:
        """Whether the scene's objects move."""
        index = self._index(name)
        return math.floor((index + 1) * self.dynamic_fraction) > math.floor(index * self.dynamic_fraction)

    def open_scene(self, name: str) -> Toy4DScene:
        duration = self.num_frames / self.fps
        layout = sample_layout(self.seed, self._index(name), self.is_dynamic(name), self.motion, duration)
        return Toy4DScene(name, layout, self.num_frames, self.size, self.fps)

    def _index(self, name: str) -> int:
        names = self.scene_names()
        if name not in names:
            raise ValueError(f"scene: unknown toy4d scene {name!r}; expected scene_0000 .. {names[-1]}")
        return names.index(name)
