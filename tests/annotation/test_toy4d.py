"""toy4d, the generated dataset: determinism, exact depth, masks and tracks, checked against independent references.

References used here: analytic depths of hand-built scenes (a wall or a box straight ahead), the analytic exit depth
of the empty room, multi-view consistency through d4s.geometry (unproject_depth, project_points, unproject_pixels)
and analytic segment-sphere occlusion.
"""

import math

import numpy as np
import pytest
import torch

from annotation.readers import make_reader
from annotation.readers.toy4d import (
    _RISE_SPEED,
    CAMERA_TRAJECTORIES,
    CAMERA_TRAVEL,
    DEFAULT_DURATION,
    RISING_COLOURS,
    ROOM_MAX,
    ROOM_MIN,
    Box,
    ProceduralTexture,
    RigidMotion,
    SceneLayout,
    SceneObject,
    Sphere,
    Toy4DReader,
    Toy4DScene,
    sample_layout,
)
from d4s.geometry import look_at, make_trajectory, project_points, unproject_depth, unproject_pixels

SMALL = {"num_scenes": 4, "num_frames": 9, "size": 48}
STATIC, DYNAMIC = "scene_0000", "scene_0001"  # dynamic_fraction 0.5 alternates, starting static
ALL = list(range(9))


@pytest.fixture(scope="module")
def reader():
    return Toy4DReader(**SMALL)


@pytest.fixture(scope="module")
def static_scene(reader):
    return reader.open_scene(STATIC)


@pytest.fixture(scope="module")
def dynamic_scene(reader):
    return reader.open_scene(DYNAMIC)


def plain_texture(grey: float = 0.5, checker_size: float = 1.0, checker_contrast: float = 0.0) -> ProceduralTexture:
    """A grey texture without waves: flat, or a grey checker of ``checker_size`` metres."""
    return ProceduralTexture(
        base=np.full(3, grey),
        wave_vectors=np.zeros((1, 3)),
        wave_phases=np.zeros(1),
        wave_colours=np.zeros((1, 3)),
        checker_size=checker_size,
        checker_contrast=checker_contrast,
    )


def rigid_motion(centre, rotation=None, amplitude=(0.0, 0.0, 0.0), frequency=(0.0, 0.0, 0.0)) -> RigidMotion:
    return RigidMotion(
        centre=np.asarray(centre, dtype=np.float64),
        rotation=np.eye(3) if rotation is None else rotation,
        amplitude=np.asarray(amplitude, dtype=np.float64),
        frequency=np.asarray(frequency, dtype=np.float64),
        phase=np.zeros(3),
        spin_axis=np.array([0.0, 1.0, 0.0]),
        spin_rate=0.0,
    )


def hand_built_scene(
    eye, target, objects=(), trajectory="forward", scale=1.0, dynamic=False, frames=5, size=32, room=None
):
    """A scene whose first camera sits at ``eye`` looking at ``target`` and follows ``trajectory``; ``objects`` holds
    ``(shape, motion)`` or ``(shape, motion, texture)`` (flat light grey by default); ``room`` textures every face
    (flat grey by default)."""
    placement = look_at(torch.tensor(eye, dtype=torch.float64), torch.tensor(target, dtype=torch.float64)).numpy()
    objects = tuple(SceneObject(*(obj if len(obj) == 3 else (*obj, plain_texture(0.8))), "red") for obj in objects)
    room_textures = tuple(room or plain_texture() for _ in range(6))
    layout = SceneLayout(trajectory, placement, scale, objects, room_textures, dynamic)
    return Toy4DScene("hand_built", layout, num_frames=frames, size=size, fps=4.0)


def to_torch(*arrays):
    return [torch.from_numpy(np.asarray(a, dtype=np.float64)) for a in arrays]


def room_exit_depth(scene: Toy4DScene, frame: int) -> np.ndarray:
    """z-depth ``[H, W]`` at which each pixel's ray leaves the empty room (the analytic box exit)."""
    ones = torch.ones(scene.height, scene.width, dtype=torch.float64)
    K, c2w = to_torch(scene.K[frame], scene.c2w[frame])
    directions = (unproject_depth(ones, K, c2w) - c2w[:3, 3]).numpy()  # camera-frame z = 1
    origin = scene.c2w[frame, :3, 3]
    bound = np.where(directions > 0, ROOM_MAX, ROOM_MIN)
    with np.errstate(divide="ignore"):
        per_axis = np.where(directions != 0, (bound - origin) / directions, np.inf)
    return per_axis.min(axis=-1)


