"""Does a model trained by ``pathup train`` follow its class prompt? Class-consistency, measured.

Prepares a shipped sample (Kather 2016 colorectal by default, or BreakHis) with a held-out split by
slide / patient, trains the ``tiny`` model with ``pathup train``'s defaults (``--train-arg`` overrides
one option, for experiments), generates overviews per class at several guidance scales, and reports:

* class-consistency: a classifier trained on the real training tiles predicts the class of every
  generated overview; accuracy overall and per class, beside the same classifier's accuracy on the
  held-out real tiles (the ceiling) and chance;
* per-class mean colour of generated vs real overviews (Pearson r over classes x RGB);
* the targets of the class-learning issue: generated >= 80 % of the ceiling, >= 6 of 8 classes above
  3x chance (Kather), colour r >= 0.8, guidance 3 above guidance 1.

Usage (about 10-15 minutes on 2 CPU cores):
    python benchmarks/bench_classes.py --out runs/bench_classes
    python benchmarks/bench_classes.py --sample breakhis --out runs/bench_classes_breakhis
    python benchmarks/bench_classes.py --out runs/x --train-arg lr=1e-3 --train-arg max_steps=1500
    python benchmarks/bench_classes.py --model runs/bench_classes/run/model --out runs/again   # no training
Writes OUT/classes.json and OUT/classes.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch


def apply_override(text: str, cfg):
    """``cfg`` with one option set from ``KEY=VALUE`` (converted and checked by the config layer)."""
    import yaml

    from pathup.config import from_dict

    key, _, value = text.partition("=")
    return from_dict(type(cfg), {key.strip().replace("-", "_"): yaml.safe_load(value)}, base=cfg,
                     source="--train-arg")


def generate(model: Path, out: Path, guidance: float, per_class: int, steps: int, seed: int) -> Path:
    """``per_class`` overviews of every class at one guidance scale, in OUT/g<guidance>/<class>/.

    Sampled by diffusers' own ``StableDiffusionPipeline.from_pretrained(model)`` with the class's overview
    prompt (DDIM, the model's scheduler), so the number also shows that the saved model follows its
    classes outside PathUp. Seeds ``seed .. seed + per_class - 1``, one CPU generator per image.
    """
    from diffusers import StableDiffusionPipeline

    from pathup.prompts import PromptTable
    from pathup.data.generated import class_dirname
    from pathup.sample.writers import save_png

    pipe = StableDiffusionPipeline.from_pretrained(str(model), safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    table = PromptTable.from_dict(json.loads((model / "pathup.json").read_text())["prompts"])
    res = int(pipe.unet.config.sample_size) * pipe.vae_scale_factor
    folder = out / f"g{guidance:g}"
    for c in table.classes:
        prompt = table.prompt(c, "overview" if table.levels else None)
        gens = [torch.Generator().manual_seed(seed + i) for i in range(per_class)]
        with torch.no_grad():
            images = pipe([prompt] * per_class, height=res, width=res, num_inference_steps=steps,
                          guidance_scale=guidance, generator=gens).images
        for i, img in enumerate(images):
            save_png(img, folder / class_dirname(c) / f"s{seed + i}.png",
                     {"class": c, "prompt": prompt, "seed": seed + i, "guidance": guidance, "steps": steps})
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_classes"))
    ap.add_argument("--sample", default="kather", choices=["kather", "breakhis"])
    ap.add_argument("--model", type=Path, default=None, help="a trained model folder (skips prepare + train "
                                                             "unless --dataset is missing)")
    ap.add_argument("--base", type=Path, default=None,
                    help="experiment: start from this run's base/ (trained autoencoder) instead of training one")
    ap.add_argument("--train-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="override one TrainConfig option (repeatable)")
    ap.add_argument("--unet-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="experiment: override one UNet config entry of the tiny size (repeatable), e.g. "
                         "addition_embed_type=text")
    ap.add_argument("--per-class", type=int, default=10, help="generated overviews per class and guidance")
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0, 7.5])
    ap.add_argument("--steps", type=int, default=20, help="sampling steps")
    ap.add_argument("--features", nargs="+", default=["color-stats"],
                    help="features of the class classifier; several are reported side by side (e.g. color-stats "
                         "and a 'pathup features train' folder: colour-only and texture-aware)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from pathup.experiments.demo.stages import prepare_sample
    from pathup.metrics.consistency import measure
    from pathup.train import TrainConfig, train

    if args.unet_arg:
        import yaml

        from pathup.model import registry

        over = {k.strip(): yaml.safe_load(v) for k, _, v in (a.partition("=") for a in args.unet_arg)}
        registry.MODEL_SIZES["tiny"] = dataclasses.replace(registry.MODEL_SIZES["tiny"],
                                                           unet={**registry.MODEL_SIZES["tiny"].unet, **over})
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    dataset = out / "dataset"
    times = {}
    t0 = time.perf_counter()
    if not (dataset / "manifest.csv").is_file():
        prepare_sample(args.sample, dataset, seed=args.seed, progress=False)
    times["prepare_s"] = time.perf_counter() - t0
    model = args.model
    cfg = None
    if model is None:
        cfg = TrainConfig(data=dataset, out=out / "run", model="tiny", num_workers=0, seed=args.seed)
        for text in args.train_arg:
            cfg = apply_override(text, cfg)
        t0 = time.perf_counter()
        model = out / "run" / "model"
        if not (model / "model_index.json").is_file():
            if args.base is not None and not (out / "run" / "base").exists():
                import shutil

                shutil.copytree(args.base, out / "run" / "base")
            cfg = dataclasses.replace(cfg, resume=(out / "run" / "checkpoints").is_dir() or args.base is not None)
            train(cfg)
        times["train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    folders = [generate(model, out / "generated", g, args.per_class, args.steps, args.seed) for g in args.guidance]
    times["generate_s"] = time.perf_counter() - t0
    res = measure(dataset, folders, level="overview", features=args.features, seed=args.seed)
    res["times"] = times
    res["train_config"] = {k: str(v) for k, v in dataclasses.asdict(cfg.resolved()).items()} if cfg else None
    res["model"] = str(model)
    res["guidance"] = args.guidance

    lines = [f"# Class-consistency: {args.sample} sample, model {model}", "",
             f"features {', '.join(args.features)}; classifier trained on {res['real_tiles']['train']} real "
             f"'{res['train_split']}' overview tiles, ceiling on {res['real_tiles']['heldout']} held-out "
             f"'{res['heldout_split']}' tiles; {args.per_class} generated overviews per class, {args.steps} DDIM steps",
             "", "| set | accuracy | ceiling | ratio | classes > 3x chance | colour r | "
             + " | ".join(res["sets"][str(folders[0])]["classes"]) + " |",
             "|---" * (6 + len(res["sets"][str(folders[0])]["classes"])) + "|"]
    first = None
    for g, f in zip(args.guidance, folders):
        r = res["sets"][str(f)]
        first = first or r
        lines.append(f"| guidance {g:g} | {r['generated']['accuracy']:.3f} | {r['real_heldout']['accuracy']:.3f} | "
                     f"{r['ratio']:.2f} | {len(r['above_3x_chance'])}/{len(r['classes'])} | {r['colour_r']:.3f} | "
                     + " | ".join(f"{r['generated']['per_class'][c]:.2f}" for c in r["classes"]) + " |")
    lines.append(f"| real held-out (ceiling) | {first['real_heldout']['accuracy']:.3f} | | | | | "
                 + " | ".join(f"{first['real_heldout']['per_class'][c]:.2f}" for c in first["classes"]) + " |")
    lines += ["", f"chance {first['chance']:.3f}; times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in times.items())]
    if len(args.features) > 1:  # every feature set side by side (the table above is the first one's)
        from pathup.metrics.consistency import markdown

        lines += ["", markdown(res, {str(f): f"guidance {g:g}" for g, f in zip(args.guidance, folders)})]
    text = "\n".join(lines) + "\n"
    (out / "classes.md").write_text(text)
    (out / "classes.json").write_text(json.dumps(res, indent=2, default=float))
    print(text)


if __name__ == "__main__":
    main()
