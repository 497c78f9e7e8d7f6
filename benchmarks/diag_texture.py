"""Where does a class's texture go? Per-class texture statistics of real tiles, their reconstructions and
generated images, with the domain encoder's confusion matrix for each (the diagnosis of a class that is never
recognised, e.g. Kather's lymphocytes generated as tumour).

For the held-out tiles of a prepared dataset (overview level) the model's autoencoder reconstructs each tile;
every folder of generated images (one subfolder per class, as ``pathup generate`` and ``bench_classes.py``
write them) is read as it is. Printed per class and set:

* ``hf``: the fraction of the luminance's spectral power above half the Nyquist frequency (nucleus edges and
  chromatin; a blur drops it towards 0);
* ``std``: the luminance's standard deviation within the image (dark nuclei on a pale ground are high);
* ``dark``: the fraction of pixels darker than 0.45 in luminance (haematoxylin-dense nuclei);
* the domain encoder's (``RUN/encoder``) accuracy and the classes it predicts instead.

A class whose reconstructions are recognised but whose generated images are not is lost by the UNet; one
whose reconstructions are already confused is lost by the autoencoder.

Usage: python benchmarks/diag_texture.py RUN DATASET [GENERATED_FOLDER ...] [--threads N] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def texture_stats(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image ``hf``, ``std`` and ``dark`` of (N, H, W, 3) uint8 images (see the module's docstring)."""
    rgb = images.astype(np.float64) / 255.0
    lum = rgb @ np.array([0.299, 0.587, 0.114])  # (N, H, W)
    centred = lum - lum.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(centred)) ** 2  # (N, H, W)
    h, w = lum.shape[1:]
    fy, fx = np.meshgrid(np.fft.fftfreq(h), np.fft.fftfreq(w), indexing="ij")  # cycles per pixel, Nyquist 0.5
    high = np.hypot(fy, fx) > 0.25
    total = power.sum(axis=(1, 2))
    hf = np.where(total > 0, (power * high).sum(axis=(1, 2)) / np.maximum(total, 1e-12), 0.0)
    return {"hf": hf, "std": lum.std(axis=(1, 2)), "dark": (lum < 0.45).mean(axis=(1, 2))}


def main() -> None:
    from diffusers import AutoencoderKL

    from pathup.metrics.consistency import extract, labelled_fake, load_rgb, score
    from pathup.metrics.judge import Judge, RealSet
    from pathup.metrics.reconstruction import reconstruct

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="a training run folder with model/ and encoder/")
    ap.add_argument("dataset", type=Path, help="the prepared dataset the run was trained on")
    ap.add_argument("generated", type=Path, nargs="*", help="folders of generated images, one subfolder per class")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    vae = AutoencoderKL.from_pretrained(str(args.run / "model"), subfolder="vae").eval()
    res = int(vae.config.sample_size)
    real = RealSet.load(args.dataset, split="train", val_split="auto", level="overview", resolution=res,
                        max_train=100000, max_held=100000)
    if real is None:
        raise SystemExit(f"{args.dataset}: no held-out split")
    sets = {"real": (real.held_images, real.held_labels),
            "reconstructed": (reconstruct(vae, real.held_images), real.held_labels)}
    for folder in args.generated:
        gpaths, glabels = labelled_fake(folder)
        sets[f"generated {folder.name}"] = (load_rgb(gpaths, res), glabels)
    spec = str(args.run / "encoder")
    judge = Judge(real, [spec])
    classes = judge.classes
    result: dict = {}
    for name, (imgs, labs) in sets.items():
        stats = texture_stats(imgs)
        rep = score(judge.clfs[spec], extract(imgs, judge.extractors[spec]), labs, classes, name).to_dict()
        confusion = np.asarray(rep["confusion"])
        result[name] = {"accuracy": rep["accuracy"], "per_class": {}}
        print(f"\n== {name}: {len(imgs)} images, domain encoder accuracy {rep['accuracy']:.3f}")
        print(f"{'class':<12}{'n':>4}{'hf':>8}{'std':>8}{'dark':>8}{'acc':>7}  predicted instead")
        labs = np.asarray(labs)
        for k, c in enumerate(classes):
            m = labs == c
            if not m.any():
                continue
            wrong = {classes[j]: int(n) for j, n in enumerate(confusion[k]) if n and j != k}
            entry = {"n": int(m.sum()), **{key: float(v[m].mean()) for key, v in stats.items()},
                     "accuracy": float(rep["per_class"][c]), "instead": wrong}
            result[name]["per_class"][c] = entry
            print(f"{c:<12}{entry['n']:>4}{entry['hf']:>8.4f}{entry['std']:>8.3f}{entry['dark']:>8.3f}"
                  f"{entry['accuracy']:>7.2f}  " + ", ".join(f"{a} {n}" for a, n in sorted(wrong.items(), key=lambda kv: -kv[1])))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
