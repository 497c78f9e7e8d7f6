"""The tissue mask that drops background tiles (PathUp paper 3.1: tiles of mostly white glass are dropped).

A pixel is tissue when its HSV saturation ``(max - min) / max`` over R, G, B is at least
``threshold`` (H&E stains are pink to purple; glass is white or light grey) and its value ``max`` is at
least ``MIN_VALUE`` (black scanner borders and out-of-slide areas are not tissue). A tile is kept when
the tissue fraction of its region is at least ``min_tissue``.

The mask is computed on a downsampled copy of the image (or, for whole-slide images, on a low-resolution
level) and tile fractions are read from its integral image, so checking a tile costs O(1).
"""

from __future__ import annotations

import math

import numpy as np

MIN_VALUE = 30  # 8-bit value below which a pixel counts as black background, not tissue


def tissue_mask(rgb: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean tissue mask of an ``(H, W, 3)`` uint8 image: saturation >= ``threshold`` and value >= MIN_VALUE."""
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB array, got shape {rgb.shape}")
    mx = rgb.max(axis=-1).astype(np.int32)  # (H, W)
    mn = rgb.min(axis=-1).astype(np.int32)  # (H, W)
    # saturation >= threshold  <=>  (mx - mn) >= threshold * mx  (mx > 0 guaranteed by MIN_VALUE)
    return (mx >= MIN_VALUE) & ((mx - mn) >= threshold * mx)


class TissueMap:
    """Tissue fractions of source regions, from a mask computed at ``scale_x, scale_y`` source px per mask px."""

    def __init__(self, mask: np.ndarray, scale_x: float, scale_y: float) -> None:
        self.mask = mask
        self.scale_x = float(scale_x)
        self.scale_y = float(scale_y)
        integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
        integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
        self._integral = integral

    @classmethod
    def from_image(cls, img: "Image.Image", threshold: float, factor: int = 1) -> "TissueMap":  # noqa: F821
        """Mask of a PIL RGB image, computed after a ``factor`` x box downsample (``Image.reduce``)."""
        small = img.reduce(factor) if factor > 1 else img
        mask = tissue_mask(np.asarray(small), threshold)
        return cls(mask, img.size[0] / small.size[0], img.size[1] / small.size[1])

    def fraction(self, x: int, y: int, w: int, h: int) -> float:
        """Share of tissue pixels in the source region ``(x, y, w, h)`` (mask pixels it touches)."""
        mh, mw = self.mask.shape
        x0 = min(mw - 1, max(0, math.floor(x / self.scale_x)))
        y0 = min(mh - 1, max(0, math.floor(y / self.scale_y)))
        x1 = max(x0 + 1, min(mw, math.ceil((x + w) / self.scale_x)))
        y1 = max(y0 + 1, min(mh, math.ceil((y + h) / self.scale_y)))
        s = self._integral
        total = s[y1, x1] - s[y0, x1] - s[y1, x0] + s[y0, x0]
        return float(total) / float((x1 - x0) * (y1 - y0))
