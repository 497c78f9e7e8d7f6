"""The work of the demo's stages: prepare a shipped sample, train the tiny model, generate, evaluate.

Each function is one stage of ``pathup.experiments.demo.run`` and returns a JSON-able record that the
stage's marker keeps (``pathup.stages.Stages``). Generation follows the PathUp paper: overviews, then
patch-wise timestep tracking (Algorithm 1) to large images with the Eq. 6 pyramid weight map and, for the
Table 4 ablation, uniform weights; evaluation the overview and patch levels of section 4.3.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from pathup.errors import OptionError
from pathup.experiments.demo.config import SAMPLE_TILING, DemoConfig
from pathup.io import atomic_write_text


def prepare_sample(sample: str, dataset: Path, *, classes: list[str] | None = None, tile_px: int = 128,
                   seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Prepare a shipped sample (``kather`` or ``breakhis``) as a dataset with a held-out test split.

    Args:
        sample: the sample's name (``pathup.sample_data.SAMPLES``).
        dataset: output folder (replaced).
        classes: classes to keep (default: all).
        tile_px: tile size in pixels (the model's resolution).
        seed: seed of the tiling.
        progress: show progress bars.
    """
    import csv

    from pathup.data.prepare import PrepareConfig, prepare
    from pathup.sample_data import SAMPLE_MPP, sample_manifest

    manifest = sample_manifest(sample)
    rows = list(csv.DictReader(manifest.open()))
    known = sorted({r["class"] for r in rows})
    bad = [c for c in (classes or []) if c not in known]
    if bad:
        raise OptionError("classes", f": unknown {', '.join(bad)}; the {sample} sample has: {', '.join(known)}")
    rows = [r for r in rows if not classes or r["class"] in classes]
    if "split" not in rows[0]:  # hold out the last patient of each class
        last = {r["class"]: r["patient"] for r in rows}
        for r in rows:
            r["split"] = "test" if r["patient"] == last[r["class"]] else "train"
    source = dataset.parent / f"{sample}_manifest.csv"
    cols = [c for c in ("path", "class", "patient", "slide", "split") if c in rows[0]]
    source.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(source, "\n".join([",".join(cols)] + [
        ",".join(str(manifest.parent / r[c]) if c == "path" else r[c] for c in cols) for r in rows]) + "\n")
    pcfg = PrepareConfig(out=str(dataset), sources=[str(source)], layout="csv", patch_overlap=0, overview_overlap=0,
                         tile_px=tile_px, val_fraction=0.0, test_fraction=0.0, seed=seed, overwrite=True,
                         mpp=SAMPLE_MPP[sample], **SAMPLE_TILING[sample])
    summary = prepare(pcfg, progress=progress)
    print(summary.table(), flush=True)
    return {"tiles": summary.n_tiles}


def train_model(cfg: DemoConfig, dataset: Path, run_dir: Path) -> dict[str, Any]:
    """``pathup train`` of the tiny model from scratch (continuing an interrupted run: its autoencoder in
    ``base/``, its newest checkpoint)."""
    from pathup.train import TrainConfig, train

    resume = any((run_dir / name).exists() for name in ("base", "checkpoints", "model"))
    tcfg = TrainConfig(data=dataset, out=run_dir, model="tiny", max_steps=cfg.train_steps, vae_steps=cfg.vae_steps,
                       batch_size=cfg.batch_size, fel_beta=cfg.fel_beta, seed=cfg.seed, checkpoint_every=250,
                       keep_checkpoints=1, sample_every=500, num_workers=0, resume=resume, cpu=cfg.device == "cpu",
                       guidance=cfg.guidance, progress=cfg.progress)
    train(tcfg)
    return {"model": str(run_dir / "model")}


def sample_config(cfg: DemoConfig) -> Any:
    """The ``SampleConfig`` of the demo's images."""
    from pathup.sample.config import SampleConfig

    return SampleConfig(steps=cfg.steps, guidance=cfg.guidance, seed=cfg.seed, size=cfg.size,
                        latent_patch=cfg.latent_patch, latent_overlap=cfg.latent_overlap, strength=cfg.strength,
                        device=cfg.device, dtype="fp32")


