"""Does a model trained by ``pathup train`` make tissue of its class? Autoencoder, class-following, measured.

Prepares a shipped sample (Kather 2016 colorectal by default, or BreakHis) with a held-out split by
slide / patient, or takes a prepared dataset (``--dataset``, e.g. the 1,200 Kather development tiles),
trains a model (``--size``, default ``pathup train``'s: ``tiny-f4``) with ``pathup train``'s defaults
(``--train-arg`` overrides one option), generates overviews per class at several guidance scales, and
reports against real held-out tiles:

* the autoencoder's ceiling (``RUN/autoencoder.json``): PSNR, CIEDE2000, border / centre error, and the
  class-consistency of its reconstructions beside the real tiles;
* the validation curve of the run (``RUN/validation.jsonl``: class-consistency and Frechet distance vs step),
  as ``OUT/curve.png``;
* class-consistency of the generated overviews with texture-aware features (the run's domain encoder,
  ``RUN/encoder``, trained on the real training tiles) and colour-only ones (``color-stats``) side by side,
  each beside its real ceiling, per class;
* the targets of the tissue issue: autoencoder PSNR >= 28 dB, CIEDE2000 <= 3, border <= 1.2 x centre,
  reconstructions >= 0.9 x the real tiles' class-consistency (texture-aware); generated >= 0.8 x the real
  ceiling (texture-aware) with every class above 3 x chance;
* the same-seed distance between classes (``pathup.metrics.consistency.same_seed_distance``): every class is
  drawn from the same seeds, so a pair of classes whose images of one seed barely differ is a pair the model
  draws alike, whatever the classifier makes of it.

Usage (2 CPU cores: 20-60 minutes, depending on the data set and where ``--max-steps auto`` stops):
    python benchmarks/bench_classes.py --out runs/bench_classes
    python benchmarks/bench_classes.py --dataset data/kather1200 --out runs/bench_k1200
    python benchmarks/bench_classes.py --sample breakhis --out runs/bench_classes_breakhis
    python benchmarks/bench_classes.py --out runs/x --train-arg lr=1e-3 --train-arg max_steps=1500
    python benchmarks/bench_classes.py --model runs/bench_classes/run/model --out runs/again   # no training
Writes OUT/classes.json, OUT/classes.md, OUT/curve.png and OUT/grid.png (generated above real held-out
tiles, per class, at the last guidance scale).
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
    pipe.to("cuda" if torch.cuda.is_available() else "cpu")  # the noise comes from CPU generators either way
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
    from pathup.train import TrainConfig, train

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_classes"))
    ap.add_argument("--sample", default="kather", choices=["kather", "breakhis"])
    ap.add_argument("--dataset", type=Path, default=None, help="a prepared dataset (manifest.csv with a held-out "
                                                               "split) instead of the shipped sample")
    ap.add_argument("--model", type=Path, default=None, help="a trained model folder (skips prepare + train "
                                                             "unless --dataset is missing)")
    ap.add_argument("--base", type=Path, default=None,
                    help="experiment: start from this run's base/ (trained autoencoder) instead of training one; the "
                         "UNet is initialised afresh from --size and --unet-arg")
    ap.add_argument("--train-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="override one TrainConfig option (repeatable)")
    ap.add_argument("--size", default=TrainConfig.model, help="model size to train from scratch "
                    "(pathup.model.MODEL_SIZES; default: pathup train's)")
    ap.add_argument("--unet-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="experiment: override one UNet config entry of --size (repeatable), e.g. "
                         "addition_embed_type=text")
    ap.add_argument("--vae-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="experiment: override one autoencoder config entry of --size (repeatable), e.g. "
                         "latent_channels=16 (with --unet-arg in_channels=16 --unet-arg out_channels=16)")
    ap.add_argument("--per-class", type=int, default=10, help="generated overviews per class and guidance")
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0, 7.5])
    ap.add_argument("--steps", type=int, default=20, help="sampling steps")
    ap.add_argument("--features", nargs="+", default=["auto", "color-stats"],
                    help="features of the class classifier (auto: the run's domain encoder RUN/encoder)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from pathup.experiments.demo.stages import prepare_sample
    from pathup.metrics.consistency import measure

    if args.unet_arg or args.vae_arg:
        import yaml

        from pathup.model import registry

        def entries(texts):
            return {k.strip(): yaml.safe_load(v) for k, _, v in (a.partition("=") for a in texts)}

        size = registry.MODEL_SIZES[args.size]
        registry.MODEL_SIZES[args.size] = dataclasses.replace(size, unet={**size.unet, **entries(args.unet_arg)},
                                                              vae={**size.vae, **entries(args.vae_arg)})
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    dataset = args.dataset or out / "dataset"
    times = {}
    t0 = time.perf_counter()
    if not (dataset / "manifest.csv").is_file():
        prepare_sample(args.sample, dataset, seed=args.seed, progress=False)
    times["prepare_s"] = time.perf_counter() - t0
    model = args.model
    cfg = None
    if model is None:
        cfg = TrainConfig(data=dataset, out=out / "run", model=args.size, num_workers=0, seed=args.seed)
        for text in args.train_arg:
            cfg = apply_override(text, cfg)
        t0 = time.perf_counter()
        model = out / "run" / "model"
        if not (model / "model_index.json").is_file():
            if args.base is not None and not (out / "run" / "base").exists():
                fresh_unet_base(args.base, out / "run" / "base", args.size, cfg.seed)
            cfg = dataclasses.replace(cfg, resume=(out / "run" / "checkpoints").is_dir() or args.base is not None)
            train(cfg)
        times["train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    folders = [generate(model, out / "generated", g, args.per_class, args.steps, args.seed) for g in args.guidance]
    times["generate_s"] = time.perf_counter() - t0
    run = model.parent
    features = [str(run / "encoder") if f == "auto" else f for f in args.features]
    res = measure(dataset, folders, level="overview", features=features, seed=args.seed)
    res["times"] = times
    res["train_config"] = {k: str(v) for k, v in dataclasses.asdict(cfg.resolved()).items()} if cfg else None
    res["model"] = str(model)
    res["guidance"] = args.guidance
    res["autoencoder"] = json.loads((run / "autoencoder.json").read_text()) if (run / "autoencoder.json").is_file() \
        else None
    res["curve"] = curve(run / "validation.jsonl", out / "curve.png")
    res["grid"] = str(side_by_side(dataset, folders[-1], out / "grid.png", per_row=6))
    text = report(args, res, folders, model)
    (out / "classes.md").write_text(text)
    (out / "classes.json").write_text(json.dumps(res, indent=2, default=float))
    print(text)


def fresh_unet_base(src: Path, dst: Path, size: str, seed: int) -> None:
    """``--base``: a copy of a run's ``base/`` (its trained autoencoder, its untrained text encoder) whose UNet is
    initialised afresh from ``size`` (``--unet-arg`` included) with ``seed``: base/ also holds the UNet the old
    run started from, and copied as it is, that UNet's layout would silently replace the one asked for."""
    import shutil

    from diffusers import UNet2DConditionModel

    from pathup.model.registry import MODEL_SIZES

    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(tmp / "unet")
    torch.manual_seed(seed)
    UNet2DConditionModel(**MODEL_SIZES[size].unet).save_pretrained(tmp / "unet")
    tmp.rename(dst)


