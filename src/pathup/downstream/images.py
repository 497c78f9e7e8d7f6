"""Reading tiles as fixed-size tensors, with an in-memory cache shared by seeds and arms."""

from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from pathup.downstream.data import Tile
from pathup.io import load_rgb

log = logging.getLogger(__name__)


def _to_tensor(img: "Image.Image", size: int) -> torch.Tensor:  # noqa: F821
    from PIL import Image

    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)  # (3, S, S) uint8


def load_tiles(tiles: Sequence[Tile], size: int) -> torch.Tensor:
    """Tiles resized to ``size`` x ``size`` (whole images or crops; one file read per path), (N, 3, S, S) uint8."""
    out = torch.empty((len(tiles), 3, size, size), dtype=torch.uint8)
    by_path: dict = {}
    for i, t in enumerate(tiles):
        by_path.setdefault(t.path, []).append(i)
    for path, idx in by_path.items():
        img = load_rgb(path)
        for i in idx:
            box = tiles[i].box
            crop = img if box is None else img.crop((box[0], box[1], box[0] + box[2], box[1] + box[3]))
            out[i] = _to_tensor(crop, size)
    return out


class TileImages(torch.utils.data.Dataset):
    """``tiles[i]`` as a (3, size, size) uint8 tensor; ``preload`` keeps them all in memory."""

    def __init__(self, tiles: Sequence[Tile], size: int) -> None:
        self.tiles = list(tiles)
        self.size = size
        self.memory: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.memory is not None:
            return self.memory[i]
        return load_tiles([self.tiles[i]], self.size)[0]

    def nbytes(self) -> int:
        return len(self.tiles) * 3 * self.size * self.size

    def preload(self, limit_mb: int, num_workers: int = 0) -> bool:
        """Read every tile once into memory when they fit in ``limit_mb``; return whether they did."""
        if self.nbytes() > limit_mb * 2**20:
            log.info("%d images of %d px need %.0f MiB > --cache-mb %d: reading them from disk each epoch",
                     len(self), self.size, self.nbytes() / 2**20, limit_mb)
            return False
        memory = torch.empty((len(self), 3, self.size, self.size), dtype=torch.uint8)
        loader = torch.utils.data.DataLoader(self, batch_size=32, num_workers=num_workers)
        start = 0
        for batch in tqdm(loader, desc=f"reading {len(self)} images", leave=False):
            memory[start:start + len(batch)] = batch
            start += len(batch)
        self.memory = memory
        return True
