"""Reports of the downstream task: a Markdown table shaped like paper Table 6, a bar plot, and
confusion matrices (PNG + JSON)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pathup.downstream.arms import ARM_LABELS
from pathup.io import atomic_write_bytes, atomic_write_text

CLASSIFIER_LABELS = {"vit": "ViT", "abmil": "ABMIL"}


def row_label(classifier: str, arm: str, model_name: str | None = None) -> str:
    """Row name in Table 6 style, e.g. ``ViT (vit_large_patch16_224) + Rand.``."""
    base = CLASSIFIER_LABELS.get(classifier, classifier)
    if model_name:
        base = f"{base} ({model_name})"
    return base + ARM_LABELS[arm]


def fmt(mean: float, std: float) -> str:
    """F1 as a percentage with its std over seeds, e.g. ``55.87 ± 1.62``."""
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def markdown_table(summary: Sequence[dict[str, Any]], classes: Sequence[str], n_seeds: int) -> str:
    """Rows = classifier x arm, columns = per-class F1 and their mean (percent, mean ± std over seeds)."""
    from pathup.metrics.report import markdown_table as table

    rows = [[s["label"], *[fmt(m, d) for m, d in zip(s["f1_mean"], s["f1_std"])],
             fmt(s["mean_f1_mean"], s["mean_f1_std"])] for s in summary]
    title = f"F1 (%) on the test split, mean ± std over {n_seeds} seed(s) (paper Table 6).\n\n"
    return title + table(["Method", *classes, "Mean"], rows)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return buf.getvalue()


def bar_plot(summary: Sequence[dict[str, Any]], classes: Sequence[str], path: str | Path) -> None:
    """Grouped bars: per class (and the mean), one bar per classifier x arm, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = list(classes) + ["Mean"]
    n = len(summary)
    width = 0.8 / max(n, 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(cols) + 0.3 * n), 4.0))
    x = np.arange(len(cols))
    for i, s in enumerate(summary):
        means = 100 * np.array(list(s["f1_mean"]) + [s["mean_f1_mean"]])
        stds = 100 * np.array(list(s["f1_std"]) + [s["mean_f1_std"]])
        ax.bar(x - 0.4 + width * (i + 0.5), means, width, yerr=stds, capsize=2, label=s["label"])
    ax.set_xticks(x)
    ax.set_xticklabels(cols, rotation=30, ha="right")
    ax.set_ylabel("F1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Lesion-subtype classification: real vs. augmented vs. synthetic")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    atomic_write_bytes(path, _png(fig))
    plt.close(fig)


def confusion_files(matrix: np.ndarray, per_seed: dict[int, np.ndarray], classes: Sequence[str], title: str,
                    png: str | Path, js: str | Path) -> None:
    """Write a confusion matrix summed over seeds as PNG (row-normalised colours, counts written)
    and JSON (summed, row-normalised and per-seed counts; rows = true, columns = predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = matrix.sum(axis=1, keepdims=True)
    norm = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=np.float64), where=rows > 0)
    atomic_write_text(js, json.dumps({
        "classes": list(classes), "rows": "true class", "columns": "predicted class",
        "counts": matrix.astype(int).tolist(), "row_normalised": norm.round(6).tolist(),
        "per_seed": {str(s): m.astype(int).tolist() for s, m in per_seed.items()}}, indent=1))
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * k, 0.8 + 0.7 * k))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xticklabels(classes, rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels(classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    atomic_write_bytes(png, _png(fig))
    plt.close(fig)