def room_plane(points: np.ndarray, atol: float = 1e-4) -> np.ndarray:
    """For world points ``[..., 3]``: the room face (0..5, as -x, +x, -y, +y, -z, +z) they lie on, else -1."""
    on_min = np.abs(points - ROOM_MIN) < atol
    on_max = np.abs(points - ROOM_MAX) < atol
    face = np.full(points.shape[:-1], -1)
    for axis in range(3):
        face = np.where(on_min[..., axis], 2 * axis, face)
        face = np.where(on_max[..., axis], 2 * axis + 1, face)
    return face


def neighbourhood(uv: np.ndarray, height: int, width: int):
    """The 2x2 pixel centres around continuous ``uv [N, 2]``: rows/cols ``[N, 2]``, weights, and which lie inside."""
    x, y = uv[:, 0] - 0.5, uv[:, 1] - 0.5
    col0, row0 = np.floor(x).astype(int), np.floor(y).astype(int)
    inside = (col0 >= 0) & (col0 + 1 < width) & (row0 >= 0) & (row0 + 1 < height)
    cols = np.clip(np.stack([col0, col0 + 1], 1), 0, width - 1)
    rows = np.clip(np.stack([row0, row0 + 1], 1), 0, height - 1)
    return rows, cols, x - col0, y - row0, inside


def on_object_surface(obj: SceneObject, points: np.ndarray, time: float, atol: float = 1e-4) -> np.ndarray:
    """``[N]`` bool: which world ``points [N, 3]`` lie on ``obj``'s surface at ``time`` seconds."""
    rotation, centre = obj.motion.pose(time)
    local = (points - centre) @ rotation
    if isinstance(obj.shape, Sphere):
        return np.abs(np.linalg.norm(local, axis=-1) - obj.shape.radius) < atol
    half = obj.shape.half_extents
    return (np.abs(np.abs(local) - half) < atol).any(-1) & (np.abs(local) <= half + atol).all(-1)


def depth_point_at(scene: Toy4DScene, frame: int, uv: np.ndarray):
    """Points seen at continuous ``uv [N, 2]`` of ``frame`` according to its depth map, where that is exact.

    Where all four surrounding pixel centres see the same room face, inverse depth is affine in ``(u, v)``, so its
    bilinear interpolation is exact and so is the unprojected point. Returns points ``[N, 3]``, a mask ``[N]`` of
    where that holds, and the face (-1 elsewhere).
    """
    depth = scene.depth([frame])[0].astype(np.float64)
    K, c2w = to_torch(scene.K[frame], scene.c2w[frame])
    points = unproject_depth(torch.from_numpy(depth), K, c2w).numpy()
    faces = room_plane(points)
    rows, cols, fx, fy, inside = neighbourhood(uv, scene.height, scene.width)
    corner_faces = np.stack([faces[rows[:, i], cols[:, j]] for i in range(2) for j in range(2)], 1)
    same_face = inside & (corner_faces >= 0).all(1) & (corner_faces == corner_faces[:, :1]).all(1)
    inverse = 1.0 / depth
    top = (1 - fx) * inverse[rows[:, 0], cols[:, 0]] + fx * inverse[rows[:, 0], cols[:, 1]]
    bottom = (1 - fx) * inverse[rows[:, 1], cols[:, 0]] + fx * inverse[rows[:, 1], cols[:, 1]]
    z = 1.0 / ((1 - fy) * top + fy * bottom)
    world = unproject_pixels(*to_torch(uv, z), K, c2w).numpy()
    return world, same_face, np.where(same_face, corner_faces[:, 0], -1)


# ---------------------------------------------------------------------------------------------------- reader


