"""Where tiles are cut: the overlapping tile grid and the level resize (PathUp paper 3.1).

``aligned_starts`` is the package's one grid rule (also the sampler's latent patches and the seam
score's grid lines) and ``resize_image`` its one region resize (also the source readers').

Each spatial level cuts square regions of ``size`` source pixels with ``overlap`` pixels shared by
neighbours (stride ``size - overlap``) and writes every region at ``tile_size`` pixels:

* ``patch``: ``512`` px regions, ``64`` px overlap, written at 512 (full resolution);
* ``overview``: ``2048`` px regions, ``256`` px overlap, written at 512 (a 4x downsample).

The grid covers the whole image: the last row and column are aligned to the image border (they
overlap their neighbour by more than ``overlap`` when the image is not a multiple of the stride).
An image smaller than ``size`` along an axis is used whole along that axis: the region is then
``min(size, width) x min(size, height)``. Such a non-square region becomes a square tile in one of two
ways (``small_tile``):

* ``"resize"`` (default): the region is resized to ``tile_size x tile_size`` (its aspect ratio changes
  by ``size / min(size, length)`` along the short axis);
* ``"pad"``: the region is scaled by the level's factor ``tile_size / size`` (so pixel scale is kept)
  and placed at the top-left of a white ``tile_size`` square (white is glass, i.e. background).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from pathup.errors import PathUpError

SmallTile = Literal["resize", "pad"]


@dataclass(frozen=True)
class LevelSpec:
    """One spatial level: region ``size`` and ``overlap`` in source pixels, written at ``tile_size``."""

    name: str
    size: int
    overlap: int
    tile_size: int

    def __post_init__(self) -> None:
        if self.size < 1 or self.tile_size < 1:
            raise PathUpError(f"{self.name} level: size and tile size must be positive, got "
                              f"size={self.size}, tile_size={self.tile_size}")
        if not 0 <= self.overlap < self.size:
            raise PathUpError(f"{self.name} level: overlap must be in [0, size={self.size}), got {self.overlap}")

    @property
    def stride(self) -> int:
        return self.size - self.overlap


def aligned_starts(length: int, size: int, stride: int) -> list[int]:
    """Start offsets of windows of ``size`` along an axis of ``length``: ``stride`` apart from 0, the last one
    aligned to the edge (at ``length - size``); one start, 0, when ``length <= size`` (the axis used whole).

    The one grid rule of the package: tiles cut here, the latent patches of Algorithm 1
    (``pathup.sample.grid``) and the grid lines the seam score looks at (``pathup.metrics.seam``).
    Callers check their own arguments (``size`` and ``stride`` at least 1).

    >>> aligned_starts(700, 256, 224)
    [0, 224, 444]
    """
    if length <= size:
        return [0]
    return list(range(0, length - size, stride)) + [length - size]


def grid_starts(length: int, size: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``size`` along an axis of ``length`` pixels (``aligned_starts``).

    Stride is ``size - overlap``; there are ``ceil((length - size) / stride) + 1`` tiles and the last one
    ends exactly at ``length``. When ``length <= size`` there is one tile at 0 (the axis is used whole).

    >>> grid_starts(700, 256, 32)
    [0, 224, 444]
    """
    if length < 1:
        raise PathUpError(f"cannot tile an axis of length {length}")
    if not 0 <= overlap < size:
        raise PathUpError(f"tile overlap must be in [0, size={size}), got {overlap}")
    return aligned_starts(length, size, size - overlap)


def tile_grid(width: int, height: int, size: int, overlap: int) -> list[tuple[int, int, int, int]]:
    """Regions ``(x, y, w, h)`` covering a ``width x height`` image, row-major (y, then x).

    ``w = min(size, width)`` and ``h = min(size, height)`` for every region.
    """
    w, h = min(size, width), min(size, height)
    return [(x, y, w, h) for y in grid_starts(height, size, overlap) for x in grid_starts(width, size, overlap)]


def region_to_tile(region: "Image.Image", spec: LevelSpec, small_tile: SmallTile = "resize",  # noqa: F821
                   source_size: tuple[int, int] | None = None) -> "Image.Image":  # noqa: F821
    """Resize a cut region (``w x h`` source pixels, ``w, h <= spec.size``) to a ``tile_size`` square tile.

    Full regions are scaled by ``tile_size / size`` (area averaging, ``Image.BOX``, when shrinking;
    bicubic when enlarging). Smaller regions follow ``small_tile`` (see the module docstring).
    ``source_size`` is the region's size in source pixels when ``region`` was already read at another
    scale (whole-slide levels); by default it is ``region.size``.
    """
    from PIL import Image

    t = spec.tile_size
    w, h = source_size or region.size
    if small_tile == "pad" and (w < spec.size or h < spec.size):
        tw = max(1, min(t, round(w * t / spec.size)))
        th = max(1, min(t, round(h * t / spec.size)))
        canvas = Image.new("RGB", (t, t), (255, 255, 255))
        canvas.paste(resize_image(region, tw, th), (0, 0))
        return canvas
    if small_tile not in ("resize", "pad"):
        raise PathUpError(f"small_tile got {small_tile!r}; allowed: resize, pad")
    return resize_image(region, t, t)


def resize_image(img: "Image.Image", w: int, h: int) -> "Image.Image":  # noqa: F821
    """``img`` at ``w x h``: area averaging (``Image.BOX``) when shrinking, bicubic otherwise; as is when
    already that size. The one resize of regions read from sources (``pathup.data.slides``) and of tiles."""
    from PIL import Image

    if img.size == (w, h):
        return img
    shrink = w <= img.size[0] and h <= img.size[1]
    return img.resize((w, h), Image.BOX if shrink else Image.BICUBIC)


def coverage(width: int, height: int, regions: list[tuple[int, int, int, int]]) -> np.ndarray:
    """How many regions cover each pixel, ``(height, width)`` int array (for checks and tests)."""
    count = np.zeros((height, width), dtype=np.int32)
    for x, y, w, h in regions:
        count[y:y + h, x:x + w] += 1
    return count
