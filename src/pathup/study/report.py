"""Results of the rater study: Table 5 of the PathUp paper, per-rater means, agreement, CSV export.

Scores run from 1 (surely synthetic) to 10 (surely real). Table 5 reports, per class, the mean +- std
of all scores given to real images and to synthetic images (every rater x image score is one value;
std is the sample standard deviation, ddof = 1). Agreement between raters is Krippendorff's alpha
with the interval metric, which allows raters to skip images (missing values).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from pathup.io import atomic_write_text, markdown_text, plain_text
from pathup.study.db import Rating, StudyDB


@dataclass(frozen=True)
class Stat:
    """Mean, sample std (ddof = 1) and count of a set of scores; nan where undefined."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stat":
        a = np.asarray(values, dtype=np.float64)
        mean = float(a.mean()) if a.size else math.nan
        std = float(a.std(ddof=1)) if a.size > 1 else math.nan
        return cls(mean, std, int(a.size))

    def __str__(self) -> str:
        if self.n == 0:
            return "-"
        if math.isnan(self.std):
            return f"{self.mean:.2f}"
        return f"{self.mean:.2f} +- {self.std:.2f}"


@dataclass(frozen=True)
class ClassRow:
    cls: str
    real: Stat
    synthetic: Stat


@dataclass(frozen=True)
class RaterRow:
    rater: str
    n: int
    real: Stat
    synthetic: Stat
    auc: float  # P(score of a real image > score of a synthetic image), ties count 1/2; 0.5 = cannot tell


@dataclass(frozen=True)
class StudyReport:
    state: str
    n_images: int
    n_raters: int
    n_ratings: int
    classes: list[ClassRow]
    overall: ClassRow
    raters: list[RaterRow]
    alpha: float
    auc: float


def table5(ratings: Sequence[Rating], classes: Sequence[str] | None = None) -> tuple[list[ClassRow], ClassRow]:
    """Table 5: per class the mean +- std of the scores of real and of synthetic images, plus all classes."""
    names = list(classes) if classes is not None else sorted({r.cls for r in ratings})
    rows = [ClassRow(c, Stat.of([r.score for r in ratings if r.cls == c and r.is_real]),
                     Stat.of([r.score for r in ratings if r.cls == c and not r.is_real])) for c in names]
    overall = ClassRow("all", Stat.of([r.score for r in ratings if r.is_real]),
                       Stat.of([r.score for r in ratings if not r.is_real]))
    return rows, overall


def auc_real_vs_synthetic(real_scores: Sequence[float], synthetic_scores: Sequence[float]) -> float:
    """Area under the ROC curve of the score as a real-vs-synthetic detector (Mann-Whitney U / n1 n2).

    0.5 means the raters could not tell the sources apart; 1.0 means every real image scored higher.
    """
    real = np.asarray(real_scores, dtype=np.float64)
    synth = np.asarray(synthetic_scores, dtype=np.float64)
    if real.size == 0 or synth.size == 0:
        return math.nan
    greater = (real[:, None] > synth[None, :]).sum()  # (n_real, n_synth) comparisons
    ties = (real[:, None] == synth[None, :]).sum()
    return float((greater + 0.5 * ties) / (real.size * synth.size))


def krippendorff_alpha_interval(data: np.ndarray) -> float:
    """Krippendorff's alpha with the interval metric, for a (raters, units) matrix with nan = missing.

    alpha = 1 - D_o / D_e over the pairable values (units rated by at least two raters; n of them):
    D_o = 1/n sum_u 1/(m_u - 1) sum_{i != j in u} (v_i - v_j)^2 and
    D_e = 1/(n (n - 1)) sum_{i != j over all pairable values} (v_i - v_j)^2
    (Krippendorff 2011, "Computing Krippendorff's alpha-reliability"). Returns nan when there is no
    pairable value or no variation at all.
    """
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"expected a (raters, units) matrix, got shape {data.shape}")
    d_o_sum, n = 0.0, 0
    pairable: list[np.ndarray] = []
    for u in range(data.shape[1]):
        v = data[:, u]
        v = v[~np.isnan(v)]  # (m_u,)
        m = v.size
        if m < 2:
            continue
        # sum over ordered pairs i != j of (v_i - v_j)^2 = 2 (m sum v^2 - (sum v)^2)
        d_o_sum += 2.0 * (m * np.sum(v * v) - np.sum(v) ** 2) / (m - 1)
        n += m
        pairable.append(v)
    if n < 2:
        return math.nan
    allv = np.concatenate(pairable)  # (n,)
    d_e = 2.0 * (n * np.sum(allv * allv) - np.sum(allv) ** 2) / (n * (n - 1))
    if d_e <= 0:
        return math.nan
    d_o = d_o_sum / n
    return float(1.0 - d_o / d_e)


