"""The structure of the PathUp paper's Tables 1-4 built from ``pathup evaluate`` results (pure functions).

``pathup.experiments.run`` (``pathup experiment run``) produces these results end to end (training runs,
images, one evaluate JSON per condition, level and seed); this module only reads and reports them
(``pathup experiment report``).

Layout of a results folder (one ``pathup evaluate --out`` JSON per condition, level and seed)::

    RESULTS/table2/PathUp/overview_seed0.json      # any file name ending in .json
    RESULTS/table2/PathUp/patch_seed0.json
    RESULTS/table2/w-o FEL/...
    RESULTS/table3/bicubic/patch.json
    RESULTS/table4/weight map on/patch.json        # run 'pathup evaluate --seam' to get the seam column

Each JSON's ``level`` field puts it in a column group; the per-seed ``runs`` of all files of one
condition and level are pooled, and the table shows mean +- std over them (5 seeds in the paper). Row
order follows ``ROW_ORDER`` (or a file ``order.txt`` with one condition per line in the table folder),
then the remaining conditions alphabetically.
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any, Mapping, Sequence

from pathup.errors import OptionError, PathUpError
from pathup.io import markdown_text, read_text
from pathup.metrics.report import METRIC_COLUMNS, format_mean_std, markdown_table, mean_std, summarize_runs

TABLE_TITLES = {
    "table1": "Table 1: model comparison (overview and patch level)",
    "table2": "Table 2: ablation of patho-align (PA) and the feature entropy loss (FEL)",
    "table3": "Table 3: upscaling 512 -> 2048 against other upscalers (patch level)",
    "table4": "Table 4: latent weight map on / off",
}
ROW_ORDER = {
    "table2": ["PathUp", "w-o FEL", "w-o PA", "w-o PA and FEL"],
    "table3": ["PathUp", "bicubic"],
    "table4": ["weight map off", "weight map on"],
}
LEVEL_ORDER = ("overview", "patch")

# {condition: {level: {"runs": [...], "seam": [per-image scores]}}}
Results = dict[str, dict[str, dict[str, list]]]


def load_results(table_dir: str | Path) -> Results:
    """Read every evaluate JSON under ``table_dir/<condition>/`` and pool the runs per level."""
    table_dir = Path(table_dir)
    out: Results = {}
    for cond_dir in sorted(p for p in table_dir.iterdir() if p.is_dir()):
        for f in sorted(cond_dir.rglob("*.json")):
            try:
                res = json.loads(read_text(f, "result file"))
            except json.JSONDecodeError as err:
                raise PathUpError(f"{f}: not valid JSON ({err})") from None
            if not isinstance(res, dict) or "runs" not in res or "level" not in res:
                continue  # not an evaluate result (e.g. a sidecar)
            runs, seam = _check_result(res, f)
            slot = out.setdefault(cond_dir.name, {}).setdefault(res["level"], {"runs": [], "seam": []})
            slot["runs"].extend(runs)
            slot["seam"].extend(seam)
    return out


def _number(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _check_result(res: dict[str, Any], path: Path) -> tuple[list[dict], list]:
    """The runs and per-image seam scores of an evaluate result; a one-line PathUpError naming the file
    and the field when they are not what ``pathup evaluate`` writes."""
    keys = [k for k, _t, _d in METRIC_COLUMNS]
    runs = res["runs"]
    seam = (res.get("seam") or {}).get("per_image", {}) if isinstance(res.get("seam") or {}, dict) else None
    problem = ("'level' must be text" if not isinstance(res["level"], str) else
               "'runs' must be a list of objects" if not isinstance(runs, list) or not all(isinstance(r, dict)
                                                                                           for r in runs) else
               f"every run needs the numbers {', '.join(keys)}" if not all(
                   k in r and _number(r[k]) for r in runs for k in keys) else
               "'seam.per_image' must map images to numbers" if not isinstance(seam, dict) or not all(
                   _number(v) for v in seam.values()) else None)
    if problem:
        raise PathUpError(f"{path}: not a 'pathup evaluate' result: {problem}")
    return runs, list(seam.values())


def row_order(table: str, conditions: Sequence[str], order_file: Path | None = None) -> list[str]:
    """Conditions in table order: ``order.txt`` if given, else ``ROW_ORDER[table]``, then the rest sorted."""
    preferred = ROW_ORDER.get(table, [])
    if order_file is not None and order_file.is_file():
        preferred = [ln.strip() for ln in order_file.read_text().splitlines() if ln.strip()]
    first = [c for c in preferred if c in conditions]
    return first + sorted(c for c in conditions if c not in first)


def table_markdown(title: str, results: Results, order: Sequence[str] | None = None) -> str:
    """A Markdown table: one row per condition, IP/IR/FID/KID x1000 (+ seam) per level, mean +- std.

    Args:
        title: heading above the table.
        results: ``load_results`` output (or the same structure built in memory).
        order: row order (default: alphabetical).
    """
    if not results:
        raise PathUpError(f"{title}: no results to tabulate")
    levels = [lv for lv in LEVEL_ORDER if any(lv in r for r in results.values())]
    levels += sorted({lv for r in results.values() for lv in r} - set(levels))
    with_seam = {lv: any(r.get(lv, {}).get("seam") for r in results.values()) for lv in levels}
    header = ["condition", "seeds"]
    for lv in levels:
        prefix = f"{lv} " if len(levels) > 1 else ""
        header += [prefix + t for _k, t, _d in METRIC_COLUMNS] + ([prefix + "seam"] if with_seam[lv] else [])
    rows = []
    for cond in order or sorted(results):
        per_level = results[cond]
        n = max((len(per_level[lv]["runs"]) for lv in per_level), default=0)
        row: list[Any] = [cond, n]
        for lv in levels:
            slot = per_level.get(lv, {"runs": [], "seam": []})
            summary = summarize_runs(slot["runs"], [k for k, _t, _d in METRIC_COLUMNS]) if slot["runs"] else {}
            row += [format_mean_std(summary.get(k, {}), d) for k, _t, d in METRIC_COLUMNS]
            if with_seam[lv]:
                row.append(format_mean_std(mean_std(slot["seam"]), 3))
        rows.append(row)
    return f"## {markdown_text(title)}\n\n" + markdown_table(header, rows)


def plot_results(title: str, results: Results, path: str | Path, order: Sequence[str] | None = None) -> Path:
    """Bar chart (mean with std error bars) per metric, conditions side by side, one colour per level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from pathup.io import atomic_path

    order = list(order or sorted(results))
    levels = [lv for lv in LEVEL_ORDER if any(lv in r for r in results.values())]
    levels += sorted({lv for r in results.values() for lv in r} - set(levels))
    fig, axes = plt.subplots(1, len(METRIC_COLUMNS), figsize=(3.2 * len(METRIC_COLUMNS), 3.4))
    width = 0.8 / max(1, len(levels))
    x = np.arange(len(order))
    for ax, (key, name, _d) in zip(axes, METRIC_COLUMNS):
        for j, lv in enumerate(levels):
            stats = [mean_std(r[key] for r in results[c].get(lv, {"runs": []})["runs"]) for c in order]
            means = [s["mean"] for s in stats]
            stds = [s["std"] for s in stats]
            ax.bar(x + (j - (len(levels) - 1) / 2) * width, means, width, yerr=stds, capsize=3, label=lv)
        ax.set_title(name + (" (higher is better)" if key in ("precision", "recall") else " (lower is better)"),
                     fontsize=9)
        ax.set_xticks(x)
        ax.set_xticklabels(order, rotation=30, ha="right", fontsize=8)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120)
    plt.close(fig)
    return path


