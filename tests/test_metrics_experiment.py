"""Tables 1-4 and plots from evaluate results (pure functions; hand-computed mean +- std)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pathup.cli import main
from pathup.errors import PathUpError
from pathup.experiments.tables import build_report, load_results, results_from_mapping, row_order, table_markdown
from pathup.metrics.report import format_mean_std, markdown_table, mean_std


def _run(seed, p, r, f, k):
    return {"seed": seed, "precision": p, "recall": r, "fid": f, "kid_x1000": k}


def _write(path, level, runs, seam=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    res = {"level": level, "runs": runs}
    if seam is not None:
        res["seam"] = {"per_image": {f"img{i}.png": s for i, s in enumerate(seam)}}
    path.write_text(json.dumps(res))


def test_mean_std_and_formatting():
    s = mean_std([0.95, 0.97, 0.96])
    assert s["mean"] == pytest.approx(0.96) and s["std"] == pytest.approx(0.01) and s["n"] == 3  # ddof = 1
    assert format_mean_std(s, 3) == "0.960 ± 0.010"
    assert format_mean_std(mean_std([45.359]), 2) == "45.36"
    assert format_mean_std(mean_std([float("nan")])) == "n/a"
    assert markdown_table(["a", "b"], [[1, "x|y"]]) == "| a | b |\n|---|---|\n| 1 | x\\|y |\n"


def test_table_pools_seeds_across_files_and_orders_rows(tmp_path):
    t2 = tmp_path / "res" / "table2"
    for seed, (p, f) in enumerate([(0.96, 45.0), (0.97, 47.0)]):
        _write(t2 / "PathUp" / f"overview_seed{seed}.json", "overview", [_run(seed, p, 0.6, f, 8.0)])
        _write(t2 / "PathUp" / f"patch_seed{seed}.json", "patch", [_run(seed, p - 0.01, 0.61, f + 20, 11.0)])
    _write(t2 / "w-o FEL" / "overview.json", "overview", [_run(0, 0.9, 0.5, 60.0, 9.0), _run(1, 0.92, 0.52, 64.0, 9.5)])
    (t2 / "PathUp" / "gen0.json").write_text(json.dumps({"seed": 0, "options": {}}))  # a sidecar: ignored
    res = load_results(t2)
    assert len(res["PathUp"]["overview"]["runs"]) == 2 and set(res["w-o FEL"]) == {"overview"}
    order = row_order("table2", list(res))
    assert order == ["PathUp", "w-o FEL"]
    md = table_markdown("T2", res, order)
    lines = md.splitlines()
    assert lines[2].startswith("| condition | seeds | overview IP | overview IR | overview FID")
    fid_std = np.std([45.0, 47.0], ddof=1)
    assert f"46.00 ± {fid_std:.2f}" in lines[4]
    assert "| w-o FEL | 2 | 0.910 ± 0.014 |" in lines[5]
    assert lines[5].endswith("| n/a | n/a | n/a | n/a |")  # no patch-level results for this row


def test_report_with_seam_column_plot_and_cli(tmp_path, capsys):
    t4 = tmp_path / "res" / "table4"
    _write(t4 / "weight map on" / "m.json", "patch", [_run(0, 0.96, 0.59, 45.0, 8.1)], seam=[1.01, 0.99])
    _write(t4 / "weight map off" / "m.json", "patch", [_run(0, 0.94, 0.58, 76.0, 9.8)], seam=[1.5, 1.7])
    rep = build_report(tmp_path / "res", tmp_path / "out")
    assert rep["tables"]["table4"]["rows"] == ["weight map off", "weight map on"]
    md = (tmp_path / "out" / "tables.md").read_text()
    assert "| seam |" in md and "1.600 ± 0.141" in md and "1.000 ± 0.014" in md
    from PIL import Image

    with Image.open(tmp_path / "out" / "table4.png") as im:
        assert im.size[0] > 400
    assert main(["experiment", "--results", str(tmp_path / "res"), "--out", str(tmp_path / "out2")]) == 0
    assert "Table 4" in capsys.readouterr().out
    with pytest.raises(PathUpError, match="no <table>/<condition>"):
        build_report(tmp_path / "out", tmp_path / "out3")


def test_results_from_mapping_in_memory():
    res = results_from_mapping({"bicubic": {"patch": [_run(0, 0.6, 0.4, 150.0, 40.0)]}})
    assert "| bicubic | 1 | 0.600 | 0.400 | 150.00 | 40.00 |" in table_markdown("T3", res)
