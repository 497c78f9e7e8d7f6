"""Kernel Inception Distance (Binkowski et al. 2018): unbiased MMD^2 with a cubic polynomial kernel.

Used for the KID columns (x 1000) of Tables 1-4 of the PathUp paper (section 4.3).
"""

from __future__ import annotations

import numpy as np
import torch

from pathup.errors import OptionError, PathUpError
from pathup.metrics._common import as_features, check_same_dim


def polynomial_kernel(x: torch.Tensor, y: torch.Tensor, degree: int = 3, gamma: float | None = None,
                      coef0: float = 1.0) -> torch.Tensor:
    """k(x, y) = (gamma <x, y> + coef0)^degree, gamma = 1 / D by default.

    Args:
        x: (N, D). y: (M, D).

    Returns:
        (N, M) kernel matrix in float64 (the inner products are taken in the inputs' dtype).
    """
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return ((x @ y.T).to(torch.float64) * gamma + coef0) ** degree  # (N, M), float64


def mmd2_unbiased(k_xx: torch.Tensor, k_yy: torch.Tensor, k_xy: torch.Tensor) -> float:
    """Unbiased MMD^2 estimate from kernel matrices of two samples of equal size m.

    MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
              - 2 sum_{i, j} k(x_i, y_j) / m^2

    (Binkowski et al. 2018, Eq. 2 with the cross term over all pairs, as in their reference code.)
    """
    m = k_xx.shape[0]
    if k_xx.shape != (m, m) or k_yy.shape != (m, m) or k_xy.shape != (m, m):
        raise PathUpError(f"mmd2_unbiased: kernel shapes differ: {tuple(k_xx.shape)}, {tuple(k_yy.shape)}, "
                          f"{tuple(k_xy.shape)}")
    if m < 2:
        raise PathUpError("KID needs at least 2 images per set")
    off_xx = k_xx.sum() - k_xx.diagonal().sum()
    off_yy = k_yy.sum() - k_yy.diagonal().sum()
    return float((off_xx + off_yy) / (m * (m - 1)) - 2.0 * k_xy.sum() / (m * m))


def kid(real: "np.ndarray | torch.Tensor", fake: "np.ndarray | torch.Tensor", subsets: int = 100,
        subset_size: int = 1000, seed: int = 0, degree: int = 3, gamma: float | None = None,
        coef0: float = 1.0) -> tuple[float, float, int]:
    """KID: mean and std of the unbiased MMD^2 over random subsets (Binkowski et al. 2018).

    The subset size adapts to small sets: it is ``min(subset_size, N_real, N_fake)`` (at least 2),
    instead of failing as the reference implementations do. Subsets are drawn without replacement with
    ``numpy.random.RandomState(seed)`` (real subset, then fake subset, per draw), as torch-fidelity does, so
    the two agree exactly for the same seed and sizes.

    Args:
        real: (N_r, D) features. fake: (N_f, D) features.
        subsets: number of random subsets.
        subset_size: requested subset size m.
        seed: random seed of the subset draws.

    Returns:
        ``(mean, std, m)``: mean and (population) std of MMD^2 over the subsets, and the subset size used.
        Multiply by 1000 for the paper's "KID x 1000".
    """
    r = as_features(real, "real", torch.float32)  # inner products in float32, kernel sums in float64
    f = as_features(fake, "fake", torch.float32)
    check_same_dim(r, f)
    if subsets < 1:
        raise OptionError("kid_subsets", f"must be at least 1, got {subsets}")
    if subset_size < 2:
        raise PathUpError(f"subset_size must be at least 2, got {subset_size} "
                          "(KID compares pairs within a subset)")
    m = min(int(subset_size), r.shape[0], f.shape[0])
    if m < 2:
        raise PathUpError(f"KID needs at least 2 images per set, got {r.shape[0]} real and {f.shape[0]} fake")
    rng = np.random.RandomState(seed)
    vals = np.empty(subsets)
    for i in range(subsets):
        a = r[torch.from_numpy(rng.choice(r.shape[0], m, replace=False))]  # (m, D)
        b = f[torch.from_numpy(rng.choice(f.shape[0], m, replace=False))]  # (m, D)
        vals[i] = mmd2_unbiased(polynomial_kernel(a, a, degree, gamma, coef0),
                                polynomial_kernel(b, b, degree, gamma, coef0),
                                polynomial_kernel(a, b, degree, gamma, coef0))
    return float(vals.mean()), float(vals.std()), m
