"""Fitting an image to a frame size: the smallest aspect-preserving resize that covers it, then a crop.

Used wherever an image of any size becomes a model frame (training clips, the condition image of generation), so
that the pixels and the intrinsics ``K`` always go through the same map.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from torch import Tensor

from d4s.geometry.cameras import crop_intrinsics, resize_intrinsics


@dataclass(frozen=True)
class CropBox:
    """Resize ``(H, W)`` to ``resized (Hr, Wr)``, then keep ``size (h, w)`` from pixel ``(left, top)``."""

    source: tuple[int, int]
    resized: tuple[int, int]
    top: int
    left: int
    size: tuple[int, int]

    def intrinsics(self, K: Tensor) -> Tensor:
        """``K [..., 3, 3]`` of the source image, carried through the resize and the crop."""
        return crop_intrinsics(resize_intrinsics(K, self.source, self.resized), self.top, self.left)

    @property
    def interpolation(self) -> int:
        """Bilinear, unless the image shrinks by more than 2x: then OpenCV's area filter, which averages away the
        detail a bilinear sample would alias (and costs ~4x more)."""
        return cv2.INTER_AREA if self.resized[0] < self.source[0] / 2 else cv2.INTER_LINEAR

    def resize_image(self, image: np.ndarray) -> np.ndarray:
        """One image ``[H, W, C]`` (or ``[H, W]``) uint8 resized and cropped."""
        resized = cv2.resize(image, self.resized[::-1], interpolation=self.interpolation)
        return resized[self.top : self.top + self.size[0], self.left : self.left + self.size[1]]

    def resize_images(self, frames: np.ndarray) -> np.ndarray:
        """Frames ``[T, H, W, C]`` uint8 resized and cropped (see :meth:`resize_image`)."""
        return np.stack([self.resize_image(frame) for frame in frames])

    def resize_nearest(self, maps: np.ndarray, frames: np.ndarray) -> np.ndarray:
        """Maps ``[T, H, W]`` (depth, masks) of the given ``frames``, sampled at the output pixel centres.

        Returns ``[len(frames), h, w]``: every value is a source value, none mixed with another.
        """
        (H, W), (Hr, Wr), (h, w) = self.source, self.resized, self.size
        rows = np.minimum(((np.arange(h) + self.top + 0.5) * H / Hr).astype(np.int64), H - 1)
        cols = np.minimum(((np.arange(w) + self.left + 0.5) * W / Wr).astype(np.int64), W - 1)
        pixels = (rows[:, None] * W + cols[None, :]).ravel()
        flat = maps.reshape(len(maps), H * W)
        out = np.empty((len(frames), h * w), maps.dtype)
        for i, frame in enumerate(frames):  # one flat gather per frame, straight from the source: no copies
            np.take(flat[frame], pixels, out=out[i])
        return out.reshape(len(frames), h, w)


def crop_box(
    source: tuple[int, int], size: tuple[int, int], rng: np.random.Generator | None = None, random: bool = False
) -> CropBox:
    """The smallest aspect-preserving resize of ``source (H, W)`` that covers ``size (h, w)``, and a crop of it.

    The crop is uniform over the valid offsets when ``random``, else centred.
    """
    (H, W), (h, w) = source, size
    scale = max(h / H, w / W)
    resized = (max(h, round(H * scale)), max(w, round(W * scale)))
    if random:
        top, left = int(rng.integers(0, resized[0] - h + 1)), int(rng.integers(0, resized[1] - w + 1))
    else:
        top, left = (resized[0] - h) // 2, (resized[1] - w) // 2
    return CropBox(source=(H, W), resized=resized, top=top, left=left, size=(h, w))
