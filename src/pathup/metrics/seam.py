"""A seam score for large generated images: how much stronger the image gradient is along the patch grid.

The PathUp paper's Table 4 (weight map on/off) and Fig. 4b show tiling artifacts by eye; this score
measures them. Patch-wise timestep tracking (SPEC.md section 5, Algorithm 1) splits the latent into
p x p patches with stride p - o, the last row and column aligned to the border; in pixels the patch
borders are at ``vae_factor`` times those latent positions. A seam is a discontinuity across those
borders, so it raises the mean absolute difference between neighbouring pixel columns (rows) exactly
there. The score is

    seam = mean over grid lines of E(line) / E(background)

where E(x) is the mean absolute difference between pixel columns x - 1 and x (over rows and RGB channels),
averaged over a band of ``2 * band + 1`` columns around x, and E(background) is the mean of the same
difference over all columns farther than ``band + 2`` px from any grid line (the "other offsets"); rows
are treated alike for the horizontal lines, and the two axes are combined weighted by their line counts.
1.0 means no seam; a visible seam gives clearly more. JPEG files carry their own 8 x 8 block edges: on
JPEGs, prefer grid strides that are not multiples of 8 or compare against a seamless reference.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from pathup.errors import PathUpError


def patch_starts(length: int, patch: int, stride: int) -> list[int]:
    """Start offsets of the patches along one axis: 0, stride, 2 stride, ..., the last aligned to the border.

    This mirrors SPEC.md section 5 step 3 (the same rule in latent or pixel units).
    """
    if patch < 1 or stride < 1:
        raise PathUpError(f"patch ({patch}) and stride ({stride}) must be >= 1")
    if length <= patch:
        return [0]
    starts = list(range(0, length - patch, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


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

    Reads ``patch_size`` (latent patch p) and ``overlap`` (latent overlap o) under ``options`` (as
    ``pathup.sample`` writes them) or at the top level, and ``vae_scale_factor`` f (default 8, the SD
    layout); ``patch_px = p * f``, ``stride_px = (p - o) * f``.
    """
    src: Mapping[str, Any] = meta["options"] if isinstance(meta.get("options"), Mapping) else meta
    try:
        p = int(src.get("patch_size", src.get("latent_patch_size")))
        o = int(src.get("overlap", src.get("latent_overlap")))
        f = int(src.get("vae_scale_factor", meta.get("vae_scale_factor", 8)))
    except (TypeError, ValueError):
        raise PathUpError("sidecar JSON lacks patch_size / overlap (latent units) needed for the seam grid; "
                          "give --seam-patch and --seam-stride in pixels instead") from None
    if not 0 <= o < p:
        raise PathUpError(f"sidecar JSON: overlap {o} must be in [0, patch_size {p})")
    return p * f, (p - o) * f, f


def _axis_ratios(diff: np.ndarray, lines: Sequence[int], band: int) -> np.ndarray:
    """Per-line E(line) / E(background) along one axis; ``diff[x]`` is the energy between x - 1 and x."""
    n = diff.shape[0]  # positions 1..n-1 are valid (diff[0] unused)
    if not lines:
        return np.empty(0)
    valid = np.zeros(n, dtype=bool)
    valid[1:] = True
    near = np.zeros(n, dtype=bool)
    for x in lines:
        near[max(0, x - band - 2): x + band + 3] = True
    bg_mask = valid & ~near
    if bg_mask.sum() < 4:
        raise PathUpError("seam score: too few columns/rows away from the grid lines to compare with "
                          f"(image size {n} px, {len(lines)} lines); use a larger image or stride")
    background = float(diff[bg_mask].mean())
    if background <= 0:
        raise PathUpError("seam score: the image is flat (no gradient anywhere)")
    vals = [float(diff[max(1, x - band): min(n, x + band + 1)].mean()) for x in lines]
    return np.asarray(vals) / background


def seam_score(image: "np.ndarray | Any", patch: int, stride: int, offset: tuple[int, int] = (0, 0),
               band: int = 1, factor: int = 1) -> float:
    """Seam score of one image for a patch grid (1.0 = no seam; see the module docstring).

    Args:
        image: (H, W, 3) or (H, W) array, or a PIL image.
        patch: patch size in pixels. stride: patch stride in pixels.
        offset: ``(x, y)`` pixel position of the grid origin.
        band: half-width in pixels of the band around each line (the decoder spreads a latent seam).
        factor: grid unit in pixels (the VAE factor; see ``grid_lines``).

    Returns:
        The score; NaN if the grid has no interior line (image no larger than one patch).
    """
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise PathUpError(f"seam score: expected an (H, W, C) image, got shape {arr.shape}")
    h, w = arr.shape[:2]
    col = np.zeros(w)
    col[1:] = np.abs(np.diff(arr, axis=1)).mean(axis=(0, 2))  # (W,) energy between columns x-1 and x
    row = np.zeros(h)
    row[1:] = np.abs(np.diff(arr, axis=0)).mean(axis=(1, 2))  # (H,) energy between rows y-1 and y
    ratios = np.concatenate([_axis_ratios(col, grid_lines(w, patch, stride, offset[0], factor), band),
                             _axis_ratios(row, grid_lines(h, patch, stride, offset[1], factor), band)])
    return float(ratios.mean()) if ratios.size else float("nan")
