"""``pathup downstream``: classifiers x arms x seeds, then Table 6, a bar plot and confusion matrices.

Outputs in ``OUT``:

* ``config.yaml``: the resolved config;
* ``synthetic_selection.json``: the synthetic images each class got (synthetic arm);
* ``runs/<classifier>_<arm>_s<seed>/``: ``predictions.csv`` (one row per test image: unit,
  patient, true and predicted class, probabilities) and ``run.json`` (F1, training record);
  finished runs whose settings match are reused (``--resume``);
* ``table.md`` (rows classifier x arm, columns per-class F1 and the mean, in percent),
  ``f1_bars.png``, ``confusion/<classifier>_<arm>.{png,json}`` (summed over seeds);
* ``results.json``: per-run and summary scores (F1 as fractions in [0, 1]).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from pathup.config import save_config, to_dict
from pathup.downstream.config import ARMS, CLASSIFIERS, DownstreamConfig
from pathup.downstream.data import source_of
from pathup.downstream.experiment import Experiment
from pathup.downstream.metrics import confusion, f1_per_class, mean_std
from pathup.downstream.report import bar_plot, confusion_files, markdown_table, row_label
from pathup.downstream.vit import Predictions
from pathup.errors import OptionError, PathUpError
from pathup.io import atomic_write_text, check_apart
from pathup.stages import Marker

log = logging.getLogger(__name__)

def validate(cfg: DownstreamConfig) -> None:
    """Raise PathUpError for option values that cannot work (ranges: the fields' metadata)."""
    from pathup.config import validate as validate_fields

    validate_fields(cfg)
    if not cfg.classifiers:
        raise OptionError("classifiers", f": give at least one of {', '.join(CLASSIFIERS)}")
    if not cfg.arms:
        raise OptionError("arms", f": give at least one of {', '.join(ARMS)}")
    for name, values in (("classifiers", cfg.classifiers), ("arms", cfg.arms)):
        if len(set(values)) != len(values):
            raise PathUpError(f"--{name}: repeated value in {values}")
    if "rand" in cfg.arms and "abmil" in cfg.classifiers and cfg.abmil_aug_views < 2:
        raise OptionError("abmil_aug_views", "must be >= 2 for the 'rand' arm (view 0 is the unaugmented patch)")
    if "synthetic" in cfg.arms and cfg.synthetic is None:
        raise PathUpError("the 'synthetic' arm needs --synthetic DIR (a 'pathup generate' output), "
                          "or leave it out with --arms real rand")
    from pathup.downstream.backbones import check_model_name, check_weights

    if "vit" in cfg.classifiers:
        check_model_name(cfg.vit, "--vit")
        check_weights(cfg.vit_weights, "--vit-weights")
    if "abmil" in cfg.classifiers:
        check_model_name(cfg.abmil_encoder, "--abmil-encoder")
        check_weights(cfg.abmil_encoder_weights, "--abmil-encoder-weights")


def _write_predictions(path: Path, pred: Predictions, classes: list[str]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["unit", "patient", "true", "pred", "true_class", "pred_class"] + [f"prob_{c}" for c in classes])
    for u, p, y, yp, pr in zip(pred.units, pred.patients, pred.y_true, pred.y_pred, pred.probs):
        w.writerow([u, p, int(y), int(yp), classes[int(y)], classes[int(yp)]] + [f"{v:.6f}" for v in pr])
    atomic_write_text(path, buf.getvalue())


def read_predictions(path: str | Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(y_true, y_pred, patients) from a run's ``predictions.csv``."""
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
    return (np.array([int(r["true"]) for r in rows]), np.array([int(r["pred"]) for r in rows]),
            [r["patient"] for r in rows])


def finished_run(run_dir: Path, signature: str) -> dict[str, Any] | None:
    """The record (``run.json``) of a finished run in ``run_dir`` made with the same settings
    ``signature``, with its ``predictions.csv`` present; else None (``pathup.stages.Marker``)."""
    record = Marker(run_dir / "run.json").matching({"signature": signature}, requires=[run_dir / "predictions.csv"])
    if record is None:
        return None
    log.info("reusing finished run %s", run_dir)
    return {k: v for k, v in record.items() if k != "fingerprint"}


def summarize(runs: list[dict[str, Any]], labels: dict[str, dict[str, str]]) -> list[dict[str, Any]]:
    """Per classifier x arm (in the order of ``labels``): per-class F1 and mean F1, mean and
    sample std over the seeds' runs (``labels[classifier][arm]`` names the row)."""
    summary = []
    for classifier, arms in labels.items():
        for arm, label in arms.items():
            rs = [r for r in runs if r["classifier"] == classifier and r["arm"] == arm]
            f1 = np.array([r["f1"] for r in rs])  # (S, C)
            means = f1.mean(axis=1)  # (S,)
            f1_mean, f1_std = mean_std(f1)
            m_mean, m_std = mean_std(means[:, None])
            summary.append({"classifier": classifier, "arm": arm, "label": label, "seeds": [r["seed"] for r in rs],
                            "f1_mean": f1_mean.tolist(), "f1_std": f1_std.tolist(),
                            "mean_f1_mean": float(m_mean[0]), "mean_f1_std": float(m_std[0]),
                            "mean_f1_per_seed": means.tolist()})
    return summary


def run_downstream(cfg: DownstreamConfig) -> dict[str, Any]:
    """Train every classifier x arm x seed, score it on the patient-level test split and write the reports.

    Returns:
        The content of ``OUT/results.json``.
    """
    validate(cfg)
    out = Path(cfg.out)
    check_apart(cfg.data, out, "--data")
    check_apart(cfg.synthetic, out, "--synthetic")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    exp = Experiment(cfg)
    classes = exp.classes
    n_classes = len(classes)
    runs: list[dict[str, Any]] = []
    jobs = [(c, a, s) for c in cfg.classifiers for a in cfg.arms for s in exp.seeds]
    for classifier, arm, seed in tqdm(jobs, desc="downstream runs"):
        run_dir = out / "runs" / f"{classifier}_{arm}_s{seed}"
        sig = exp.signature(classifier, arm, seed)
        finished = finished_run(run_dir, sig) if cfg.resume else None
        if finished is not None:
            runs.append(finished)
            continue
        result = exp.run_one(classifier, arm, seed)
        pred = result.test
        _write_predictions(run_dir / "predictions.csv", pred, classes)
        f1 = f1_per_class(pred.y_true, pred.y_pred, n_classes)
        record = {
            "classifier": classifier, "arm": arm, "seed": seed, "signature": sig,
            "f1": f1.tolist(), "mean_f1": float(f1.mean()),
            "confusion": confusion(pred.y_true, pred.y_pred, n_classes).tolist(),
            "n_test": len(pred.units), "n_train": result.n_train, "n_train_synthetic": result.n_train_synthetic,
            "best_epoch": result.fit.best_epoch, "epochs_run": result.fit.epochs_run,
            "val_f1": result.fit.best_f1, "val_loss": result.fit.best_loss, "history": result.fit.history,
            "predictions": str((run_dir / "predictions.csv").relative_to(out)),
        }
        Marker(run_dir / "run.json").write({"signature": sig}, **record)
        runs.append(record)

    labels = {c: {a: row_label(c, a, {"vit": cfg.vit, "abmil": cfg.abmil_encoder}[c]) for a in cfg.arms}
              for c in cfg.classifiers}
    summary = summarize(runs, labels)
    (out / "confusion").mkdir(exist_ok=True)
    for s in summary:
        per_seed = {r["seed"]: np.array(r["confusion"]) for r in runs
                    if (r["classifier"], r["arm"]) == (s["classifier"], s["arm"])}
        name = f"{s['classifier']}_{s['arm']}"
        confusion_files(sum(per_seed.values()), per_seed, classes, f"{s['label']}, sum over {len(per_seed)} seed(s)",
                        out / "confusion" / f"{name}.png", out / "confusion" / f"{name}.json")
    table = markdown_table(summary, classes, len(exp.seeds))
    atomic_write_text(out / "table.md", table)
    bar_plot(summary, classes, out / "f1_bars.png")
    results = {
        "classes": classes, "seeds": exp.seeds, "device": str(exp.device),
        "splits": {s: {"patients": len(exp.real.patients(s)), "images": len({source_of(r) for r in rows})}
                   for s, rows in exp.real.rows.items()},
        "synthetic_counts": {c: len(exp.chosen[c]) for c in classes},
        "summary": summary,
        "runs": [{k: v for k, v in r.items() if k != "history"} for r in runs],
        "config": to_dict(cfg),
    }
    atomic_write_text(out / "results.json", json.dumps(results, indent=1))
    log.info("wrote %s", out / "table.md")
    return results


__all__ = ["DownstreamConfig", "read_predictions", "run_downstream", "validate"]
