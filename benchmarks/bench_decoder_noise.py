"""Does a decoder trained on noisy latents make the same UNet's samples more like their class?

``pathup train`` ends its autoencoder stage by training the decoder alone on the frozen encoder's latents with
Gaussian noise added (``--vae-decoder-steps``, ``--vae-decoder-noise``; ``pathup.train.autoencoder``). The
encoder and its latents do not change, so a model trained before that stage existed can take it afterwards
without retraining its UNet. This benchmark does that to a trained run and measures both decoders with the
same UNet and the same seeds (so the same latents: any difference is the decoder's):

1. copies RUN/model to OUT/model and runs ``finetune_decoder`` on its autoencoder (training tiles of DATASET);
2. ``pathup evaluate --reconstruction`` numbers for both (PSNR, CIEDE2000, border; held-out tiles);
3. ``benchmarks/bench_classes.py --model`` for both (class-consistency of generated overviews with the run's
   domain encoder RUN/encoder beside colour statistics; 8 per class at guidance 1 and 3 by default).

Usage (2 CPU cores, 1 thread: about 13 min for 800 decoder steps of ``tiny``, 3 min per measurement):
    python benchmarks/bench_decoder_noise.py --run runs/k1200c/run --dataset data/k1200 --out runs/decoder_noise
    python benchmarks/bench_decoder_noise.py --run RUN --dataset D --out runs/l1 --steps 300 --guidance 3 \
        --adv-weight 0 --grid-weight 0 --skip-before      # an L1-only decoder stage
The decoder stage's options default to ``pathup train``'s (discriminator and grid term on).
Writes OUT/decoder_noise.json and OUT/decoder_noise.md; OUT/before and OUT/after are bench_classes' folders.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch


def finetune(run: Path, dataset: Path, out: Path, steps: int, noise: float, lr: float, seed: int,
             adv_weight: float, disc_layers: int, grid_weight: float) -> Path:
    from accelerate import Accelerator
    from diffusers import AutoencoderKL

    from pathup.train.autoencoder import finetune_decoder
    from pathup.train.config import TrainConfig
    from pathup.train.data import TrainTiles

    model = out / "model"
    if model.exists():
        shutil.rmtree(model)
    shutil.copytree(run / "model", model)
    vae = AutoencoderKL.from_pretrained(model / "vae")
    cfg = TrainConfig(data=str(dataset), out=str(out), vae_decoder_steps=steps, vae_decoder_noise=noise,
                      vae_decoder_lr=lr, vae_decoder_adv_weight=adv_weight, vae_disc_layers=disc_layers,
                      vae_decoder_grid_weight=grid_weight, seed=seed, num_workers=0)
    resolution = int(vae.config.sample_size)
    tiles = TrainTiles(cfg.data, cfg.split, [], True, resolution)
    finetune_decoder(Accelerator(cpu=not torch.cuda.is_available()), vae, tiles, cfg)
    vae.save_pretrained(model / "vae")
    for name in ("encoder", "validation.jsonl"):  # bench_classes' features (RUN/encoder) and curve
        src = run / name
        if src.is_dir():
            shutil.copytree(src, out / name, dirs_exist_ok=True)
        elif src.is_file():
            shutil.copy2(src, out / name)
    return model


def classes(model: Path, dataset: Path, out: Path, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).with_name("bench_classes.py")), "--model", str(model), "--dataset",
           str(dataset), "--out", str(out), "--threads", str(args.threads), "--per-class", str(args.per_class),
           "--guidance", *[str(g) for g in args.guidance]]
    subprocess.run(cmd, check=True)
    return json.loads((out / "classes.json").read_text())


def summary(res: dict) -> dict:
    """Per feature set and guidance: accuracy, ceiling and per-class accuracy of the generated overviews."""
    out = {}
    for feats, block in res["by_features"].items():
        for folder, s in block["sets"].items():
            out[f"{Path(feats).name} {Path(folder).name}"] = {
                "accuracy": s["generated"]["accuracy"], "ceiling": s["real_heldout"]["accuracy"],
                "above_3x_chance": len(s["above_3x_chance"]), "classes": len(s["classes"]),
                "per_class": s["generated"]["per_class"]}
    return out


def main() -> None:
    from pathup.train.config import TrainConfig

    d = {f.name: f.default for f in dataclasses.fields(TrainConfig)}  # pathup train's defaults
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="a pathup train run folder (RUN/model, RUN/encoder)")
    ap.add_argument("--dataset", type=Path, required=True, help="its prepared dataset (with a held-out split)")
    ap.add_argument("--out", type=Path, default=Path("runs/decoder_noise"))
    ap.add_argument("--steps", type=int, default=800, help="decoder steps (--vae-decoder-steps)")
    ap.add_argument("--noise", type=float, default=d["vae_decoder_noise"], help="--vae-decoder-noise")
    ap.add_argument("--lr", type=float, default=d["vae_decoder_lr"], help="--vae-decoder-lr")
    ap.add_argument("--adv-weight", type=float, default=d["vae_decoder_adv_weight"],
                    help="--vae-decoder-adv-weight (patch discriminator; 0: an L1-only decoder)")
    ap.add_argument("--disc-layers", type=int, default=d["vae_disc_layers"], help="--vae-disc-layers")
    ap.add_argument("--grid-weight", type=float, default=d["vae_decoder_grid_weight"],
                    help="--vae-decoder-grid-weight (an L1 on the latent grid's frequencies)")
    ap.add_argument("--skip-before", action="store_true", help="measure only the fine-tuned decoder")
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0])
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not (args.run / "model" / "vae").is_dir():
        ap.error(f"--run {args.run}: no model/vae folder (a pathup train run of a model built from scratch)")
    if args.threads:
        torch.set_num_threads(args.threads)
    from pathup.io import atomic_write_text
    from pathup.metrics.judge import evaluate_reconstruction

    args.out.mkdir(parents=True, exist_ok=True)
    model = finetune(args.run, args.dataset, args.out, args.steps, args.noise, args.lr, args.seed, args.adv_weight,
                     args.disc_layers, args.grid_weight)
    record = {"run": str(args.run), "dataset": str(args.dataset), "steps": args.steps, "noise": args.noise,
              "lr": args.lr, "adv_weight": args.adv_weight, "disc_layers": args.disc_layers,
              "grid_weight": args.grid_weight, "threads": torch.get_num_threads()}
    names = (("after", model),) if args.skip_before else (("before", args.run / "model"), ("after", model))
    for name, m in names:
        rec, _ = evaluate_reconstruction(m, args.dataset, features=[], max_tiles=256, seed=args.seed)
        record[name] = {"reconstruction": {k: rec[k] for k in ("psnr", "ssim", "ciede2000", "border_ratio")},
                        "generated": summary(classes(m, args.dataset, args.out / name, args))}
    lines = ["| decoder | PSNR | CIEDE2000 | border | " + " | ".join(record["after"]["generated"]) + " |",
             "|---|---|---|---|" + "---|" * len(record["after"]["generated"])]
    for name, _ in names:
        r, g = record[name]["reconstruction"], record[name]["generated"]
        cells = [f"{v['accuracy']:.3f} vs {v['ceiling']:.3f}, {v['above_3x_chance']}/{v['classes']}" for v in g.values()]
        lines.append(f"| {name} | {r['psnr']:.2f} | {r['ciede2000']:.2f} | {r['border_ratio']:.2f} | " + " | ".join(cells) + " |")
    atomic_write_text(args.out / "decoder_noise.json", json.dumps(record, indent=1, default=float))
    atomic_write_text(args.out / "decoder_noise.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
