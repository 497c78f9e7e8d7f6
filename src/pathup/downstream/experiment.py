"""The state shared by the runs of one ``pathup downstream`` call (PathUp paper section 4.7, Table 6):
the real data and its patient splits, the synthetic images each class gets, the settings signature of
each run, and the ViT / ABMIL inputs, prepared once and reused by every seed and arm."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from pathup.config import to_dict
from pathup.downstream.arms import Jitter, training_set, uses_augmentation
from pathup.downstream.config import DownstreamConfig
from pathup.downstream.data import Item, RealData, abmil_bags, load_real, patch_geometry, source_of, vit_items
from pathup.downstream.synthetic import scan_synthetic, select_synthetic, synthetic_bags, synthetic_items
from pathup.downstream.vit import RunOutput
from pathup.io import atomic_write_text

log = logging.getLogger(__name__)

# Options that do not change a run's result (left out of its signature for --resume).
NOT_IN_SIGNATURE = {"out", "device", "num_workers", "cache_mb", "cache_dir", "resume", "seeds", "classifiers",
                    "arms", "embed_batch_size"}


def file_digest(*paths: Path) -> str:
    """SHA-1 of the files' bytes (missing files are skipped)."""
    h = hashlib.sha1()
    for p in paths:
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


class Experiment:
    """State shared by the runs of one ``pathup downstream`` call."""

    def __init__(self, cfg: DownstreamConfig) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        from pathup.device import resolve_device

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
        base = {k: v for k, v in to_dict(cfg).items() if k not in NOT_IN_SIGNATURE}
        self.base_signature = {
            "config": base,
            "dataset": file_digest(self.real.root / "manifest.csv", self.real.root / "dataset.json"),
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
        if cfg.synthetic_patch_px is None or cfg.synthetic_patch_overlap is None:
            auto_size, auto_overlap = patch_geometry(self.real, level)
        size = cfg.synthetic_patch_px or auto_size
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