def reliability_matrix(ratings: Sequence[Rating]) -> tuple[list[str], list[str], np.ndarray]:
    """(raters, image ids, (n_raters, n_images) score matrix with nan where a rater skipped an image)."""
    raters = list(dict.fromkeys(r.rater for r in ratings))
    images = sorted({r.image_id for r in ratings})
    ri = {name: i for i, name in enumerate(raters)}
    ii = {img: j for j, img in enumerate(images)}
    mat = np.full((len(raters), len(images)), np.nan)
    for r in ratings:
        mat[ri[r.rater], ii[r.image_id]] = r.score
    return raters, images, mat


def build_report(db: StudyDB) -> StudyReport:
    """Compute Table 5, per-rater means and agreement from the study database."""
    ratings = db.all_ratings()
    images = db.images()
    classes = db.config.get("classes") or sorted({im.cls for im in images})
    rows, overall = table5(ratings, classes)
    per_rater = []
    for rater in db.raters():
        mine = [r for r in ratings if r.rater == rater.name]
        real = [r.score for r in mine if r.is_real]
        synth = [r.score for r in mine if not r.is_real]
        per_rater.append(RaterRow(rater.name, len(mine), Stat.of(real), Stat.of(synth),
                                  auc_real_vs_synthetic(real, synth)))
    _, _, mat = reliability_matrix(ratings)
    return StudyReport(
        state=db.state, n_images=len(images), n_raters=len(per_rater), n_ratings=len(ratings),
        classes=rows, overall=overall, raters=per_rater, alpha=krippendorff_alpha_interval(mat),
        auc=auc_real_vs_synthetic([r.score for r in ratings if r.is_real],
                                  [r.score for r in ratings if not r.is_real]))


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def markdown_cell(value: object) -> str:
    """A Markdown table cell: terminal-safe, HTML-escaped text with ``|`` escaped (``pathup.io.markdown_text``)."""
    return markdown_text(value)


def csv_cell(value: object) -> object:
    """A CSV cell that a spreadsheet will not run as a formula: text starting with = + - @ tab or CR gets
    a leading ``'`` (OWASP's advice for CSV injection). Numbers are left as they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _fmt(x: float, digits: int = 3) -> str:
    return "-" if math.isnan(x) else f"{x:.{digits}f}"


def format_report(rep: StudyReport) -> str:
    """The report as Markdown tables (Table 5, per-rater means, agreement)."""
    out = io.StringIO()
    out.write(f"Rater study: {rep.n_images} images, {rep.n_raters} raters, {rep.n_ratings} ratings, "
              f"state: {plain_text(rep.state)}\n\n")
    out.write("Table 5: realism scores, 1 (synthetic) .. 10 (real), mean +- std (ddof=1) over rater x image\n\n")
    out.write("| class | real | synthetic | n real | n synthetic |\n|---|---|---|---|---|\n")
    for row in [*rep.classes, rep.overall]:
        out.write(f"| {markdown_cell(row.cls)} | {row.real} | {row.synthetic} | {row.real.n} | {row.synthetic.n} |\n")
    out.write("\nPer rater (AUC: how well the scores separate real from synthetic; 0.5 = chance)\n\n")
    out.write("| rater | ratings | mean real | mean synthetic | AUC |\n|---|---|---|---|---|\n")
    for r in rep.raters:
        out.write(f"| {markdown_cell(r.rater)} | {r.n} | {_fmt(r.real.mean, 2)} | {_fmt(r.synthetic.mean, 2)} | {_fmt(r.auc)} |\n")
    out.write(f"\nAll raters: AUC {_fmt(rep.auc)}; inter-rater agreement, Krippendorff's alpha (interval): "
              f"{_fmt(rep.alpha)}\n")
    if rep.state != "closed":
        out.write("\nNote: the study is still open; scores may change (close it with 'pathup study close').\n")
    return out.getvalue()


CSV_COLUMNS = ("rater", "image_id", "class", "truth", "score", "created", "updated", "source")


def ratings_csv(db: StudyDB) -> str:
    """All ratings, one row per rater and image, with the ground truth and the original file.

    Text cells that a spreadsheet would read as a formula (rater names are typed by people) start with ``'``.
    """
    sources = {im.id: im.source for im in db.images()}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in db.all_ratings():
        writer.writerow([csv_cell(v) for v in (r.rater, r.image_id, r.cls, "real" if r.is_real else "synthetic",
                                                r.score, r.created, r.updated, sources[r.image_id])])
    return buf.getvalue()


def write_csv(db: StudyDB, path: str | Path) -> Path:
    path = Path(path)
    atomic_write_text(path, ratings_csv(db))
    return path
