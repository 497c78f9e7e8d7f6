"""Mean +- std over seeds and Markdown tables: pure functions shared by ``evaluate`` and ``experiment``."""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

# The paper's metric columns: key in a run's results, column title, decimals.
METRIC_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("precision", "IP", 3), ("recall", "IR", 3), ("fid", "FID", 2), ("kid_x1000", "KID x1000", 2))


def mean_std(values: Iterable[float]) -> dict[str, float]:
    """``{"mean", "std", "n"}`` of finite values; std is the sample std (ddof = 1), 0 for one value.

    NaN values (e.g. an undefined seam score) are left out; with none left, mean and std are NaN.
    """
    v = np.asarray([x for x in values if x is not None and not math.isnan(float(x))], dtype=np.float64)
    if v.size == 0:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def summarize_runs(runs: Sequence[Mapping[str, Any]], keys: Sequence[str] | None = None) -> dict[str, dict]:
    """Mean +- std of every numeric key (or of ``keys``) over a list of per-seed result dicts."""
    if keys is None:
        keys = [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                and k != "seed"] if runs else []
    return {k: mean_std(r.get(k, float("nan")) for r in runs) for k in keys}


def format_mean_std(stat: Mapping[str, float], digits: int = 3) -> str:
    """``0.964 +- 0.012`` (``+-`` without std for a single run; ``n/a`` when undefined)."""
    m, s = stat.get("mean", float("nan")), stat.get("std", float("nan"))
    if m is None or math.isnan(m):
        return "n/a"
    if stat.get("n", 2) <= 1 or s is None or math.isnan(s):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table; cells are converted with ``str`` and escaped (``pathup.io.markdown_text``:
    HTML, ``|``, control characters), so user names show as text and a row keeps its columns."""
    from pathup.io import markdown_text

    lines = ["| " + " | ".join(markdown_text(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(markdown_text(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def metrics_row(summary: Mapping[str, Mapping[str, float]],
                columns: Sequence[tuple[str, str, int]] = METRIC_COLUMNS) -> list[str]:
    """The formatted metric cells of one table row from a ``summarize_runs`` result."""
    return [format_mean_std(summary.get(key, {}), digits) for key, _title, digits in columns]
