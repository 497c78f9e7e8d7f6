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
from pathup.experiments.demo.config import SAMPLE_TILING, DemoConfig, large_settings
from pathup.io import atomic_write_text


def prepare_sample(sample: str, dataset: Path, *, classes: list[str] | None = None, tile_px: int = 128,
                   max_per_class: int | None = None, seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Prepare a shipped sample (``kather`` or ``breakhis``) as a dataset with a held-out test split.

    Args:
        sample: the sample's name (``pathup.sample_data.SAMPLES``).
        dataset: output folder (replaced).
        classes: classes to keep (default: all).
        tile_px: tile size in pixels (the model's resolution).
        max_per_class: at most this many tiles per class, level and split, a seeded sample (default: all).
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
                         mpp=SAMPLE_MPP[sample], max_per_class=max_per_class or 0, **SAMPLE_TILING[sample])
    summary = prepare(pcfg, progress=progress)
    print(summary.table(), flush=True)
    return {"tiles": summary.n_tiles}


def train_model(cfg: DemoConfig, dataset: Path, run_dir: Path) -> dict[str, Any]:
    """``pathup train`` of the tiny model from scratch (continuing an interrupted run: its autoencoder in
    ``base/``, its newest checkpoint)."""
    from pathup.train import TrainConfig, train

    resume = any((run_dir / name).exists() for name in ("base", "checkpoints", "model"))
    tcfg = TrainConfig(data=dataset, out=run_dir, model="tiny", max_steps=cfg.train_steps, vae_steps=cfg.vae_steps,
                       vae_crop=cfg.vae_crop,
                       batch_size=cfg.batch_size, fel_beta=cfg.fel_beta, seed=cfg.seed, checkpoint_every=250,
                       keep_checkpoints=1, sample_every=500, num_workers=0, resume=resume, cpu=cfg.device == "cpu",
                       guidance=cfg.guidance, val_encoder_epochs=cfg.encoder_epochs, progress=cfg.progress)
    train(tcfg)
    return {"model": str(run_dir / "model")}


def sample_config(cfg: DemoConfig) -> Any:
    """The ``SampleConfig`` of the demo's images."""
    from pathup.sample.config import SampleConfig

    return SampleConfig(steps=cfg.steps, scheduler=cfg.scheduler, guidance=cfg.guidance, seed=cfg.seed,
                        **large_settings(cfg), device=cfg.device, dtype="fp32")


def generate_images(cfg: DemoConfig, run_dir: Path, gen: Path) -> dict[str, Any]:
    """Overviews per class, the guidance strip, a large image per class, the uniform-weight twin of one of
    them and a composed mixed-tissue image; returns the written paths.

    Overviews and large images come from ``pathup.sample.generate.make_images`` (settings and physical
    scale in every file); a class's large image is upscaled from its first overview with the same seed.
    """
    from pathup.data.generated import class_dirname
    from pathup.sample.generate import ImageJob, make_images
    from pathup.sample.pipeline import PathUpPipeline
    from pathup.sample.writers import sidecar_path

    pipe = PathUpPipeline.from_pretrained(str(run_dir / "model"), device=cfg.device, dtype="fp32",
                                          progress=False)
    classes = pipe.ldm.prompts.classes
    scfg = sample_config(cfg)

    def path(folder: str, class_name: str, seed: int) -> Path:
        return gen / folder / class_dirname(class_name) / f"s{seed}.png"

    jobs = []
    for c in classes:
        for i in range(max(1, cfg.overviews_per_class)):
            seed = cfg.seed + i
            large = {} if i else {"pyramid": path("large", c, seed)}
            if not i and c == classes[0]:  # Table 4 ablation on one class: the same overview and noise
                large["uniform"] = path("uniform", c, seed)
            jobs.append(ImageJob(c, seed, path("overviews", c, seed), large))
    make_images(pipe, scfg, jobs, progress=cfg.progress, desc="images")
    written: dict[str, Any] = {
        "overviews": {c: [str(j.overview) for j in jobs if j.class_name == c] for c in classes},
        "large": {j.class_name: str(j.images["pyramid"]) for j in jobs if "pyramid" in j.images},
        "uniform": str(jobs[0].images["uniform"])}
    # The same seeds of one class at several guidance scales (does the prompt matter?).
    show = classes[0]
    for g in cfg.guidance_compare:
        strip = [ImageJob(show, seed, path(f"guidance/g{g:g}", show, seed)) for seed in range(cfg.seed, cfg.seed + 4)]
        todo = []
        for job in strip:
            done = path("overviews", show, job.seed)
            if g == cfg.guidance and done.is_file():  # the same image as the class's overview: reuse it
                job.overview.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(done, job.overview)
                shutil.copyfile(sidecar_path(done), sidecar_path(job.overview))
            else:
                todo.append(job)
        make_images(pipe, dataclasses.replace(scfg, guidance=g), todo, progress=False)
        written.setdefault("guidance", {})[f"{g:g}"] = [str(job.overview) for job in strip]
    # A mixed-tissue image from a random class map (pathup compose), with its label mask.
    if cfg.compose_classes >= 2:
        from pathup.sample.compose_folder import compose_to_folder
        from pathup.sample.config import ComposeConfig

        ccfg = ComposeConfig(**{**dataclasses.asdict(scfg), "random_layout": min(cfg.compose_classes, len(classes)),
                                "region_size": max(64, scfg.size.width // 2), "layout_shape": "blob"})
        res = compose_to_folder(pipe, gen / "composed", ccfg, progress=False)
        written["composed"] = [str(p) for p in res.written + res.skipped]
    return written


def evaluate_images(cfg: DemoConfig, dataset: Path, gen: Path, mdir: Path) -> dict[str, Any]:
    """IP / IR / FID / KID at the overview and patch levels, class-consistency and the seam scores of one
    large image with and without the weight map."""
    from pathup.metrics.evaluate import EvaluateConfig, evaluate, seam_scores

    features = demo_features(cfg, dataset.parent / "run")
    common = dict(data=str(dataset), split="all", features=features, repeats=cfg.repeats, seed=cfg.seed,
                  num_samples=0, device=cfg.device, progress=cfg.progress, cache=False,
                  overview_size=cfg.tile_px, crop_px=cfg.tile_px)
    overview = evaluate(EvaluateConfig(fake=str(gen / "overviews"), out=str(mdir / "overview.json"),
                                       level="overview", **common))
    crops = max(1, (large_settings(cfg)["size"] // cfg.tile_px) ** 2 // 2)
    patch = evaluate(EvaluateConfig(fake=str(gen / "large"), out=str(mdir / "patch.json"), level="patch",
                                    crops_per_image=crops, **common))
    # The uniform-weight image and its pyramid twin (same class, overview and noise).
    uniform = sorted((gen / "uniform").rglob("*.png"))[0]
    pyramid = gen / "large" / uniform.relative_to(gen / "uniform")
    seam = {"pyramid": seam_scores([pyramid], None, None, progress=False)[0], "pyramid_image": str(pyramid),
            "uniform": seam_scores([uniform], None, None, progress=False)[0], "uniform_image": str(uniform)}
    return {"overview": overview["summary"], "patch": patch["summary"], "seam": seam,
            "features": overview["features"], "class_consistency": overview.get("class_consistency")}


def demo_features(cfg: DemoConfig, run_dir: Path) -> str:
    """The metrics' features: ``cfg.features``, or for ``auto`` the domain encoder the training run trained on the
    sample's tiles (``RUN/encoder``: texture-aware), else ``random-cnn`` when the run has none."""
    if cfg.features != "auto":
        return cfg.features
    return str(run_dir / "encoder") if (run_dir / "encoder" / "encoder.json").is_file() else "random-cnn"
