"""A ``torch.utils.data.Dataset`` over a prepared dataset's manifest (for training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pathup.data.manifest import SPLITS, read_dataset_info, read_manifest
from pathup.errors import PathUpError
from pathup.io import load_rgb
from pathup.prompts import LEVELS


class TileDataset(torch.utils.data.Dataset):
    """Tiles of a prepared dataset.

    Each item is a dict: ``image`` (3, H, W) float32 in [-1, 1]; ``class_id`` (index into
    ``self.classes``); ``class_name``; ``level``; ``prompt``; ``path``.

    Args:
        root: the dataset folder written by ``pathup prepare``.
        split: keep only this split (``train``, ``val``, ``test``); ``None`` keeps all.
        level: keep only this level (``patch`` or ``overview``); ``None`` keeps both.
        size: resize tiles to ``size`` x ``size`` when they differ (bicubic); ``None`` keeps them.
        hflip: random horizontal and vertical flips (training augmentation).
    """

    def __init__(self, root: str | Path, split: str | None = "train", level: str | None = None,
                 size: int | None = None, hflip: bool = False) -> None:
        self.root = Path(root)
        if split is not None and split not in SPLITS:
            raise PathUpError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
        if level is not None and level not in LEVELS:
            raise PathUpError(f"unknown level {level!r}; allowed: {', '.join(LEVELS)}")
        info = read_dataset_info(self.root)
        self.classes: list[str] = list(info["classes"])
        self.levels: list[str] = list(info.get("levels", LEVELS))
        self.descriptions: dict[str, str] = dict(info.get("descriptions") or {})
        rows = read_manifest(self.root)
        self.rows = [r for r in rows if (split is None or r["split"] == split)
                     and (level is None or r["level"] == level)]
        if not self.rows:
            raise PathUpError(f"{self.root / 'manifest.csv'}: no tiles for split={split} level={level}")
        unknown = sorted({r["class"] for r in self.rows} - set(self.classes))
        if unknown:
            raise PathUpError(f"{self.root / 'manifest.csv'}: classes {unknown} not in dataset.json")
        self.size = size
        self.hflip = hflip

    def __len__(self) -> int:
        return len(self.rows)

    def check_files(self) -> None:
        """Raise a PathUpError naming the first few tiles whose files are missing."""
        missing = [r["path"] for r in self.rows if not (self.root / r["path"]).is_file()]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise PathUpError(f"{len(missing)} tile file(s) listed in {self.root / 'manifest.csv'} are missing: "
                              f"{', '.join(missing[:3])}{more}")

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        img = load_rgb(self.root / row["path"])
        if self.size is not None and img.size != (self.size, self.size):
            from PIL import Image

            img = img.resize((self.size, self.size), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1) / 127.5 - 1.0  # (3, H, W)
        if self.hflip:
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
            if torch.rand(()) < 0.5:
                x = x.flip(-2)
        return {"image": x, "class_id": self.classes.index(row["class"]), "class_name": row["class"],
                "level": row["level"], "prompt": row["prompt"], "path": row["path"]}
