"""A domain encoder: a small CNN that ``pathup`` trains on a prepared dataset's real training tiles.

Colour statistics cannot see blur: a blob of the right mean colour passes for tissue. The encoder here is
trained, supervised, to tell the dataset's classes apart from its real ``train`` tiles, under flips,
90-degree rotations and only MILD colour jitter, so that it must use texture and structure (nuclei,
glands, fibres) and not colour alone; colour still counts. Its embedding (the penultimate layer) is then
a texture-aware feature space for FD, KID, IP/IR and class-consistency (``evaluate --features ENC``), in
the spirit of the domain-specific feature spaces used to evaluate medical image synthesis (e.g.
Kynkaanniemi et al., "The Role of ImageNet Classes in Frechet Inception Distance", ICLR 2023, on how
FID's features follow what their network was trained to see).

Architecture (``DomainCNN``): a stride-2 stem and four stride-2 stages of two 3x3 conv + BatchNorm +
ReLU layers (widths w, 2w, 4w, 8w), global average and standard-deviation pooling of the last two
stages (texture statistics at two scales, as in Gatys et al., "Texture Synthesis Using Convolutional
Neural Networks", NeurIPS 2015), a linear embedding of ``EMBED_DIM`` (BatchNorm, ReLU) and a linear
classifier. About 0.74 M parameters (3 MB) at the default width (24).

Files (no pickle): ``ENC/encoder.safetensors`` (the state dict) and ``ENC/encoder.json``::

    {"format": "pathup-domain-encoder", "format_version": 1,
     "arch": {"width": 24, "embed_dim": 128, "num_classes": 8},
     "classes": [...], "input": {"size": 128, "mean": [r, g, b], "std": [r, g, b]},
     "data": {"path": ..., "split": "train", "levels": [...], "tiles": {"train": N, "heldout": M},
              "per_class": {class: N_c}},
     "heldout": {"split": "test", "accuracy": a, "per_level": {...}, "per_class": {...}, "tiles": M} | null,
     "training": {"epochs", "steps", "batch_size", "lr", "jitter", "seed", "seconds", "final_loss", "device"},
     "weights": {"file": "encoder.safetensors", "sha256": ...}, "pathup_version": ...}

``load_encoder(folder)`` checks the JSON, the weights' checksum and every tensor's name and shape, and
raises a one-line ``PathUpError`` naming the file on any problem.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pathup.errors import OptionError, PathUpError
from pathup.metrics.encoder_config import HELDOUT_SPLITS, TARGET_STEPS, EncoderConfig
from pathup.metrics._common import FeatureExtractor

log = logging.getLogger(__name__)

FORMAT = "pathup-domain-encoder"
FORMAT_VERSION = 1
CONFIG_FILE = "encoder.json"
WEIGHTS_FILE = "encoder.safetensors"
EMBED_DIM = 128  # size of the embedding (the features)
STAGES = 4  # stride-2 stages after the stem; widths w * 2^i
POOLED_STAGES = 2  # the last stages whose mean and std are pooled
DROPOUT = 0.2
LABEL_SMOOTHING = 0.1
WEIGHT_DECAY = 5e-4
WARMUP_FRACTION = 0.1  # of the steps: linear warm-up, then cosine decay
STD_EPS = 1e-5  # inside the square root of the pooled variance
DIHEDRAL = 8  # flips x 90-degree rotations of a square tile


# ------------------------------------------------------------------------------------------ network
def _conv_bn(cin: int, cout: int, stride: int) -> list[torch.nn.Module]:
    return [torch.nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), torch.nn.BatchNorm2d(cout),
            torch.nn.ReLU(inplace=True)]


class DomainCNN(torch.nn.Module):
    """The domain encoder's network: (B, 3, S, S) normalised images -> logits (B, K); ``embed`` -> (B, D)."""

    def __init__(self, width: int, num_classes: int, embed_dim: int = EMBED_DIM) -> None:
        super().__init__()
        chans = [width * 2 ** i for i in range(STAGES)]
        self.stem = torch.nn.Sequential(*_conv_bn(3, width, 2))
        self.stages = torch.nn.ModuleList(
            torch.nn.Sequential(*_conv_bn(cin, cout, 2), *_conv_bn(cout, cout, 1))
            for cin, cout in zip([width, *chans[:-1]], chans))
        pooled = 2 * sum(chans[-POOLED_STAGES:])
        self.embedding = torch.nn.Sequential(torch.nn.Linear(pooled, embed_dim), torch.nn.BatchNorm1d(embed_dim),
                                             torch.nn.ReLU(inplace=True))
        self.classifier = torch.nn.Sequential(torch.nn.Dropout(DROPOUT), torch.nn.Linear(embed_dim, num_classes))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, w, S/2, S/2)
        pooled = []
        for i, stage in enumerate(self.stages):
            x = stage(x)  # (B, w 2^i, S / 2^(i+2), S / 2^(i+2))
            if i >= STAGES - POOLED_STAGES:
                var, mean = torch.var_mean(x, dim=(2, 3), correction=0)  # (B, C_i) each
                pooled += [mean, torch.sqrt(var + STD_EPS)]
        return self.embedding(torch.cat(pooled, dim=1))  # (B, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))  # (B, K)


