"""Scores of the downstream task: per-class F1 (paper Table 6), confusion matrices, seed statistics."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def f1_per_class(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """F1 of every class (``sklearn.metrics.f1_score(average=None)``, 0 where undefined), (C,)."""
    from sklearn.metrics import f1_score

    return np.asarray(f1_score(np.asarray(y_true), np.asarray(y_pred), labels=list(range(n_classes)),
                               average=None, zero_division=0), dtype=np.float64)


def confusion(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """Confusion matrix, rows = true class, columns = predicted class, (C, C) int."""
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(np.asarray(y_true), np.asarray(y_pred), labels=list(range(n_classes)))


def mean_std(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sample standard deviation (ddof=1; 0 for a single seed) over axis 0."""
    values = np.asarray(values, dtype=np.float64)
    std = values.std(axis=0, ddof=1) if values.shape[0] > 1 else np.zeros(values.shape[1:])
    return values.mean(axis=0), std


def validation_score(y_true: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """(macro F1 over the classes present in ``y_true``, mean negative log-likelihood).

    Early stopping keeps the epoch with the highest F1, ties broken by the lower loss.
    """
    from sklearn.metrics import f1_score

    y_true = np.asarray(y_true)
    pred = probs.argmax(axis=1)
    f1 = float(f1_score(y_true, pred, labels=sorted(set(y_true.tolist())), average="macro", zero_division=0))
    nll = float(-np.log(np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, None)).mean())
    return f1, nll
