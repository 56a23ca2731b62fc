"""Camera conventions (OpenCV, camera-to-world, pixel centres at +0.5), Plücker rays, quaternions, trajectories."""

from d4s.geometry.cameras import (
    camera_rays,
    check_c2w,
    check_intrinsics,
    crop_intrinsics,
    intrinsics_from_fov,
    look_at,
    pixel_centers,
    project_points,
    relative_to_first,
    resize_intrinsics,
    rigid_inverse,
    unproject_depth,
    unproject_pixels,
)
from d4s.geometry.plucker import plucker_embedding
from d4s.geometry.quaternion import (
    axis_angle_to_quat,
    quat_conjugate,
    quat_identity,
    quat_multiply,
    quat_normalize,
    quat_slerp,
    quat_to_rotmat,
    rotmat_to_quat,
)
from d4s.geometry.trajectories import TRAJECTORY_NAMES, CameraPath, load_camera_path, make_trajectory, resample_poses

__all__ = [
    "TRAJECTORY_NAMES",
    "CameraPath",
    "axis_angle_to_quat",
    "camera_rays",
    "check_c2w",
    "check_intrinsics",
    "crop_intrinsics",
    "intrinsics_from_fov",
    "load_camera_path",
    "look_at",
    "make_trajectory",
    "pixel_centers",
    "plucker_embedding",
    "project_points",
    "quat_conjugate",
    "quat_identity",
    "quat_multiply",
    "quat_normalize",
    "quat_slerp",
    "quat_to_rotmat",
    "relative_to_first",
    "resample_poses",
    "resize_intrinsics",
    "rigid_inverse",
    "rotmat_to_quat",
    "unproject_depth",
    "unproject_pixels",
]
