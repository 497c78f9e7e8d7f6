"""One composed image: regional conditioning of the overview and of patch-wise timestep tracking.

MultiDiffusion's region rule (Bar-Tal et al. 2023) inside PathUp Algorithm 1 (section 3.2): soft class
masks on the latent grid (``soft_masks``), each class's guided prediction blended by them in the overview
(``compose_overview``) and in every latent patch of the upscale (``compose_image``); see
``pathup.sample.compose`` for the whole method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pathup.errors import PathUpError
from pathup.sample.config import ComposeConfig, feather_width
from pathup.sample.layout import resize_labels

if TYPE_CHECKING:
    import torch

    from pathup.sample.layout import Layout
    from pathup.sample.pipeline import PathUpPipeline


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

    from pathup.sample.overview import to_pil
    from pathup.sample.tracking import RegionDenoiser, tracked_text2img

    from pathup.sample.costs import Costs

    ldm = pipe.ldm
    classes = layout.classes
    if len(classes) == 1:
        costs = Costs()
        image = pipe.overview_with(pipe.prompts_for(classes[0])["overview"], cfg, seed, costs=costs)
        return image, costs.unet_evaluations["overview"]
    n = int(ldm.unet.config.sample_size)
    width, height = cfg.size
    labels = resize_labels(layout.labels, n, n)
    scale = n / max(math.ceil(height / ldm.vae_scale_factor), math.ceil(width / ldm.vae_scale_factor))
    feather = int(round(feather_width(cfg) * scale))
    masks = soft_masks(labels, len(classes), feather, device=pipe._execution_device)
    conds, uncond, _ = class_embeddings(pipe, classes, "overview", cfg.negative_prompt)
    sched = pipe.fresh_scheduler(cfg.scheduler)
    denoiser = RegionDenoiser(ldm.unet, conds, uncond, cfg.guidance, masks,
                              guidance_interval=cfg.guidance_interval, alphas_cumprod=sched.alphas_cumprod)
    channels = int(ldm.unet.config.in_channels)
    z = tracked_text2img(denoiser, (1, channels, n, n), sched, steps=cfg.steps,
                         generator=torch.Generator().manual_seed(int(seed)), device=pipe._execution_device, patch=n,
                         overlap=0, progress=pipe.progress)
    with torch.no_grad():
        img = (ldm.decode_latents(z).float() / 2 + 0.5).clamp(0, 1).cpu()  # (1, 3, r, r)
    return to_pil(img), denoiser.evaluations


def compose_image(pipe: "PathUpPipeline", layout: "Layout", cfg: ComposeConfig, seed: int, *,
                  output_type: str = "np") -> ComposeImage:
    """Compose one large image of ``layout`` at ``cfg.size`` (overview, then the tracked upscale).

    Args:
        pipe: the pipeline (model on its device).
        layout: the class map (``pathup.sample.layout``); its classes must be the model's.
        cfg: the options, validated by the caller (``compose``, ``compose_to_folder``); ``cfg.seed`` is
            ignored: ``seed`` is used.
        seed: seed of the overview's and the upscale's noise.
        output_type: ``np`` (uint8 (H, W, 3)), ``pil`` or ``latent``.

    Returns:
        The image with its mask, overview and UNet evaluation counts (``unet``: ``overview``, ``upscale``
        (full evaluations), ``upscale_cached`` (DeepCache's shallow ones, ``cache_interval > 1``), ``total``,
        the same for ``generate`` at this size, ``ratio`` and ``upscale_ratio`` to it (full evaluations), and
        ``patches_by_classes``: how many latent patches see 1, 2, ... classes).
    """

    from pathup.sample.denoisers import guided_steps
    from pathup.sample.grid import patch_grid
    from pathup.sample.tracking import RegionDenoiser, img2img_timesteps

    ldm = pipe.ldm
    width, height = cfg.size
    classes = layout.classes
    for cls in classes:
        pipe.prompts_for(cls)  # a class the model does not know -> PathUpError naming the known ones
    labels = resize_labels(layout.labels.astype(np.uint16), width, height)  # (H, W) layout indices
    mask = np.asarray(layout.ids, dtype=np.uint16)[labels]  # (H, W) class ids
    overview, ov_evals = compose_overview(pipe, layout, cfg, seed)
    f = ldm.vae_scale_factor
    hl, wl = math.ceil(height / f), math.ceil(width / f)
    feather = feather_width(cfg)
    masks = soft_masks(latent_labels(labels, (hl, wl), f), len(classes), feather, device=pipe._execution_device)
    conds, uncond, prompts = class_embeddings(pipe, classes, "patch", cfg.negative_prompt)
    alphas = pipe.fresh_scheduler(cfg.scheduler).alphas_cumprod
    denoiser = RegionDenoiser(ldm.unet, conds, uncond, cfg.guidance, masks,
                              guidance_interval=cfg.guidance_interval, alphas_cumprod=alphas)
    image = pipe.upscale_with(overview, prompts[0], cfg, seed, output_type=output_type, denoiser=denoiser)
    # What plain generation at this size costs: 1 + 1 evaluations per patch and guided step, 1 per unguided one.
    boxes = patch_grid(hl, wl, cfg.latent_patch, cfg.latent_overlap)
    up_steps = img2img_timesteps(pipe.fresh_scheduler(cfg.scheduler), cfg.steps, cfg.strength)
    sched = pipe.fresh_scheduler(cfg.scheduler)
    sched.set_timesteps(cfg.steps)
    gen_overview = len(sched.timesteps) + guided_steps(sched.timesteps, alphas, cfg.guidance, cfg.guidance_interval)
    gen_upscale = len(boxes) * (len(up_steps) + guided_steps(up_steps, alphas, cfg.guidance,
                                                              cfg.guidance_interval))
    by_classes: dict[str, int] = {}
    for box in boxes:
        key = str(len(denoiser.present(box)))
        by_classes[key] = by_classes.get(key, 0) + 1
    # With --cache-interval N > 1 "upscale" counts full evaluations; "upscale_cached" the shallow ones (DeepCache).
    unet = {"overview": int(ov_evals), "upscale": int(denoiser.evaluations),
            "upscale_cached": int(denoiser.cached_evaluations),
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
    from pathup.sample.layout import Layout, random_layout
    from pathup.sample.layout_files import load_layout

    table = pipe.ldm.prompts
    model_classes = list(table.classes) if table is not None else None
    size = tuple(cfg.size)
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