def test_reader_lists_sorted_scenes_with_held_out_last_splits():
    reader = Toy4DReader()
    names = reader.scene_names()
    assert names == sorted(names) and len(names) == 48 and names[0] == "scene_0000"
    splits = [reader.split_of(name) for name in names]
    assert splits.count("val") == 5 and splits.count("test") == 5
    assert splits == ["train"] * 38 + ["val"] * 5 + ["test"] * 5
    assert Toy4DReader.name == "toy4d" and Toy4DReader.licence == "CC0-1.0"
    assert isinstance(make_reader("toy4d", None, num_scenes=2), Toy4DReader)
    with pytest.raises(ValueError, match="unknown toy4d scene"):
        reader.open_scene("scene_0048")
    with pytest.raises(ValueError, match="unknown toy4d scene"):
        reader.split_of("kitchen")


@pytest.mark.parametrize(
    "option,value",
    [
        ("num_scenes", 0),
        ("num_frames", 0),
        ("size", 8),
        ("size", 64.0),
        ("seed", -1),
        ("dynamic_fraction", 1.5),
        ("fps", 0.0),
        ("fps", float("nan")),
        ("num_frames", True),
        ("motion", "sideways"),
    ],
)
def test_reader_rejects_bad_options(option, value):
    with pytest.raises(ValueError, match=option):
        Toy4DReader(**{option: value})


@pytest.mark.parametrize("fraction,expected", [(0.0, 0), (0.5, 24), (0.25, 12), (1.0, 48)])
def test_dynamic_fraction_sets_how_many_scenes_move(fraction, expected):
    reader = Toy4DReader(dynamic_fraction=fraction, num_frames=2, size=16)
    flags = [reader.is_dynamic(name) for name in reader.scene_names()]
    assert sum(flags) == expected
    for name in reader.scene_names()[:4]:
        assert reader.open_scene(name).is_dynamic == reader.is_dynamic(name)


def test_scene_metadata_follows_the_conventions(dynamic_scene):
    scene = dynamic_scene
    assert scene.dataset == "toy4d" and scene.name == DYNAMIC and scene.metric and scene.licence == "CC0-1.0"
    assert scene.has_depth and scene.has_dynamic_mask and scene.has_tracks and scene.is_dynamic
    assert scene.num_frames == 9 and scene.height == scene.width == 48
    assert scene.K.shape == (9, 3, 3) and scene.K.dtype == np.float64
    focal = 24.0 / math.tan(math.radians(30.0))
    np.testing.assert_allclose(scene.K[3], [[focal, 0, 24.0], [0, focal, 24.0], [0, 0, 1]], rtol=1e-12)
    assert scene.c2w.shape == (9, 4, 4) and scene.c2w.dtype == np.float64
    np.testing.assert_allclose(scene.timestamps, np.arange(9) / 12.0)
    assert scene.caption.startswith("a room with ")
    for obj in scene.layout.objects:
        verb = "rising" if obj.colour_name in RISING_COLOURS else "sinking"
        assert f"{obj.colour_name} {obj.shape.kind} {verb}" in scene.caption
    random_motion = Toy4DReader(**SMALL, motion="random").open_scene(DYNAMIC)
    assert random_motion.caption.endswith(" moving") and "rising" not in random_motion.caption
    frames, depth, mask = scene.frames([0, 4]), scene.depth([0, 4]), scene.dynamic_mask([0, 4])
    assert frames.shape == (2, 48, 48, 3) and frames.dtype == np.uint8
    assert depth.shape == (2, 48, 48) and depth.dtype == np.float32 and (depth > 0).all()
    assert mask.shape == (2, 48, 48) and mask.dtype == bool
    assert frames.std() > 20, "textured frames, not flat colour"


def test_bad_indices_and_pixels_are_rejected(static_scene):
    for indices in ([], [9], [-1], [0.5]):
        with pytest.raises(ValueError, match="indices"):
            static_scene.frames(indices)
    with pytest.raises(ValueError, match="uv"):
        static_scene.tracks_from_pixels(np.zeros((4, 3)), [0])


