"""Rater study report: Table 5, per-rater means, AUC and Krippendorff's alpha against hand-computed
values, published values and independent reference implementations."""

from __future__ import annotations

import csv
import io
import math
from itertools import permutations

import numpy as np
import pytest

from pathup.sample_data import breakhis_dir
from pathup.study.create import create_study
from pathup.study.db import Rating
from pathup.study.report import (Stat, auc_real_vs_synthetic, build_report, format_report,
                                 krippendorff_alpha_interval, ratings_csv, reliability_matrix, table5, write_csv)
from study_util import make_synthetic_dir

nan = math.nan


def test_alpha_published_example():
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", the 4 observers x 12 units
    # example with missing values: interval alpha = 0.849.
    data = np.array([
        [1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
        [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan],
    ])
    assert krippendorff_alpha_interval(data) == pytest.approx(0.849, abs=5e-4)


def test_alpha_hand_computed():
    # Two raters, three images: (1, 1), (2, 2), (3, 4). Pairable values n = 6.
    # D_o = (0 + 0 + 2 * 1^2 / 1) / 6 = 1/3; D_e = 2 (6 * 35 - 13^2) / (6 * 5) = 82/30; alpha = 1 - 10/82 = 36/41.
    data = np.array([[1, 2, 3], [1, 2, 4]], dtype=float)
    assert krippendorff_alpha_interval(data) == pytest.approx(36 / 41, abs=1e-12)
    assert krippendorff_alpha_interval(np.array([[1, 5, 9], [1, 5, 9]], dtype=float)) == pytest.approx(1.0)
    # A unit with one value only is not pairable and is left out.
    with_single = np.array([[1, 2, 3, 7], [1, 2, 4, nan]])
    assert krippendorff_alpha_interval(with_single) == pytest.approx(36 / 41, abs=1e-12)
    assert math.isnan(krippendorff_alpha_interval(np.array([[3, 3], [3, 3]], dtype=float)))  # no variation
    assert math.isnan(krippendorff_alpha_interval(np.array([[1, nan], [nan, 2]])))  # nothing pairable


def _alpha_by_coincidence_matrix(data: np.ndarray) -> float:
    """Independent reference: Krippendorff's alpha from the coincidence matrix o_ck, interval delta^2."""
    values = sorted({v for v in data.ravel() if not np.isnan(v)})
    index = {v: i for i, v in enumerate(values)}
    o = np.zeros((len(values), len(values)))
    for u in range(data.shape[1]):
        col = [v for v in data[:, u] if not np.isnan(v)]
        if len(col) < 2:
            continue
        for a, b in permutations(range(len(col)), 2):
            o[index[col[a]], index[col[b]]] += 1.0 / (len(col) - 1)
    n_c = o.sum(axis=1)
    n = n_c.sum()
    v = np.array(values)
    delta2 = (v[:, None] - v[None, :]) ** 2
    d_o = (o * delta2).sum()
    d_e = (np.outer(n_c, n_c) * delta2).sum() / (n - 1)
    return 1.0 - d_o / d_e


def test_alpha_matches_coincidence_matrix_reference():
    rng = np.random.default_rng(0)
    for trial in range(5):
        truth = rng.integers(1, 11, size=15).astype(float)
        data = np.clip(truth[None, :] + rng.integers(-2, 3, size=(4, 15)), 1, 10).astype(float)
        data[rng.random(data.shape) < 0.2] = nan
        assert krippendorff_alpha_interval(data) == pytest.approx(_alpha_by_coincidence_matrix(data), abs=1e-10)


def test_alpha_matches_the_krippendorff_package():
    """The krippendorff package (Castro 2017) as the oracle: interval alpha on (raters, units) matrices with
    nan = missing, including integer ratings, missing cells, units rated once and unequal rater counts."""
    krippendorff = pytest.importorskip("krippendorff")
    published = np.array([
        [1, 2, 3, 3, 2, 1, 4, 1, 2, nan, nan, nan],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, nan, 3],
        [nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, nan],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, nan]])
    matrices = [published, np.array([[1, 2, 3, nan], [1, 2, 4, 5], [2, 2, 3, 5]], dtype=float)]
    rng = np.random.default_rng(13)
    for raters, units, missing in ((2, 10, 0.0), (3, 25, 0.3), (5, 40, 0.5), (8, 12, 0.2)):
        truth = rng.integers(1, 6, size=units).astype(float)
        data = np.clip(truth[None, :] + rng.integers(-1, 2, size=(raters, units)), 1, 5).astype(float)
        data[rng.random(data.shape) < missing] = nan
        matrices.append(data)
    for data in matrices:
        expected = krippendorff.alpha(reliability_data=data, level_of_measurement="interval")
        assert krippendorff_alpha_interval(data) == pytest.approx(expected, abs=1e-10)


