"""Benchmark of ``pathup compose`` (issue 14): region fidelity, borders, cost.

Given a trained model (``--model``) and the prepared dataset it was trained on (``--data``, for the
class-consistency classifier), composes ``--seeds`` images of a stripe layout (one vertical stripe per
class, equal widths) and generates single-class images of every class at the same size and seeds, then
measures in the same run:

* region fidelity: class-consistency (``pathup.metrics.consistency``: a classifier trained on the real
  tiles predicts each crop's class) on crops inside each stripe, at least ``--margin`` px plus the feather
  width away from its borders, beside the same crops of the single-class images (issue 14 asks for
  within 10 points);
* borders: the seam score (``pathup.metrics.seam``) on the region borders (the stripe edges taken as grid
  lines) and on the patch grid, each beside the single-class images' score on the same lines (no region
  border there: the interior reference; 1.0 = no seam);
* cost: UNet evaluations of compose (counted by its ``RegionDenoiser``) as a ratio to ``pathup generate``
  at the same size, and the wall-time ratio.

Usage::

    python benchmarks/bench_compose.py --model runs/tiny/model --data data/mine --size 1024 --seeds 2
    python benchmarks/bench_compose.py --model runs/bracs/model --data data/bracs --device cuda --size 2048

Prints one JSON object (also written to ``--out``). Do not run it in the default test suite: it samples
full images.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def stripe_layout(classes, ids):
    from pathup.sample.layout import PALETTE, Layout

    k = len(classes)
    labels = np.arange(k, dtype=np.int32)[None, :]  # (1, k): one stripe per class
    return Layout(labels=labels, classes=list(classes), colours=[PALETTE[i % len(PALETTE)] for i in ids],
                  ids=list(ids), source=f"stripes:{k}")


def interior_crops(mask_labels, index, crop, margin):
    """Top-left corners of non-overlapping ``crop`` squares whose every pixel is ``margin`` px inside region ``index``."""
    from scipy.ndimage import distance_transform_edt

    inside = distance_transform_edt(mask_labels == index) > margin
    h, w = mask_labels.shape
    out = []
    for y in range(0, h - crop + 1, crop):
        for x in range(0, w - crop + 1, crop):
            if inside[y:y + crop, x:x + crop].all():
                out.append((x, y))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="trained model folder (pathup train's RUN/model)")
    ap.add_argument("--data", help="prepared dataset of the model (for class-consistency); omit to skip it")
    ap.add_argument("--classes", nargs="*", help="classes of the stripes (default: all of the model's)")
    ap.add_argument("--size", default="1024", help="N or WxH")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--feather", type=int, default=-1, help="latent positions; -1: a quarter patch")
    ap.add_argument("--margin", type=int, default=32, help="px kept from region borders beyond the feather")
    ap.add_argument("--crop", type=int, default=0, help="crop size in px (0: the model's resolution)")
    ap.add_argument("--features", default="color-stats", help="class-consistency features (see pathup evaluate)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    from PIL import Image

    from pathup.metrics.seam import seam_score
    from pathup.sample.config import ComposeConfig, feather_width
    from pathup.sample.regional import compose_image
    from pathup.sample.config import parse_size
    from pathup.sample.layout import resize_labels
    from pathup.sample.pipeline import PathUpPipeline

    pipe = PathUpPipeline.from_pretrained(args.model, device=args.device, progress=False)
    table = pipe.ldm.prompts
    classes = args.classes or list(table.classes)
    ids = [table.class_index(c) for c in classes]
    width, height = parse_size(args.size)
    cfg = ComposeConfig(size=f"{width}x{height}", steps=args.steps, guidance=args.guidance, feather=args.feather)
    f = pipe.ldm.vae_scale_factor
    crop = args.crop or pipe.ldm.resolution
    feather_px = feather_width(cfg) * f
    margin = args.margin + feather_px // 2
    layout = stripe_layout(classes, ids)
    labels = resize_labels(layout.labels, width, height)
    borders = sorted({int(x) for x in np.nonzero(labels[0, 1:] != labels[0, :-1])[0] + 1})
    stripe = borders[0] if borders else width
    work = Path(tempfile.mkdtemp(prefix="bench_compose_"))
    t_comp = t_gen = 0.0
    unet = []
    seams = {"border": {"compose": [], "single": []}, "grid": {"compose": [], "single": []}}
    patch_px, stride_px = cfg.latent_patch * f, (cfg.latent_patch - cfg.latent_overlap) * f
    crops = {cls: interior_crops(labels, i, crop, margin) for i, cls in enumerate(classes)}  # per class, once
    for seed in range(args.seeds):
        t0 = time.perf_counter()
        comp = compose_image(pipe, layout, cfg, seed)
        t_comp += time.perf_counter() - t0
        unet.append(comp.unet)
        image = np.asarray(comp.image)
        seams["border"]["compose"].append(seam_score(image, stripe, stripe))
        seams["grid"]["compose"].append(seam_score(image, patch_px, stride_px, factor=f))
        for cls in classes:
            for (x, y) in crops[cls]:
                d = work / "regions" / cls
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(image[y:y + crop, x:x + crop]).save(d / f"s{seed}_{x}_{y}.png")
            t0 = time.perf_counter()
            single = np.asarray(pipe(cls, output_type="np", size=(width, height), seed=seed, steps=args.steps,
                                     guidance=args.guidance).images[0])
            t_gen += time.perf_counter() - t0
            seams["border"]["single"].append(seam_score(single, stripe, stripe))
            seams["grid"]["single"].append(seam_score(single, patch_px, stride_px, factor=f))
            for (x, y) in crops[cls]:
                d = work / "single" / cls
                d.mkdir(parents=True, exist_ok=True)
                Image.fromarray(single[y:y + crop, x:x + crop]).save(d / f"s{seed}_{x}_{y}.png")
    k = len(classes)
    result = {
        "model": args.model, "size": [width, height], "classes": classes, "seeds": args.seeds,
        "steps": args.steps, "guidance": args.guidance, "feather_px": feather_px, "crop": crop,
        "crops_dir": str(work),
        "unet_ratio_upscale": float(np.mean([u["upscale_ratio"] for u in unet])),
        "unet_ratio_total": float(np.mean([u["ratio"] for u in unet])),
        "patches_by_classes": unet[0]["patches_by_classes"],
        # Time of one composed image against one generated image (single-class images: k per seed).
        "time_ratio": (t_comp / args.seeds) / (t_gen / (args.seeds * k)),
        "seam": {kind: {src: float(np.nanmean(v)) for src, v in d.items()} for kind, d in seams.items()},
    }
    if args.data:
        # Class-consistency of the class-learning work (pathup.metrics.consistency.measure).
        from pathup.device import resolve_device
        from pathup.metrics.consistency import measure

        res = measure(args.data, [work / "regions", work / "single"], level="patch", features=args.features,
                      device=str(resolve_device(args.device)))
        sets = res["sets"]
        reg, sgl = sets[str(work / "regions")], sets[str(work / "single")]
        result["class_consistency"] = {
            "regions": reg["generated"]["accuracy"], "single_class": sgl["generated"]["accuracy"],
            "ceiling_real_heldout": reg["real_heldout"]["accuracy"], "chance": reg["chance"],
            "points_below_single_class": 100.0 * (sgl["generated"]["accuracy"] - reg["generated"]["accuracy"]),
            "per_class_regions": reg["generated"]["per_class"], "per_class_single": sgl["generated"]["per_class"],
            "crops": {"regions": reg["images"], "single": sgl["images"]}}
    text = json.dumps(result, indent=2, default=str)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