def build_report(results_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Tables (``tables.md``) and one plot per table (``<table>.png``) for every table folder found.

    Returns:
        ``{"markdown": str, "tables": {table: {"rows": [...], "plot": path}}}``.
    """
    from pathup.io import atomic_write_text

    results_dir, out_dir = Path(results_dir), Path(out_dir)
    if not results_dir.is_dir():
        raise OptionError("results", f"{results_dir}: not a folder")
    parts, info = [], {}
    for table_dir in sorted(p for p in results_dir.iterdir() if p.is_dir()):
        results = load_results(table_dir)
        if not results:
            continue
        order = row_order(table_dir.name, list(results), table_dir / "order.txt")
        title = TABLE_TITLES.get(table_dir.name, table_dir.name)
        parts.append(table_markdown(title, results, order))
        plot = plot_results(title, results, out_dir / f"{table_dir.name}.png", order)
        parts.append(f"\n![{markdown_text(title)}]({urllib.parse.quote(plot.name)})\n")
        info[table_dir.name] = {"rows": order, "plot": str(plot)}
    if not info:
        raise OptionError("results", f"{results_dir}: no <table>/<condition>/*.json evaluate results found")
    md = "# PathUp experiments\n\n" + "\n".join(parts)
    atomic_write_text(out_dir / "tables.md", md)
    return {"markdown": md, "tables": info}


def results_from_mapping(data: Mapping[str, Mapping[str, Sequence[Mapping[str, float]]]]) -> Results:
    """Build the ``Results`` structure from ``{condition: {level: [run, ...]}}`` held in memory."""
    return {c: {lv: {"runs": list(runs), "seam": []} for lv, runs in levels.items()} for c, levels in data.items()}
