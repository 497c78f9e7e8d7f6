"""Options of ``pathup downstream`` (PathUp paper section 4.7 and Table 6)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from pathup.config import accepts_aliases, option

CLASSIFIERS = ("vit", "abmil")
ARMS = ("real", "rand", "synthetic")


@accepts_aliases
@dataclass
class DownstreamConfig:
    """Lesion-subtype classification with and without synthetic images (paper Table 6).

    Every field is a ``--kebab-case`` option of ``pathup downstream``; YAML (``--config``) may
    override the defaults. The defaults follow the paper (ViT-L, ABMIL, 5 seeds); on a CPU use a
    small ViT and input size, e.g. ``--vit vit_tiny_patch16_224 --vit-img-size 64``.
    """

    data: Path = option(help="prepared dataset folder (manifest.csv + dataset.json from 'pathup prepare')",
                        metavar="DATASET")
    out: Path = option(help="output folder (table, plot, confusion matrices, results.json)", metavar="DIR")
    synthetic: Optional[Path] = option(None, "folder written by 'pathup generate' (DIR/<class>/*.png); "
                                           "required by the 'synthetic' arm", metavar="DIR")
    classifiers: list[Literal["vit", "abmil"]] = option(help="classifiers to train", default_factory=lambda: list(CLASSIFIERS))
    arms: list[Literal["real", "rand", "synthetic"]] = option(
        help="training arms: real only; real + random augmentation ('Rand.'); real + synthetic",
        default_factory=lambda: list(ARMS))
    seeds: int = option(5, "number of seeds (repeats); results are mean +- std over seeds", min=1)
    seed: int = option(0, "first seed; runs use seed, seed+1, ...")

    # Splits (always by patient).
    resplit: bool = option(False, "ignore the manifest's split column and split by patient here")
    val_fraction: float = option(0.15, "share of training patients held out for early stopping when the "
                                     "dataset has no 'val' split (or with --resplit)")
    test_fraction: float = option(0.2, "share of patients in the test split (only with --resplit)")

    # Synthetic arm.
    synthetic_per_class: Optional[int] = option(None, "synthetic images to add, on average per class "
                                                    "(total budget = this x classes); default: all of them")
    synthetic_policy: Literal["rare", "uniform"] = option(
        "rare", "how the budget is shared: 'rare' fills the rarest classes first (water-filling on "
                "real + synthetic counts), 'uniform' gives every class the same number")
    synthetic_overviews: bool = option(False, "also train the ViT on the overviews in DIR/<class>/overview/")
    synthetic_patch_px: Optional[int] = option(None, "patch size in pixels used to cut synthetic large images "
                                                   "into ABMIL bags; default: the dataset's patch tiles",
                                               aliases=("synthetic_patch_size",))
    synthetic_patch_overlap: Optional[int] = option(None, "overlap (pixels) of those patches; default: the "
                                                        "dataset's patch tiles")

    # 'Rand.' arm: flips, 90-degree rotations, colour jitter.
    jitter_brightness: float = option(0.2, "colour jitter: brightness factor range 1 +- this")
    jitter_contrast: float = option(0.2, "colour jitter: contrast factor range 1 +- this")
    jitter_saturation: float = option(0.2, "colour jitter: saturation factor range 1 +- this")
    jitter_hue: float = option(0.05, "colour jitter: hue shift range +- this (fraction of a turn)")

    # ViT (single-instance).
    vit: str = option("vit_large_patch16_224", "timm model name of the ViT (paper: ViT-L)")
    vit_weights: Optional[str] = option(None, "pretrained ViT weights: a file or folder (.safetensors/.pth/.bin), "
                                            "'hf-hub:<repo>' or 'timm' (timm's default tag); default: from scratch")
    vit_img_size: Optional[int] = option(None, "ViT input size; images are resized to it (default: the model's)")
    vit_patch_size: Optional[int] = option(None, "ViT patch size override (for small --vit-img-size)")
    vit_level: Literal["overview", "patch"] = option("overview", "which tiles of the dataset the ViT uses")
    vit_eval_unit: Literal["source", "tile"] = option(
        "source", "score the ViT per source image (mean of its tiles' probabilities) or per tile")
    vit_lr: float = option(1e-4, "ViT learning rate (AdamW)")
    vit_weight_decay: float = option(0.05, "ViT weight decay")
    vit_batch_size: int = option(16, "ViT batch size", min=1)
    vit_epochs: int = option(30, "ViT maximum epochs", min=1)

    # ABMIL (multiple-instance, Ilse et al. 2018).
    abmil_encoder: str = option("resnet50", "timm model that embeds each patch (frozen; embeddings cached)")
    abmil_encoder_weights: Optional[str] = option(None, "encoder weights: file/folder, 'hf-hub:<repo>' or 'timm'; "
                                                      "default: from scratch (random, frozen)")
    abmil_img_size: Optional[int] = option(None, "encoder input size; patches are resized to it (default: the model's)")
    abmil_level: Literal["patch", "overview"] = option("patch", "which tiles form the bags (grouped by source image)")
    abmil_hidden: int = option(500, "ABMIL embedding size M (Ilse et al.: 500)", min=1)
    abmil_attention: int = option(128, "ABMIL attention size L (Ilse et al.: 128)", min=1)
    abmil_dropout: float = option(0.25, "ABMIL dropout", min=0, max=1, max_exclusive=True)
    abmil_lr: float = option(2e-4, "ABMIL learning rate (AdamW)")
    abmil_weight_decay: float = option(1e-4, "ABMIL weight decay")
    abmil_batch_size: int = option(4, "bags per ABMIL step (padded and masked)", min=1)
    abmil_epochs: int = option(100, "ABMIL maximum epochs", min=1)
    abmil_aug_views: int = option(4, "'Rand.' arm: augmented views embedded per patch (one drawn per epoch)",
                                  min=1)
    embed_batch_size: int = option(64, "patches per encoder forward pass", min=1)

    # Training.
    patience: int = option(10, "early stopping: epochs without a better validation score", min=1)
    device: str = option("auto", "torch device: auto, cpu, cuda, cuda:1, ...")
    num_workers: int = option(0, "DataLoader workers for reading images", min=0)
    cache_mb: int = option(4096, "keep resized ViT inputs in memory up to this size (MiB)", min=0)
    cache_dir: Optional[Path] = option(None, "folder for cached patch embeddings (default: OUT/cache)")
    resume: bool = option(True, "reuse finished runs in OUT/runs whose settings match")
