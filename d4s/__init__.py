"""d4s: feed-forward generation of deformable 3D Gaussian fields (Diff4Splat) from a single image."""

__version__ = "0.1.0"
