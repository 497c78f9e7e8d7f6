"""Input checks shared by the metric functions."""

from __future__ import annotations

import numpy as np
import torch

from pathup.errors import PathUpError


def as_features(x: "np.ndarray | torch.Tensor", name: str, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Return ``x`` as a 2-D CPU tensor of ``dtype``; raise PathUpError on a wrong shape or non-finite values."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if t.ndim != 2:
        raise PathUpError(f"{name}: expected a feature matrix (N, D), got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise PathUpError(f"{name}: the feature matrix is empty (no images)")
    t = t.detach().to("cpu", dtype)
    if not bool(torch.isfinite(t).all()):
        raise PathUpError(f"{name}: features contain NaN or infinite values")
    return t


def check_same_dim(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape[1] != b.shape[1]:
        raise PathUpError(f"real and fake features differ in dimension: {a.shape[1]} vs {b.shape[1]} "
                          "(were they extracted with the same network?)")
