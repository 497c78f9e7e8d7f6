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
import hashlib
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from pathup.config import save_config, to_dict
from pathup.downstream.arms import Jitter, training_set, uses_augmentation
from pathup.downstream.config import ARMS, CLASSIFIERS, DownstreamConfig
from pathup.downstream.data import (Item, RealData, abmil_bags, load_real, patch_geometry, scan_synthetic,
                                    select_synthetic, source_of, synthetic_bags, synthetic_items, vit_items)
from pathup.downstream.metrics import confusion, f1_per_class, mean_std
from pathup.downstream.report import bar_plot, confusion_files, markdown_table, row_label
from pathup.downstream.vit import Predictions, RunOutput
from pathup.errors import PathUpError
from pathup.io import atomic_write_text
from pathup.device import resolve_device

log = logging.getLogger(__name__)

# Options that do not change a run's result (left out of its signature for --resume).
_NOT_IN_SIGNATURE = {"out", "device", "num_workers", "cache_mb", "cache_dir", "resume", "seeds", "classifiers",
                     "arms", "embed_batch_size"}


def validate(cfg: DownstreamConfig) -> None:
    """Raise PathUpError for option values that cannot work."""
    if not cfg.classifiers:
        raise PathUpError(f"--classifiers: give at least one of {', '.join(CLASSIFIERS)}")
    if not cfg.arms:
        raise PathUpError(f"--arms: give at least one of {', '.join(ARMS)}")
    for name, values in (("classifiers", cfg.classifiers), ("arms", cfg.arms)):
        if len(set(values)) != len(values):
            raise PathUpError(f"--{name}: repeated value in {values}")
    for name in ("seeds", "patience", "vit_epochs", "abmil_epochs", "vit_batch_size", "abmil_batch_size",
                 "embed_batch_size", "abmil_aug_views", "abmil_hidden", "abmil_attention"):
        if getattr(cfg, name) < 1:
            raise PathUpError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    if "rand" in cfg.arms and "abmil" in cfg.classifiers and cfg.abmil_aug_views < 2:
        raise PathUpError("--abmil-aug-views must be >= 2 for the 'rand' arm (view 0 is the unaugmented patch)")
    if "synthetic" in cfg.arms and cfg.synthetic is None:
        raise PathUpError("the 'synthetic' arm needs --synthetic DIR (a 'pathup generate' output), "
                          "or leave it out with --arms real rand")
    if not 0.0 <= cfg.abmil_dropout < 1.0:
        raise PathUpError(f"--abmil-dropout must be in [0, 1), got {cfg.abmil_dropout}")
    if cfg.num_workers < 0 or cfg.cache_mb < 0:
        raise PathUpError("--num-workers and --cache-mb must be >= 0")
    from pathup.downstream.backbones import check_model_name, check_weights

    if "vit" in cfg.classifiers:
        check_model_name(cfg.vit, "--vit")
        check_weights(cfg.vit_weights, "--vit-weights")
    if "abmil" in cfg.classifiers:
        check_model_name(cfg.abmil_encoder, "--abmil-encoder")
        check_weights(cfg.abmil_encoder_weights, "--abmil-encoder-weights")


def _file_digest(*paths: Path) -> str:
    h = hashlib.sha1()
    for p in paths:
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


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


