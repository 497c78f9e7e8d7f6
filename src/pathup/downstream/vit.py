"""Single-instance classifier: a timm Vision Transformer on tiles resized to its input (paper 4.7, ViT-L)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from pathup.downstream.arms import Jitter, random_augment
from pathup.downstream.backbones import create_timm_model, input_stats
from pathup.downstream.data import Item, Tile
from pathup.downstream.images import TileImages
from pathup.downstream.train import FitResult, autocast, fit, group_mean
from pathup.errors import OptionError


@dataclass
class Predictions:
    """Scores of one trained model on one split: evaluation units, their patients, labels, probabilities."""

    units: list[str]
    patients: list[str]
    y_true: np.ndarray  # (N,)
    probs: np.ndarray  # (N, C)

    @property
    def y_pred(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


@dataclass
class RunOutput:
    """One trained run: test predictions and the training record."""

    test: Predictions
    fit: FitResult
    n_train: int
    n_train_synthetic: int
    model: torch.nn.Module | None = None  # the trained model (best validation epoch), in eval mode


def build_vit(name: str, n_classes: int, *, img_size: int | None = None, patch_size: int | None = None,
              weights: str | None = None) -> torch.nn.Module:
    """A timm ViT with an ``n_classes`` head; from scratch unless ``weights`` (see ``create_timm_model``)."""
    kwargs: dict = {"num_classes": n_classes}
    if img_size is not None:
        if img_size < 8:
            raise OptionError("vit_img_size", f"must be >= 8, got {img_size}")
        kwargs["img_size"] = img_size
    if patch_size is not None:
        kwargs["patch_size"] = patch_size
    try:
        return create_timm_model(name, weights, option="--vit", **kwargs)
    except TypeError as err:  # a model that takes no img_size/patch_size
        raise OptionError("vit", f"{name}: {err}") from None


class VitData:
    """All tiles the ViT sees (real splits + synthetic), read once and shared by arms and seeds."""

    def __init__(self, items: Sequence[Item], size: int, cache_mb: int, num_workers: int) -> None:
        tiles: list[Tile] = []
        self.index: dict[Tile, int] = {}
        for it in items:
            if it.tile not in self.index:
                self.index[it.tile] = len(tiles)
                tiles.append(it.tile)
        self.images = TileImages(tiles, size)
        self.num_workers = num_workers
        self.images.preload(cache_mb, num_workers)

    def batches(self, items: Sequence[Item], batch_size: int, generator: torch.Generator | None
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 images (B, 3, S, S), labels (B,)); shuffled when ``generator`` is given."""
        idx = torch.tensor([self.index[it.tile] for it in items])
        labels = torch.tensor([it.label for it in items])
        order = torch.randperm(len(items), generator=generator) if generator is not None else torch.arange(len(items))
        if self.images.memory is not None:
            for s in range(0, len(items), batch_size):
                sel = order[s:s + batch_size]
                yield self.images.memory[idx[sel]], labels[sel]
            return
        subset = torch.utils.data.Subset(self.images, idx[order].tolist())
        loader = torch.utils.data.DataLoader(subset, batch_size=batch_size, num_workers=self.num_workers)
        for s, imgs in zip(range(0, len(items), batch_size), loader):
            yield imgs, labels[order[s:s + batch_size]]


def train_vit(data: VitData, train: Sequence[Item], val: Sequence[Item], test: Sequence[Item], *,
              name: str, n_classes: int, seed: int, augment: bool, jitter: Jitter, img_size: int | None,
              patch_size: int | None, weights: str | None, lr: float, weight_decay: float, batch_size: int,
              epochs: int, patience: int, eval_unit: str, device: torch.device, desc: str = "vit") -> RunOutput:
    """Train one ViT run (one arm, one seed) with early stopping; return its test predictions.

    Images are scaled to [0, 1], augmented on the fly when ``augment`` ('Rand.' arm), then
    normalised with the model's mean and std.
    """
    torch.manual_seed(seed)
    model = build_vit(name, n_classes, img_size=img_size, patch_size=patch_size, weights=weights).to(device)
    mean_t, std_t, _ = input_stats(model)
    mean = torch.tensor(mean_t, device=device).view(1, 3, 1, 1)
    std = torch.tensor(std_t, device=device).view(1, 3, 1, 1)
    gen_order = torch.Generator().manual_seed(seed)
    gen_aug = torch.Generator().manual_seed(seed + 7919)

    def prep(imgs: torch.Tensor, aug: bool) -> torch.Tensor:
        x = imgs.to(device).float() / 255.0  # (B, 3, S, S)
        if aug:
            x = random_augment(x, gen_aug, jitter)  # on the device; random numbers from the CPU generator
        return (x - mean) / std

    def batches(epoch: int):
        for imgs, labels in data.batches(train, batch_size, gen_order):
            yield prep(imgs, augment), labels.to(device)

    @torch.no_grad()
    def predict(model: torch.nn.Module, items: Sequence[Item]) -> Predictions:
        probs = []
        for imgs, _ in data.batches(items, 4 * batch_size, None):
            with autocast(device):
                logits = model(prep(imgs, False))  # (B, C)
            probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        p = np.concatenate(probs)  # (N, C)
        labels = [it.label for it in items]
        if eval_unit == "tile":
            return Predictions([str(it.tile.path) for it in items], [it.patient for it in items], np.array(labels), p)
        units, y, gp = group_mean([it.group for it in items], p, labels)
        patient = {it.group: it.patient for it in items}
        return Predictions(units, [patient[u] for u in units], y, gp)

    def predict_val(model: torch.nn.Module):
        pv = predict(model, val)
        return pv.y_true, pv.probs

    result = fit(model, batches, lambda m, x: m(x), predict_val, epochs=epochs, patience=patience, lr=lr,
                 weight_decay=weight_decay, device=device, desc=desc)
    return RunOutput(predict(model, test), result, len(train), sum(it.origin == "synthetic" for it in train), model)
