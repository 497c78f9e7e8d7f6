"""The image makers of the experiment: PathUp overviews and their upscales (pyramid or uniform weight map,
PathUp paper Eq. 6), bicubic resizes and diffusers upscaler pipelines (Table 3).

Seed ``s`` generates overview ``i`` of each class with seed ``s * images_per_class + i`` and upscales it
with the same noise seed. Every maker skips images already on disk (resume) and counts what it wrote.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pathup.errors import OptionError
from pathup.experiments.config import ExperimentConfig, check_upscaler, slug
from pathup.io import open_image


@dataclass
class Counts:
    """Images written and images found on disk (skipped)."""

    written: int = 0
    skipped: int = 0


def seed_of(cfg: ExperimentConfig, seed: int, i: int) -> int:
    return seed * cfg.images_per_class + i


def latent_grid(cfg: ExperimentConfig, pipe: Any) -> tuple[int, int]:
    """(latent patch, latent overlap) for PathUp upscaling with this model."""
    p = cfg.latent_patch or int(pipe.ldm.unet.config.sample_size)
    o = p // 2 if cfg.latent_overlap is None else cfg.latent_overlap
    if not 0 <= o < p:
        raise OptionError("latent_overlap", f"{o} must be in [0, --latent-patch {p})")
    return p, o


def _each_image(cfg: ExperimentConfig, classes: list[str]):
    """(seed index, class, image index, file name) of every overview of the experiment."""
    for s in range(cfg.seeds):
        for cls in classes:
            for i in range(cfg.images_per_class):
                yield s, cls, i, f"{slug(cls)}_{i}.png"


def generate_arm(cfg: ExperimentConfig, model: str | Path, key: str, classes: list[str], size: int,
                 weight_maps: tuple[str, ...], counts: Counts) -> None:
    """Overviews of every class and seed, each upscaled by PathUp with the given weight maps
    (``pathup.sample.generate.make_images``: the images carry their settings and physical scale)."""
    from pathup.sample import PathUpPipeline
    from pathup.sample.config import SampleConfig
    from pathup.sample.generate import ImageJob, make_images
    from pathup.sample.resume import is_done

    root = Path(cfg.out) / "images" / key
    jobs = []
    for s, cls, i, name in _each_image(cfg, classes):
        job = ImageJob(cls, seed_of(cfg, s, i), root / f"seed{s}" / "overview" / name,
                       {wm: root / f"seed{s}" / wm / name for wm in weight_maps})
        paths = [job.overview, *job.images.values()]
        if all(is_done(p) for p in paths):
            counts.skipped += len(paths)  # counted without loading the model
        else:
            jobs.append(job)
    if not jobs:
        return
    pipe = PathUpPipeline.from_pretrained(str(model), device=cfg.device, progress=False)
    patch, overlap = latent_grid(cfg, pipe)
    sc = SampleConfig(steps=cfg.steps, guidance=cfg.guidance, scheduler=cfg.scheduler, size=size,
                      latent_patch=patch, latent_overlap=overlap, strength=cfg.strength)
    made = make_images(pipe, sc, jobs, resume=True, progress=cfg.progress, desc=f"images {key}",
                       extra={"vae_scale_factor": pipe.ldm.vae_scale_factor})
    counts.written += len(made.written)
    counts.skipped += len(made.skipped)


def overview_scale(overview_path: Path, overview: Any, size: int) -> float | None:
    """Microns per pixel of an image ``size`` pixels wide made from an overview: the overview's own scale
    (its sidecar's ``mpp``, as ``make_images`` wrote it) x its width / ``size``, the rule of PathUp's images
    (``pathup.sample.scale.output_mpp``); None when the overview has none."""
    from pathup.sample.resume import is_done
    from pathup.sample.scale import output_mpp
    from pathup.sample.writers import read_settings

    mpp = read_settings(overview_path).get("mpp") if is_done(overview_path) else None
    return output_mpp({"overview": mpp}, overview.width, size)


def bicubic_images(cfg: ExperimentConfig, classes: list[str], size: int, counts: Counts) -> None:
    """PIL bicubic resizes of the full model's overviews (Table 3 baseline), with the physical scale."""
    from PIL import Image

    from pathup.sample.generate import save_with_scale
    from pathup.sample.writers import save_png

    root = Path(cfg.out) / "images" / "pathup"
    for s, cls, i, name in _each_image(cfg, classes):
        out = root / f"seed{s}" / "bicubic" / name
        if out.is_file():
            counts.skipped += 1
            continue
        src = root / f"seed{s}" / "overview" / name
        overview = open_image(src)
        img = overview.resize((size, size), Image.BICUBIC)
        save_with_scale(save_png, img, out, {"class": cls, "seed": seed_of(cfg, s, i), "kind": "bicubic",
                                             "overview_source": str(src), "size": [size, size]},
                        overview_scale(src, overview, size))
        counts.written += 1


def load_upscaler(path: str, device: str) -> Any:
    """A diffusers upscaler pipeline from a local folder (PathUpError if it cannot be loaded)."""
    from diffusers import DiffusionPipeline

    from pathup.device import resolve_device

    check_upscaler(path)
    try:
        pipe = DiffusionPipeline.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
    except Exception as err:  # noqa: BLE001 - diffusers/transformers loading errors
        raise OptionError("upscaler", f"{path}: cannot load ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''})") from None
    dev = resolve_device(device)
    pipe = pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    pipe._pathup_device = dev  # noqa: SLF001 - the generator's device
    return pipe


def run_upscaler(pipe: Any, image: Any, prompt: str, seed: int, cfg: ExperimentConfig) -> Any:
    """One low-resolution overview -> its upscale (PIL), by the pipeline's own interface."""
    import torch

    g = torch.Generator(device=pipe._pathup_device).manual_seed(int(seed))  # noqa: SLF001
    if type(pipe).__name__ == "StableDiffusionUpscalePipeline":
        return pipe(prompt=prompt, image=image, num_inference_steps=cfg.upscaler_steps, guidance_scale=cfg.guidance,
                    noise_level=cfg.noise_level, generator=g).images[0]
    return pipe(image=image, num_inference_steps=cfg.upscaler_steps, generator=g).images[0]


def patch_prompts(model: str | Path, classes: list[str]) -> dict[str, str]:
    """The ``patch`` prompt of each class from a saved model's prompt table (``pathup.json``)."""
    from pathup.prompts import PromptTable, build_prompt

    meta = Path(model) / "pathup.json"
    table = None
    if meta.is_file():
        data = json.loads(meta.read_text()).get("prompts")
        table = PromptTable.from_dict(data) if data else None
    return {c: table.prompt(c, "patch") if table is not None else build_prompt(c, "patch") for c in classes}


def upscaler_images(cfg: ExperimentConfig, name: str, path: str, classes: list[str], size: int,
                    prompts: dict[str, str], counts: Counts) -> None:
    """Table 3: a diffusers upscaler applied to the full model's overviews (resized to ``size`` if needed),
    with the physical scale."""
    from PIL import Image
    from tqdm.auto import tqdm

    from pathup.sample.generate import save_with_scale
    from pathup.sample.writers import save_png

    root = Path(cfg.out) / "images" / "pathup"
    todo = []
    for s, cls, i, file in _each_image(cfg, classes):
        out = root / f"seed{s}" / f"upscaler-{slug(name)}" / file
        if out.is_file():
            counts.skipped += 1
        else:
            todo.append((s, cls, i, out))
    if not todo:
        return
    pipe = load_upscaler(path, cfg.device)
    for s, cls, i, out in tqdm(todo, desc=f"upscaler {name}", unit="img", disable=not cfg.progress):
        src = root / f"seed{s}" / "overview" / out.name
        overview = open_image(src)
        seed = seed_of(cfg, s, i)
        img = run_upscaler(pipe, overview, prompts[cls], seed, cfg)
        native = list(img.size)
        if img.size != (size, size):
            img = img.resize((size, size), Image.BICUBIC)
        settings = {"class": cls, "seed": seed, "kind": "upscaler", "upscaler": str(path),
                    "pipeline": type(pipe).__name__, "prompt": prompts[cls], "native_size": native,
                    "size": [size, size], "overview_source": str(src),
                    "options": {"steps": cfg.upscaler_steps, "guidance": cfg.guidance, "noise_level": cfg.noise_level}}
        save_with_scale(save_png, img, out, settings, overview_scale(src, overview, size))
        counts.written += 1