class _Experiment:
    """State shared by the runs of one ``pathup downstream`` call."""

    def __init__(self, cfg: DownstreamConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.device = resolve_device(cfg.device)
        self.jitter = Jitter(cfg.jitter_brightness, cfg.jitter_contrast, cfg.jitter_saturation, cfg.jitter_hue)
        self.real: RealData = load_real(cfg.data, resplit=cfg.resplit, val_fraction=cfg.val_fraction,
                                        test_fraction=cfg.test_fraction, seed=cfg.seed)
        self.classes = self.real.classes
        for split in ("train", "test"):
            absent = [c for c in self.classes if not any(r["class"] == c for r in self.real.rows[split])]
            if absent:
                log.warning("class(es) %s have no %s images: their test F1 is 0 by convention (sklearn "
                            "zero_division=0) and pulls the mean down", ", ".join(absent), split)
        self.seeds = [cfg.seed + i for i in range(cfg.seeds)]
        self.chosen: dict[str, list[Path]] = {c: [] for c in self.classes}
        self.chosen_vit: dict[str, list[Path]] = {c: [] for c in self.classes}
        if "synthetic" in cfg.arms:
            self._select_synthetic()
        elif cfg.synthetic is not None:
            log.info("--synthetic is ignored: the 'synthetic' arm is not in --arms")
        base = {k: v for k, v in to_dict(cfg).items() if k not in _NOT_IN_SIGNATURE}
        self.base_signature = {
            "config": base,
            "dataset": _file_digest(self.real.root / "manifest.csv", self.real.root / "dataset.json"),
            "splits": {s: sorted({source_of(r) for r in rows}) for s, rows in self.real.rows.items()},
        }
        self._vit = None
        self._abmil = None

    # --- synthetic selection ------------------------------------------------------------------
    def _select_synthetic(self) -> None:
        cfg, classes = self.cfg, self.classes
        n_real = [len({source_of(r) for r in self.real.rows["train"] if r["class"] == c}) for c in classes]
        large = scan_synthetic(cfg.synthetic, classes)
        self.chosen = select_synthetic(large, classes, n_real, cfg.synthetic_per_class, cfg.synthetic_policy, cfg.seed)
        if cfg.synthetic_overviews:
            pool = scan_synthetic(cfg.synthetic, classes, overviews=True)
            self.chosen_vit = select_synthetic(pool, classes, n_real, cfg.synthetic_per_class,
                                               cfg.synthetic_policy, cfg.seed)
        else:
            self.chosen_vit = self.chosen
        atomic_write_text(self.out / "synthetic_selection.json", json.dumps({
            "folder": str(cfg.synthetic), "policy": cfg.synthetic_policy, "per_class": cfg.synthetic_per_class,
            "real_train_images": dict(zip(classes, n_real)),
            "counts": {c: len(self.chosen[c]) for c in classes},
            "large": {c: [str(p) for p in self.chosen[c]] for c in classes},
            "vit": {c: [str(p) for p in self.chosen_vit[c]] for c in classes}}, indent=1))

    def signature(self, classifier: str, arm: str, seed: int) -> str:
        sig = dict(self.base_signature, classifier=classifier, arm=arm, seed=seed)
        if arm == "synthetic":
            chosen = self.chosen_vit if classifier == "vit" else self.chosen
            sig["synthetic"] = {c: [f"{p}|{p.stat().st_mtime_ns}" for p in ps] for c, ps in chosen.items()}
        return hashlib.sha1(json.dumps(sig, sort_keys=True, default=str).encode()).hexdigest()

    def _synthetic_geometry(self, level: str) -> tuple[int, int]:
        """(size, overlap) of the patches cut from synthetic large images: the options, else the
        real ``level`` tiles' geometry."""
        cfg = self.cfg
        auto_size = auto_overlap = 0
        if cfg.synthetic_patch_size is None or cfg.synthetic_patch_overlap is None:
            auto_size, auto_overlap = patch_geometry(self.real, level)
        size = cfg.synthetic_patch_size or auto_size
        overlap = auto_overlap if cfg.synthetic_patch_overlap is None else cfg.synthetic_patch_overlap
        return size, overlap

    # --- classifiers ---------------------------------------------------------------------------
    def _prepare_vit(self):
        from pathup.downstream.backbones import input_stats
        from pathup.downstream.vit import VitData, build_vit

        cfg = self.cfg
        probe = build_vit(cfg.vit, len(self.classes), img_size=cfg.vit_img_size, patch_size=cfg.vit_patch_size,
                          weights=cfg.vit_weights)
        size = cfg.vit_img_size or input_stats(probe)[2]
        del probe
        split = {s: vit_items(self.real, s, cfg.vit_level) for s in ("train", "val", "test")}
        syn = []
        if "synthetic" in cfg.arms:
            if cfg.vit_level == "patch":  # same scale as the real patch tiles: cut the large images
                syn = [Item(t, b.label, b.key, b.patient, "synthetic") for b in
                       synthetic_bags(self.chosen, self.classes, *self._synthetic_geometry("patch")) for t in b.tiles]
            else:
                syn = synthetic_items(self.chosen_vit, self.classes)
        data = VitData(split["train"] + syn + split["val"] + split["test"], size, cfg.cache_mb, cfg.num_workers)
        return data, split, syn

    def _prepare_abmil(self):
        from pathup.downstream.abmil import PatchEmbedder

        cfg = self.cfg
        embedder = PatchEmbedder(cfg.abmil_encoder, cfg.abmil_encoder_weights, cfg.abmil_img_size, self.device,
                                 cfg.embed_batch_size, self.jitter, cfg.cache_dir or self.out / "cache")
        split = {s: abmil_bags(self.real, s, cfg.abmil_level) for s in ("train", "val", "test")}
        syn = []
        if "synthetic" in cfg.arms:
            syn = synthetic_bags(self.chosen, self.classes, *self._synthetic_geometry(cfg.abmil_level))
        all_bags = split["train"] + split["val"] + split["test"] + syn
        embedder.embed([t for b in all_bags for t in b.tiles], 1)
        features = {b.key: embedder.bag_tensor(b, 1) for b in all_bags}
        features_rand = {}
        if "rand" in cfg.arms:
            embedder.embed([t for b in split["train"] for t in b.tiles], cfg.abmil_aug_views)
            features_rand = {b.key: embedder.bag_tensor(b, cfg.abmil_aug_views) for b in split["train"]}
        return embedder.dim, split, syn, features, features_rand

    def run_one(self, classifier: str, arm: str, seed: int) -> RunOutput:
        cfg = self.cfg
        desc = f"{classifier}/{arm}/s{seed}"
        if classifier == "vit":
            from pathup.downstream.vit import train_vit

            if self._vit is None:
                self._vit = self._prepare_vit()
            data, split, syn = self._vit
            return train_vit(data, training_set(arm, split["train"], syn), split["val"], split["test"],
                             name=cfg.vit, n_classes=len(self.classes), seed=seed, augment=uses_augmentation(arm),
                             jitter=self.jitter, img_size=cfg.vit_img_size, patch_size=cfg.vit_patch_size,
                             weights=cfg.vit_weights, lr=cfg.vit_lr, weight_decay=cfg.vit_weight_decay,
                             batch_size=cfg.vit_batch_size, epochs=cfg.vit_epochs, patience=cfg.patience,
                             eval_unit=cfg.vit_eval_unit, device=self.device, desc=desc)
        from pathup.downstream.abmil import train_abmil

        if self._abmil is None:
            self._abmil = self._prepare_abmil()
        dim, split, syn, features, features_rand = self._abmil
        feats = dict(features, **features_rand) if uses_augmentation(arm) else features
        return train_abmil(training_set(arm, split["train"], syn), split["val"], split["test"], feats, in_dim=dim,
                           n_classes=len(self.classes), seed=seed, augment=uses_augmentation(arm),
                           hidden=cfg.abmil_hidden, attention=cfg.abmil_attention, dropout=cfg.abmil_dropout,
                           lr=cfg.abmil_lr, weight_decay=cfg.abmil_weight_decay, batch_size=cfg.abmil_batch_size,
                           epochs=cfg.abmil_epochs, patience=cfg.patience, device=self.device, desc=desc)


def _finished_run(run_dir: Path, signature: str) -> dict[str, Any] | None:
    """The record of a finished run in ``run_dir`` made with the same settings, else None."""
    if not (run_dir / "run.json").is_file() or not (run_dir / "predictions.csv").is_file():
        return None
    try:
        record = json.loads((run_dir / "run.json").read_text())
    except json.JSONDecodeError:
        return None
    if record.get("signature") != signature:
        return None
    log.info("reusing finished run %s", run_dir)
    return record


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
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    exp = _Experiment(cfg)
    classes = exp.classes
    n_classes = len(classes)
    runs: list[dict[str, Any]] = []
    jobs = [(c, a, s) for c in cfg.classifiers for a in cfg.arms for s in exp.seeds]
    for classifier, arm, seed in tqdm(jobs, desc="downstream runs"):
        run_dir = out / "runs" / f"{classifier}_{arm}_s{seed}"
        sig = exp.signature(classifier, arm, seed)
        finished = _finished_run(run_dir, sig) if cfg.resume else None
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
        atomic_write_text(run_dir / "run.json", json.dumps(record, indent=1))
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


__all__ = ["DownstreamConfig", "read_predictions", "resolve_device", "run_downstream", "validate"]