def generate_images(cfg: DemoConfig, run_dir: Path, gen: Path) -> dict[str, Any]:
    """Overviews per class, the guidance strip, a large image per class, the uniform-weight twin of one of
    them and a composed mixed-tissue image; returns the written paths."""
    from tqdm.auto import tqdm

    from pathup.data.generated import class_dirname
    from pathup.sample.pipeline import PathUpPipeline
    from pathup.sample.writers import save_png, sidecar_path

    pipe = PathUpPipeline.from_pretrained(str(run_dir / "model"), device=cfg.device, dtype="fp32",
                                          progress=False)
    classes = pipe.ldm.prompts.classes
    scfg = sample_config(cfg)
    written: dict[str, Any] = {"overviews": {}, "large": {}, "uniform": None}
    ov_mpp = pipe.mpp.get("overview")  # an overview is at the model's overview scale (None: unknown)

    def overview_settings(settings: dict[str, Any]) -> dict[str, Any]:
        settings = {k: v for k, v in settings.items() if k != "mpp"}
        return {**settings, "level": "overview", **({"mpp": ov_mpp} if ov_mpp is not None else {})}

    jobs = [(c, i) for c in classes for i in range(cfg.overviews_per_class)]
    for c, i in tqdm(jobs, desc="overviews", unit="img", disable=not cfg.progress):
        seed = cfg.seed + i
        ov = pipe.overview(c, seed=seed, steps=cfg.steps, guidance=cfg.guidance)
        path = gen / "overviews" / class_dirname(c) / f"s{seed}.png"
        save_png(image=ov, path=path, mpp=ov_mpp,
                 settings=overview_settings(pipe.settings(c, scfg, seed=seed, prompts=pipe.prompts_for(c))))
        written["overviews"].setdefault(c, []).append(str(path))
    # The same seeds of one class at several guidance scales (does the prompt matter?).
    show = classes[0]
    for g in cfg.guidance_compare:
        for i in range(4):
            seed = cfg.seed + i
            path = gen / "guidance" / f"g{g:g}" / class_dirname(show) / f"s{seed}.png"
            done = gen / "overviews" / class_dirname(show) / f"s{seed}.png"
            if g == cfg.guidance and done.is_file():  # the same image as the class's overview: reuse it
                path.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(done, path)
                shutil.copyfile(sidecar_path(done), sidecar_path(path))
            else:
                ov = pipe.overview(show, seed=seed, steps=cfg.steps, guidance=g)
                settings = pipe.settings(show, dataclasses.replace(scfg, guidance=g), seed=seed,
                                         prompts=pipe.prompts_for(show))
                save_png(image=ov, path=path, settings=overview_settings(settings), mpp=ov_mpp)
            written.setdefault("guidance", {}).setdefault(f"{g:g}", []).append(str(path))
    for c in tqdm(classes, desc="large images", unit="img", disable=not cfg.progress):
        written["large"][c] = str(upscale_one(pipe, scfg, c, gen / "large", weight_map="pyramid"))
    # Table 4 ablation on one class: the same overview and noise, uniform weights.
    written["uniform"] = str(upscale_one(pipe, scfg, classes[0], gen / "uniform", weight_map="uniform"))
    # A mixed-tissue image from a random class map (pathup compose), with its label mask.
    if cfg.compose_classes >= 2:
        from pathup.sample.compose import ComposeConfig, compose_to_folder

        ccfg = ComposeConfig(**{**dataclasses.asdict(scfg), "random_layout": min(cfg.compose_classes, len(classes)),
                                "region_size": max(64, cfg.size // 2), "layout_shape": "blob"})
        res = compose_to_folder(pipe, gen / "composed", ccfg, progress=False)
        written["composed"] = [str(p) for p in res.written + res.skipped]
    return written


def upscale_one(pipe: Any, scfg: Any, class_name: str, folder: Path, *, weight_map: str) -> Path:
    """The large image of ``class_name`` from its first overview (``generated/overviews``), same seed."""
    from PIL import Image

    from pathup.data.generated import class_dirname
    from pathup.sample.writers import save_image

    seed = scfg.seed
    overview = Image.open(Path(folder).parent / "overviews" / class_dirname(class_name) / f"s{seed}.png").convert("RGB")
    img = pipe.upscale(overview, class_name, size=scfg.size, seed=seed, steps=scfg.steps, guidance=scfg.guidance,
                       strength=scfg.strength, latent_patch=scfg.latent_patch, latent_overlap=scfg.latent_overlap,
                       weight_map=weight_map, output_type="np")
    settings = pipe.settings(class_name, dataclasses.replace(scfg, weight_map=weight_map), seed=seed,
                             prompts=pipe.prompts_for(class_name), source="generated")
    path = folder / class_dirname(class_name) / f"s{seed}.png"
    save_image(image=img, path=path, settings={**settings, "level": "upscaled"}, mpp=settings.get("mpp"))
    return path


def evaluate_images(cfg: DemoConfig, dataset: Path, gen: Path, mdir: Path) -> dict[str, Any]:
    """IP / IR / FID / KID at the overview and patch levels, class-consistency and the seam scores of one
    large image with and without the weight map."""
    from pathup.metrics.evaluate import EvaluateConfig, evaluate, seam_scores

    common = dict(data=str(dataset), split="all", features=cfg.features, repeats=cfg.repeats, seed=cfg.seed,
                  num_samples=0, device=cfg.device, progress=cfg.progress, cache=False,
                  overview_size=cfg.tile_px, crop_px=cfg.tile_px)
    overview = evaluate(EvaluateConfig(fake=str(gen / "overviews"), out=str(mdir / "overview.json"),
                                       level="overview", **common))
    crops = max(1, (cfg.size // cfg.tile_px) ** 2 // 2)
    patch = evaluate(EvaluateConfig(fake=str(gen / "large"), out=str(mdir / "patch.json"), level="patch",
                                    crops_per_image=crops, **common))
    # The uniform-weight image and its pyramid twin (same class, overview and noise).
    uniform = sorted((gen / "uniform").rglob("*.png"))[0]
    pyramid = gen / "large" / uniform.relative_to(gen / "uniform")
    seam = {"pyramid": seam_scores([pyramid], None, None, progress=False)[0], "pyramid_image": str(pyramid),
            "uniform": seam_scores([uniform], None, None, progress=False)[0], "uniform_image": str(uniform)}
    return {"overview": overview["summary"], "patch": patch["summary"], "seam": seam,
            "features": overview["features"], "class_consistency": overview.get("class_consistency")}