# ---------------------------------------------------------------------------------------- images
def to_input(images: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 (or float in [0, 1]) -> (B, 3, size, size) normalised float32."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()  # (B, 3, H, W) in [0, 1]
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)  # (B, 3, S, S)


def augment(x: torch.Tensor, jitter: float, g: torch.Generator) -> torch.Tensor:
    """Random dihedral transform (flips, 90-degree rotations) and mild colour jitter of (B, 3, S, S) in [0, 1]."""
    b = x.shape[0]
    out = torch.empty_like(x)
    which = torch.randint(0, DIHEDRAL, (b,), generator=g)  # (B,) dihedral group element
    for k in range(DIHEDRAL):
        idx = (which == k).nonzero().flatten()
        if idx.numel():
            t = torch.rot90(x[idx], k % (DIHEDRAL // 2), dims=(2, 3))
            out[idx] = t.flip(3) if k >= DIHEDRAL // 2 else t
    if jitter > 0:
        def u(n: int, half: float) -> torch.Tensor:
            return 1.0 + (torch.rand(b, n, 1, 1, generator=g) * 2 - 1) * half  # (B, n, 1, 1)

        gray = out.mean(1, keepdim=True)  # (B, 1, S, S)
        out = gray + (out - gray) * u(1, jitter)  # saturation
        mean = out.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
        out = mean + (out - mean) * u(1, jitter)  # contrast
        out = out * u(1, jitter) * u(3, jitter / 2)  # brightness, per-channel gain (stain strength)
    return out.clamp_(0.0, 1.0)


def _load_tiles(paths: Sequence[Path], size: int, progress: bool, desc: str) -> torch.Tensor:
    """(N, 3, size, size) uint8 tiles, resized (when they are not ``size``) as ``to_input`` resizes them."""
    from tqdm.auto import tqdm

    from pathup.io import load_rgb

    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for i, p in enumerate(tqdm(paths, desc=desc, unit="tile", disable=not progress)):
        x = torch.from_numpy(np.asarray(load_rgb(p), dtype=np.uint8).copy()).permute(2, 0, 1)  # (3, H, W)
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x[None].float(), size=(size, size), mode="bilinear", antialias=True,
                              align_corners=False)[0].round().clamp(0, 255).to(torch.uint8)  # (3, S, S)
        out[i] = x
    return out


# ----------------------------------------------------------------------------------------- data
def _select(cfg: EncoderConfig) -> dict[str, Any]:
    """Check the dataset and pick the training and held-out tiles (one-line errors)."""
    from pathup.data.manifest import read_dataset_info, read_manifest

    if cfg.data is None:
        raise OptionError("data", ": no dataset given (a folder written by 'pathup prepare')")
    root = Path(cfg.data)
    if not (root / "manifest.csv").is_file():
        raise OptionError("data", f"{root}: not a prepared dataset (no manifest.csv; run 'pathup prepare' first)")
    rows = read_manifest(root)
    levels = list(cfg.levels) or sorted({r["level"] for r in rows}, key=lambda v: (v != "patch", v))
    unknown = sorted(set(levels) - {r["level"] for r in rows})
    if unknown:
        raise OptionError("levels", f": {', '.join(unknown)} not in {root}/manifest.csv (it has "
                          f"{', '.join(sorted({r['level'] for r in rows}))})")
    rows = [r for r in rows if r["level"] in levels]
    splits = {r["split"] for r in rows}
    train = [r for r in rows if r["split"] == cfg.split]
    if not train:
        raise OptionError("split", f"{cfg.split}: no tiles of this split in {root} (it has {', '.join(sorted(splits))})")
    info = read_dataset_info(root)
    classes = [c for c in info.get("classes", []) if any(r["class"] == c for r in rows)] or \
        sorted({r["class"] for r in train})
    counts = {c: sum(r["class"] == c for r in train) for c in classes}
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise PathUpError(f"{root}: class(es) {', '.join(empty)} have no '{cfg.split}' tiles at level(s) "
                          f"{', '.join(levels)}; the encoder cannot learn them (re-split the dataset or drop them)")
    if len(classes) < 2:
        raise PathUpError(f"{root}: the encoder needs tiles of at least 2 classes, got {classes}")
    if cfg.heldout == "auto":
        held = next((s for s in HELDOUT_SPLITS if s in splits and s != cfg.split), None)
        if held is None:
            raise OptionError("heldout", f": {root} has no held-out 'test' or 'val' split to measure the encoder on "
                              "(prepare with --test-fraction > 0, or pass --heldout none)")
    elif cfg.heldout == "none":
        held = None
    else:
        held = cfg.heldout
        if held == cfg.split or held not in splits:
            raise OptionError("heldout", f"{held}: not a held-out split of {root} (it has {', '.join(sorted(splits))})")
    heldout = [r for r in rows if held and r["split"] == held and r["class"] in counts]
    return {"root": root, "levels": levels, "classes": classes, "train": train, "heldout": heldout,
            "heldout_split": held, "counts": counts}


# ------------------------------------------------------------------------------------------ train
def _seed_all(seed: int) -> torch.Generator:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@torch.no_grad()
def _predict(net: DomainCNN, tiles: torch.Tensor, size: int, mean: torch.Tensor, std: torch.Tensor,
             device: torch.device, batch_size: int) -> np.ndarray:
    net.eval()
    preds = []
    for i in range(0, len(tiles), batch_size):
        x = to_input(tiles[i:i + batch_size].to(device), size, mean, std)  # (B, 3, S, S)
        preds.append(net(x).argmax(1).cpu().numpy())
    return np.concatenate(preds) if preds else np.zeros(0, int)


def _accuracy(pred: np.ndarray, rows: Sequence[dict[str, str]], classes: Sequence[str]) -> dict[str, Any]:
    truth = np.array([classes.index(r["class"]) for r in rows])
    levels = np.array([r["level"] for r in rows])
    return {"accuracy": float((pred == truth).mean()), "tiles": len(rows),
            "per_level": {lv: float((pred[levels == lv] == truth[levels == lv]).mean()) for lv in sorted(set(levels))},
            "per_class": {c: float((pred[truth == i] == i).mean()) if (truth == i).any() else None
                          for i, c in enumerate(classes)}}


def train_encoder(cfg: EncoderConfig) -> Path:
    """Train a domain encoder on ``cfg.data``'s ``cfg.split`` tiles and write ``cfg.out``.

    Returns:
        The encoder folder (``encoder.safetensors`` + ``encoder.json``), usable as ``--features ENC``.

    Raises:
        PathUpError: one line, for a missing dataset, split, held-out split or a class without tiles.
    """
    from tqdm.auto import tqdm

    from pathup import __version__
    from pathup.config import validate
    from pathup.device import resolve_device
    from pathup.io import check_writable_dir

    validate(cfg)
    if cfg.out is None:
        raise OptionError("out", ": no encoder folder given")
    sel = _select(cfg)
    check_writable_dir(cfg.out, "--out")
    device = resolve_device(cfg.device)
    g = _seed_all(cfg.seed)
    root, classes = sel["root"], sel["classes"]
    t_start = time.perf_counter()
    tiles = _load_tiles([root / r["path"] for r in sel["train"]], cfg.size, cfg.progress, "train tiles")
    labels = torch.tensor([classes.index(r["class"]) for r in sel["train"]])  # (N,)
    flat = tiles.float().div_(255.0).transpose(0, 1).reshape(3, -1)  # (3, N S S)
    mean, std = flat.mean(1), flat.std(1).clamp_min(1e-3)  # (3,) each: the training tiles' channel statistics
    del flat
    net = DomainCNN(cfg.width, len(classes)).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = max(1, len(tiles) // cfg.batch_size)  # the last incomplete batch is dropped (BatchNorm)
    epochs = cfg.epochs or max(1, round(TARGET_STEPS / steps_per_epoch))
    total = steps_per_epoch * epochs
    warm = max(1, int(WARMUP_FRACTION * total))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 *
                                              (1 + math.cos(math.pi * min(1.0, max(0, s - warm) / max(1, total - warm)))))
    mean_d, std_d = mean.to(device), std.to(device)
    loss_ema = float("nan")
    bar = tqdm(total=total, desc="encoder", unit="step", disable=not cfg.progress)
    for _epoch in range(epochs):
        net.train()
        order = torch.randperm(len(tiles), generator=g)
        for s in range(steps_per_epoch):
            idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
            x = augment(tiles[idx].float().div_(255.0), cfg.jitter, g)  # (B, 3, S, S) in [0, 1]
            x = ((x.to(device) - mean_d.view(1, 3, 1, 1)) / std_d.view(1, 3, 1, 1))
            loss = F.cross_entropy(net(x), labels[idx].to(device), label_smoothing=LABEL_SMOOTHING)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_ema = loss.item() if loss_ema != loss_ema else 0.9 * loss_ema + 0.1 * loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_ema:.3f}")
    bar.close()
    train_s = time.perf_counter() - t_start
    heldout = None
    if sel["heldout"]:
        held_tiles = _load_tiles([root / r["path"] for r in sel["heldout"]], cfg.size, cfg.progress, "held-out tiles")
        pred = _predict(net, held_tiles, cfg.size, mean_d, std_d, device, cfg.batch_size)
        heldout = {"split": sel["heldout_split"], **_accuracy(pred, sel["heldout"], classes)}
        log.info("encoder: held-out '%s' accuracy %.3f (%s)", sel["heldout_split"], heldout["accuracy"],
                 ", ".join(f"{k} {v:.3f}" for k, v in heldout["per_level"].items()))
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "arch": {"width": cfg.width, "embed_dim": EMBED_DIM, "num_classes": len(classes)},
        "classes": classes,
        "input": {"size": cfg.size, "mean": mean.tolist(), "std": std.tolist()},
        "data": {"path": str(root.resolve()), "split": cfg.split, "levels": sel["levels"],
                 "tiles": {"train": len(sel["train"]), "heldout": len(sel["heldout"])},
                 "per_class": sel["counts"]},
        "heldout": heldout,
        "training": {"epochs": epochs, "steps": total, "batch_size": cfg.batch_size, "lr": cfg.lr, "jitter": cfg.jitter,
                     "seed": cfg.seed, "seconds": round(train_s, 1), "final_loss": loss_ema,
                     "device": str(device)},
        "pathup_version": __version__,
    }
    save_encoder(net, meta, cfg.out)
    return Path(cfg.out)


