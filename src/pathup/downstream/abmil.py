"""Attention-based multiple-instance learning (ABMIL; Ilse, Tomczak & Welling, ICML 2018).

A bag is the set of patch tiles of one large image; each patch is embedded by a frozen timm
network (embeddings cached on disk), and the bag is classified from the attention-weighted mean
of its instance embeddings with the gated attention of Ilse et al.:

    a_k = exp(w^T (tanh(V h_k) * sigm(U h_k))) / sum_j exp(w^T (tanh(V h_j) * sigm(U h_j)))   (Eq. 9)
    z = sum_k a_k h_k                                                                          (Eq. 7)

The softmax runs over the bag's instances only (padding is masked), so the weights of a bag sum
to one and the bag score does not depend on the order of its instances.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from pathup.downstream.arms import Jitter, random_augment
from pathup.downstream.backbones import create_timm_model, input_stats
from pathup.downstream.data import Bag, Tile
from pathup.downstream.images import load_tiles
from pathup.downstream.train import autocast, fit
from pathup.downstream.vit import Predictions, RunOutput
from pathup.errors import PathUpError
from pathup.io import atomic_path

log = logging.getLogger(__name__)


class GatedAttentionMIL(nn.Module):
    """Gated-attention MIL classifier (Ilse et al. 2018, Eqs. 7 and 9), multi-class head.

    Args:
        in_dim: size D of the instance embeddings given to ``forward``.
        n_classes: number of bag classes.
        hidden: size M of the instance representation h_k (Ilse et al.: 500).
        attention: size L of the attention layer (Ilse et al.: 128).
        dropout: dropout on h_k during training.
    """

    def __init__(self, in_dim: int, n_classes: int, hidden: int = 500, attention: int = 128,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attention_v = nn.Linear(hidden, attention)  # V in Eq. 9 (tanh branch)
        self.attention_u = nn.Linear(hidden, attention)  # U in Eq. 9 (sigmoid gate)
        self.attention_w = nn.Linear(attention, 1)  # w in Eq. 9
        self.classifier = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Classify bags.

        Args:
            x: instance embeddings, (B, K, D); bags shorter than K are padded.
            mask: True for real instances, (B, K) bool; ``None`` means no padding.

        Returns:
            logits (B, C) and attention weights (B, K) (0 on padding, each row sums to 1).
        """
        h = self.embed(x)  # (B, K, M)
        gate = torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h))  # (B, K, L)
        scores = self.attention_w(gate).squeeze(-1)  # (B, K)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        a = torch.softmax(scores.float(), dim=1)  # (B, K)
        z = torch.bmm(a.unsqueeze(1).to(h.dtype), h).squeeze(1)  # (B, M)
        return self.classifier(z), a  # (B, C), (B, K)


