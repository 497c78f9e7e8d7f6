"""Measuring a model while it trains, on real tiles it does not train on.

Two measurements, both against the dataset's held-out split (``--val-split``: ``val`` when the dataset has
one, else ``test``; the tiles of other patients or slides than the training tiles):

* **The autoencoder's ceiling**, after the autoencoder stage of a model built from scratch
  (``pathup.metrics.judge.autoencoder_report``; ``pathup evaluate --reconstruction`` does the same for any
  model): no generated image can hold more than its decoder gives back.
* **Class-following**, every ``--val-every`` steps: a few images per class from the EMA weights, their
  class-consistency beside the real ceiling and their Frechet distance to the held-out tiles
  (``pathup.metrics.judge.Judge``). ``--max-steps auto`` stops when this stops improving, and the best EMA
  weights are what the run saves.

Features: ``--val-features`` (default ``auto``: a domain encoder trained on the run's training tiles,
``pathup.metrics.domain``, which sees texture and structure) and, beside them, ``color-stats`` (colour
histograms, which cannot see blur): reported side by side so that a blur in the right tint shows.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from pathup.metrics.judge import (Judge, RealSet, autoencoder_report, images_to_uint8, reconstruction_consistency,
                                  report_lines, save_png, validation_features)
from pathup.metrics.reconstruction import reconstruct

log = logging.getLogger(__name__)


def tracker_values(prefix: str, report: dict[str, Any]) -> dict[str, float]:
    """Flat ``{name: number}`` of a report for the experiment trackers: ``prefix/psnr``..., and per feature set
    ``prefix/<features>/accuracy`` (``reconstructed``, ``ratio``, ``fd``); a folder's features (the domain
    encoder) are named ``domain``."""
    vals = {f"{prefix}/{k}": float(report[k]) for k in ("psnr", "ssim", "ciede2000", "border_ratio") if k in report}
    for spec, r in report.get("consistency", report.get("features", {})).items():
        name = "domain" if "/" in spec else spec
        for k in ("reconstructed", "accuracy", "ratio", "fd"):
            if k in r:
                vals[f"{prefix}/{name}/{k}"] = float(r[k])
    return vals


class History:
    """``RUN/validation.jsonl``: one record per validation, and the best so far (higher score is better)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []

    def load(self, upto_step: int) -> None:
        """Read the records up to ``upto_step`` (a resumed run repeats the later ones) and rewrite the file."""
        from pathup.io import atomic_write_text

        self.records = []
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= upto_step:
                    self.records.append(rec)
            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def add(self, rec: dict[str, Any]) -> None:
        self.records.append(rec)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(rec, default=float) + "\n")

    @property
    def best(self) -> dict[str, Any] | None:
        return max(self.records, key=lambda r: (r["score"], -r["step"]), default=None)

    def since_best(self) -> int:
        """Validations after the best one."""
        best = self.best
        return 0 if best is None else sum(1 for r in self.records if r["step"] > best["step"])


def score_of(result: dict[str, Any], spec: str) -> float:
    """The selection measure of a validation: class-consistency with the texture-aware features, ties broken
    by a lower Frechet distance (a thousandth of a class-consistency point per unit of FD, capped)."""
    r = result[spec]
    return float(r["accuracy"]) - 1e-3 * min(float(r["fd"]), 9.0) if r["fd"] == r["fd"] else float(r["accuracy"])


