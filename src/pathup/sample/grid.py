"""The overlapping latent patch grid of Algorithm 1 (PathUp section 3.2).

Patches of ``p x p`` latent positions with stride ``p - o``; the last row and column of patches are
aligned to the canvas border so the whole canvas is covered, for any canvas size (not square, not a
multiple of the stride). Along an axis shorter than ``p`` the patch shrinks to the canvas, so a
canvas smaller than ``p x p`` is one patch of the canvas size. All patches of a grid have the same
size, which lets them be stacked into one UNet batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from pathup.data.tiling import aligned_starts
from pathup.errors import OptionError, PathUpError


@dataclass(frozen=True)
class PatchBox:
    """One patch: rows ``top:top+height`` and columns ``left:left+width`` of the canvas."""

    top: int
    left: int
    height: int
    width: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)


def axis_starts(length: int, patch: int, overlap: int) -> list[int]:
    """Start positions along one axis: stride ``patch - overlap``, the last start at ``length - patch``
    (``pathup.data.tiling.aligned_starts``, the rule tiles are cut by).

    ``patch`` is clipped to ``length`` first (one start, 0, when the axis is shorter than the patch).
    """
    if length < 1:
        raise PathUpError(f"canvas size must be positive, got {length}")
    if patch < 1:
        raise OptionError("latent_patch", f"must be positive, got {patch}")
    if overlap < 0 or overlap >= patch:
        raise OptionError("latent_overlap", f"must be in [0, latent patch {patch}), got {overlap}")
    return aligned_starts(length, patch, patch - overlap)


def patch_grid(height: int, width: int, patch: int = 64, overlap: int = 32) -> list[PatchBox]:
    """The overlapping patches covering a ``height x width`` latent canvas, row-major.

    Args:
        height: canvas height in latent positions.
        width: canvas width in latent positions.
        patch: patch size ``p`` (latent positions; 64 = 512 px for a factor-8 autoencoder).
        overlap: overlap ``o`` between neighbouring patches; stride is ``p - o``.

    Returns:
        The patches, all of size ``min(p, height) x min(p, width)``. A 256 x 256 canvas (2048 px)
        with p = 64, o = 32 gives 7 x 7 = 49 patches.
    """
    rows = axis_starts(height, patch, overlap)
    cols = axis_starts(width, patch, overlap)
    ph, pw = min(patch, height), min(patch, width)
    return [PatchBox(top, left, ph, pw) for top in rows for left in cols]
