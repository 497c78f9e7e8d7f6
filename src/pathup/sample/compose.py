"""Mixed-tissue large images from a class map, with their label masks (issue 14; SPEC.md section 7).

Composition reuses PathUp's two stages with regional conditioning in the style of MultiDiffusion
(Bar-Tal et al. 2023, "MultiDiffusion: Fusing Diffusion Paths for Controlled Image Generation"):

1. Overview: the layout is resized to the overview's latent grid and feathered into soft class masks;
   text-to-image at the model's resolution predicts, every step, each class's guided noise with its
   ``overview`` prompt and blends them per position by the masks (``tracked_text2img`` with a
   ``RegionDenoiser``: one patch, one scheduler).
2. Upscale: the overview is resized, encoded and noised to ``strength`` as in ``pathup generate``; in
   patch-wise timestep tracking (PathUp Algorithm 1) each latent patch evaluates only the classes whose
   soft mask is non-zero under it, blends their guided predictions with the ``patch`` prompts by the
   masks (feathered over ``feather`` latent positions, default a quarter patch), and the patches combine
   with the pyramid weight map of Eq. 6 as before. UNet evaluations per patch are ``1 + n`` for ``n``
   classes under it (with guidance), so a patch inside one region costs what plain generation costs.

A layout with one class is plain generation: its overview comes from the same text-to-image sampler and
its upscale builds the same UNet batches, so ``compose`` gives bit for bit what ``pathup generate`` gives
for that class and seed (tested).

Outputs of ``compose_to_folder`` (``NAME`` is the layout file's stem, or ``random``)::

    OUT/NAME_s<seed>.png            the image (pyramidal .tiff from 8192 px, as generate)
    OUT/NAME_s<seed>.json           sidecar: layout, legend, prompts, seed, model, every option, UNet counts
    OUT/NAME_s<seed>_mask.png       label mask at full resolution: the class id of every pixel
    OUT/NAME_s<seed>_mask_colour.png  colour preview of the mask (long side at most --preview-size)
    OUT/NAME_s<seed>_overlay.png    the image with the mask's colours and borders over it (same size)
    OUT/NAME_s<seed>.geojson        the regions as classified annotations (QuPath: File > Import objects)
    OUT/overview/NAME_s<seed>.png   the class-mixed overview
    OUT/compose_config.yaml         the resolved options

Mask ids are the model's class indices (its ``pathup.json`` class table; listed in the sidecar's
``legend``). The image and its sidecar are written last, so an image counts as done when both exist.

This module imports torch only inside functions, so that ``pathup --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pathup.errors import PathUpError
from pathup.io import safe_name
from pathup.sample.config import SampleConfig, config_from_options, parse_size
from pathup.sample.config import validate as validate_sample

if TYPE_CHECKING:
    import torch

    from pathup.sample.layout import Layout
    from pathup.sample.pipeline import PathUpPipeline

COMPOSE_CONFIG = "compose_config.yaml"


@dataclass
class ComposeConfig(SampleConfig):
    """``pathup compose`` options: every generation option plus the layout's."""

    random_layout: int = field(default=0, metadata={
        "help": "instead of --layout: a seeded random partition into K classes of the model (0: off)",
        "metavar": "K", "min": 0})
    layout_shape: Literal["voronoi", "blob"] = field(default="voronoi", metadata={
        "help": "shape of random regions: voronoi cells or blobs"})
    region_size: int = field(default=1024, metadata={
        "help": "typical size of a random region in pixels", "min": 1})
    feather: int = field(default=-1, metadata={
        "help": "width of the soft region borders in latent positions (8 px each); -1: a quarter of "
                "--patch-size; 0: hard borders", "min": -1})
    preview_size: int = field(default=2048, metadata={
        "help": "long side of the colour and overlay previews in pixels; 0: full size", "min": 0})


def validate(cfg: ComposeConfig) -> ComposeConfig:
    """Every generation option (``pathup.sample.config.validate``) and the layout options."""
    from pathup.config import validate as validate_fields

    validate_sample(cfg)
    validate_fields(cfg)
    if cfg.layout_shape not in ("voronoi", "blob"):
        raise PathUpError(f"--layout-shape must be voronoi or blob, got {cfg.layout_shape!r}")
    return cfg


