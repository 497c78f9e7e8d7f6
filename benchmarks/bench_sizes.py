"""What a model size costs per training step, as ratios to ``tiny`` measured in the same process.

For each size (``--sizes``, default ``tiny tiny-f4``) builds the model from the registry and times, on random
images and latents of its own resolution:

* an autoencoder step: ``pathup train``'s autoencoder objective (L1 + KL + its defaults), backward, AdamW step,
  at ``--vae-batch`` tiles (``TrainConfig.vae_batch_size``);
* a diffusion step: the UNet's forward and backward on noisy latents with text embeddings, AdamW step, at
  ``--batch`` tiles (the feature entropy loss adds the same small cost to every size and is left out);
* sampling: one UNet forward at batch 2 (one image with classifier-free guidance) and one decode.

The sizes are interleaved over ``--repeats`` rounds after a warm-up, so a slow moment of a shared machine hits
all of them; the report is the median time per step and its ratio to the first size. Usage:
    python benchmarks/bench_sizes.py --threads 2 --repeats 5 --out runs/bench_sizes.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from pathup.model.ldm import build_ldm
from pathup.model.registry import MODEL_SIZES
from pathup.train.autoencoder import AutoencoderObjective
from pathup.train.config import TrainConfig


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Workload:
    """The three timed steps of one size, with their own optimisers and fixed random inputs."""

    def __init__(self, name: str, vae_batch: int, batch: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ldm = build_ldm(name, seed=seed)
        res = MODEL_SIZES[name].resolution
        side = res // self.ldm.vae_scale_factor
        ch = self.ldm.unet.config.in_channels
        self.images = torch.rand(vae_batch, 3, res, res, generator=g) * 2 - 1
        self.latents = torch.randn(batch, ch, side, side, generator=g)
        self.noise = torch.randn(batch, ch, side, side, generator=g)
        self.t = torch.randint(0, 1000, (batch,), generator=g)
        with torch.no_grad():
            self.text = self.ldm.encode_prompts([""] * batch)
        self.ae_objective = AutoencoderObjective.from_config(self.ldm.vae, TrainConfig(model=name))
        self.ae_opt = torch.optim.AdamW(self.ldm.vae.parameters(), lr=1e-4)
        self.unet_opt = torch.optim.AdamW(self.ldm.unet.parameters(), lr=1e-4)

    def autoencoder_step(self) -> None:
        self.ldm.vae.train()
        loss = self.ae_objective(self.images)[0]  # (total, reconstruction, KL)
        self.ae_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.ae_opt.step()

    def unet_step(self) -> None:
        self.ldm.unet.train()
        noisy = self.ldm.scheduler.add_noise(self.latents, self.noise, self.t)
        pred = self.ldm.unet(noisy, self.t, encoder_hidden_states=self.text).sample
        loss = torch.nn.functional.mse_loss(pred, self.noise)
        self.unet_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.unet_opt.step()

    @torch.no_grad()
    def sample_step(self) -> None:
        self.ldm.unet.eval()
        self.ldm.vae.eval()
        self.ldm.unet(self.latents[:2], self.t[:2], encoder_hidden_states=self.text[:2]).sample
        self.ldm.decode_latents(self.latents[:1])


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["tiny", "tiny-f4"], choices=list(MODEL_SIZES))
    ap.add_argument("--repeats", type=int, default=5, help="interleaved rounds after one warm-up round")
    ap.add_argument("--vae-batch", type=int, default=TrainConfig().vae_batch_size)
    ap.add_argument("--batch", type=int, default=8, help="diffusion batch (pathup train's default from scratch)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    args = ap.parse_args(argv)
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    if args.threads:
        torch.set_num_threads(args.threads)
    loads = {name: Workload(name, args.vae_batch, args.batch) for name in args.sizes}
    steps = ("autoencoder_step", "unet_step", "sample_step")
    times: dict[str, dict[str, list[float]]] = {n: {s: [] for s in steps} for n in args.sizes}
    for round_ in range(args.repeats + 1):
        for name, load in loads.items():
            for step in steps:
                t = _timed(getattr(load, step))
                if round_:  # round 0 warms up
                    times[name][step].append(t)
    ref = args.sizes[0]
    report = {"threads": torch.get_num_threads(), "repeats": args.repeats, "vae_batch": args.vae_batch,
              "batch": args.batch, "sizes": {}}
    for name in args.sizes:
        row = {}
        for step in steps:
            med = statistics.median(times[name][step])
            row[step] = {"median_s": round(med, 4),
                         f"x_{ref}": round(med / statistics.median(times[ref][step]), 2)}
        report["sizes"][name] = row
    print(f"{'size':10s} " + " ".join(f"{s:>26s}" for s in steps))
    for name, row in report["sizes"].items():
        print(f"{name:10s} " + " ".join(f"{row[s]['median_s']:>9.3f} s ({row[s][f'x_{ref}']:>5.2f}x {ref})" for s in steps))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