class Validation:
    """The validation of one training run (main process): the autoencoder's report, then class-following.

    Files: ``RUN/autoencoder.json`` and ``RUN/samples/autoencoder.png`` (real | reconstruction),
    ``RUN/validation.jsonl`` (one record per validation), ``RUN/best/`` (the best EMA weights and their
    record; what ``RUN/model`` is saved from), ``RUN/encoder/`` (the domain encoder of ``--val-features auto``).
    """

    def __init__(self, trainer, tiles) -> None:
        cfg = trainer.cfg
        self.cfg, self.acc, self.run_dir = cfg, trainer.acc, Path(trainer.run_dir)
        self.device = trainer.acc.device
        table = tiles.table
        self.level = "overview" if "overview" in table.levels else (table.levels[0] if table.levels else None)
        self.prompts = [table.prompt(c, self.level) for c in table.classes]
        self.classes = list(table.classes)
        self.history = History(self.run_dir / "validation.jsonl")
        self.best_dir = self.run_dir / "best"
        self.judge: Judge | None = None
        self.ae_report: dict[str, Any] | None = None
        res = tiles.tiles.size or trainer.ldm.resolution
        wants_ae = cfg.from_scratch and cfg.vae_eval_tiles > 0 and not (self.run_dir / "autoencoder.json").is_file()
        if not (cfg.val_every or wants_ae):
            return
        self.real = RealSet.load(cfg.data, split=cfg.split, val_split=cfg.val_split, level=self.level, resolution=res,
                                 seed=cfg.seed)
        if self.real is None:
            log.warning("%s has no held-out split (prepare with --val-fraction or --test-fraction > 0): no validation "
                        "during training%s", cfg.data, ", --max-steps auto trains its whole cap"
                        if cfg.max_steps == "auto" else "")
            return
        encoder = self._encoder() if cfg.val_features == "auto" else None
        self.judge = Judge(self.real, validation_features(cfg.val_features, encoder), device=self.device, seed=cfg.seed)
        self.texture = next(iter(self.judge.extractors))
        if wants_ae:
            self._autoencoder(trainer.ldm.vae, res)

    # ------------------------------------------------------------------ the autoencoder
    def _encoder(self) -> Path:
        """The run's domain encoder (``RUN/encoder``): trained once on the training tiles, reused on resume."""
        from pathup.metrics.domain import CONFIG_FILE, train_encoder
        from pathup.metrics.encoder_config import EncoderConfig

        folder = self.run_dir / "encoder"
        if not (folder / CONFIG_FILE).is_file():
            log.info("training the domain encoder of the validation measure (%s)", folder)
            train_encoder(EncoderConfig(data=self.cfg.data, out=folder, split=self.cfg.split, heldout=self.real.split,
                                        epochs=self.cfg.val_encoder_epochs, seed=self.cfg.seed, device=str(self.device), progress=self.cfg.progress))
        return folder

    def _autoencoder(self, vae, resolution: int) -> None:
        held = RealSet.load(self.cfg.data, split=self.cfg.split, val_split=self.cfg.val_split, level=None,
                            resolution=resolution, max_train=1, max_held=self.cfg.vae_eval_tiles, seed=self.cfg.seed)
        was = next(vae.parameters()).device
        vae.to(self.device)
        try:
            report, picture = autoencoder_report(vae, held, None, device=self.device)
            # class-consistency of the reconstructions: the validation level's tiles, beside the real ones
            recon = reconstruct(vae, self.real.held_images, device=self.device)
            report["consistency"] = reconstruction_consistency(self.judge, recon, self.real.held_labels)
        finally:
            vae.to(was)
        from pathup.io import atomic_write_text

        atomic_write_text(self.run_dir / "autoencoder.json", json.dumps(report, indent=2, default=float))
        save_png(picture, self.run_dir / "samples" / "autoencoder.png")
        self.ae_report = report
        for line in report_lines(report):
            print(line, flush=True)

    # ------------------------------------------------------------------ during training
    def start(self, step: int) -> None:
        """Begin after optimizer step ``step``: trim the history, drop a best from later steps, log the autoencoder."""
        self.history.load(step)
        meta = self.best_dir / "best.json"
        if meta.is_file():
            try:
                best_step = int(json.loads(meta.read_text())["step"])
            except (ValueError, KeyError, TypeError):
                best_step = step + 1
            if best_step > step:  # from steps the resumed run repeats: it will be found again
                for f in self.best_dir.glob("*"):
                    f.unlink()
        if self.ae_report is not None and self.cfg.log_with != "none":
            self.acc.log(tracker_values("autoencoder", self.ae_report), step=0)

    def run(self, step: int, sample, target: torch.nn.Module) -> bool:
        """Validate the weights in ``target`` (the EMA's, swapped in by the caller) at ``step``.

        ``sample(prompts, per_prompt, seed)`` returns (N, 3, R, R) images in [-1, 1]. Returns True when
        ``--patience`` validations have passed without a better score (and at least ``--min-steps`` steps).
        """
        if self.judge is None:
            return False
        import time

        t0 = time.perf_counter()
        images = images_to_uint8(sample(self.prompts, self.cfg.val_per_class, self.cfg.seed + 104_729))
        labels = [c for c in self.classes for _ in range(self.cfg.val_per_class)]
        result = self.judge.judge(images, labels)
        score = score_of(result, self.texture)
        best = self.history.best
        rec = {"step": step, "score": score, "features": result, "seconds": round(time.perf_counter() - t0, 2)}
        self.history.add(rec)
        if best is None or score > best["score"]:
            self._save_best(step, score, target)
        if self.cfg.log_with != "none":
            self.acc.log({**tracker_values("val", {"features": result}), "val/score": score}, step=step)
        t = result[self.texture]
        log.info("validation at step %d: class-consistency %.3f (ceiling %.3f), FD %.2f", step, t["accuracy"],
                 t["ceiling"], t["fd"])
        return step >= self.cfg.min_steps and self.history.since_best() >= self.cfg.patience

    def _save_best(self, step: int, score: float, target: torch.nn.Module) -> None:
        from safetensors.torch import save_file

        from pathup.io import atomic_path, atomic_write_text

        self.best_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.best_dir / "weights.safetensors") as tmp:
            save_file({k: v.detach().float().cpu().contiguous() for k, v in target.state_dict().items()}, str(tmp))
        atomic_write_text(self.best_dir / "best.json", json.dumps({"step": step, "score": score}))

    def load_best(self, target: torch.nn.Module) -> int | None:
        """Load the best validated weights into ``target``; their step (None: no best kept, ``target`` unchanged)."""
        meta, weights = self.best_dir / "best.json", self.best_dir / "weights.safetensors"
        if self.history.best is None or not (meta.is_file() and weights.is_file()):
            return None
        from safetensors.torch import load_file

        step = int(json.loads(meta.read_text())["step"])
        state = load_file(str(weights))
        own = target.state_dict()
        target.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
        log.info("saving the best validated weights (step %d)", step)
        return step
