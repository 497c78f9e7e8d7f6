"""Does a trained model know its classes, apart from sampling? The model as a diffusion classifier.

For up to ``--tiles`` real overview tiles per class of a prepared dataset (each split), the latent is noised
to t = 100, 300, ..., 900 (two noises each) and the UNet's denoising error is computed under every class's
overview prompt. A tile is "classified" as the prompt with the lowest mean error (Li et al., "Your diffusion
model is secretly a zero-shot classifier", ICCV 2023). Printed per split: that confusion matrix, and per true
class the mean error under each prompt relative to its own. Also printed: the cosine similarity between
the prompts' text embeddings minus the empty prompt's.

A class the model classifies well here but does not draw (``bench_classes.py``) is learned and lost in
sampling; one it cannot classify here is not learned.

Usage: python benchmarks/diag_diffusion_classifier.py RUN/model DATASET [--tiles 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import csv

import numpy as np
import torch


def main() -> None:
    from PIL import Image

    from pathup.losses.denoising import denoising_target
    from pathup.model import load_ldm

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("dataset")
    ap.add_argument("--tiles", type=int, default=16, help="real overview tiles per class and split")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ldm = load_ldm(args.model)
    table = ldm.prompts
    prompts = [table.prompt(c, "overview" if table.levels else None) for c in table.classes]
    with torch.no_grad():
        emb = ldm.encode_prompts(prompts + [""])  # (P + 1, L, D)
    e = torch.nn.functional.normalize((emb[:-1] - emb[-1:]).flatten(1), dim=1)
    short = [c.replace("_", " ").split()[-1][:6] for c in table.classes]
    print("cosine of (prompt - empty prompt) text embeddings")
    print("       " + " ".join(f"{s:>6}" for s in short))
    for s, row in zip(short, (e @ e.T).numpy()):
        print(f"{s:>6} " + " ".join(f"{v:6.2f}" for v in row))
    rows = [r for r in csv.DictReader(open(f"{args.dataset}/manifest.csv"))
            if r["level"] == "overview" or not table.levels]
    res = ldm.resolution
    ts = [100, 300, 500, 700, 900]
    rng = np.random.default_rng(0)
    for split in sorted({r["split"] for r in rows}):
        print(f"\n{split}: rows = true class, columns = prompt with the lowest mean error "
              f"({args.tiles} tiles x {len(ts)} t x 2 noises); then mean error under each prompt / own prompt")
        correct = total = 0
        for ci, c in enumerate(table.classes):
            rs = [r for r in rows if r["split"] == split and r["class"] == c]
            if not rs:
                continue
            pick = rng.choice(len(rs), min(args.tiles, len(rs)), replace=False)
            x = torch.stack([torch.from_numpy(np.array(Image.open(f"{args.dataset}/{rs[i]['path']}").convert("RGB")
                                                       .resize((res, res)))).permute(2, 0, 1).float() / 127.5 - 1
                             for i in pick])  # (B, 3, R, R)
            with torch.no_grad():
                z = ldm.encode_images(x)
                loss = torch.zeros(len(x), len(prompts))
                for t in ts:
                    tt = torch.full((len(z),), t)
                    for k in range(2):
                        n = torch.randn(z.shape, generator=torch.Generator().manual_seed(1000 * t + k))
                        zt = ldm.scheduler.add_noise(z, n, tt)
                        target = denoising_target(ldm.scheduler, z, n, tt)
                        for pi in range(len(prompts)):
                            out = ldm.unet(zt, t, encoder_hidden_states=emb[pi:pi + 1].expand(len(z), -1, -1)).sample
                            loss[:, pi] += ((out - target) ** 2).mean((1, 2, 3))
            counts = np.bincount(loss.argmin(1).numpy(), minlength=len(prompts))
            correct += int(counts[ci])
            total += len(x)
            rel = (loss / loss[:, ci:ci + 1]).mean(0)
            print(f"{short[ci]:>6} " + " ".join(f"{v:3d}" for v in counts) + "   "
                  + " ".join(f"{v:.3f}" for v in rel.tolist()))
        print(f"accuracy {correct / max(total, 1):.3f} (chance {1 / len(prompts):.3f})")


if __name__ == "__main__":
    main()