def feather_width(cfg: ComposeConfig) -> int:
    """``cfg.feather``, with -1 resolved to a quarter of the patch size."""
    return cfg.patch_size // 4 if cfg.feather < 0 else cfg.feather


# --------------------------------------------------------------------------------------------- masks
def soft_masks(labels: np.ndarray, n_classes: int, feather: int, *, device: Any = None) -> "torch.Tensor":
    """Soft class masks on a latent grid: one-hot labels box-blurred over ``feather + 1`` positions.

    Args:
        labels: (H, W) class indices in [0, n_classes).
        n_classes: K.
        feather: blur width in positions (0: hard masks).
        device: torch device of the result.

    Returns:
        (K, H, W) float32, non-negative, summing to 1 at every position; exactly 1 and 0 farther than
        ``feather / 2`` from a border (so a patch inside one region sees one class), a linear ramp across it.
    """
    import torch
    import torch.nn.functional as F

    lab = torch.as_tensor(np.ascontiguousarray(labels), dtype=torch.long)
    onehot = torch.zeros(n_classes, 1, *lab.shape, dtype=torch.float32)
    onehot.scatter_(0, lab[None, None], 1.0)
    if feather > 0:
        r = feather // 2 + feather % 2  # kernel 2r + 1 >= feather + 1
        padded = F.pad(onehot, (r, r, r, r), mode="replicate")
        onehot = F.avg_pool2d(padded, 2 * r + 1, stride=1)
        onehot = onehot / onehot.sum(0, keepdim=True)
    return onehot[:, 0].to(device)


