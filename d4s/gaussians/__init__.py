"""3D Gaussian fields, their deformation over time (paper Sec. 3.3), spherical harmonics and file I/O."""

from d4s.gaussians.deform import apply_deformation, identity_deformation
from d4s.gaussians.field import DeformableGaussianField, GaussianField
from d4s.gaussians.io import load_ply, load_ply_sequence, load_scene, save_ply, save_ply_sequence, save_scene
from d4s.gaussians.sh import rgb_to_sh_dc, sh_dc_to_rgb, sh_to_color

__all__ = [
    "DeformableGaussianField",
    "GaussianField",
    "apply_deformation",
    "identity_deformation",
    "load_ply",
    "load_ply_sequence",
    "load_scene",
    "rgb_to_sh_dc",
    "save_ply",
    "save_ply_sequence",
    "save_scene",
    "sh_dc_to_rgb",
    "sh_to_color",
]
