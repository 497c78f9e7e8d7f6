"""A seam score for large generated images: how much stronger the image gradient is along the patch grid.

The PathUp paper's Table 4 (weight map on/off) and Fig. 4b show tiling artifacts by eye; this score
measures them. Patch-wise timestep tracking (PathUp paper, Algorithm 1) splits the latent into
p x p patches with stride p - o, the last row and column aligned to the border; in pixels the patch
borders are at ``vae_factor`` times those latent positions. A seam is a discontinuity across those
borders, so it raises the mean absolute difference between neighbouring pixel columns (rows) exactly
there. The score compares each grid line with its own neighbourhood:

    seam = mean over grid lines x and windows t along them of  max(E_line(x, t), F) / max(E_near(x, t), F)

where E(x', t) is the mean absolute difference between pixel columns x' - 1 and x' (over RGB channels)
in a window t of ``window`` rows (default: the stride) along the line, E_line averages it over the band
of ``2 * band + 1`` columns around x, E_near over as many columns on each side at offsets
``band + 2 .. 3 * band + 2`` (those inside another line's band are left out), and F = ``FLOOR`` (one grey
level) bounds both, so flat or near-flat stretches (glass, background) give 1 instead of dividing by ~0.
Rows are treated alike for the horizontal lines; all (line, window) ratios are averaged. Being local, the
score does not move when part of the image is glass, and an invisible +1 grey-level step scores about 1.
A flat image (no gradient anywhere) has no score: NaN with a ``SeamWarning``.
1.0 means no seam; a visible seam gives clearly more. JPEG files carry their own 8 x 8 block edges: on
JPEGs, prefer grid strides that are not multiples of 8 or compare against a seamless reference.
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from pathup.data.tiling import aligned_starts
from pathup.errors import PathUpError

FLOOR = 1.0  # grey levels (0-255): energies below this count as this much (no division by ~0)


class SeamWarning(UserWarning):
    """The seam score of an image is undefined (flat image, or no grid line to compare)."""


def patch_starts(length: int, patch: int, stride: int) -> list[int]:
    """Start offsets of the patches along one axis: 0, stride, 2 stride, ..., the last aligned to the border.

    The patch grid of the PathUp paper's Algorithm 1 (``pathup.data.tiling.aligned_starts``, the rule the
    sampler's latent grid uses; the same in latent or pixel units).
    """
    if patch < 1 or stride < 1:
        raise PathUpError(f"patch ({patch}) and stride ({stride}) must be >= 1")
    return aligned_starts(length, patch, stride)


def grid_lines(length: int, patch: int, stride: int, offset: int = 0, factor: int = 1) -> list[int]:
    """Pixel positions x (0 < x < length) where a patch starts or ends: the candidate seam lines.

    Args:
        length: image size along the axis, pixels.
        patch: patch size, pixels (latent patch x VAE factor).
        stride: patch stride, pixels ((latent patch - overlap) x VAE factor).
        offset: where the grid begins, pixels (0 for a generated image; other values for crops).
        factor: the grid is laid out in units of ``factor`` pixels (the VAE factor): the sampler pads the
            image to a multiple of it, so the last patch is aligned to ``ceil(length / factor)`` latents.
    """
    if patch % factor or stride % factor:
        raise PathUpError(f"patch {patch} and stride {stride} px must be multiples of the factor {factor}")
    n = -(-(length - offset) // factor)  # latent positions covering the image
    starts = patch_starts(n, patch // factor, stride // factor)
    p = patch // factor
    lines = {offset + s * factor for s in starts} | {offset + (s + min(p, n)) * factor for s in starts}
    return sorted(x for x in lines if 0 < x < length)


def grid_from_sidecar(meta: Mapping[str, Any]) -> tuple[int, int, int]:
    """``(patch_px, stride_px, factor)`` from a generated image's sidecar JSON (``pathup generate``).

    Reads the latent patch p (``latent_patch``, or the older ``patch_size``) and latent overlap o
    (``latent_overlap``, or ``overlap``) under ``options`` (as ``pathup.sample`` writes them) or at the
    top level, and ``vae_scale_factor`` f (default 8, the SD layout); ``patch_px = p * f``,
    ``stride_px = (p - o) * f``.
    """
    src: Mapping[str, Any] = meta["options"] if isinstance(meta.get("options"), Mapping) else meta
    try:
        p = int(next((src[k] for k in ("latent_patch", "patch_size", "latent_patch_size") if k in src), None))
        o = int(next((src[k] for k in ("latent_overlap", "overlap") if k in src), None))
        f = int(src.get("vae_scale_factor", meta.get("vae_scale_factor", 8)))
    except (TypeError, ValueError):
        raise PathUpError("sidecar JSON lacks patch_size / overlap (latent units) needed for the seam grid; "
                          "give --seam-patch and --seam-stride in pixels instead") from None
    if not 0 <= o < p:
        raise PathUpError(f"sidecar JSON: overlap {o} must be in [0, patch_size {p})")
    return p * f, (p - o) * f, f


def _energies(arr: np.ndarray, axis: int) -> np.ndarray:
    """``E[x, t]``: mean absolute difference (over channels) between positions x - 1 and x along ``axis``
    (1: columns, 0: rows), at position t along the line; ``E[0]`` is 0 (no difference there)."""
    d = np.abs(np.diff(arr, axis=axis)).mean(axis=2)  # (H, W-1) for columns, (H-1, W) for rows
    d = d.T if axis == 1 else d  # (positions - 1, along-line)
    return np.concatenate([np.zeros((1, d.shape[1])), d], axis=0)


def _axis_ratios(energy: np.ndarray, lines: Sequence[int], band: int, window: int) -> np.ndarray:
    """One ratio per (grid line, window along it): the line's energy over its neighbours' (module docstring).

    ``energy[x, t]`` is the energy between positions x - 1 and x at t along the line.
    """
    n, length = energy.shape
    if not lines:
        return np.empty(0)
    near = np.zeros(n, dtype=bool)  # positions in the band of any grid line (or next to it): no neighbour
    near[0] = True
    for x in lines:
        near[max(0, x - band - 1): x + band + 2] = True
    width = 2 * band + 1  # neighbours on each side: as many positions as the line's band
    edges = list(range(0, length, window))
    if len(edges) > 1 and length - edges[-1] < window // 2:
        edges.pop()  # a short last window joins the previous one
    sizes = np.diff(edges + [length])
    ratios = []
    for x in lines:
        on = np.arange(max(1, x - band), min(n, x + band + 1))
        off = np.array([x + s * d for d in range(band + 2, band + 2 + width) for s in (-1, 1)])
        off = off[(off > 0) & (off < n)]
        off = off[~near[off]]
        if on.size == 0 or off.size == 0:
            continue
        e_on = np.add.reduceat(energy[on].mean(axis=0), edges) / sizes  # (windows,)
        e_off = np.add.reduceat(energy[off].mean(axis=0), edges) / sizes
        ratios.append(np.maximum(e_on, FLOOR) / np.maximum(e_off, FLOOR))
    return np.concatenate(ratios) if ratios else np.empty(0)


def seam_score(image: "np.ndarray | Any", patch: int, stride: int, offset: tuple[int, int] = (0, 0),
               band: int = 1, factor: int = 1, window: int | None = None) -> float:
    """Seam score of one image for a patch grid (1.0 = no seam; see the module docstring).

    Args:
        image: (H, W, 3) or (H, W) array (0-255; a float image in [0, 1] is scaled), or a PIL image.
        patch: patch size in pixels. stride: patch stride in pixels.
        offset: ``(x, y)`` pixel position of the grid origin.
        band: half-width in pixels of the band around each line (the decoder spreads a latent seam).
        factor: grid unit in pixels (the VAE factor; see ``grid_lines``).
        window: length in pixels of the stretches of a line compared on their own (default: the stride,
            at least 16 px).

    Returns:
        The score; NaN for a grid without an interior line (image no larger than one patch), and NaN with
        a ``SeamWarning`` for a flat image (no gradient anywhere) or lines too dense to have neighbours.
    """
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise PathUpError(f"seam score: expected an (H, W, C) image, got shape {arr.shape}")
    if band < 0:
        raise PathUpError(f"seam score: band must be >= 0, got {band}")
    if np.asarray(image).dtype.kind == "f" and arr.size and arr.max() <= 1.0:
        arr = arr * 255.0
    h, w = arr.shape[:2]
    if h < 2 or w < 2 or np.ptp(arr.reshape(-1, arr.shape[2]), axis=0).max() == 0:
        warnings.warn(f"seam score: the image ({w}x{h}) is flat (no gradient anywhere); score undefined (NaN)",
                      SeamWarning, stacklevel=2)
        return float("nan")
    win = max(16, int(window or stride))
    lines_x = grid_lines(w, patch, stride, offset[0], factor)
    lines_y = grid_lines(h, patch, stride, offset[1], factor)
    ratios = np.concatenate([_axis_ratios(_energies(arr, 1), lines_x, band, win),
                             _axis_ratios(_energies(arr, 0), lines_y, band, win)])
    if not ratios.size:
        if lines_x or lines_y:
            warnings.warn(f"seam score: no grid line of patch {patch} / stride {stride} px has neighbours to "
                          f"compare with in a {w}x{h} image; score undefined (NaN)", SeamWarning, stacklevel=2)
        return float("nan")
    return float(ratios.mean())
