"""How much does the prompt change a trained model's output? (the diagnosis of the class-learning issue)

For 16 real overview tiles of a prepared dataset, noised to t = 100 ... 900, the UNet's prediction is
computed under every class's overview prompt and under the empty prompt. Printed per timestep, relative
to the prediction's size: the spread between the class prompts, the guidance signal |cond - uncond|, and
the spread of the prediction's spatial mean (which sets an image's colour). A model whose prompt moves its
output by ~1 % generates the same image for every class; the from-scratch defaults move it by 13-80 %.

Usage: python benchmarks/diag_conditioning.py RUN/model DATASET
"""

from __future__ import annotations

import csv
import sys

import numpy as np
import torch


def main() -> None:
    from PIL import Image

    from pathup.model import load_ldm

    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    torch.set_num_threads(1)
    ldm = load_ldm(sys.argv[1])
    ds = sys.argv[2]
    print("prediction", ldm.scheduler.config.prediction_type, "abar_T", float(ldm.scheduler.alphas_cumprod[-1]))
    table = ldm.prompts
    prompts = [table.prompt(c, "overview" if table.levels else None) for c in table.classes]
    rows = [r for r in csv.DictReader(open(f"{ds}/manifest.csv")) if r["split"] == "train"
            and (r["level"] == "overview" or not table.levels)]
    pick = np.random.default_rng(0).choice(len(rows), min(16, len(rows)), replace=False)
    res = ldm.resolution
    x = torch.stack([torch.from_numpy(np.array(Image.open(f"{ds}/{rows[i]['path']}").convert("RGB")
                                                .resize((res, res)))).permute(2, 0, 1).float() / 127.5 - 1
                     for i in pick])  # (B, 3, R, R)
    b = x.shape[0]
    with torch.no_grad():
        lat = ldm.encode_images(x)  # (B, 4, h, w)
        emb = ldm.encode_prompts(prompts + [""])  # (C + 1, L, D)
        g = torch.Generator().manual_seed(0)
        for t in (100, 300, 500, 700, 900):
            noise = torch.randn(lat.shape, generator=g)
            xt = ldm.scheduler.add_noise(lat, noise, torch.full((b,), t))
            preds = torch.stack([ldm.unet(xt, t, encoder_hidden_states=emb[i:i + 1].expand(b, -1, -1)).sample
                                 for i in range(len(prompts) + 1)])  # (C + 1, B, 4, h, w)
            cond, unc = preds[:-1], preds[-1]
            size = cond.pow(2).mean().sqrt()
            between = (cond - cond.mean(0, keepdim=True)).pow(2).mean().sqrt() / size
            guide = (cond - unc).pow(2).mean().sqrt() / size
            m = cond.mean((-1, -2))  # (C, B, 4)
            colour = (m - m.mean(0, keepdim=True)).pow(2).mean().sqrt()
            print(f"t={t}: spread between class prompts {between:.4f}; |cond - uncond| {guide:.4f}; "
                  f"spread of the spatial mean {colour:.4f}")


if __name__ == "__main__":
    main()
