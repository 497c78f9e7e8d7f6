"""Which autoencoder recipe keeps the tissue? The first stage of a from-scratch model, trained and measured.

Trains the autoencoder of a model size (``pathup train``'s default, ``tiny-f4``) on the training tiles of a
prepared dataset with ``pathup train``'s own objective and learning-rate schedule (``--train-arg`` sets any ``vae_*`` option
of ``TrainConfig``, ``--vae-arg`` an ``AutoencoderKL`` argument), and every ``--eval-every`` steps measures it
on held-out tiles (``pathup.metrics.reconstruction``: PSNR, SSIM, mean CIEDE2000, border / centre error,
overall and per class), the numbers ``pathup train`` prints after its autoencoder stage. The curve tells
whether a recipe is better at the same step count and whether it is still improving. Then, as ``pathup train``
does, the decoder alone trains on noisy latents against a patch discriminator (``--train-arg
vae_decoder_steps=N``, default 3/10 of ``--steps``; 0 = off), measured once more (the curve's last row has
``decoder_steps``).

Usage (2 CPU cores; about 1.1 s per step with 1 thread for ``tiny``):
    python benchmarks/prepare_dev.py --root ../shared/data/kather2016-dev --out data/k1200
    python benchmarks/bench_autoencoder.py --dataset data/k1200 --steps 1000 --out runs/ae_cosine
    python benchmarks/bench_autoencoder.py --dataset data/k1200 --steps 1000 --out runs/ae_const \\
        --train-arg vae_lr=5e-4 --train-arg vae_lr_schedule=constant --train-arg vae_lr_warmup_steps=0
    python benchmarks/bench_autoencoder.py --dataset data/k1200 --steps 1000 --out runs/ae_lab --train-arg vae_lab_weight=1
    python benchmarks/bench_autoencoder.py --plot runs/ae_const runs/ae_cosine runs/ae_lab --out runs/ae_curves.png
Writes OUT/curve.json (options and one row per evaluation), OUT/vae (the diffusers AutoencoderKL; also
OUT/vae_before_decoder when the decoder stage runs, without its scaling factor) and OUT/strip.png (real held-out
tiles above their reconstructions).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def entries(pairs: list[str]) -> dict:
    import yaml

    out = {}
    for text in pairs:
        key, _, value = text.partition("=")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


def train_and_measure(args) -> dict:
    from diffusers import AutoencoderKL
    from tqdm.auto import tqdm

    from pathup.config import from_dict
    from pathup.losses.autoencoder import latent_grid
    from pathup.metrics.judge import RealSet, heldout_split, save_png
    from pathup.metrics.reconstruction import reconstruct, strip, summarise
    from pathup.model.registry import MODEL_SIZES
    from pathup.train.autoencoder import (SEED_OFFSET, AutoencoderObjective, finetune_decoder, lr_schedule,
                                          train_autoencoder)
    from pathup.train.config import TrainConfig
    from pathup.train.data import StepBatches, TrainTiles, loader, random_crop, random_flips, step_generator

    size = MODEL_SIZES[args.size]
    cfg = from_dict(TrainConfig, {"data": str(args.dataset), "out": str(args.out), "model": args.size,
                                  "vae_steps": args.steps,
                                  **entries(args.train_arg)}, source="--train-arg").resolved()  # pathup train's
    vae_kwargs = {**size.vae, **entries(args.vae_arg)}
    if "block_out_channels" in vae_kwargs:
        n = len(vae_kwargs["block_out_channels"])
        vae_kwargs["down_block_types"] = ("DownEncoderBlock2D",) * n
        vae_kwargs["up_block_types"] = ("UpDecoderBlock2D",) * n
    torch.manual_seed(cfg.seed)
    vae = AutoencoderKL(**vae_kwargs)
    tiles = TrainTiles(cfg.data, cfg.split, [], True, size.resolution)
    from pathup.metrics.consistency import labelled_real

    held_split = heldout_split(labelled_real(cfg.data, None)[2], cfg.val_split)
    held = RealSet.load(cfg.data, split=cfg.split, val_split=cfg.val_split, level=None, resolution=size.resolution,
                        max_train=1, max_held=cfg.vae_eval_tiles, seed=cfg.seed)
    objective = AutoencoderObjective.from_config(vae, cfg)
    factor = latent_grid(vae)  # the latent grid's period, in pixels
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = lr_schedule(opt, cfg)
    seed = cfg.seed + SEED_OFFSET
    sampler = StepBatches(len(tiles), cfg.vae_batch_size, 1, seed, 0, cfg.vae_steps, 0, 1)
    record = {"options": {k: getattr(cfg, k) for k in vars(cfg) if k.startswith("vae_")},
              "vae": {k: list(v) if isinstance(v, tuple) else v for k, v in vae_kwargs.items()},
              "parameters": sum(p.numel() for p in vae.parameters()), "dataset": str(args.dataset),
              "held_out": held_split, "threads": torch.get_num_threads(), "curve": []}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train_seconds = 0.0

    def evaluate(step: int, decoder_steps: int = 0) -> None:
        vae.eval()
        recon = reconstruct(vae, held.held_images)
        vae.train()
        r = summarise(held.held_images, recon, held.held_labels, grid_period=factor)
        row = {"step": step, "train_seconds": round(train_seconds, 1), "psnr": r["psnr"], "ssim": r["ssim"],
               "ciede2000": r["ciede2000"], "border_ratio": r["border_ratio"],
               "grid_ratio": r["grid_ratio"]["reconstructed"], "grid_ratio_real": r["grid_ratio"]["real"],
               "per_class": {c: {k: v[k] for k in ("psnr", "ciede2000")} for c, v in r["per_class"].items()}}
        if decoder_steps:
            row["decoder_steps"] = decoder_steps
        record["curve"].append(row)
        tqdm.write(f"step {step}{f' + {decoder_steps} decoder' if decoder_steps else ''}: PSNR {r['psnr']:.2f} dB, CIEDE2000 {r['ciede2000']:.2f}, SSIM {r['ssim']:.3f}, "
              f"border {r['border_ratio']:.2f}, grid {r['grid_ratio']['reconstructed']:.1f} "
              f"(real {r['grid_ratio']['real']:.1f}) ({train_seconds:.0f} s of training)")
        from pathup.io import atomic_write_text

        atomic_write_text(out / "curve.json", json.dumps(record, indent=1, default=float))
        if step == cfg.vae_steps:
            save_png(strip(held.held_images, recon), out / "strip.png")  # the decoder stage's replaces the first

    vae.train()
    bar = tqdm(loader(tiles, sampler, 0), total=cfg.vae_steps, desc="autoencoder", dynamic_ncols=True)
    for step, (images, _, _) in enumerate(bar):
        t = time.perf_counter()
        g = step_generator(seed, step)
        images = random_crop(random_flips(images, g), cfg.vae_crop, g)
        loss, _, _ = objective(images, g)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        train_seconds += time.perf_counter() - t
        bar.set_postfix(loss=f"{float(loss):.4f}", lr=f"{sched.get_last_lr()[0]:.1e}", refresh=False)
        done = step + 1
        if done % args.eval_every == 0 or done == cfg.vae_steps:
            evaluate(done)
    decoder_steps = cfg.vae_decoder_steps  # pathup train's default unless --train-arg sets it
    if decoder_steps:
        vae.eval().save_pretrained(out / "vae_before_decoder")  # for decoder-stage variants of the same autoencoder
        vae.train()
        import dataclasses

        from accelerate import Accelerator

        acc = Accelerator(cpu=True)
        t = time.perf_counter()
        train_autoencoder(acc, vae, tiles, dataclasses.replace(cfg, vae_steps=0))  # only its scaling factor
        finetune_decoder(acc, vae, tiles, dataclasses.replace(cfg, vae_decoder_steps=decoder_steps))
        train_seconds += time.perf_counter() - t
        evaluate(cfg.vae_steps, decoder_steps)
    vae.eval().save_pretrained(out / "vae")
    record["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return record


def plot(folders: list[Path], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for f in folders:
        rec = json.loads((Path(f) / "curve.json").read_text())
        first = [r for r in rec["curve"] if "decoder_steps" not in r]
        label = Path(f).name
        for ax, key in zip(axes, ("psnr", "ciede2000")):
            line, = ax.plot([r["step"] for r in first], [r[key] for r in first], marker="o", label=label)
            for r in rec["curve"]:
                if "decoder_steps" in r:  # after the decoder stage: a star at the autoencoder's last step
                    ax.plot([r["step"]], [r[key]], marker="*", ms=11, color=line.get_color())
    axes[0].axhline(28, color="grey", ls="--", lw=1)
    axes[1].axhline(3, color="grey", ls="--", lw=1)
    axes[0].set(xlabel="autoencoder step", ylabel="PSNR (dB), held-out tiles", title="higher is better (target 28)")
    axes[1].set(xlabel="autoencoder step", ylabel="mean CIEDE2000", title="lower is better (target 3)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main() -> None:
    from pathup.train.config import TrainConfig

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", type=Path, default=Path("data/k1200"), help="a prepared dataset with a held-out split")
    ap.add_argument("--out", type=Path, default=Path("runs/bench_autoencoder"))
    ap.add_argument("--size", default=TrainConfig.model, help="model size (pathup.model.MODEL_SIZES; default: "
                    "pathup train's)")
    ap.add_argument("--steps", type=int, default=1000, help="autoencoder steps (--vae-steps)")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--train-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="a TrainConfig option, e.g. vae_lr=1e-3, vae_lr_schedule=constant, vae_lab_weight=1")
    ap.add_argument("--vae-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="an AutoencoderKL argument, e.g. layers_per_block=2 or block_out_channels=[64,64,128,128]")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--plot", type=Path, nargs="+", default=None, metavar="RUN",
                    help="draw the curves of these OUT folders into --out (a .png) instead of training")
    args = ap.parse_args()
    if args.plot:
        plot(args.plot, args.out)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    record = train_and_measure(args)
    last = record["curve"][-1]
    print(f"{args.out}: {last['step']} steps (+ {last.get('decoder_steps', 0)} decoder) in {record['wall_seconds']:.0f} s: PSNR {last['psnr']:.2f} dB, "
          f"CIEDE2000 {last['ciede2000']:.2f}, border {last['border_ratio']:.2f}")


if __name__ == "__main__":
    main()
