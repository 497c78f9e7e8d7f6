"""Input checks shared by the metric functions, and the base class of the feature extractors (here, below
``features``, ``domain`` and ``foundation``, which all subclass it)."""

from __future__ import annotations

from pathlib import Path

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


def file_id(path: str | Path) -> str:
    """An identity of a weights file that changes when it is replaced or rewritten (path, size, mtime)."""
    p = Path(path)
    st = p.stat()
    return f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}"


class FeatureExtractor(torch.nn.Module):
    """Base class: ``forward(images)`` maps (B, 3, H, W) uint8 to (B, D) float32.

    Attributes:
        cache_id: a string that changes whenever the features would (name, weights file, input size).
        dim: the feature dimension D.
        comparable: whether numbers from this extractor are comparable with the literature.
    """

    cache_id: str = ""
    dim: int = 0
    comparable: bool = False

    @property
    def device(self) -> torch.device:
        for t in (*self.parameters(), *self.buffers()):
            return t.device
        return torch.device("cpu")