# ------------------------------------------------------------------------------------ save / load
def save_encoder(net: DomainCNN, meta: dict[str, Any], out: str | Path) -> None:
    """Write ``out/encoder.safetensors`` then ``out/encoder.json`` (each atomically; the JSON holds the
    weights' sha256, so a folder left half-written is refused on load)."""
    from safetensors.torch import save

    from pathup.io import atomic_write_bytes, atomic_write_text

    out = Path(out)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    # one metadata entry: safetensors writes a map's entries in a random order, and the bytes must not vary
    data = save(state, metadata={"format": f"{FORMAT}/{FORMAT_VERSION}"})
    atomic_write_bytes(out / WEIGHTS_FILE, data)
    meta = {**meta, "weights": {"file": WEIGHTS_FILE, "sha256": hashlib.sha256(data).hexdigest()}}
    atomic_write_text(out / CONFIG_FILE, json.dumps(meta, indent=2) + "\n")


def is_encoder_folder(spec: str | Path) -> bool:
    """Whether ``spec`` is a folder holding ``encoder.json`` (or that file itself)."""
    p = Path(spec)
    return (p.is_dir() and (p / CONFIG_FILE).is_file()) or (p.is_file() and p.name == CONFIG_FILE)


def _need(meta: dict[str, Any], key: str, kind: type | tuple[type, ...], where: Path) -> Any:
    value = meta.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise PathUpError(f"{where}: '{key}' is missing or not a {getattr(kind, '__name__', kind)} (a damaged or "
                          "foreign encoder.json; retrain with 'pathup features train')")
    return value


