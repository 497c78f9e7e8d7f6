"""Options of ``pathup features train`` (kept free of torch, so that ``pathup --help`` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from pathup.config import accepts_aliases, option

HELDOUT_SPLITS = ("test", "val")  # looked for in this order by heldout='auto'
# Optimizer steps of the default training (batch 64): measured on the 1,200-image Kather set (4,730 tiles,
# 3 epochs: held-out accuracy 0.68) and its 256-image sample; more steps change little at this width.
TARGET_STEPS = 240


@accepts_aliases
@dataclass
class EncoderConfig:
    """Options of ``pathup features train`` (and of ``train_encoder(cfg)``)."""

    data: Path = option(None, "prepared dataset folder (manifest.csv + dataset.json from 'pathup prepare')",
                        metavar="DATASET")
    out: Path = option(None, "encoder folder to write (encoder.safetensors + encoder.json)", metavar="ENC")
    split: str = option("train", "manifest split to train on")
    heldout: str = option("auto", "held-out split whose accuracy is reported: auto (test, else val; an error when "
                                  "neither exists), test, val, or none")
    levels: list[str] = option(help="tile levels to train on (patch, overview); default: all levels in the dataset",
                               default_factory=list, metavar="LEVEL")
    size: int = option(128, "input size in pixels (tiles are resized to it, here and when extracting features)",
                       min=32, metavar="PX")
    epochs: Optional[int] = option(None, "passes over the training tiles (default: enough for about "
                                         f"{TARGET_STEPS} steps, at least 1: 3 for 5,000 tiles, 12 for 1,280; about "
                                         "1.5-4 min on 2 CPU cores at width 24)", min=1)
    batch_size: int = option(64, "tiles per step", min=2)
    lr: float = option(2e-3, "AdamW peak learning rate (warm-up, then cosine decay)", min=0, min_exclusive=True)
    width: int = option(24, "channels of the first stage (the stages have w, 2w, 4w, 8w)", min=4)
    jitter: float = option(0.1, "colour jitter strength: brightness, contrast and saturation factors in "
                                "[1 - j, 1 + j], per-channel gains in [1 - j/2, 1 + j/2] (mild on purpose)",
                           min=0, max=0.5)
    seed: int = option(0, "seed of the initialisation, data order and augmentation", min=0)
    device: str = option("auto", "auto, cpu, cuda, cuda:1, ...")
    progress: bool = option(True, "show progress bars")