def latent_labels(mask: np.ndarray, latent_hw: tuple[int, int], factor: int) -> np.ndarray:
    """Class of each latent position: the mask pixel at the centre of its ``factor x factor`` cell
    (the canvas is padded to a multiple of ``factor``; cells in the padding take the last row/column)."""
    hl, wl = latent_hw
    rows = np.minimum(np.arange(hl) * factor + factor // 2, mask.shape[0] - 1)
    cols = np.minimum(np.arange(wl) * factor + factor // 2, mask.shape[1] - 1)
    return mask[rows[:, None], cols[None, :]]


# --------------------------------------------------------------------------------------------- one image
@dataclass
class ComposeImage:
    """One composed image: ``image`` (uint8 (H, W, 3), or latents), ``labels`` (H, W) layout indices,
    ``mask`` (H, W) class ids, the ``overview`` (PIL), the ``layout`` and the UNet evaluation counts."""

    image: Any
    labels: np.ndarray
    mask: np.ndarray
    overview: Any
    layout: "Layout"
    seed: int
    unet: dict[str, Any] = field(default_factory=dict)


def class_embeddings(pipe: "PathUpPipeline", classes: list[str], level: str,
                     negative_prompt: str) -> tuple[list["torch.Tensor"], "torch.Tensor", list[str]]:
    """(cond per class, uncond, prompts): each prompt encoded alone, as plain generation encodes it."""
    from pathup.sample.overview import text_embeddings

    conds, prompts, uncond = [], [], None
    for cls in classes:
        text = pipe.prompts_for(cls)[level]
        cond, uncond = text_embeddings(pipe.ldm, text, negative_prompt)
        conds.append(cond)
        prompts.append(text)
    return conds, uncond, prompts


def compose_overview(pipe: "PathUpPipeline", layout: "Layout", cfg: ComposeConfig, seed: int) -> tuple[Any, int]:
    """Step 1: the class-mixed overview at the model's resolution (PIL) and its UNet evaluations.

    One class: ``pipe.overview`` (diffusers' text-to-image, as ``pathup generate``). Several: regional
    text-to-image (MultiDiffusion's region rule) through ``tracked_text2img`` with one patch.
    """
    import torch

    from pathup.sample.pipeline import _to_pil
    from pathup.sample.tracking import RegionDenoiser, tracked_text2img

    ldm = pipe.ldm
    classes = layout.classes
    per_step = 2 if cfg.guidance > 1.0 else 1
    if len(classes) == 1:
        sched = pipe.scheduler(cfg.scheduler)
        sched.set_timesteps(cfg.steps)
        image = pipe.overview(classes[0], seed=seed, steps=cfg.steps, guidance=cfg.guidance,
                              scheduler=cfg.scheduler, negative_prompt=cfg.negative_prompt)
        return image, per_step * len(sched.timesteps)
    n = int(ldm.unet.config.sample_size)
    width, height = parse_size(cfg.size)
    labels = _resize(layout.labels, n, n)
    scale = n / max(math.ceil(height / ldm.vae_scale_factor), math.ceil(width / ldm.vae_scale_factor))
    feather = int(round(feather_width(cfg) * scale))
    masks = soft_masks(labels, len(classes), feather, device=ldm.device)
    conds, uncond, _ = class_embeddings(pipe, classes, "overview", cfg.negative_prompt)
    denoiser = RegionDenoiser(ldm.unet, conds, uncond, cfg.guidance, masks)
    channels = int(ldm.unet.config.in_channels)
    z = tracked_text2img(denoiser, (1, channels, n, n), pipe.scheduler(cfg.scheduler), steps=cfg.steps,
                         generator=torch.Generator().manual_seed(int(seed)), device=ldm.device, patch=n,
                         overlap=0, progress=pipe.progress)
    with torch.no_grad():
        img = (ldm.decode_latents(z).float() / 2 + 0.5).clamp(0, 1).cpu()  # (1, 3, r, r)
    return _to_pil(img), denoiser.evaluations


def _resize(labels: np.ndarray, width: int, height: int) -> np.ndarray:
    from pathup.sample.layout import resize_labels

    return resize_labels(labels, width, height)


def compose_image(pipe: "PathUpPipeline", layout: "Layout", cfg: ComposeConfig, seed: int, *,
                  output_type: str = "np") -> ComposeImage:
    """Compose one large image of ``layout`` at ``cfg.size`` (overview, then the tracked upscale).

    Args:
        pipe: the pipeline (model on its device).
        layout: the class map (``pathup.sample.layout``); its classes must be the model's.
        cfg: the options (``cfg.seed`` is ignored: ``seed`` is used).
        seed: seed of the overview's and the upscale's noise.
        output_type: ``np`` (uint8 (H, W, 3)), ``pil`` or ``latent``.

    Returns:
        The image with its mask, overview and UNet evaluation counts (``unet``: ``overview``, ``upscale``,
        ``total``, the same for ``generate`` at this size, ``ratio`` and ``upscale_ratio`` to it, and
        ``patches_by_classes``: how many latent patches see 1, 2, ... classes).
    """
    import copy

    import torch

    from pathup.sample.grid import patch_grid
    from pathup.sample.tracking import RegionDenoiser, img2img_timesteps

    validate(cfg)
    ldm = pipe.ldm
    width, height = parse_size(cfg.size)
    classes = layout.classes
    for cls in classes:
        pipe.prompts_for(cls)  # a class the model does not know -> PathUpError naming the known ones
    labels = _resize(layout.labels.astype(np.uint16), width, height)  # (H, W) layout indices
    mask = np.asarray(layout.ids, dtype=np.uint16)[labels]  # (H, W) class ids
    overview, ov_evals = compose_overview(pipe, layout, cfg, seed)
    f = ldm.vae_scale_factor
    hl, wl = math.ceil(height / f), math.ceil(width / f)
    feather = feather_width(cfg)
    masks = soft_masks(latent_labels(labels, (hl, wl), f), len(classes), feather, device=ldm.device)
    conds, uncond, prompts = class_embeddings(pipe, classes, "patch", cfg.negative_prompt)
    denoiser = RegionDenoiser(ldm.unet, conds, uncond, cfg.guidance, masks)
    image = pipe.upscale(overview, prompt=prompts[0], size=(width, height), seed=seed, steps=cfg.steps,
                         guidance=cfg.guidance, scheduler=cfg.scheduler, strength=cfg.strength,
                         patch_size=cfg.patch_size, overlap=cfg.overlap, weight_map=cfg.weight_map,
                         patch_batch=cfg.patch_batch, step_mode=cfg.step_mode, vae_tile=cfg.vae_tile,
                         vae_overlap=cfg.vae_overlap, negative_prompt=cfg.negative_prompt,
                         output_type=output_type, denoiser=denoiser)
    # What plain generation at this size costs: 1 + 1 evaluations per patch and step with guidance.
    per = 2 if cfg.guidance > 1.0 else 1
    boxes = patch_grid(hl, wl, cfg.patch_size, cfg.overlap)
    n_steps = len(img2img_timesteps(copy.deepcopy(pipe.scheduler(cfg.scheduler)), cfg.steps, cfg.strength))
    sched = pipe.scheduler(cfg.scheduler)
    sched.set_timesteps(cfg.steps)
    gen_overview = per * len(sched.timesteps)
    gen_upscale = per * len(boxes) * n_steps
    by_classes: dict[str, int] = {}
    for box in boxes:
        key = str(len(denoiser.present(box)))
        by_classes[key] = by_classes.get(key, 0) + 1
    unet = {"overview": int(ov_evals), "upscale": int(denoiser.evaluations),
            "total": int(ov_evals + denoiser.evaluations),
            "generate": {"overview": gen_overview, "upscale": gen_upscale, "total": gen_overview + gen_upscale},
            "ratio": (ov_evals + denoiser.evaluations) / (gen_overview + gen_upscale),
            "upscale_ratio": denoiser.evaluations / gen_upscale,
            "patches_by_classes": dict(sorted(by_classes.items(), key=lambda kv: int(kv[0]))),
            "feather": feather}
    return ComposeImage(image=image, labels=labels, mask=mask, overview=overview, layout=layout, seed=seed,
                        unet=unet)


def make_layout(pipe: "PathUpPipeline", cfg: ComposeConfig, seed: int, *, layout: Any = None,
                legend: Any = None) -> "Layout":
    """The layout of one image: ``layout`` (a ``Layout``, a label image or a JSON file) or, with
    ``cfg.random_layout`` K, a random partition seeded by ``seed``."""
    from pathup.sample.layout import Layout, load_layout, random_layout

    table = pipe.ldm.prompts
    model_classes = list(table.classes) if table is not None else None
    size = parse_size(cfg.size)
    if (layout is None) == (cfg.random_layout == 0):
        raise PathUpError("give either --layout FILE or --random-layout K")
    if layout is None:
        return random_layout(model_classes or [], cfg.random_layout, size, seed=seed, shape=cfg.layout_shape,
                             region_size=cfg.region_size)
    if isinstance(layout, Layout):
        if model_classes is not None:
            for cls in layout.classes:
                if cls not in model_classes:
                    raise PathUpError(f"layout {layout.source}: class {cls!r} is not a class of the model; "
                                      f"allowed: {', '.join(model_classes)}")
        return layout
    return load_layout(layout, size, legend=legend, model_classes=model_classes)


# --------------------------------------------------------------------------------------------- folder
@dataclass
class ComposeResult:
    """What a call wrote (image paths) and what it found already done."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    unet: list[dict[str, Any]] = field(default_factory=list)


def layout_name(layout: Any, cfg: ComposeConfig) -> str:
    """``NAME`` of the output files: the layout file's stem, or ``random``."""
    if layout is None:
        return "random"
    source = getattr(layout, "source", layout)
    return safe_name(Path(str(source)).stem) if not str(source).startswith("random:") else "random"


def output_paths(out: Path, name: str, seed: int, fmt: str) -> dict[str, Path]:
    """Every file of one composed image (see the module docstring)."""
    from pathup.sample.writers import suffix

    base = Path(out) / f"{name}_s{seed}"
    return {"image": base.with_name(base.name + suffix(fmt)), "mask": base.with_name(base.name + "_mask.png"),
            "mask_colour": base.with_name(base.name + "_mask_colour.png"),
            "overlay": base.with_name(base.name + "_overlay.png"),
            "geojson": base.with_name(base.name + ".geojson"),
            "overview": Path(out) / "overview" / f"{name}_s{seed}.png"}


def _comparable(settings: dict[str, Any]) -> dict[str, Any]:
    opts = {k: v for k, v in settings.get("options", {}).items() if k not in ("device", "dtype", "num", "overwrite")}
    return {"model": settings.get("model"), "layout": settings.get("layout"), "options": opts}


def compose_to_folder(pipe: "PathUpPipeline", out: Path, cfg: ComposeConfig, *, layout: Any = None,
                      legend: Any = None, process_index: int = 0, num_processes: int = 1,
                      progress: bool = True) -> ComposeResult:
    """Compose this process's share of ``cfg.num`` images into ``out`` (the layout above).

    Seeds ``cfg.seed .. cfg.seed + cfg.num - 1`` are shared across processes as in ``pathup generate``
    (process i takes every num_processes-th seed); with ``--random-layout`` each seed also draws its own
    layout. An image whose file and sidecar exist is skipped when it was made with the same model, layout
    and options; made otherwise it is an error unless ``cfg.overwrite``.

    Args:
        pipe: the pipeline (model already on its device).
        out: the output folder (created as needed).
        cfg: the resolved options.
        layout: a label image or JSON file (or a ``Layout``); None with ``cfg.random_layout``.
        legend: the label image's legend file.
        process_index, num_processes: this process's share under ``accelerate launch``.
        progress: show the progress bar over images.

    Raises:
        PathUpError: an invalid option, a bad layout or legend, a class the model does not know, ``out``
            a file, or an existing image made with other settings (without ``cfg.overwrite``).
    """
    import json

    from tqdm.auto import tqdm

    from pathup.config import save_config
    from pathup.sample.generate import output_format, seeds_for_process
    from pathup.sample.writers import read_settings, save_image

    validate(cfg)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise PathUpError(f"--out {out} exists and is not a folder")
    fmt = output_format(cfg)
    name = layout_name(layout, cfg)
    seeds = seeds_for_process(cfg.seed, cfg.num, process_index, num_processes)
    fixed = None if layout is None else make_layout(pipe, cfg, cfg.seed, layout=layout, legend=legend)
    result = ComposeResult()
    todo = []
    for seed in seeds:
        paths = output_paths(out, name, seed, fmt)
        side = paths["image"].with_suffix(".json")
        if paths["image"].is_file() and side.is_file() and not cfg.overwrite:
            want = _comparable(_settings(pipe, cfg, seed, fixed, layout, legend, {}))
            have = _comparable(read_settings(paths["image"]))
            if have != want:
                raise PathUpError(f"{paths['image']} was made with another model, layout or settings; "
                                  "use --overwrite or another --out")
            result.skipped.append(paths["image"])
        else:
            todo.append(seed)
    if not todo:
        return result
    if process_index == 0:
        save_config(cfg, out / COMPOSE_CONFIG)
    for seed in tqdm(todo, desc="compose", unit="image", disable=not progress):
        lay = fixed if fixed is not None else make_layout(pipe, cfg, seed)
        comp = compose_image(pipe, lay, cfg, seed)
        paths = output_paths(out, name, seed, fmt)
        settings = _settings(pipe, cfg, seed, lay, layout, legend, comp.unet)
        settings["files"] = {k: p.name if k != "overview" else f"overview/{p.name}" for k, p in paths.items()}
        write_outputs(comp, paths, settings, cfg.preview_size)
        save_image(comp.image, paths["image"], {**settings, "level": "composed"})
        result.written.append(paths["image"])
        result.unet.append(comp.unet)
    return result


def _settings(pipe: "PathUpPipeline", cfg: ComposeConfig, seed: int, lay: "Layout | None", layout: Any,
              legend: Any, unet: dict[str, Any]) -> dict[str, Any]:
    """Everything needed to reproduce one composed image (stored beside it)."""
    from pathup import __version__

    options = dataclasses.asdict(cfg)
    options["seed"] = seed
    width, height = parse_size(cfg.size)
    if layout is None:  # a random layout is named by its recipe and seed (as random_layout names it)
        source = f"random:{cfg.layout_shape}:k={cfg.random_layout}:seed={seed}"
    elif hasattr(layout, "labels"):
        source = layout.source
    else:
        source = str(Path(str(layout)).resolve())
    settings: dict[str, Any] = {
        "layout": source, "legend_file": None if legend is None else str(Path(str(legend)).resolve()),
        "seed": seed, "model": pipe.model_name, "size": [width, height], "options": options,
        "pathup_version": __version__}
    if lay is not None:
        settings["legend"] = lay.legend()
        settings["classes"] = list(lay.classes)
        settings["prompts"] = {c: pipe.prompts_for(c) for c in lay.classes}
    if unet:
        settings["unet_evaluations"] = unet
    return settings


def _preview_size(width: int, height: int, limit: int) -> tuple[int, int]:
    if limit <= 0 or max(width, height) <= limit:
        return width, height
    s = limit / max(width, height)
    return max(1, round(width * s)), max(1, round(height * s))


def write_outputs(comp: ComposeImage, paths: dict[str, Path], settings: dict[str, Any], preview_size: int) -> None:
    """Mask, previews, GeoJSON and overview of one composed image (atomic writes; the image is separate)."""
    import json

    from PIL import Image

    from pathup.io import atomic_path, atomic_write_text
    from pathup.sample.layout import colour_mask, geojson_regions, overlay
    from pathup.sample.writers import save_png

    height, width = comp.mask.shape
    mask = comp.mask
    with atomic_path(paths["mask"]) as tmp:
        if mask.max() < 256:
            Image.fromarray(mask.astype(np.uint8), "L").save(tmp, format="PNG")
        else:
            Image.fromarray(mask.astype(np.uint16), "I;16").save(tmp, format="PNG")
    pw, ph = _preview_size(width, height, preview_size)
    small = _resize(comp.labels, pw, ph)
    with atomic_path(paths["mask_colour"]) as tmp:
        Image.fromarray(colour_mask(small, comp.layout), "RGB").save(tmp, format="PNG")
    image = np.asarray(comp.image)
    if (pw, ph) != (width, height):
        image = np.asarray(Image.fromarray(image, "RGB").resize((pw, ph), Image.BOX))
    with atomic_path(paths["overlay"]) as tmp:
        Image.fromarray(overlay(image, small, comp.layout), "RGB").save(tmp, format="PNG")
    atomic_write_text(paths["geojson"], json.dumps(geojson_regions(comp.layout, width, height)) + "\n")
    save_png(comp.overview, paths["overview"], {**settings, "level": "overview"})


def compose(pipe: "PathUpPipeline", layout: Any = None, *, legend: Any = None, num_images: int = 1,
            output_type: str = "pil", **options: Any) -> "ComposeOutput":
    """The Python API behind ``PathUpPipeline.compose`` (see there)."""
    cfg = config_from_options(ComposeConfig, options, {"num", "format", "device", "dtype", "overwrite",
                                                      "preview_size"})
    if output_type not in ("pil", "np", "latent"):
        raise PathUpError(f"unknown output_type {output_type!r}; allowed: pil, np, latent")
    cfg = validate(cfg)
    fixed = None if layout is None else make_layout(pipe, cfg, cfg.seed, layout=layout, legend=legend)
    out = ComposeOutput()
    from tqdm.auto import tqdm

    for i in tqdm(range(num_images), desc="compose", disable=not pipe.progress or num_images < 2):
        seed = cfg.seed + i
        lay = fixed if fixed is not None else make_layout(pipe, cfg, seed)
        comp = compose_image(pipe, lay, cfg, seed, output_type="np" if output_type == "pil" else output_type)
        image = comp.image
        if output_type == "pil":
            from PIL import Image

            image = Image.fromarray(image, "RGB")
        out.images.append(image)
        out.masks.append(comp.mask)
        out.overviews.append(comp.overview)
        out.layouts.append(lay)
        out.unet.append(comp.unet)
        out.settings.append(_settings(pipe, cfg, seed, lay, layout, legend, comp.unet))
    return out


@dataclass
class ComposeOutput:
    """Result of ``PathUpPipeline.compose``: one entry per image."""

    images: list[Any] = field(default_factory=list)  # PIL (or uint8 arrays / latents)
    masks: list[np.ndarray] = field(default_factory=list)  # (H, W) class ids
    overviews: list[Any] = field(default_factory=list)  # PIL
    layouts: list[Any] = field(default_factory=list)  # pathup.sample.layout.Layout
    unet: list[dict[str, Any]] = field(default_factory=list)  # UNet evaluation counts
    settings: list[dict[str, Any]] = field(default_factory=list)