# ---------------------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_identical_arrays_and_another_seed_differs():
    first, again, other = Toy4DReader(**SMALL), Toy4DReader(**SMALL), Toy4DReader(seed=1, **SMALL)
    a, b, c = (reader.open_scene(DYNAMIC) for reader in (first, again, other))
    for method in ("frames", "depth", "dynamic_mask"):
        np.testing.assert_array_equal(getattr(a, method)(ALL), getattr(b, method)(ALL))
    np.testing.assert_array_equal(a.c2w, b.c2w)
    np.testing.assert_array_equal(a.tracks(ALL)[0], b.tracks(ALL)[0])
    assert a.caption == b.caption
    assert not np.array_equal(a.frames([0]), c.frames([0]))
    assert not np.array_equal(a.c2w, c.c2w)


def test_scenes_do_not_depend_on_generation_order_or_on_the_number_of_scenes():
    small, large = Toy4DReader(**SMALL), Toy4DReader(**{**SMALL, "num_scenes": 48})
    for name in ("scene_0003", "scene_0000", "scene_0002"):
        small.open_scene(name).frames([0])
    late, direct = small.open_scene("scene_0002"), large.open_scene("scene_0002")
    np.testing.assert_array_equal(late.frames(ALL), direct.frames(ALL))
    np.testing.assert_array_equal(late.depth(ALL), direct.depth(ALL))
    reversed_order = direct.frames(ALL[::-1])[::-1]
    np.testing.assert_array_equal(reversed_order, Toy4DReader(**SMALL).open_scene("scene_0002").frames(ALL))


# ---------------------------------------------------------------------------------------------------- cameras


def test_cameras_are_proper_rotations_inside_the_room_following_the_named_trajectories():
    reader = Toy4DReader()
    seen = set()
    for name in reader.scene_names():
        scene = reader.open_scene(name)
        R = scene.c2w[:, :3, :3]
        np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
        np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
        np.testing.assert_array_equal(scene.c2w[:, 3], np.broadcast_to([0.0, 0.0, 0.0, 1.0], (49, 4)))
        centres = scene.c2w[:, :3, 3]
        assert ((centres > ROOM_MIN) & (centres < ROOM_MAX)).all(), name
        layout = scene.layout
        expected = make_trajectory(layout.trajectory, 49, layout.scene_scale, travel=CAMERA_TRAVEL).double().numpy()
        np.testing.assert_allclose(np.linalg.inv(scene.c2w[0]) @ scene.c2w, expected, atol=1e-6)
        assert 2 <= len(layout.objects) <= 4
        seen.add(layout.trajectory)
    assert seen == set(CAMERA_TRAJECTORIES)


def test_objects_are_in_the_first_view(reader):
    for name in reader.scene_names():
        scene = reader.open_scene(name)
        assert (scene.depth([0])[0] < room_exit_depth(scene, 0) - 1e-3).any(), name


# ---------------------------------------------------------------------------------------------------- depth


@pytest.mark.parametrize(
    "eye,target,axis,wall",
    [((0.4, 0.3, -1.0), (0.4, 0.3, 5.0), 2, 4.0), ((-1.0, -0.2, 0.5), (5.0, -0.2, 0.5), 0, 3.0)],
)
def test_depth_of_a_wall_straight_ahead_is_its_plane_distance(eye, target, axis, wall):
    scene = hand_built_scene(eye, target, trajectory="forward", scale=2.0)
    for frame in range(scene.num_frames):
        distance = wall - scene.c2w[frame, axis, 3]
        K, c2w = to_torch(scene.K[frame], scene.c2w[frame])
        on_plane = unproject_depth(torch.full((32, 32), distance, dtype=torch.float64), K, c2w).numpy()
        others = [a for a in range(3) if a != axis]
        sees_wall = ((on_plane > ROOM_MIN) & (on_plane < ROOM_MAX))[..., others].all(-1)
        depth = scene.depth([frame])[0]
        assert sees_wall.mean() > 0.3
        np.testing.assert_allclose(depth[sees_wall], distance, rtol=1e-6)
        assert (depth[~sees_wall] < distance).all()
    assert scene.c2w[-1, axis, 3] - scene.c2w[0, axis, 3] == pytest.approx(CAMERA_TRAVEL * 2.0)


