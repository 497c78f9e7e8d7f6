"""Improved Precision and Recall (Kynkaanniemi et al. 2019) on feature matrices, in bounded memory.

The paper's IP and IR columns (PathUp section 4.3, k = 3). Each set's manifold is the union of balls
around its samples with radius the distance to the sample's k-th nearest neighbour in the same set.
IP is the share of fake samples inside the real manifold; IR the share of real samples inside the fake
manifold. All pairwise distances are computed in ``chunk_size`` x ``chunk_size`` blocks, so memory is
O(chunk_size^2 + N) however large the sets are (10,000 x 10,000 works).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from pathup.errors import PathUpError
from pathup.metrics._common import as_features, check_same_dim


def pairwise_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the rows of ``a`` (N, D) and ``b`` (M, D) -> (N, M)."""
    return torch.cdist(a, b)  # (N, M)


def iter_distance_blocks(a: torch.Tensor, b: torch.Tensor, chunk_size: int
                         ) -> Iterator[tuple[slice, slice, torch.Tensor]]:
    """Yield ``(rows, cols, d)`` with ``d = pairwise_distances(a[rows], b[cols])`` over all blocks."""
    if chunk_size < 1:
        raise PathUpError(f"chunk size must be >= 1, got {chunk_size}")
    for i in range(0, a.shape[0], chunk_size):
        rows = slice(i, min(i + chunk_size, a.shape[0]))
        for j in range(0, b.shape[0], chunk_size):
            cols = slice(j, min(j + chunk_size, b.shape[0]))
            yield rows, cols, pairwise_distances(a[rows], b[cols])  # (r, c)


def pairwise_distances_chunked(a: torch.Tensor, b: torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """The full (N, M) distance matrix assembled from blocks (for tests and small sets only)."""
    out = torch.empty(a.shape[0], b.shape[0], dtype=a.dtype)
    for rows, cols, d in iter_distance_blocks(a, b, chunk_size):
        out[rows, cols] = d
    return out


def knn_radii(x: torch.Tensor, k: int = 3, chunk_size: int = 4096) -> torch.Tensor:
    """Distance of every sample to its k-th nearest neighbour in the same set (itself excluded).

    Keeps only the k + 1 smallest distances per row while scanning column blocks (the sample itself is
    the smallest, at distance 0), so memory stays O(chunk_size^2).

    Args:
        x: (N, D) features, N > k.

    Returns:
        (N,) radii.
    """
    n = x.shape[0]
    if n <= k:
        raise PathUpError(f"precision/recall with k = {k} needs more than {k} images per set, got {n}")
    best = torch.full((n, k + 1), float("inf"), dtype=x.dtype)  # (N, k+1) running smallest distances
    for rows, _cols, d in iter_distance_blocks(x, x, chunk_size):
        cand = torch.cat([best[rows], d], dim=1)  # (r, k+1+c)
        best[rows] = cand.topk(k + 1, dim=1, largest=False).values  # (r, k+1), ascending
    return best[:, k]  # (N,)


def precision_recall(real: "np.ndarray | torch.Tensor", fake: "np.ndarray | torch.Tensor", k: int = 3,
                     chunk_size: int = 4096) -> tuple[float, float]:
    """Improved Precision (IP) and Recall (IR) of Kynkaanniemi et al. 2019 (their Eq. 1-3).

    f(phi, Phi) = 1 if ||phi - phi'|| <= ||phi' - NN_k(phi')|| for some phi' in Phi, else 0;
    precision = mean over fake phi_g of f(phi_g, Phi_real); recall = mean over real phi_r of
    f(phi_r, Phi_fake).

    Args:
        real: (N_r, D) features of real images. fake: (N_f, D) features of generated images.
        k: neighbourhood size (the paper uses 3).
        chunk_size: rows/columns per distance block; peak extra memory is about
            2 * chunk_size^2 * 4 bytes.

    Returns:
        ``(precision, recall)``, each in [0, 1].
    """
    r = as_features(real, "real", torch.float32)
    f = as_features(fake, "fake", torch.float32)
    check_same_dim(r, f)
    r_real = knn_radii(r, k, chunk_size)  # (N_r,)
    r_fake = knn_radii(f, k, chunk_size)  # (N_f,)
    fake_in_real = torch.zeros(f.shape[0], dtype=torch.bool)  # (N_f,)
    real_in_fake = torch.zeros(r.shape[0], dtype=torch.bool)  # (N_r,)
    for rows, cols, d in iter_distance_blocks(f, r, chunk_size):  # d: (fake rows, real cols)
        fake_in_real[rows] |= (d <= r_real[cols][None, :]).any(dim=1)
        real_in_fake[cols] |= (d <= r_fake[rows][:, None]).any(dim=0)
    return float(fake_in_real.float().mean()), float(real_in_fake.float().mean())