def side_by_side(dataset: Path, folder: Path, png: Path, per_row: int = 6) -> Path:
    """Per class, a row of generated overviews (``folder``, one guidance scale) above a row of real held-out
    overview tiles of the dataset, at the same size (``png``)."""
    import csv

    from pathup.data.generated import class_dirname
    from pathup.experiments.demo.figures import image_grid

    rows = [r for r in csv.DictReader((dataset / "manifest.csv").open())
            if r["level"] == "overview" and r["split"] != "train"]
    classes = sorted({r["class"] for r in rows})
    grid = []
    for c in classes:
        made = sorted((folder / class_dirname(c)).glob("*.png"))[:per_row]
        real = [dataset / r["path"] for r in rows if r["class"] == c][:per_row]
        grid += [(f"{c} generated", made), (f"{c} real", real)]
    return image_grid([(name, paths) for name, paths in grid if paths], png)


def curve(history: Path, png: Path) -> list[dict] | None:
    """The run's validation records (step, class-consistency and FD per feature set), plotted to ``png``."""
    if not history.is_file():
        return None
    recs = [json.loads(line) for line in history.read_text().splitlines() if line.strip()]

    def label(k: str) -> str:  # RUN/encoder by its name: a run folder copied or moved and resumed keeps its curve
        return Path(k).name if "/" in k else k

    rows = [{"step": r["step"],
             **{f"{label(k)}_{m}": v[m] for k, v in r["features"].items() for m in ("accuracy", "fd")},
             **{f"{label(k)}_ceiling": v["ceiling"] for k, v in r["features"].items()}} for r in recs]
    if rows:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
        for name in map(label, recs[0]["features"]):
            steps = [r["step"] for r in rows]
            line, = a1.plot(steps, [r[f"{name}_accuracy"] for r in rows], "o-", label=f"generated ({name})")
            a1.axhline(rows[0][f"{name}_ceiling"], color=line.get_color(), ls="--", label=f"real ceiling ({name})")
            a2.plot(steps, [r[f"{name}_fd"] for r in rows], "o-", label=name)
        a1.set_xlabel("step"), a1.set_ylabel("class-consistency"), a1.legend(fontsize=7), a1.grid(alpha=0.3)
        a2.set_xlabel("step"), a2.set_ylabel("Frechet distance to held-out tiles"), a2.set_yscale("log")
        a2.legend(fontsize=7), a2.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(png, dpi=100)
        plt.close(fig)
    return rows


