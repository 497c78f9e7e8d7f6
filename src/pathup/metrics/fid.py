"""Frechet distance between Gaussians fitted to two feature sets (FID, Heusel et al. 2017).

Used for the FID columns of Tables 1-4 of the PathUp paper (section 4.3).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch

from pathup.errors import PathUpError
from pathup.metrics._common import as_features, check_same_dim


def feature_statistics(features: "np.ndarray | torch.Tensor") -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (ddof = 1) of a feature matrix, in float64.

    Args:
        features: (N, D) features, N >= 2.

    Returns:
        ``(mu, sigma)`` with shapes (D,) and (D, D).
    """
    x = as_features(features, "features")  # (N, D) float64
    if x.shape[0] < 2:
        raise PathUpError(f"FID needs at least 2 images per set, got {x.shape[0]}")
    mu = x.mean(0)  # (D,)
    xc = x - mu  # (N, D)
    sigma = (xc.T @ xc) / (x.shape[0] - 1)  # (D, D)
    return mu.numpy(), sigma.numpy()


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigenvalues clipped at 0)."""
    w, v = scipy.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

    d^2 = |mu1 - mu2|^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)).

    ``Tr (sigma1 sigma2)^(1/2)`` is computed as ``Tr (s1^(1/2) sigma2 s1^(1/2))^(1/2)`` (same eigenvalues,
    but a symmetric PSD matrix), which is stable for the singular covariances of N < D samples.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise PathUpError(f"frechet_distance: shapes do not match: mu {mu1.shape}/{mu2.shape}, "
                          f"sigma {sigma1.shape}/{sigma2.shape}")
    s1h = _sqrtm_psd(sigma1)  # (D, D)
    m = s1h @ sigma2 @ s1h  # (D, D), symmetric PSD
    eig = scipy.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def fid(real: "np.ndarray | torch.Tensor", fake: "np.ndarray | torch.Tensor") -> float:
    """FID between two feature matrices (N_r, D) and (N_f, D) (Heusel et al. 2017).

    Symmetric in its arguments. Reported in the paper's Tables 1-4 without scaling.

    When a set has fewer samples than dimensions, the covariances have low rank and
    ``Tr (sigma1 sigma2)^(1/2)`` equals the nuclear norm of ``Xc Yc^T / sqrt((N_r - 1)(N_f - 1))`` (Xc, Yc
    the centred features: the eigenvalues of sigma1 sigma2 are the squared singular values of that
    N_r x N_f matrix), which avoids D x D eigendecompositions. Otherwise ``frechet_distance`` is used.
    """
    r = as_features(real, "real")  # (N_r, D) float64
    f = as_features(fake, "fake")  # (N_f, D) float64
    check_same_dim(r, f)
    n1, n2, d = r.shape[0], f.shape[0], r.shape[1]
    if min(n1, n2) < 2:
        raise PathUpError(f"FID needs at least 2 images per set, got {n1} real and {n2} fake")
    if min(n1, n2) >= d:
        return frechet_distance(*feature_statistics(r), *feature_statistics(f))
    mu1, mu2 = r.mean(0), f.mean(0)  # (D,)
    xc, yc = r - mu1, f - mu2  # (N_r, D), (N_f, D)
    tr1 = float((xc * xc).sum()) / (n1 - 1)
    tr2 = float((yc * yc).sum()) / (n2 - 1)
    tr_covmean = float(torch.linalg.svdvals(xc @ yc.T).sum()) / float(np.sqrt((n1 - 1) * (n2 - 1)))  # (N_r, N_f)
    return float(((mu1 - mu2) ** 2).sum()) + tr1 + tr2 - 2.0 * tr_covmean
