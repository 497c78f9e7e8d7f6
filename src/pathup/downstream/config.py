"""Options of ``pathup downstream`` (SPEC.md section 6, paper 4.7 and Table 6)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

CLASSIFIERS = ("vit", "abmil")
ARMS = ("real", "rand", "synthetic")


def _opt(default, help: str, **extra):  # noqa: A002 - mirrors argparse's keyword
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class DownstreamConfig:
    """Lesion-subtype classification with and without synthetic images (paper Table 6).

    Every field is a ``--kebab-case`` option of ``pathup downstream``; YAML (``--config``) may
    override the defaults. The defaults follow the paper (ViT-L, ABMIL, 5 seeds); on a CPU use a
    small ViT and input size, e.g. ``--vit vit_tiny_patch16_224 --vit-img-size 64``.
    """

    data: Path = field(metadata={"help": "prepared dataset folder (manifest.csv + dataset.json from 'pathup prepare')",
                                 "metavar": "DATASET"})
    out: Path = field(metadata={"help": "output folder (table, plot, confusion matrices, results.json)",
                                "metavar": "DIR"})
    synthetic: Optional[Path] = _opt(None, "folder written by 'pathup generate' (DIR/<class>/*.png); "
                                           "required by the 'synthetic' arm", metavar="DIR")
    classifiers: list[Literal["vit", "abmil"]] = _opt(list(CLASSIFIERS), "classifiers to train")
    arms: list[Literal["real", "rand", "synthetic"]] = _opt(
        list(ARMS), "training arms: real only; real + random augmentation ('Rand.'); real + synthetic")
    seeds: int = _opt(5, "number of seeds (repeats); results are mean +- std over seeds")
    seed: int = _opt(0, "first seed; runs use seed, seed+1, ...")

    # Splits (always by patient).
    resplit: bool = _opt(False, "ignore the manifest's split column and split by patient here")
    val_fraction: float = _opt(0.15, "share of training patients held out for early stopping when the "
                                     "dataset has no 'val' split (or with --resplit)")
    test_fraction: float = _opt(0.2, "share of patients in the test split (only with --resplit)")

    # Synthetic arm.
    synthetic_per_class: Optional[int] = _opt(None, "synthetic images to add, on average per class "
                                                    "(total budget = this x classes); default: all of them")
    synthetic_policy: Literal["rare", "uniform"] = _opt(
        "rare", "how the budget is shared: 'rare' fills the rarest classes first (water-filling on "
                "real + synthetic counts), 'uniform' gives every class the same number")
    synthetic_overviews: bool = _opt(False, "also train the ViT on the overviews in DIR/<class>/overview/")
    synthetic_patch_size: Optional[int] = _opt(None, "patch size (pixels) used to cut synthetic large images "
                                                     "into ABMIL bags; default: the dataset's patch tiles")
    synthetic_patch_overlap: Optional[int] = _opt(None, "overlap (pixels) of those patches; default: the "
                                                        "dataset's patch tiles")

    # 'Rand.' arm: flips, 90-degree rotations, colour jitter.
    jitter_brightness: float = _opt(0.2, "colour jitter: brightness factor range 1 +- this")
    jitter_contrast: float = _opt(0.2, "colour jitter: contrast factor range 1 +- this")
    jitter_saturation: float = _opt(0.2, "colour jitter: saturation factor range 1 +- this")
    jitter_hue: float = _opt(0.05, "colour jitter: hue shift range +- this (fraction of a turn)")

    # ViT (single-instance).
    vit: str = _opt("vit_large_patch16_224", "timm model name of the ViT (paper: ViT-L)")
    vit_weights: Optional[str] = _opt(None, "pretrained ViT weights: a file or folder (.safetensors/.pth/.bin), "
                                            "'hf-hub:<repo>' or 'timm' (timm's default tag); default: from scratch")
    vit_img_size: Optional[int] = _opt(None, "ViT input size; images are resized to it (default: the model's)")
    vit_patch_size: Optional[int] = _opt(None, "ViT patch size override (for small --vit-img-size)")
    vit_level: Literal["overview", "patch"] = _opt("overview", "which tiles of the dataset the ViT uses")
    vit_eval_unit: Literal["source", "tile"] = _opt(
        "source", "score the ViT per source image (mean of its tiles' probabilities) or per tile")
    vit_lr: float = _opt(1e-4, "ViT learning rate (AdamW)")
    vit_weight_decay: float = _opt(0.05, "ViT weight decay")
    vit_batch_size: int = _opt(16, "ViT batch size")
    vit_epochs: int = _opt(30, "ViT maximum epochs")

    # ABMIL (multiple-instance, Ilse et al. 2018).
    abmil_encoder: str = _opt("resnet50", "timm model that embeds each patch (frozen; embeddings cached)")
    abmil_encoder_weights: Optional[str] = _opt(None, "encoder weights: file/folder, 'hf-hub:<repo>' or 'timm'; "
                                                      "default: from scratch (random, frozen)")
    abmil_img_size: Optional[int] = _opt(None, "encoder input size; patches are resized to it (default: the model's)")
    abmil_level: Literal["patch", "overview"] = _opt("patch", "which tiles form the bags (grouped by source image)")
    abmil_hidden: int = _opt(500, "ABMIL embedding size M (Ilse et al.: 500)")
    abmil_attention: int = _opt(128, "ABMIL attention size L (Ilse et al.: 128)")
    abmil_dropout: float = _opt(0.25, "ABMIL dropout")
    abmil_lr: float = _opt(2e-4, "ABMIL learning rate (AdamW)")
    abmil_weight_decay: float = _opt(1e-4, "ABMIL weight decay")
    abmil_batch_size: int = _opt(4, "bags per ABMIL step (padded and masked)")
    abmil_epochs: int = _opt(100, "ABMIL maximum epochs")
    abmil_aug_views: int = _opt(4, "'Rand.' arm: augmented views embedded per patch (one drawn per epoch)")
    embed_batch_size: int = _opt(64, "patches per encoder forward pass")

    # Training.
    patience: int = _opt(10, "early stopping: epochs without a better validation score")
    device: str = _opt("auto", "torch device: auto, cpu, cuda, cuda:1, ...")
    num_workers: int = _opt(0, "DataLoader workers for reading images")
    cache_mb: int = _opt(4096, "keep resized ViT inputs in memory up to this size (MiB)")
    cache_dir: Optional[Path] = _opt(None, "folder for cached patch embeddings (default: OUT/cache)")
    resume: bool = _opt(True, "reuse finished runs in OUT/runs whose settings match")