def read_encoder_config(folder: str | Path) -> dict[str, Any]:
    """The checked content of ``folder/encoder.json`` (PathUpError naming the file otherwise)."""
    folder = Path(folder)
    path = folder / CONFIG_FILE if folder.is_dir() or folder.name != CONFIG_FILE else folder
    try:
        meta = json.loads(path.read_text())
    except OSError as err:
        raise PathUpError(f"{path}: cannot read the encoder config ({err.strerror or err})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PathUpError(f"{path}: not valid JSON ({str(err).splitlines()[0]})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PathUpError(f"{path}: not a pathup domain encoder config (no \"format\": \"{FORMAT}\")")
    if meta.get("format_version") != FORMAT_VERSION:
        raise PathUpError(f"{path}: format_version {meta.get('format_version')!r} is not supported (this pathup "
                          f"reads {FORMAT_VERSION}); retrain with 'pathup features train'")
    arch = _need(meta, "arch", dict, path)
    for key in ("width", "embed_dim", "num_classes"):
        if not isinstance(arch.get(key), int) or isinstance(arch.get(key), bool) or arch[key] < 1:
            raise PathUpError(f"{path}: arch.{key} must be a positive integer, got {arch.get(key)!r}")
    classes = _need(meta, "classes", list, path)
    if len(classes) != arch["num_classes"] or not all(isinstance(c, str) for c in classes):
        raise PathUpError(f"{path}: 'classes' must list arch.num_classes = {arch['num_classes']} class names")
    inp = _need(meta, "input", dict, path)
    if not isinstance(inp.get("size"), int) or inp["size"] < 1:
        raise PathUpError(f"{path}: input.size must be a positive integer, got {inp.get('size')!r}")
    for key in ("mean", "std"):
        v = inp.get(key)
        if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) and math.isfinite(x)
                                                            for x in v)) or (key == "std" and min(v) <= 0):
            raise PathUpError(f"{path}: input.{key} must be 3 finite numbers{' > 0' if key == 'std' else ''}, "
                              f"got {v!r}")
    weights = _need(meta, "weights", dict, path)
    if weights.get("file") != WEIGHTS_FILE or not isinstance(weights.get("sha256"), str):
        raise PathUpError(f"{path}: 'weights' must name {WEIGHTS_FILE} and its sha256")
    meta["_folder"] = str(path.parent)
    return meta