def test_depth_of_boxes_facing_the_camera_is_their_front_face():
    quarter_turn = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])  # about y: x <-> z extents swap
    boxes = [
        (Box(np.array([0.5, 0.3, 0.2])), rigid_motion((-0.6, 0.0, 2.0))),
        (Box(np.array([0.2, 0.3, 0.5])), rigid_motion((0.6, 0.0, 2.0), rotation=quarter_turn)),
    ]
    scene = hand_built_scene((0.0, 0.0, 0.0), (0.0, 0.0, 1.0), objects=boxes, trajectory="forward", frames=1, size=64)
    depth = scene.depth([0])[0]
    K, c2w = to_torch(scene.K[0], scene.c2w[0])
    front = unproject_depth(torch.full((64, 64), 1.8, dtype=torch.float64), K, c2w).numpy()
    x, y = front[..., 0], front[..., 1]
    on_front = (np.abs(y) < 0.3) & ((np.abs(x + 0.6) < 0.5) | (np.abs(x - 0.6) < 0.5))
    assert on_front.sum() > 100
    np.testing.assert_allclose(depth[on_front], 1.8, rtol=1e-6)
    assert (depth[~on_front] > 1.8).all()


def test_depth_maps_agree_across_views(static_scene):
    """Frame 0's depth points, projected into frame j, are where frame j's depth map puts the same 3D point."""
    scene = static_scene
    depth0 = torch.from_numpy(scene.depth([0])[0].astype(np.float64))
    points = unproject_depth(depth0, *to_torch(scene.K[0], scene.c2w[0])).reshape(-1, 3)
    checked = 0
    for frame in range(1, scene.num_frames):
        K, c2w = to_torch(scene.K[frame], scene.c2w[frame])
        uv, _ = project_points(points, c2w, K)
        seen, exact, face = depth_point_at(scene, frame, uv.numpy())
        same = exact & (face == room_plane(points.numpy()))
        np.testing.assert_allclose(seen[same], points.numpy()[same], atol=1e-4)
        checked += same.sum()
    assert checked > 0.5 * (scene.num_frames - 1) * len(points)


# ---------------------------------------------------------------------------------------------------- masks


def test_dynamic_mask_is_exactly_the_pixels_that_see_a_moving_object(dynamic_scene, static_scene):
    for frame in ALL:
        sees_object = dynamic_scene.depth([frame])[0] < room_exit_depth(dynamic_scene, frame) - 1e-4
        np.testing.assert_array_equal(dynamic_scene.dynamic_mask([frame])[0], sees_object)
        assert sees_object.any()
    static_objects = static_scene.depth([0])[0] < room_exit_depth(static_scene, 0) - 1e-4
    assert static_objects.any() and not static_scene.dynamic_mask(ALL).any()


def test_masked_points_move_and_unmasked_points_stay(dynamic_scene, static_scene):
    v, u = np.mgrid[0:48, 0:48] + 0.5
    pixels = np.stack([u.ravel(), v.ravel()], 1)
    for scene in (dynamic_scene, static_scene):
        xyz, _ = scene.tracks_from_pixels(pixels, [0, 4, 8])
        moved = np.linalg.norm(xyz[:, 1:] - xyz[:, :1], axis=-1).min(axis=1)
        mask = scene.dynamic_mask([0])[0].ravel()
        assert (moved[~mask] == 0).all()
        assert (moved[mask] > 1e-3).all()
    assert dynamic_scene.dynamic_mask([0]).any()


# ---------------------------------------------------------------------------------------------------- tracks


def test_tracks_start_on_the_depth_map_of_their_first_frame(dynamic_scene):
    scene = dynamic_scene
    for indices in ([0, 3, 8], [5, 2, 7]):
        xyz, visible = scene.tracks(indices)
        assert xyz.shape == (256, 3, 3) and xyz.dtype == np.float32 and visible.shape == (256, 3)
        first = indices[0]
        depth_points = unproject_depth(
            torch.from_numpy(scene.depth([first])[0].astype(np.float64)), *to_torch(scene.K[first], scene.c2w[first])
        ).numpy()
        grid = np.floor((np.arange(16) + 0.5) * 3).astype(int)  # 48 px / 16 tracks: every third pixel centre
        expected = depth_points[np.ix_(grid, grid)].reshape(-1, 3)
        np.testing.assert_allclose(xyz[:, 0], expected, atol=1e-5)
        assert visible[:, 0].all()