def pad_bags(bags: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack bags of different sizes: (B, K_max, D) zero-padded and a (B, K_max) mask of real instances."""
    k = max(b.shape[0] for b in bags)
    x = torch.zeros((len(bags), k, bags[0].shape[1]), dtype=bags[0].dtype)
    mask = torch.zeros((len(bags), k), dtype=torch.bool)
    for i, b in enumerate(bags):
        x[i, :b.shape[0]] = b
        mask[i, :b.shape[0]] = True
    return x, mask


class PatchEmbedder:
    """A frozen timm network that embeds patches, with an on-disk cache of its embeddings.

    View 0 of a tile is the tile itself; views 1, 2, ... are random augmentations ('Rand.' arm),
    each drawn from a generator seeded by the tile and view, so a cached view never changes.

    Args:
        name: timm model name (pooled features, no head).
        weights: see ``create_timm_model`` (``None``: from scratch, random and frozen).
        img_size: input size patches are resized to (default: the model's).
        device: where to run it.
        batch_size: patches per forward pass.
        jitter: colour jitter of the augmented views.
        cache_dir: folder of the cache file (``None``: memory only).
    """

    def __init__(self, name: str, weights: str | None, img_size: int | None, device: torch.device,
                 batch_size: int = 64, jitter: Jitter = Jitter(), cache_dir: Path | None = None) -> None:
        kwargs: dict = {"num_classes": 0}
        try:
            model = create_timm_model(name, weights, option="--abmil-encoder",
                                      **(kwargs | ({"img_size": img_size} if img_size else {})))
        except TypeError:  # CNNs take no img_size: they run at any size
            model = create_timm_model(name, weights, option="--abmil-encoder", **kwargs)
        self.model = model.eval().requires_grad_(False).to(device)
        mean, std, native = input_stats(self.model)
        self.size = int(img_size or native)
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.dim = int(self.model.num_features)
        self.device = device
        self.batch_size = batch_size
        self.jitter = jitter
        wid = weights
        if weights and Path(weights).exists():
            p = Path(weights).resolve()
            wid = f"{p}|{p.stat().st_mtime_ns}"
        ident = json.dumps({"name": name, "weights": wid, "size": self.size, "jitter": jitter.__dict__})
        self.cache_file = None if cache_dir is None else \
            Path(cache_dir) / f"embeddings_{hashlib.sha1(ident.encode()).hexdigest()[:16]}.pt"
        self.table: dict[str, torch.Tensor] = {}
        if self.cache_file is not None and self.cache_file.is_file():
            try:
                saved = torch.load(self.cache_file, map_location="cpu", weights_only=True)
                self.table = dict(zip(saved["keys"], saved["emb"]))
            except Exception as err:  # noqa: BLE001 - a broken cache is rebuilt
                log.warning("ignoring unreadable embedding cache %s (%s)", self.cache_file, err)

    def _augment_seed(self, key: str, view: int) -> int:
        return zlib.crc32(f"{key}#{view}".encode())

    @torch.no_grad()
    def embed(self, tiles: Sequence[Tile], views: int = 1) -> None:
        """Compute (or take from the cache) the embeddings of ``views`` views of every tile."""
        keys = {t: t.key() for t in tiles}
        todo = [(t, v) for t in dict.fromkeys(tiles) for v in range(views) if f"{keys[t]}#{v}" not in self.table]
        if not todo:
            return
        todo.sort(key=lambda tv: (str(tv[0].path), tv[0].box or (), tv[1]))
        chunk = max(self.batch_size, 256)
        for start in tqdm(range(0, len(todo), chunk), desc=f"embedding {len(todo)} patches", leave=False):
            part = todo[start:start + chunk]
            uniq = list(dict.fromkeys(t for t, _ in part))
            pos = {t: i for i, t in enumerate(uniq)}
            images = load_tiles(uniq, self.size)  # (U, 3, S, S) uint8
            for b in range(0, len(part), self.batch_size):
                sub = part[b:b + self.batch_size]
                x = images[[pos[t] for t, _ in sub]].to(self.device).float() / 255.0  # (B, 3, S, S)
                for i, (t, v) in enumerate(sub):
                    if v > 0:
                        g = torch.Generator().manual_seed(self._augment_seed(keys[t], v))
                        x[i:i + 1] = random_augment(x[i:i + 1], g, self.jitter)
                x = (x - self.mean) / self.std
                with autocast(self.device):
                    f = self.model(x)  # (B, D)
                for (t, v), fv in zip(sub, f.float().cpu().to(torch.float16)):
                    self.table[f"{keys[t]}#{v}"] = fv
        self.save()

    def save(self) -> None:
        if self.cache_file is None:
            return
        keys = list(self.table)
        with atomic_path(self.cache_file) as tmp:
            torch.save({"keys": keys, "emb": torch.stack([self.table[k] for k in keys])}, tmp)

    def bag_tensor(self, bag: Bag, views: int = 1) -> torch.Tensor:
        """The cached embeddings of a bag, (K, V, D) float16."""
        rows = []
        for t in bag.tiles:
            k = t.key()
            rows.append(torch.stack([self.table[f"{k}#{v}"] for v in range(views)]))  # (V, D)
        return torch.stack(rows)  # (K, V, D)


def train_abmil(train: Sequence[Bag], val: Sequence[Bag], test: Sequence[Bag], features: dict[str, torch.Tensor], *,
                in_dim: int, n_classes: int, seed: int, augment: bool, hidden: int, attention: int,
                dropout: float, lr: float, weight_decay: float, batch_size: int, epochs: int, patience: int,
                device: torch.device, desc: str = "abmil") -> RunOutput:
    """Train one ABMIL run (one arm, one seed) with early stopping; return its test predictions.

    ``features[bag.key]`` is the bag's (K, V, D) embeddings; with ``augment`` each instance takes a
    random view every epoch ('Rand.' arm), otherwise view 0 (the patch itself).
    """
    for b in list(train) + list(val) + list(test):
        if b.key not in features:
            raise PathUpError(f"no embeddings for bag {b.key}")
    torch.manual_seed(seed)
    model = GatedAttentionMIL(in_dim, n_classes, hidden, attention, dropout).to(device)
    gen = torch.Generator().manual_seed(seed)

    def collate(bags: Sequence[Bag], aug: bool) -> tuple[torch.Tensor, torch.Tensor]:
        chosen = []
        for b in bags:
            f = features[b.key]  # (K, V, D)
            if aug and f.shape[1] > 1:
                v = torch.randint(0, f.shape[1], (f.shape[0],), generator=gen)  # (K,)
                chosen.append(f[torch.arange(f.shape[0]), v].float())  # (K, D)
            else:
                chosen.append(f[:, 0].float())  # (K, D)
        x, mask = pad_bags(chosen)  # (B, K, D), (B, K)
        return x.to(device), mask.to(device)

    def batches(epoch: int):
        order = torch.randperm(len(train), generator=gen).tolist()
        for s in range(0, len(order), batch_size):
            sel = [train[i] for i in order[s:s + batch_size]]
            yield collate(sel, augment), torch.tensor([b.label for b in sel], device=device)

    @torch.no_grad()
    def predict(model: nn.Module, bags: Sequence[Bag]) -> Predictions:
        probs = []
        for s in range(0, len(bags), batch_size):
            x, mask = collate(bags[s:s + batch_size], False)
            with autocast(device):
                logits, _ = model(x, mask)  # (B, C)
            probs.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        return Predictions([b.key for b in bags], [b.patient for b in bags],
                           np.array([b.label for b in bags]), np.concatenate(probs))

    def predict_val(model: nn.Module):
        pv = predict(model, val)
        return pv.y_true, pv.probs

    result = fit(model, batches, lambda m, inp: m(*inp)[0], predict_val, epochs=epochs, patience=patience,
                 lr=lr, weight_decay=weight_decay, device=device, desc=desc)
    return RunOutput(predict(model, test), result, len(train), sum(b.origin == "synthetic" for b in train), model)
