"""Does the texture-aware measure see texture? Colour-only vs domain-encoder features on blurred tiles.

For each prepared dataset (split by slide or patient; default: the shipped Kather sample, prepared into
OUT, and any ``--data`` folders), trains a domain encoder (``pathup features train``'s defaults) on its
'train' tiles and reports:

* training time and the encoder's held-out accuracy (overall and at the overview level);
* class-consistency (``pathup.metrics.consistency.measure``, one classifier per feature set trained on
  the real 'train' overview tiles) of (a) the held-out real overview tiles: the ceiling, and (b) the same
  tiles Gaussian-blurred (``--sigmas``, in pixels of the tiles), which keeps their mean colour, with
  ``color-stats`` and with the domain encoder, side by side;
* the Frechet distance of each set to the real 'train' overview tiles, in both feature spaces.

A measure that sees texture loses the blurred tiles' classes; colour statistics keep them.

Usage (about 5-10 minutes on 2 CPU cores with the 1,200-tile set):
    python benchmarks/bench_features.py --out runs/bench_features --data /work/exp/k1200
Writes OUT/features.json and OUT/features.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

LEVEL = "overview"
SIZE = 128  # px: the tiles' size, the classifier's input
COLOUR = "color-stats"


def blurred_sets(dataset: Path, out: Path, sigmas: list[float]) -> dict[str, Path]:
    """The held-out overview tiles of ``dataset``, sharp and Gaussian-blurred, as class folders under ``out``."""
    from PIL import Image, ImageFilter

    rows = [r for r in csv.DictReader(open(dataset / "manifest.csv", newline=""))
            if r["level"] == LEVEL and r["split"] in ("test", "val")]
    sets = {"sharp": out / "sharp", **{f"blur {s:g} px": out / f"blur{s:g}" for s in sigmas}}
    for r in rows:
        img = Image.open(dataset / r["path"]).convert("RGB")
        for name, folder in sets.items():
            dst = folder / r["class"] / Path(r["path"]).name
            if dst.is_file():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            sigma = 0.0 if name == "sharp" else float(name.split()[1])
            (img.filter(ImageFilter.GaussianBlur(sigma)) if sigma else img).save(dst)
    return sets


def frechet(dataset: Path, sets: dict[str, Path], specs: list[str]) -> dict[str, dict[str, float]]:
    """FD of each set to the real 'train' overview tiles, per feature set."""
    from pathup.metrics import consistency as cc
    from pathup.metrics.features import make_extractor
    from pathup.metrics.fid import feature_statistics, frechet_distance

    paths, _classes, splits = cc.labelled_real(dataset, LEVEL)
    train = cc.load_rgb([p for p, s in zip(paths, splits) if s == "train"], SIZE)
    imgs = {name: cc.load_rgb(sorted(folder.rglob("*.png")), SIZE) for name, folder in sets.items()}
    out = {}
    for spec in specs:
        ext = make_extractor(spec)
        ref = feature_statistics(cc.extract(train, ext))
        out[spec] = {name: frechet_distance(*ref, *feature_statistics(cc.extract(im, ext))) for name, im in imgs.items()}
    return out


def run_one(name: str, dataset: Path, out: Path, sigmas: list[float], seed: int) -> dict:
    from pathup.metrics import consistency as cc
    from pathup.metrics.domain import read_encoder_config, train_encoder
    from pathup.metrics.encoder_config import EncoderConfig

    enc = out / "encoder"
    t0 = time.perf_counter()
    train_encoder(EncoderConfig(data=dataset, out=enc, seed=seed, progress=False))
    wall = time.perf_counter() - t0
    meta = read_encoder_config(enc)
    sets = blurred_sets(dataset, out / "sets", sigmas)
    specs = [COLOUR, str(enc)]
    res = cc.measure(dataset, [str(p) for p in sets.values()], level=LEVEL, features=specs, size=SIZE, seed=seed)
    fd = frechet(dataset, sets, specs)
    table = {}
    for spec in specs:
        fr = res["by_features"][spec]
        first = next(iter(fr["sets"].values()))
        label = "domain encoder" if spec == str(enc) else spec
        table[label] = {"ceiling (real held-out)": first["real_heldout"]["accuracy"],
                        **{k: fr["sets"][str(p)]["generated"]["accuracy"] for k, p in sets.items() if k != "sharp"},
                        "fd": {k: fd[spec][k] for k in sets}}
    return {"dataset": str(dataset), "encoder": str(enc), "train_wall_s": wall,
            "train_s": meta["training"]["seconds"], "encoder_heldout": meta["heldout"],
            "tiles": meta["data"]["tiles"], "chance": first["chance"],
            "real_tiles": res["real_tiles"], "class_consistency": table, "measure": res}


def markdown(results: dict) -> str:
    from pathup.metrics.report import markdown_table

    text = "# Colour-only vs texture-aware class-consistency on blurred held-out tiles\n"
    for name, r in results.items():
        held = r["encoder_heldout"] or {}
        text += (f"\n## {name}\n\n{r['dataset']}: encoder trained on {r['tiles']['train']} tiles in {r['train_s']:.0f} s "
                 f"(wall {r['train_wall_s']:.0f} s with loading); held-out accuracy {held.get('accuracy', float('nan')):.3f}"
                 f", overview {held.get('per_level', {}).get(LEVEL, float('nan')):.3f}. Class-consistency at the "
                 f"{LEVEL} level: classifier on {r['real_tiles']['train']} 'train' tiles, {r['real_tiles']['heldout']} "
                 f"held-out tiles (chance {r['chance']:.3f}).\n\n")
        cols = [k for k in next(iter(r["class_consistency"].values())) if k != "fd"]
        fds = list(next(iter(r["class_consistency"].values()))["fd"])
        rows = [[feat, *[f"{v[c]:.3f}" for c in cols], *[f"{v['fd'][k]:.2f}" for k in fds]]
                for feat, v in r["class_consistency"].items()]
        text += markdown_table(["features", *cols, *[f"FD {k}" for k in fds]], rows)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, nargs="*", default=[], help="prepared datasets (besides the Kather sample)")
    ap.add_argument("--no-sample", action="store_true", help="skip the shipped Kather sample")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[1.5, 3.0], help="Gaussian blur sigmas (px)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    datasets = {}
    if not args.no_sample:
        from pathup.experiments.demo.stages import prepare_sample

        sample = args.out / "kather_sample" / "dataset"
        if not (sample / "manifest.csv").is_file():
            prepare_sample("kather", sample, seed=args.seed, progress=False)
        datasets["kather sample"] = sample
    for d in args.data:
        datasets[d.name] = d
    results = {}
    for name, ds in datasets.items():
        results[name] = run_one(name, ds, args.out / name.replace(" ", "_"), args.sigmas, args.seed)
        (args.out / "features.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        (args.out / "features.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