def test_wall_tracks_stay_fixed_and_object_tracks_ride_on_their_object(dynamic_scene):
    scene = dynamic_scene
    xyz, _ = scene.tracks(ALL)
    on_room = room_plane(xyz[:, 0].astype(np.float64), atol=1e-5) >= 0
    assert on_room.any() and (~on_room).any()
    np.testing.assert_array_equal(xyz[on_room], np.broadcast_to(xyz[on_room, :1], xyz[on_room].shape))
    pixels = np.argwhere(scene.dynamic_mask([0])[0])[:, ::-1] + 0.5
    moving = scene.tracks_from_pixels(pixels, ALL)[0].astype(np.float64)
    assert np.linalg.norm(moving[:, -1] - moving[:, 0], axis=-1).min() > 1e-3
    claimed = np.zeros(len(moving), dtype=bool)
    for obj in scene.layout.objects:
        mine = on_object_surface(obj, moving[:, 0], time=0.0)
        claimed |= mine
        local = []
        for j in ALL:  # the same material point: fixed object coordinates, on the surface at every time
            time = scene.timestamps[j]
            assert on_object_surface(obj, moving[mine, j], time).all()
            rotation, centre = obj.motion.pose(time)
            local.append((moving[mine, j] - centre) @ rotation)
        np.testing.assert_allclose(np.stack(local), np.broadcast_to(local[0], (len(ALL), *local[0].shape)), atol=1e-5)
    assert claimed.all()


def test_faces_on_checker_boundaries_render_clean_tiles():
    """Faces whose constant coordinate is a multiple of the tile size (a box face at local z = -0.1, the wall at
    z = 4) still show clean tiles of their other two coordinates, seen by a slightly tilted camera: one colour per
    tile (flat faces, no waves), and tiles of several brightnesses."""
    box_cell, wall_cell = 0.05, 0.25
    box_texture = plain_texture(checker_size=box_cell, checker_contrast=0.4)
    box = (Box(np.array([0.4, 0.4, 0.1])), rigid_motion((0.0, 0.0, 2.0)), box_texture)  # centred on x = y = 0
    scene = hand_built_scene(
        (0.0, 0.0, 0.31),
        (0.03, 0.02, 1.0),
        objects=[box],
        frames=1,
        size=64,
        room=plain_texture(checker_size=wall_cell, checker_contrast=0.4),
    )
    rgb = scene.frames([0])[0].astype(np.int64)
    depth = torch.from_numpy(scene.depth([0])[0].astype(np.float64))
    points = unproject_depth(depth, *to_torch(scene.K[0], scene.c2w[0])).numpy()
    for world_z, cell in ((1.9, box_cell), (4.0, wall_cell)):
        on_face = np.abs(points[..., 2] - world_z) < 1e-5
        cells = points[..., :2] / cell  # local x, y equal world x, y for the box and for the wall
        clear = on_face & (np.abs(cells - np.round(cells)) > 1e-3).all(-1)
        assert clear.sum() > 300
        tiles = np.floor(cells[clear]).astype(np.int64)
        colours = {}
        for tile, colour in zip(map(tuple, tiles), map(tuple, rgb[clear])):
            assert colours.setdefault(tile, colour) == colour
        assert len(set(colours.values())) >= 3


def test_visible_tracks_lie_on_the_depth_maps_and_hidden_ones_are_behind_something(dynamic_scene):
    scene = dynamic_scene
    xyz, visible = scene.tracks(ALL)
    checked_visible = checked_hidden = 0
    for j in ALL:
        K, c2w = to_torch(scene.K[j], scene.c2w[j])
        uv, z = (t.numpy() for t in project_points(torch.from_numpy(xyz[:, j].astype(np.float64)), c2w, K))
        seen, exact, face = depth_point_at(scene, j, uv)
        same_wall = exact & (face == room_plane(xyz[:, j].astype(np.float64)))
        assert visible[same_wall, j].all()
        np.testing.assert_allclose(seen[same_wall], xyz[same_wall, j], atol=1e-3)
        checked_visible += same_wall.sum()
        rows, cols, _, _, inside = neighbourhood(uv, scene.height, scene.width)
        depth, mask = scene.depth([j])[0], scene.dynamic_mask([j])[0]
        corners = [(rows[:, a], cols[:, b]) for a in range(2) for b in range(2)]
        in_front = np.stack([(depth[c] < 0.9 * z) & mask[c] for c in corners], 1).all(1)
        covered = inside & (z > 0) & in_front  # all four neighbours see a moving object well in front
        assert not visible[covered, j].any()
        checked_hidden += covered.sum()
    assert checked_visible > 0.5 * visible.sum() and checked_hidden > 0
    in_view = visible.sum()
    assert 0 < in_view < visible.size


