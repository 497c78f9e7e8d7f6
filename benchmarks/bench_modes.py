"""Per-mode prompts, an experiment: does a class drawn as its modes' average follow its class when each mode
has its own prompt?

Kather's debris is red blood, torn red tissue and pale mucus; the models drew it as stroma. Three steps:

1. ``split``: copy a prepared dataset's manifest with one class cut into K colour modes (k-means on each tile's
   RGB mean and std and its white fraction, fitted on the training tiles), each mode a class of its own
   (``05_DEBRIS_1`` ... with prompts ``"05 DEBRIS 1, overview"``); the tiles are linked, not copied;
2. train and generate on the split dataset with ``bench_classes.py --dataset SPLIT`` (every mode sampled
   ``--per-class`` times);
3. ``merge``: put the modes' images back under the class, as many of each mode as its share of the class's
   training tiles, and measure class-consistency against the original dataset (``measure``, with the features
   given: one encoder for runs that are compared).

Measured on the 1,200 Kather tiles (README, "Per-mode prompts for debris"), K = 3, UNet seed 2, 2,000 steps:
debris 0.04 against 0.00 with one prompt; the modes' images move toward their modes' colour but stay a pink
field with nuclei.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np


def tile_features(path: Path) -> np.ndarray:
    """RGB mean (3), RGB std (3) and the fraction of near-white pixels (min channel > 0.8) of one tile."""
    from PIL import Image

    a = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
    px = a.reshape(-1, 3)
    return np.concatenate([px.mean(0), px.std(0), [(a.min(axis=2) > 0.8).mean()]])


def split(src: Path, dst: Path, cls: str, k: int, seed: int = 0) -> dict[str, dict[str, int]]:
    """Write DST (manifest.csv, dataset.json, a link to SRC's tiles) with CLS cut into K modes; return the
    tiles per mode and split."""
    from sklearn.cluster import KMeans

    with open(src / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    idx = [i for i, r in enumerate(rows) if r["class"] == cls]
    if not idx:
        raise SystemExit(f"{src / 'manifest.csv'}: no tiles of class {cls!r}")
    x = np.stack([tile_features(src / rows[i]["path"]) for i in idx])
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    train = np.array([rows[i]["split"] == "train" for i in idx])
    modes = KMeans(k, n_init=10, random_state=seed).fit(x[train]).predict(x)
    dst.mkdir(parents=True, exist_ok=True)
    if not (dst / "tiles").exists():
        os.symlink((src / "tiles").resolve(), dst / "tiles")
    counts: dict[str, dict[str, int]] = {}
    for i, m in zip(idx, modes):
        r = rows[i]
        r["class"] = name = f"{cls}_{m + 1}"
        r["prompt"] = f"{name.replace('_', ' ')}, {r['level']}"
        counts.setdefault(name, {}).setdefault(r["split"], 0)
        counts[name][r["split"]] += 1
    with open(dst / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ds = json.loads((src / "dataset.json").read_text())
    j = ds["classes"].index(cls)
    ds["classes"][j:j + 1] = [f"{cls}_{m + 1}" for m in range(k)]
    ds["prompts"] = [f"{c.replace('_', ' ')}, {lv}" for c in ds["classes"] for lv in ds["levels"]]
    (dst / "dataset.json").write_text(json.dumps(ds, indent=2))
    return dict(sorted(counts.items()))


def merge(generated: Path, split_dataset: Path, cls: str) -> Path:
    """GENERATED/../merged/<name>/ with CLS's modes merged back in proportion to their training tiles."""
    from pathup.data.generated import class_dirname

    with open(split_dataset / "manifest.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "train" and r["class"].startswith(cls + "_")]
    freq: dict[str, int] = {}
    for r in rows:
        freq[r["class"]] = freq.get(r["class"], 0) + 1
    out = generated.parent / "merged" / generated.name
    shutil.rmtree(out, ignore_errors=True)
    others = [d for d in generated.iterdir() if d.is_dir() and not d.name.startswith(class_dirname(cls) + "_")]
    for d in others:
        shutil.copytree(d, out / d.name)
    n = len(list(others[0].glob("*.png")))
    shares = {c: round(n * f / sum(freq.values())) for c, f in sorted(freq.items())}
    shares[max(shares, key=shares.get)] += n - sum(shares.values())
    (out / class_dirname(cls)).mkdir(parents=True)
    for c, k in shares.items():
        for p in sorted((generated / class_dirname(c)).glob("*.png"), key=lambda p: int(p.stem[1:]))[:k]:
            shutil.copy(p, out / class_dirname(cls) / f"{c}-{p.name}")
    print(f"{cls}: images per mode {shares}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split", help="cut one class of a prepared dataset into colour modes")
    s.add_argument("--dataset", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--class", dest="cls", default="05_DEBRIS")
    s.add_argument("--modes", type=int, default=3)
    m = sub.add_parser("merge", help="merge the modes' generated images and measure class-consistency")
    m.add_argument("--generated", type=Path, required=True, help="bench_classes' OUT/generated/g<guidance>")
    m.add_argument("--split-dataset", type=Path, required=True)
    m.add_argument("--dataset", type=Path, required=True, help="the original dataset")
    m.add_argument("--class", dest="cls", default="05_DEBRIS")
    m.add_argument("--features", nargs="+", required=True, help="e.g. runs/X/run/encoder color-stats")
    m.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.cmd == "split":
        for name, n in split(args.dataset, args.out, args.cls, args.modes).items():
            print(name, n)
        return
    import torch

    from pathup.metrics.consistency import measure

    torch.set_num_threads(args.threads)
    out = merge(args.generated, args.split_dataset, args.cls)
    res = measure(args.dataset, [out], level="overview", features=args.features, seed=0)
    for spec, v in res["by_features"].items():
        got = next(iter(v["sets"].values()))
        print(f"{spec}: generated {got['generated']['accuracy']:.3f} vs real {got['real_heldout']['accuracy']:.3f}, "
              f"{len(got['above_3x_chance'])}/{len(got['classes'])} above 3x chance; per class "
              + ", ".join(f"{c} {a:.2f}" for c, a in got["generated"]["per_class"].items()))
    (out.parent / "merged.json").write_text(json.dumps(res, indent=1, default=str))


if __name__ == "__main__":
    main()