def report(args, res: dict, folders: list[Path], model: Path) -> str:
    """The Markdown report: autoencoder, generated vs ceiling per feature set, same-seed distance, targets."""
    from pathup.metrics.consistency import same_seed_summary

    lines = [f"# Tissue and class-following: {args.dataset or args.sample + ' sample'}, model {model}", ""]
    ae = res.get("autoencoder")
    if ae:
        lines += ["## Autoencoder on held-out tiles", "",
                  f"{ae['images']} '{ae['split']}' tiles: PSNR {ae['psnr']:.2f} dB (target >= 28), CIEDE2000 "
                  f"{ae['ciede2000']:.2f} (<= 3), border/centre error {ae['border_ratio']:.2f} (<= 1.2), "
                  f"SSIM {ae['ssim']:.3f}", ""]
        for spec, r in ae.get("consistency", {}).items():
            lines.append(f"- class-consistency ({Path(spec).name if '/' in spec else spec}): reconstructions "
                         f"{r['reconstructed']:.3f} vs real {r['real']:.3f}, ratio {r['ratio']:.2f} (target >= 0.9)")
        lines.append("")
    for feat, per in res["by_features"].items():
        name = Path(feat).name if "/" in feat else feat
        first = per["sets"][str(folders[0])]
        classes = first["classes"]
        lines += [f"## Class-consistency of generated overviews, {name} features", "",
                  f"classifier trained on {res['real_tiles']['train']} real '{res['train_split']}' overview tiles, "
                  f"ceiling on {res['real_tiles']['heldout']} held-out '{res['heldout_split']}' tiles; "
                  f"{args.per_class} generated overviews per class, {args.steps} DDIM steps", "",
                  "| set | accuracy | ceiling | ratio | classes > 3x chance | colour r | " + " | ".join(classes) + " |",
                  "|---" * (6 + len(classes)) + "|"]
        for g, f in zip(args.guidance, folders):
            r = per["sets"][str(f)]
            lines.append(f"| guidance {g:g} | {r['generated']['accuracy']:.3f} | {r['real_heldout']['accuracy']:.3f} | "
                         f"{r['ratio']:.2f} | {len(r['above_3x_chance'])}/{len(r['classes'])} | "
                         f"{res['sets'][str(f)]['colour_r']:.3f} | "
                         + " | ".join(f"{r['generated']['per_class'][c]:.2f}" for c in classes) + " |")
        real_above = first.get("real_above_3x_chance")
        lines += [f"| real held-out (ceiling) | {first['real_heldout']['accuracy']:.3f} | | | "
                  f"{'' if real_above is None else f'{len(real_above)}/{len(classes)}'} | | "
                  + " | ".join(f"{first['real_heldout']['per_class'][c]:.2f}" for c in classes) + " |", ""]
    lines += ["## Same-seed distance between classes", "",
              "mean |pixel difference| between two classes' overviews drawn from the same seed, relative to that "
              "between two seeds of one class (0: the prompt does not change the picture, 1: as much as a new seed)",
              ""]
    for g, f in zip(args.guidance, folders):
        closest, median = same_seed_summary(res["sets"][str(f)]["same_seed"])
        lines.append(f"- guidance {g:g}: closest {closest}; median pair {median}")
    lines.append("")
    lines += [f"chance {1 / len(classes):.3f}; times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in res["times"].items())]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