def load_encoder(folder: str | Path, device: str | torch.device = "cpu") -> tuple[DomainCNN, dict[str, Any]]:
    """The trained network (eval mode, frozen) and its checked config from an encoder folder."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    meta = read_encoder_config(folder)
    wpath = Path(meta["_folder"]) / WEIGHTS_FILE
    try:
        data = wpath.read_bytes()
    except OSError as err:
        raise PathUpError(f"{wpath}: cannot read the encoder weights ({err.strerror or err})") from None
    if hashlib.sha256(data).hexdigest() != meta["weights"]["sha256"]:
        raise PathUpError(f"{wpath}: its sha256 does not match {CONFIG_FILE} (damaged, or not the weights this "
                          "config was written with); retrain or copy both files together")
    try:
        state = load(data)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise PathUpError(f"{wpath}: not a safetensors file ({str(err).splitlines()[0]})") from None
    arch = meta["arch"]
    net = DomainCNN(arch["width"], arch["num_classes"], arch["embed_dim"])
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state.items()}
    if want != got:
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        shapes = [k for k in set(want) & set(got) if want[k] != got[k]]
        what = (f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}" if extra else
                f"{shapes[0]} has shape {got[shapes[0]]}, expected {want[shapes[0]]}")
        raise PathUpError(f"{wpath}: tensors do not match the architecture of {CONFIG_FILE} ({what})")
    net.load_state_dict(state)
    return net.to(device).eval().requires_grad_(False), meta


class DomainEncoderExtractor(FeatureExtractor):
    """Features of a domain encoder folder: the (B, EMBED_DIM) embedding of (B, 3, H, W) uint8 images, resized
    to the encoder's input size inside (not comparable with the literature: a dataset-specific network)."""

    def __init__(self, folder: str | Path, weights: str | Path | None = None) -> None:
        super().__init__()
        if weights is not None:
            raise OptionError("features_weights", "is not used with a domain encoder folder (its weights are "
                              f"{WEIGHTS_FILE} inside it)")
        self.net, self.meta = load_encoder(folder)
        self.size = int(self.meta["input"]["size"])
        self.register_buffer("mean", torch.tensor(self.meta["input"]["mean"], dtype=torch.float32), persistent=False)
        self.register_buffer("std", torch.tensor(self.meta["input"]["std"], dtype=torch.float32), persistent=False)
        self.dim = int(self.meta["arch"]["embed_dim"])
        self.classes = list(self.meta["classes"])
        self.cache_id = f"domain:{Path(self.meta['_folder']).resolve()}:{self.meta['weights']['sha256']}"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = to_input(images.to(self.mean.device), self.size, self.mean, self.std)  # (B, 3, S, S)
        return self.net.embed(x).float()  # (B, D)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class indices (B,) into ``self.classes`` of (B, 3, H, W) uint8 images."""
        x = to_input(images.to(self.mean.device), self.size, self.mean, self.std)  # (B, 3, S, S)
        return self.net(x).argmax(1)  # (B,)


def describe(folder: str | Path) -> str:
    """One line about an encoder folder: classes, tiles, held-out accuracy."""
    meta = read_encoder_config(folder)
    held = meta.get("heldout")
    acc = (f"held-out '{held['split']}' accuracy {held['accuracy']:.3f} ("
           + ", ".join(f"{k} {v:.3f}" for k, v in held.get("per_level", {}).items()) + ")") if held else "no held-out split"
    return (f"{meta['_folder']}: {meta['arch']['num_classes']} classes, {meta['data']['tiles']['train']} "
            f"'{meta['data']['split']}' tiles, {meta['input']['size']} px, {acc}, "
            f"trained in {meta['training']['seconds']:.0f} s")


__all__ = ["EncoderConfig", "DomainCNN", "DomainEncoderExtractor", "train_encoder", "save_encoder", "load_encoder",
           "read_encoder_config", "is_encoder_folder", "describe", "augment", "to_input"]