def test_auc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    real, synth = rng.integers(1, 11, 37), rng.integers(1, 11, 23)
    labels = np.r_[np.ones(real.size), np.zeros(synth.size)]
    assert auc_real_vs_synthetic(real, synth) == pytest.approx(roc_auc_score(labels, np.r_[real, synth]))
    assert auc_real_vs_synthetic([9, 10], [1, 2]) == 1.0
    assert auc_real_vs_synthetic([5, 5], [5, 5]) == 0.5
    assert math.isnan(auc_real_vs_synthetic([], [1]))


def test_stat_and_table5_hand_values():
    ratings = [Rating("a", f"i{k}", "A", True, s, "", "") for k, s in enumerate([8, 9, 10, 7])]
    ratings += [Rating("a", f"j{k}", "A", False, s, "", "") for k, s in enumerate([2, 4])]
    ratings += [Rating("b", "m", "B", True, 6, "", "")]
    rows, overall = table5(ratings, ["A", "B", "C"])
    assert rows[0].real.mean == 8.5 and rows[0].real.std == pytest.approx(math.sqrt(5 / 3))  # ddof = 1
    assert (rows[0].synthetic.mean, rows[0].synthetic.std) == (3.0, pytest.approx(math.sqrt(2)))
    assert rows[1].real.n == 1 and math.isnan(rows[1].real.std) and rows[1].synthetic.n == 0
    assert rows[2].real.n == 0 and str(rows[2].real) == "-"
    assert overall.real.mean == pytest.approx(40 / 5) and overall.synthetic.n == 2
    assert str(Stat.of([8, 9, 10, 7])) == "8.50 +- 1.29"


def test_report_from_a_study_matches_numpy(tmp_path):
    db = create_study(breakhis_dir(), make_synthetic_dir(tmp_path / "syn", per_class=2), 2, tmp_path / "s.db",
                      seed=0, size=64)
    images = db.images()
    tokens = [db.add_rater(name) for name in ("ann", "bob", "cy")]
    raters = db.raters()
    rng = np.random.default_rng(3)
    given = {}
    for r in raters:
        for im in images:
            if r.name == "cy" and rng.random() < 0.3:
                continue  # cy skips some images
            score = int(np.clip(rng.normal(7 if im.is_real else 4, 2), 1, 10))
            db.rate(r.id, im.id, score)
            given[(r.name, im.id)] = score
    assert tokens and len(db.all_ratings()) == len(given)

    rep = build_report(db)
    truth = {im.id: (im.cls, im.is_real) for im in images}
    for row in rep.classes:
        for is_real, stat in ((True, row.real), (False, row.synthetic)):
            vals = np.array([s for (n, i), s in given.items() if truth[i] == (row.cls, is_real)], dtype=float)
            assert stat.n == vals.size > 0
            assert stat.mean == pytest.approx(vals.mean()) and stat.std == pytest.approx(vals.std(ddof=1))
    for rr in rep.raters:
        real = [s for (n, i), s in given.items() if n == rr.rater and truth[i][1]]
        synth = [s for (n, i), s in given.items() if n == rr.rater and not truth[i][1]]
        assert rr.n == len(real) + len(synth)
        assert rr.real.mean == pytest.approx(np.mean(real)) and rr.synthetic.mean == pytest.approx(np.mean(synth))
        assert rr.auc == pytest.approx(auc_real_vs_synthetic(real, synth))
    names, ids, mat = reliability_matrix(db.all_ratings())
    assert mat.shape == (3, len(images)) and np.isnan(mat).sum() == 3 * len(images) - len(given)
    assert rep.alpha == pytest.approx(_alpha_by_coincidence_matrix(mat))

    text = format_report(rep)
    assert "| ductal_carcinoma |" in text and "+-" in text and "Krippendorff" in text and "still open" in text

    rows = list(csv.DictReader(io.StringIO(ratings_csv(db))))
    assert len(rows) == len(given)
    for row in rows:
        assert int(row["score"]) == given[(row["rater"], row["image_id"])]
        cls, is_real = truth[row["image_id"]]
        assert row["class"] == cls and row["truth"] == ("real" if is_real else "synthetic")
    out = write_csv(db, tmp_path / "out" / "ratings.csv")
    assert out.read_text() == ratings_csv(db)
