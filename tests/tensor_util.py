"""Helpers shared by the sampling tests."""

from __future__ import annotations


def close(a, b, tol: float = 1e-5) -> bool:
    """``a`` equals ``b`` up to float32 round-off, which scales with the values' size: the largest absolute
    difference is at most ``tol`` times ``max(1, max |b|)``."""
    return (a - b).abs().max().item() <= tol * max(1.0, b.abs().max().item())
