"""Per-patch weight maps for combining overlapping patches (PathUp Eq. 6).

Every latent position takes the weighted mean of the patch values that cover it,
``value = sum(w * x) / sum(w)``. The pyramid map of Eq. 6 gives the patch centre the most say and
its border the least:

    w(i, j) = 0.5 + 0.5 * min(d_i, d_j) / (p / 2)

where ``d_i`` and ``d_j`` are the distances of (i, j) to the nearest patch border along each axis.
On a discrete p x p patch the distance of row ``i`` is ``d_i = min(i, p - 1 - i)`` (0 on the border
rows); its largest value is ``floor((p - 1) / 2)``, which stands for the paper's ``p / 2`` so that the
map is normalised to exactly [0.5, 1] as PathUp Eq. 6 has it: 0.5 on the border, 1 at the centre. A patch
that is not square (the canvas is smaller than ``p`` along one axis) normalises each axis by its own
half-width. An axis of one or two positions is all border (weight 0.5).

``ramp_weights`` is the feathering used by the tiled autoencoder: weights that fall towards a tile's
edges only where another tile overlaps it.
"""

from __future__ import annotations

from typing import Literal

import torch

from pathup.errors import PathUpError

WEIGHT_MAPS = ("pyramid", "uniform")
WeightMap = Literal["pyramid", "uniform"]


def _border_distance(n: int) -> torch.Tensor:
    """Normalised distance to the nearest border along one axis of length ``n``: 0 on the border, 1 at the centre."""
    i = torch.arange(n, dtype=torch.float64)
    d = torch.minimum(i, n - 1 - i)  # (n,)
    half = (n - 1) // 2
    return d / half if half > 0 else torch.zeros(n, dtype=torch.float64)


def pyramid_weights(height: int, width: int | None = None, *, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """The pyramid weight map of Eq. 6 for a ``height x width`` patch, values in [0.5, 1].

    Args:
        height: patch height in latent positions.
        width: patch width (defaults to ``height``).
        dtype: dtype of the result.
        device: device of the result.

    Returns:
        (height, width) tensor: 0.5 on the border, 1 at the centre.
    """
    width = height if width is None else width
    if height < 1 or width < 1:
        raise PathUpError(f"patch size must be positive, got {height}x{width}")
    di = _border_distance(height)[:, None]  # (h, 1)
    dj = _border_distance(width)[None, :]  # (1, w)
    w = 0.5 + 0.5 * torch.minimum(di, dj)  # (h, w)
    return w.to(device=device, dtype=dtype)


def uniform_weights(height: int, width: int | None = None, *, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    """All-ones weights (plain averaging of overlaps; the paper's Table 4 'weight map off')."""
    width = height if width is None else width
    if height < 1 or width < 1:
        raise PathUpError(f"patch size must be positive, got {height}x{width}")
    return torch.ones(height, width, dtype=dtype, device=device)


def patch_weights(kind: str, height: int, width: int | None = None, *, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """The weight map named ``kind`` (``pyramid`` or ``uniform``), shape (height, width)."""
    if kind == "pyramid":
        return pyramid_weights(height, width, dtype=dtype, device=device)
    if kind == "uniform":
        return uniform_weights(height, width, dtype=dtype, device=device)
    raise PathUpError(f"unknown weight map {kind!r}; allowed: {', '.join(WEIGHT_MAPS)}")


def ramp_weights(height: int, width: int, ramp: int, *, top: bool = True, bottom: bool = True,
                 left: bool = True, right: bool = True, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> torch.Tensor:
    """Feathering weights for blending overlapping tiles (tiled autoencoder).

    Along each flagged edge the weight rises linearly over ``ramp`` positions, from ``1 / (ramp + 1)``
    on the edge to 1; edges on the canvas border (flag False) keep weight 1, so every position of the
    canvas has a positive total weight.

    Returns:
        (height, width) tensor in (0, 1].
    """
    def axis(n: int, lo: bool, hi: bool) -> torch.Tensor:
        w = torch.ones(n, dtype=torch.float64)
        if ramp > 0:
            r = torch.arange(1, n + 1, dtype=torch.float64) / (ramp + 1)  # rising from the low edge
            if lo:
                w = torch.minimum(w, r)
            if hi:
                w = torch.minimum(w, r.flip(0))
        return w

    wy = axis(height, top, bottom)[:, None]  # (h, 1)
    wx = axis(width, left, right)[None, :]  # (1, w)
    return (wy * wx).to(device=device, dtype=dtype)