def test_tracks_are_hidden_exactly_while_a_sphere_passes_in_front():
    """A sphere sweeps across a wall; a wall point is hidden iff the segment from the camera meets the sphere."""
    sphere = (Sphere(0.5), rigid_motion((0.0, 0.0, 1.5), amplitude=(1.5, 0.0, 0.0), frequency=(0.25, 0.0, 0.0)))
    scene = hand_built_scene(
        (0.0, 0.0, -1.0), (0.0, 0.0, 4.0), objects=[sphere], trajectory="forward", dynamic=True, frames=9, size=48
    )
    xyz, visible = scene.tracks(ALL)
    assert (room_plane(xyz[:, 0].astype(np.float64), atol=1e-5) >= 0).mean() > 0.8
    decided = 0
    for j in ALL:
        _, centre = scene.layout.objects[0].motion.pose(scene.timestamps[j])
        eye = scene.c2w[j, :3, 3]
        segment = xyz[:, j].astype(np.float64) - eye
        along = np.clip(((centre - eye) @ segment.T) / (segment * segment).sum(-1), 0.0, 1.0)
        gap = np.linalg.norm(eye + along[:, None] * segment - centre, axis=-1)
        K, c2w = to_torch(scene.K[j], scene.c2w[j])
        uv, _ = project_points(torch.from_numpy(xyz[:, j].astype(np.float64)), c2w, K)
        in_image = ((uv >= 0) & (uv < 48)).all(-1).numpy()
        on_wall = room_plane(xyz[:, j].astype(np.float64), atol=1e-5) >= 0
        clear = on_wall & (np.abs(gap - 0.5) > 1e-6)
        np.testing.assert_array_equal(visible[clear, j], in_image[clear] & (gap[clear] > 0.5))
        decided += (clear & in_image & (gap < 0.5)).sum()
    assert decided > 20, "the sphere hides some tracks"


def test_object_texture_moves_with_the_object():
    """A textured box slides sideways by exactly 3 pixels in front of a still camera: its pixels shift by 3."""
    focal = 32.0 / math.tan(math.radians(30.0))
    shift = 3.0 * 1.9 / focal  # metres at the front face (z = 1.9) per 3 pixels
    amplitude = shift / math.sin(math.pi / 8)  # frame 1 is at t = 0.25 s: phase 2 pi 0.25 t = pi / 8
    motion = rigid_motion((0.0, 0.0, 2.0), amplitude=(amplitude, 0.0, 0.0), frequency=(0.25, 0.0, 0.0))
    texture = ProceduralTexture(
        base=np.array([0.7, 0.35, 0.3]),
        wave_vectors=np.array([[23.0, 7.0, 3.0]]),
        wave_phases=np.array([0.4]),
        wave_colours=np.array([[0.1, 0.12, 0.08]]),
        checker_size=0.05,
        checker_contrast=0.3,
    )
    box = (Box(np.array([0.4, 0.4, 0.1])), motion, texture)
    scene = hand_built_scene((0.0, 0.0, 0.0), (0.0, 0.0, 1.0), objects=[box], dynamic=True, frames=2, size=64)
    scene.c2w[1] = scene.c2w[0]  # hold the camera still
    frames, depth = scene.frames([0, 1]).astype(int), scene.depth([0, 1])
    on_face = np.isclose(depth[0, :, :-3], 1.9, rtol=1e-6) & np.isclose(depth[1, :, 3:], 1.9, rtol=1e-6)
    assert on_face.sum() > 300 and frames[0, :, :-3][on_face].std() > 10
    np.testing.assert_array_equal(frames[1, :, 3:][on_face], frames[0, :, :-3][on_face])
    assert (frames[1, :, :-3][on_face] != frames[0, :, :-3][on_face]).any(-1).mean() > 0.3, "the texture moved"


