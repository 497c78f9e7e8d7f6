"""Judging images against real held-out tiles: class-consistency and Frechet distance with several feature
sets, and what an autoencoder keeps of real tiles.

Used by validation during training (``pathup.train.validation``), ``pathup evaluate --reconstruction`` and
the benchmarks. Texture-aware features (a domain encoder, ``pathup.metrics.domain``; a pathology foundation
encoder) are reported beside ``color-stats`` (colour histograms, blind to blur), so that a blur in the right
tint cannot pass for tissue.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from pathup.errors import OptionError, PathUpError
from pathup.metrics.reconstruction import images_to_uint8, reconstruct, strip

COLOUR_FEATURES = "color-stats"


def heldout_split(splits: Sequence[str], want: str) -> str | None:
    """The split to validate on: ``want``, or for ``auto`` ``val`` when present, else ``test``; None: no held-out tiles."""
    present = set(splits)
    if want == "none":
        return None
    if want != "auto":
        if want not in present:
            raise OptionError("val_split", f"{want!r}: the dataset has no such split; it has {', '.join(sorted(present))}")
        return want
    return next((s for s in ("val", "test") if s in present), None)


@dataclass
class RealSet:
    """The real tiles validation compares with, at the model's resolution: training tiles (the classifier)
    and held-out tiles (the ceiling, the Frechet reference and the autoencoder's test)."""

    train_images: np.ndarray  # (N, R, R, 3) uint8
    train_labels: list[str]
    held_images: np.ndarray  # (M, R, R, 3) uint8
    held_labels: list[str]
    split: str
    level: str | None

    @classmethod
    def load(cls, data: str | Path, *, split: str, val_split: str, level: str | None, resolution: int,
             max_train: int = 1000, max_held: int = 400, seed: int = 0) -> "RealSet | None":
        """Tiles of ``level`` (None: all levels) from a prepared dataset; None when there is no held-out split.

        At most ``max_train`` training and ``max_held`` held-out tiles, drawn at random (seeded),
        so that validation costs the same on a 1,000- or a 100,000-tile dataset.
        """
        from pathup.metrics.consistency import labelled_real, load_rgb

        paths, classes, splits = labelled_real(data, level)
        held = heldout_split(splits, val_split)
        if held is None:
            return None
        def pick(name: str, cap: int) -> list[int]:  # each split its own draw: the same tiles whatever the other cap
            idx = np.array([i for i, s in enumerate(splits) if s == name])
            if len(idx) > cap:
                idx = np.sort(np.random.default_rng([seed, len(name), ord(name[0])]).choice(idx, cap, replace=False))
            return idx.tolist()

        tr, he = pick(split, max_train), pick(held, max_held)
        if not tr:
            raise PathUpError(f"{data}: no '{split}' tiles at level {level} to validate against")
        return cls(load_rgb([paths[i] for i in tr], resolution), [classes[i] for i in tr],
                   load_rgb([paths[i] for i in he], resolution), [classes[i] for i in he], held, level)


class Judge:
    """Class-consistency and Frechet distance of labelled images against a ``RealSet``, with several features.

    The real features and the classifiers are computed once; ``judge(images, labels)`` then costs one
    feature pass over the images per feature set.
    """

    def __init__(self, real: RealSet, features: Sequence[str], *, device: str | torch.device = "cpu",
                 seed: int = 0) -> None:
        from pathup.metrics.consistency import extract, fit_classifier, score
        from pathup.metrics.features import make_extractor
        from pathup.metrics.fid import feature_statistics

        self.real, self.seed = real, seed
        self.classes = sorted(set(real.train_labels))
        self.extractors, self.clfs, self.stats, self.ceiling = {}, {}, {}, {}
        for spec in dict.fromkeys(features):
            ext = make_extractor(spec, device=device)
            tr = extract(real.train_images, ext)
            he = extract(real.held_images, ext)
            clf = fit_classifier(tr, real.train_labels, seed=seed)
            self.extractors[spec], self.clfs[spec] = ext, clf
            self.stats[spec] = feature_statistics(he)
            self.ceiling[spec] = score(clf, he, real.held_labels, self.classes, "held-out real tiles").to_dict()

    def judge(self, images: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
        """``{spec: {"accuracy", "per_class", "ceiling", "ratio", "above_3x_chance", "fd"}}`` of (N, H, W, 3) uint8."""
        from pathup.metrics.consistency import extract, score
        from pathup.metrics.fid import feature_statistics, frechet_distance

        chance = 1.0 / len(self.classes)
        out: dict[str, Any] = {}
        for spec, ext in self.extractors.items():
            f = extract(images, ext)
            rep = score(self.clfs[spec], f, labels, self.classes, "images").to_dict()
            ceil = self.ceiling[spec]["accuracy"]
            fd = frechet_distance(*feature_statistics(f), *self.stats[spec]) if len(f) > 1 else float("nan")
            out[spec] = {"accuracy": rep["accuracy"], "per_class": rep["per_class"], "ceiling": ceil,
                         "ceiling_per_class": self.ceiling[spec]["per_class"],
                         "ratio": rep["accuracy"] / ceil if ceil > 0 else float("nan"),
                         "above_3x_chance": [c for c, a in rep["per_class"].items() if a == a and a > 3 * chance],
                         "fd": fd, "chance": chance}
        return out


def validation_features(val_features: str, encoder: Path | None) -> list[str]:
    """The texture-aware spec (``auto``: the run's domain encoder) first, then the colour-only one."""
    texture = str(encoder) if val_features == "auto" else val_features
    return list(dict.fromkeys([texture, COLOUR_FEATURES]))


def autoencoder_report(vae, real: RealSet, judge: Judge | None, *, device: str | torch.device = "cpu",
                       batch_size: int = 16) -> tuple[dict[str, Any], np.ndarray]:
    """Reconstruction metrics of the held-out tiles and their class-consistency beside the real tiles'.

    Returns ``(report, strip)``: ``report`` holds ``pathup.metrics.reconstruction.summarise`` (overall and per
    class) and, with a judge, ``"consistency": {spec: {"reconstructed": ..., "real": ...}}``; ``strip`` is
    the real | reconstruction picture (``strip``).
    """
    from pathup.metrics.reconstruction import summarise

    recon = reconstruct(vae, real.held_images, batch_size=batch_size, device=device)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)  # one latent pixel, in image pixels
    size = real.held_images.shape[1:3]
    report = summarise(real.held_images, recon, real.held_labels,
                       grid_period=factor if size[0] % factor == 0 and size[1] % factor == 0 else None)
    report["split"], report["level"] = real.split, real.level
    if judge is not None:
        report["consistency"] = reconstruction_consistency(judge, recon, real.held_labels)
    return report, strip(real.held_images, recon)


def reconstruction_consistency(judge: Judge, recon: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """``{spec: {"reconstructed", "real", "ratio", "fd", "per_class"}}``: class-consistency of reconstructed
    held-out tiles beside that of the real tiles (the judge's ceiling), per feature set."""
    return {spec: {"reconstructed": r["accuracy"], "real": r["ceiling"], "ratio": r["ratio"], "fd": r["fd"],
                   "per_class": r["per_class"]} for spec, r in judge.judge(recon, labels).items()}


def report_lines(report: dict[str, Any]) -> list[str]:
    """Short text lines of an ``autoencoder_report`` for a terminal or a log."""
    lines = [f"autoencoder on {report['images']} held-out '{report['split']}' tiles: PSNR {report['psnr']:.2f} dB, "
             f"SSIM {report['ssim']:.3f}, CIEDE2000 {report['ciede2000']:.2f}, border/centre error "
             f"{report['border_ratio']:.2f}"]
    if "grid_ratio" in report:
        g = report["grid_ratio"]
        lines.append(f"latent-grid texture ({g['period']} px): reconstructions {g['reconstructed']:.2f} vs real "
                     f"{g['real']:.2f} (power at the grid's frequencies / ring median; 1 = none)")
        if "power_vs_real" in g:
            k = g["power_vs_real"]
            lines.append(f"power kept of the real tiles': {k['grid']:.3f} at the grid's frequencies, "
                         f"{k['elsewhere']:.3f} elsewhere (above 1 at the grid: a painted checker)")
    for spec, r in report.get("consistency", {}).items():
        lines.append(f"class-consistency ({Path(spec).name if '/' in spec else spec}): reconstructions "
                     f"{r['reconstructed']:.3f} vs real {r['real']:.3f} (ratio {r['ratio']:.2f})")
    return lines


def save_png(array: np.ndarray, path: Path) -> Path:
    """An (H, W, 3) uint8 array as a PNG, written atomically."""
    from PIL import Image

    from pathup.io import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
    return path





def load_vae(spec: str | Path, device: str | torch.device = "cpu"):
    """The ``AutoencoderKL`` of a diffusers model folder (``vae/``), of a VAE folder, or of a hub id (the local
    cache when offline); one-line ``OptionError`` (``model``) when it cannot be loaded."""
    from diffusers import AutoencoderKL

    path = Path(spec)
    try:
        if path.is_dir() and (path / "vae" / "config.json").is_file():
            vae = AutoencoderKL.from_pretrained(str(path), subfolder="vae")
        elif path.is_dir() and (path / "config.json").is_file():
            vae = AutoencoderKL.from_pretrained(str(path))
        elif path.exists():
            raise OptionError("model", f"{path}: neither a diffusers model folder (with vae/) nor an AutoencoderKL "
                              "folder (with config.json)")
        else:
            vae = AutoencoderKL.from_pretrained(str(spec), subfolder="vae")
    except PathUpError:
        raise
    except Exception as err:  # noqa: BLE001 - hub, offline, format errors of diffusers
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise OptionError("model", f"{spec}: cannot load its autoencoder ({first})") from None
    return vae.to(device).eval().requires_grad_(False)


def evaluate_reconstruction(model: str | Path, data: str | Path, *, split: str = "test", level: str | None = None,
                            features: Sequence[str] = (COLOUR_FEATURES,), features_weights: str | None = None,
                            max_tiles: int = 256, train_split: str = "train", device: str = "cpu",
                            seed: int = 0) -> tuple[dict[str, Any], np.ndarray]:
    """What a model's autoencoder keeps of a prepared dataset's real tiles (``pathup evaluate --reconstruction``).

    Up to ``max_tiles`` tiles of ``split`` (and ``level``; None: every level) are encoded and decoded at their
    own size (Stable Diffusion's VAE as well as a model trained here). Reported: PSNR, SSIM, CIEDE2000 and
    the border / centre error ratio, overall and per class, and the class-consistency of the
    reconstructions beside that of the real tiles with each of ``features`` (a classifier trained on the
    ``train_split`` tiles; texture-aware features beside colour-only ones).

    Returns ``(report, strip)`` (``strip``: real above reconstruction).
    """
    from pathup.io import load_rgb as open_rgb
    from pathup.metrics.consistency import labelled_real

    vae = load_vae(model, device)  # the cheap checks first
    paths, _, splits = labelled_real(data, level)
    if split not in splits:
        raise OptionError("split", f"{split!r}: {data} has no such split at level {level}; it has "
                          f"{', '.join(sorted(set(splits)))}")
    first = next(p for p, s in zip(paths, splits) if s == split)
    size = min(open_rgb(first).size)
    real = RealSet.load(data, split=train_split, val_split=split, level=level, resolution=size,
                        max_train=1000 if features else 1, max_held=max_tiles, seed=seed)  # training tiles: the classifier
    judge = None
    if features:
        if features_weights is not None:
            raise OptionError("features_weights", "is not used with --reconstruction (give a domain encoder folder or "
                              "a preset with its weights on disk as --features)")
        judge = Judge(real, features, device=device, seed=seed)
    report, picture = autoencoder_report(vae, real, judge, device=device)
    report.update({"model": str(model), "data": str(data), "tile_px": size,
                   "scaling_factor": float(getattr(vae.config, "scaling_factor", float("nan"))),
                   "latent_channels": int(vae.config.latent_channels),
                   "downsampling": 2 ** (len(vae.config.block_out_channels) - 1)})
    return report, picture


def reconstruction_markdown(report: dict[str, Any]) -> str:
    """Markdown tables of an ``evaluate_reconstruction`` / ``autoencoder_report`` result."""
    from pathup.metrics.report import markdown_table

    head = ["tiles", "images", "PSNR (dB)", "SSIM", "CIEDE2000", f"border/centre error ({report['border_px']} px)"]
    rows = [["all", report["images"], f"{report['psnr']:.2f}", f"{report['ssim']:.3f}", f"{report['ciede2000']:.2f}",
             f"{report['border_ratio']:.2f}"]]
    for c, r in report.get("per_class", {}).items():
        rows.append([c, r["images"], f"{r['psnr']:.2f}", f"{r['ssim']:.3f}", f"{r['ciede2000']:.2f}",
                     f"{r['border_ratio']:.2f}"])
    text = (f"## Autoencoder reconstruction of {report['images']} real '{report['split']}' tiles"
            + (f" ({report['model']})" if "model" in report else "") + "\n\n" + markdown_table(head, rows))
    if "grid_ratio" in report:
        g = report["grid_ratio"]
        text += (f"\n\nLatent-grid texture ({g['period']} px, power at the grid's frequencies over the median of "
                 f"their ring; 1 = none): reconstructions {g['reconstructed']:.2f}, real tiles {g['real']:.2f}.")
        if "power_vs_real" in g:
            k = g["power_vs_real"]
            text += (f" The reconstructions keep {k['grid']:.3f} of the real tiles' power at the grid's frequencies "
                     f"and {k['elsewhere']:.3f} elsewhere (median): above 1 at the grid, the decoder paints a "
                     f"checker; below 1, the grid stands out only because the rest is blurred away.")
    if report.get("consistency"):
        crow = [[spec, f"{r['real']:.3f}", f"{r['reconstructed']:.3f}", f"{r['ratio']:.2f}", f"{r['fd']:.2f}"]
                for spec, r in report["consistency"].items()]
        text += ("\n\n## Class-consistency of the reconstructions\n\nA classifier trained on real training tiles "
                 "predicts the class of the held-out tiles and of their reconstructions; texture-aware features "
                 "beside colour-only ones.\n\n"
                 + markdown_table(["features", "real tiles", "reconstructions", "ratio", "Frechet distance"], crow))
    return text + "\n"