@pytest.mark.parametrize("motion,duration", [("by_colour", DEFAULT_DURATION), ("by_colour", 2.0), ("random", 8.0)])
def test_sampled_layouts_keep_objects_apart_and_inside_the_room(motion, duration):
    """Over the whole ``duration`` the layout was sampled for (a random object oscillates, so any duration)."""
    for index in range(12):
        layout = sample_layout(0, index, dynamic=True, motion=motion, duration=min(duration, DEFAULT_DURATION))
        positions = layout.camera_poses(97)[:, :3, 3]
        for k, obj in enumerate(layout.objects):
            for time in np.linspace(0.0, duration, 33):
                _, centre = obj.motion.pose(time)
                radius = obj.shape.bounding_radius
                assert (centre - radius > ROOM_MIN).all() and (centre + radius < ROOM_MAX).all()
                assert np.linalg.norm(positions - centre, axis=-1).min() > radius
                for other in layout.objects[k + 1 :]:
                    _, other_centre = other.motion.pose(time)
                    assert np.linalg.norm(centre - other_centre) > radius + other.shape.bounding_radius


def test_by_colour_objects_rise_or_sink_by_their_colour_at_a_constant_speed():
    """The default motion: straight up for RISING_COLOURS, straight down otherwise (y points down), at a constant
    speed in ``_RISE_SPEED`` metres per second, without spinning; a still scene's objects do not move."""
    colours = set()
    for index in range(12):
        for obj in sample_layout(0, index, dynamic=True).objects:
            (r0, c0), (r1, c1), (_, c2) = (obj.motion.pose(t) for t in (0.0, 1.0, 3.0))
            np.testing.assert_array_equal(r1, r0)
            velocity = c1 - c0
            np.testing.assert_allclose(c2 - c0, 3.0 * velocity, atol=1e-12)  # constant
            sign = -1.0 if obj.colour_name in RISING_COLOURS else 1.0
            assert velocity[0] == velocity[2] == 0.0
            assert _RISE_SPEED[0] <= sign * velocity[1] <= _RISE_SPEED[1]
            colours.add(obj.colour_name)
        for obj in sample_layout(0, index, dynamic=False).objects:
            assert obj.motion.pose(0.0)[1].tolist() == obj.motion.pose(3.0)[1].tolist()
    assert colours & RISING_COLOURS and colours - RISING_COLOURS, "both directions occur"


def test_by_colour_tracks_move_straight_up_or_down_and_random_motion_spins():
    """Through the reader: every track on a moving object is displaced by exactly its object's velocity times the
    elapsed time, up for a rising colour; the ``random`` motion oscillates and spins, as before."""
    reader = Toy4DReader(**SMALL)
    scene = reader.open_scene(DYNAMIC)
    pixels = np.argwhere(scene.dynamic_mask([0])[0])[:, ::-1] + 0.5
    xyz = scene.tracks_from_pixels(pixels, ALL)[0].astype(np.float64)
    elapsed = scene.timestamps[ALL] - scene.timestamps[0]
    checked = 0
    for obj in scene.layout.objects:
        mine = on_object_surface(obj, xyz[:, 0], time=0.0)
        velocity = obj.motion.velocity
        assert (velocity[1] < 0) == (obj.colour_name in RISING_COLOURS)
        expected = xyz[mine, :1] + elapsed[None, :, None] * velocity
        np.testing.assert_allclose(xyz[mine], expected, atol=1e-5)
        checked += mine.sum()
    assert checked == len(pixels) > 0
    spinning = Toy4DReader(**SMALL, motion="random").open_scene(DYNAMIC).layout.objects
    assert spinning and all(o.motion.spin_rate != 0.0 and (o.motion.amplitude > 0).all() for o in spinning)
    assert all((o.motion.velocity == 0.0).all() for o in spinning)
