"""The PathUp generation pipeline: overview, then patch-wise timestep tracking (PathUp section 3.2, Algorithm 1).

A ``diffusers.DiffusionPipeline`` with the Stable Diffusion modules registered (``vae``, ``unet``,
``text_encoder``, ``tokenizer``, ``scheduler``), so ``.to()``, ``enable_model_cpu_offload()``,
``components`` and ``save_pretrained`` work as in diffusers::

    from pathup.sample import PathUpPipeline

    pipe = PathUpPipeline.from_pretrained("runs/bracs/model")     # or a hub id, or a size name
    out = pipe(class_name="DCIS", size=(2048, 2048), seed=0)
    out.images[0].save("dcis.png"); out.overviews[0].save("dcis_overview.png")
    pipe.save_pretrained("my-model")   # a Stable Diffusion folder + pathup.json + a model card (README.md)

``pipe.upscale(image, class_name=...)`` runs the upscaling steps of Algorithm 1 on a user's own
low-resolution overview; ``PathUpPipeline(ldm)`` wraps an already built ``pathup.model.LDM``.
``pathup generate`` / ``upscale`` / ``compose`` are thin wrappers over this class.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline
from tqdm.auto import tqdm

from pathup.device import resolve_device
from pathup.errors import PathUpError
from pathup.model.ldm import LDM, make_scheduler
from pathup.prompts import build_prompt
from pathup.sample.config import (DEFAULT_SCHEDULER, DEFAULT_STEPS, SampleConfig, Size, check_options,
                                  config_from_options, parse_guidance_interval, parse_patch_batch, as_size, parse_size,
                                  stored_options, validate)
from pathup.sample.costs import Costs, count_unet, timed
from pathup.sample.grid import patch_grid
from pathup.sample.overview import generate_overview, text_embeddings, to_pil
from pathup.sample.scale import model_mpp, output_mpp
from pathup.sample.tome import token_merging as merging_tokens
from pathup.sample.tracking import auto_patch_batch, guided_denoiser, tracked_img2img
from pathup.sample.vae_tiling import decode_tiled, encode_tiled

MODULES = ("vae", "text_encoder", "tokenizer", "unet", "scheduler")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` -> bf16 on CUDA (fp16 where bf16 is unsupported), fp32 on the CPU."""
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if name not in DTYPES:
        raise PathUpError(f"unknown dtype {name!r}; allowed: auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def _older_names(given: dict[str, Any], latent_patch: int, latent_overlap: int) -> tuple[int, int]:
    """(latent_patch, latent_overlap) with the older keyword names ``patch_size`` / ``overlap`` applied."""
    unknown = sorted(set(given) - {"patch_size", "overlap"})
    if unknown:
        raise TypeError(f"upscale() got unexpected keyword argument(s) {', '.join(unknown)}")
    return int(given.get("patch_size", latent_patch)), int(given.get("overlap", latent_overlap))


OUTPUT_TYPES = ("pil", "np", "pt", "latent")


def diffusers_options(options: dict[str, Any], *, num_inference_steps: int | None = None,
                      guidance_scale: float | None = None, height: int | None = None, width: int | None = None,
                      generator: torch.Generator | None = None) -> dict[str, Any]:
    """``options`` with diffusers' argument names turned into PathUp's (``steps``, ``guidance``, ``size``,
    ``seed``); None means not given.

    Raises:
        PathUpError: one line when an option is given in both spellings with different values.
    """
    options = dict(options)

    def one(name: str, value: Any, theirs: str) -> None:
        if name in options and options[name] != value:
            raise PathUpError(f"{name}={options[name]!r} and {theirs} differ; give one of them")
        options[name] = value

    if num_inference_steps is not None:
        one("steps", num_inference_steps, f"num_inference_steps={num_inference_steps!r}")
    if guidance_scale is not None:
        one("guidance", guidance_scale, f"guidance_scale={guidance_scale!r}")
    if generator is not None:
        one("seed", int(generator.initial_seed()), f"generator (seed {generator.initial_seed()})")
    if height is not None or width is not None:
        base = parse_size(options.get("size", SampleConfig.__dataclass_fields__["size"].default))
        size = Size(base.width if width is None else int(width), base.height if height is None else int(height))
        if "size" in options and base != size:
            raise PathUpError(f"size={options['size']!r} and height={height!r}, width={width!r} differ; "
                              "give one of them")
        options["size"] = size
    return options


@dataclass
class PathUpOutput:
    """Result of ``PathUpPipeline.__call__``: one entry per image."""

    images: list[Any]  # PIL images (uint8 (H, W, 3) arrays with output_type="np", (3, H, W) tensors with "pt")
    overviews: list[Any]  # the reference overviews (PIL)
    settings: list[dict[str, Any]] = field(default_factory=list)


class PathUpPipeline(DiffusionPipeline):
    """Overview + patch-wise timestep tracking on a Stable-Diffusion-style model.

    Args:
        vae, text_encoder, tokenizer, unet, scheduler: the model's modules (diffusers' way); or pass a
            ``pathup.model.LDM`` as the only positional argument (or as ``ldm=``).
        ldm: the model with PathUp's prompt table (its modules are registered).
        model_name: recorded in the settings of each image.
        progress: show progress bars.
        mpp: ``{"patch": .., "overview": ..}`` microns per pixel of the model's levels (None: the LDM's own,
            from its ``pathup.json``; unknown for older models).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = list(MODULES)

    def __init__(self, vae: Any = None, text_encoder: Any = None, tokenizer: Any = None, unet: Any = None,
                 scheduler: Any = None, *, ldm: Any = None, model_name: str | None = None, progress: bool = True,
                 mpp: dict[str, float | None] | None = None) -> None:
        super().__init__()
        if ldm is None and not isinstance(vae, torch.nn.Module) and vae is not None \
                and all(m is None for m in (text_encoder, tokenizer, unet, scheduler)):
            ldm, vae = vae, None  # PathUpPipeline(ldm): the model already built
        if ldm is None:
            ldm = LDM(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)
        self.register_modules(**{name: getattr(ldm, name, None) for name in MODULES})
        self.ldm = ldm
        self.model_name = model_name or (getattr(ldm, "size", None) or "unnamed")
        self.progress = progress
        if mpp is not None and isinstance(ldm, LDM):
            ldm.mpp = model_mpp(mpp, "mpp")

    @property
    def mpp(self) -> dict[str, float | None]:
        """Microns per pixel of the model's levels, ``{"patch": .., "overview": ..}`` (None where unknown)."""
        return model_mpp(getattr(self.ldm, "mpp", None), str(self.model_name))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, device: str = "auto",
                        dtype: str = "auto", progress: bool = True, torch_dtype: torch.dtype | None = None
                        ) -> "PathUpPipeline":
        """Load a diffusers folder (``model_index.json`` + PathUp's ``pathup.json``), a training run folder,
        a hub id or a size name (``pathup.model.load_ldm``), on ``device`` in ``dtype`` (or ``torch_dtype``).
        """
        from pathup.model import load_ldm

        model = str(pretrained_model_name_or_path)
        dev = resolve_device(device)
        ldm = load_ldm(model, device=dev, dtype=torch_dtype or resolve_dtype(dtype, dev))
        return cls(ldm=ldm, model_name=model, progress=progress)

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        """Save as a Stable Diffusion folder (``model_index.json``, one subfolder per module) plus PathUp's
        ``pathup.json`` (prompt table, size, ``mpp``) and a model card ``README.md`` (``pathup.sample.model_card``).

        The folder loads with ``PathUpPipeline.from_pretrained`` and with diffusers'
        ``StableDiffusionPipeline.from_pretrained``. ``kwargs`` (diffusers' options) are not used.
        """
        import json

        from pathup.io import atomic_write_text
        from pathup.model import save_ldm
        from pathup.sample.model_card import model_card

        ldm = LDM(**{name: getattr(self, name) for name in MODULES}, prompts=getattr(self.ldm, "prompts", None),
                  fel_bank=getattr(self.ldm, "fel_bank", None), size=getattr(self.ldm, "size", None),
                  mpp=self.mpp)
        path = save_ldm(ldm, save_directory)
        meta = json.loads((path / "pathup.json").read_text())
        atomic_write_text(path / "README.md", model_card(self, meta))

    # ----------------------------------------------------------------------------- prompts
    def prompts_for(self, class_name: str) -> dict[str, str]:
        """The class's ``overview`` and ``patch`` prompts from the model's prompt table.

        A model without a table (a plain Stable Diffusion checkpoint) gets ``build_prompt``'s text.
        Unknown classes raise PathUpError naming the known ones.
        """
        table = self.ldm.prompts
        if table is None:
            return {lv: build_prompt(class_name, lv) for lv in ("overview", "patch")}
        table.class_index(class_name)  # raises with the known class names
        return {lv: table.prompt(class_name, lv) for lv in ("overview", "patch")}

    def _resolve_prompt(self, class_name: str | None, prompt: str | None, level: str) -> str:
        if prompt is not None:
            return prompt
        if class_name is None:
            raise PathUpError("give a class name (class_name) or a prompt")
        return self.prompts_for(class_name)[level]

    def fresh_scheduler(self, name: str | None = None) -> Any:
        """A fresh scheduler by short name with the model's noise schedule (None: a copy of the model's own)."""
        if name is None:
            return copy.deepcopy(self.scheduler)
        return make_scheduler(name, dict(self.scheduler.config))

    def vae_tiles(self, vae_tile: int = 0, vae_overlap: int = 0) -> tuple[int, int]:
        """Autoencoder tile and overlap in latent positions (0: twice the UNet sample size, a quarter tile)."""
        tile = vae_tile or 2 * int(self.ldm.unet.config.sample_size)
        overlap = vae_overlap or tile // 4
        if overlap >= tile:
            raise PathUpError(f"vae_overlap {overlap} must be smaller than vae_tile {tile}")
        return tile, overlap

    # ----------------------------------------------------------------------------- stages
    def overview(self, class_name: str | None = None, *, prompt: str | None = None, seed: int = 0,
                 steps: int = DEFAULT_STEPS, guidance: float = 7.5, scheduler: str | None = DEFAULT_SCHEDULER,
                 negative_prompt: str = "", guidance_interval: tuple[float, float] | None = None,
                 costs: Costs | None = None) -> Any:
        """Step 1: the reference overview at the model's training resolution (PIL image).

        ``guidance_interval``: guidance only where ``lo < sigma_t <= hi`` (``SampleConfig``); ``costs``: filled
        with the stage's UNet evaluations and seconds (``overview``).
        """
        check_options(seed=seed, steps=steps, guidance=guidance)
        interval = parse_guidance_interval(guidance_interval)
        text = self._resolve_prompt(class_name, prompt, "overview")
        with timed(costs, "overview", self._execution_device), count_unet(self.ldm.unet) as evaluations:
            img = generate_overview(self.ldm, text, scheduler=self.fresh_scheduler(scheduler), steps=steps,
                                    guidance=guidance, seed=seed, negative_prompt=negative_prompt,
                                    progress=self.progress, guidance_interval=interval,
                                    device=self._execution_device)
        if costs is not None:
            costs.unet_evaluations["overview"] = costs.unet_evaluations.get("overview", 0) + evaluations[0]
        return to_pil(img)

    def upscale(self, image: Any, class_name: str | None = None, *, prompt: str | None = None,
                size: Any = 2048, seed: int = 0, steps: int = DEFAULT_STEPS, guidance: float = 7.5,
                scheduler: str | None = DEFAULT_SCHEDULER, strength: float = 0.8, latent_patch: int = 64,
                latent_overlap: int = 32, weight_map: str = "pyramid", patch_batch: int | str = "auto",
                step_mode: str = "per-canvas", cache_interval: int = 1, token_merging: float = 0.0,
                vae_tile: int = 0, vae_overlap: int = 0, negative_prompt: str = "", output_type: str = "pil",
                denoiser: Any = None, guidance_interval: tuple[float, float] | None = None,
                costs: Costs | None = None, **older_names: Any) -> Any:
        """Upscale a reference overview (PathUp Algorithm 1): resize, encode, noise, track patches, decode.

        Args:
            image: the low-resolution reference (PIL, uint8 array or [0, 1] tensor).
            class_name: class whose ``patch`` prompt conditions the patches.
            prompt: a prompt to use instead of the class's.
            size: output size: int, ``"WxH"``, (width, height) or a ``Size``; any size (it need not be a
                multiple of 8: the canvas is padded by reflection and the result cropped).
            seed: seed of the forward-process noise.
            steps, guidance, scheduler, strength: sampling settings.
            latent_patch, latent_overlap, weight_map, patch_batch, step_mode: see ``track_patches``
                (p and o of Algorithm 1, in latent positions; ``patch_size`` / ``overlap``: older names).
            cache_interval: DeepCache's N in the tracking steps (``pathup.sample.deepcache``): the whole UNet
                every N-th step, each patch's cached deep features between; 1: off.
            token_merging: ToMe ratio in the UNet's finest self-attention during the tracking steps
                (``pathup.sample.tome``; needs ``tomesd``); 0: off. The UNet is unpatched afterwards.
            vae_tile, vae_overlap: autoencoder tiling in latent positions (0: automatic).
            negative_prompt: unconditional prompt.
            output_type: ``pil``, ``np`` (uint8 (H, W, 3)) or ``latent`` ((1, C, h, w)).
            denoiser: a ready ``RegionDenoiser`` (``pathup compose``: several prompts blended by masks)
                instead of the prompt's guided one (its cache interval is set to ``cache_interval``); None
                for plain generation.
            guidance_interval: ``(lo, hi)``: guidance only where ``lo < sigma_t <= hi`` (Kynkaanniemi et al.
                2024; None: every step). A given ``denoiser`` brings its own.
            costs: filled with UNet evaluations (``tracking``) and seconds (``encode``, ``tracking``,
                ``decode``) of this call.
        """
        from PIL import Image

        latent_patch, latent_overlap = _older_names(older_names, latent_patch, latent_overlap)
        check_options(seed=seed, steps=steps, guidance=guidance, strength=strength, latent_patch=latent_patch,
                      latent_overlap=latent_overlap, vae_tile=vae_tile, vae_overlap=vae_overlap,
                      cache_interval=cache_interval, token_merging=token_merging)
        interval = parse_guidance_interval(guidance_interval)
        ldm = self.ldm
        device = self._execution_device
        width, height = as_size(size)  # cfg.size (upscale_with) is parsed already
        text = self._resolve_prompt(class_name, prompt, "patch")
        if output_type not in ("pil", "np", "latent"):
            raise PathUpError(f"unknown output_type {output_type!r}; allowed: pil, np, latent")
        f = ldm.vae_scale_factor
        ref = to_pil(image).resize((width, height), Image.BICUBIC)
        hp, wp = math.ceil(height / f) * f, math.ceil(width / f) * f
        pixels = np.pad(np.asarray(ref), ((0, hp - height), (0, wp - width), (0, 0)), mode="symmetric")
        tile, tile_overlap = self.vae_tiles(vae_tile, vae_overlap)
        # 1. X_0 = E(I_ref), encoded in tiles (on the execution device: with CPU offload the modules wait on the CPU).
        with timed(costs, "encode", device):
            x0 = encode_tiled(ldm.encode_images, pixels, tile=tile, overlap=tile_overlap, factor=f,
                              latent_channels=int(ldm.vae.config.latent_channels), device=device,
                              progress=self.progress)  # (1, C, h, w) float32
        sched = self.fresh_scheduler(scheduler)
        if denoiser is None:
            cond, uncond = text_embeddings(ldm, text, negative_prompt)
            denoiser = guided_denoiser(ldm.unet, cond, uncond, guidance, cache_interval=cache_interval,
                                       guidance_interval=interval, alphas_cumprod=sched.alphas_cumprod)
        elif getattr(denoiser, "cache_interval", 1) != cache_interval:
            if not hasattr(denoiser, "set_cache_interval"):
                raise PathUpError("cache_interval > 1 needs a RegionDenoiser as the denoiser")
            denoiser.set_cache_interval(cache_interval)
        pb = parse_patch_batch(patch_batch)
        if pb == "auto":
            n = len(patch_grid(x0.shape[2], x0.shape[3], latent_patch, latent_overlap))
            ph, pw = min(latent_patch, x0.shape[2]), min(latent_patch, x0.shape[3])
            pb = auto_patch_batch(ldm.unet, n, (ph, pw), guidance=guidance > 1.0,
                                  cross_dim=denoiser.cross_dim)
        # 2-5. Noise to the start timestep and run patch-wise timestep tracking.
        before, before_cached = denoiser.evaluations, getattr(denoiser, "cached_evaluations", 0)
        with timed(costs, "tracking", device), merging_tokens(ldm.unet, token_merging):  # tomesd, removed after
            z = tracked_img2img(denoiser, x0, sched, steps=steps, strength=strength,
                                generator=torch.Generator().manual_seed(int(seed)), patch=latent_patch,
                                overlap=latent_overlap, weight_map=weight_map, patch_batch=pb,
                                step_mode=step_mode, progress=self.progress)  # (1, C, h, w)
        if costs is not None:
            costs.unet_evaluations["tracking"] = (costs.unet_evaluations.get("tracking", 0)
                                                  + denoiser.evaluations - before)
            cached = getattr(denoiser, "cached_evaluations", 0) - before_cached
            if cached:
                costs.cached_evaluations["tracking"] = costs.cached_evaluations.get("tracking", 0) + cached
        if output_type == "latent":
            return z
        # 6. I_h = D(X_0), decoded in tiles, cropped to the requested size.
        with timed(costs, "decode", device):
            out = decode_tiled(ldm.decode_latents, z, tile=tile, overlap=tile_overlap, factor=f,
                               progress=self.progress)[:height, :width]  # (H, W, 3) uint8
        return out if output_type == "np" else Image.fromarray(out, "RGB")

    def upscale_with(self, image: Any, prompt: str, cfg: SampleConfig, seed: int, *, output_type: str = "np",
                     denoiser: Any = None, costs: Costs | None = None) -> Any:
        """``upscale`` with every option from ``cfg`` (``cfg.seed`` is not used: ``seed`` is)."""
        return self.upscale(image, prompt=prompt, size=cfg.size, seed=seed, steps=cfg.steps, guidance=cfg.guidance,
                            scheduler=cfg.scheduler, strength=cfg.strength, latent_patch=cfg.latent_patch,
                            latent_overlap=cfg.latent_overlap, weight_map=cfg.weight_map,
                            patch_batch=cfg.patch_batch, step_mode=cfg.step_mode,
                            cache_interval=cfg.cache_interval, token_merging=cfg.token_merging,
                            vae_tile=cfg.vae_tile, vae_overlap=cfg.vae_overlap, negative_prompt=cfg.negative_prompt,
                            output_type=output_type, denoiser=denoiser,
                            guidance_interval=cfg.guidance_interval, costs=costs)

    def overview_with(self, prompt: str, cfg: SampleConfig, seed: int, *, costs: Costs | None = None) -> Any:
        """``overview`` with every option from ``cfg`` (``cfg.seed`` is not used: ``seed`` is)."""
        return self.overview(prompt=prompt, seed=seed, steps=cfg.steps, guidance=cfg.guidance,
                             scheduler=cfg.scheduler, negative_prompt=cfg.negative_prompt,
                             guidance_interval=cfg.guidance_interval, costs=costs)

    def image_mpp(self, cfg: SampleConfig) -> float | None:
        """Microns per pixel of an image generated at ``cfg.size``: ``cfg.mpp``; else at strength 1 (from
        noise) the model's patch MPP; else the model's overview MPP x the overview width / the image width
        (``pathup.sample.scale``); None when unknown."""
        return output_mpp(self.mpp, int(self.ldm.resolution), cfg.size.width, cfg.mpp, cfg.strength)

    def overview_mpp(self, cfg: SampleConfig) -> float | None:
        """Microns per pixel of the overview an image at ``cfg.size`` is upscaled from: with ``cfg.mpp`` that x
        the image width / the overview width, else the model's overview MPP; None when unknown."""
        if cfg.mpp is None:
            return output_mpp(self.mpp, 1, 1)
        return cfg.mpp * cfg.size.width / int(self.ldm.resolution)

    def check_scale(self, cfg: SampleConfig) -> bool:
        """Warn (once per call) when ``cfg`` asks for an image finer than the model's patch level
        (``pathup.sample.scale.check_scale``); False then."""
        from pathup.sample.scale import check_scale

        return check_scale(self.mpp, int(self.ldm.resolution), cfg.size.width, self.image_mpp(cfg))

    def settings(self, class_name: str | None, cfg: SampleConfig, *, seed: int,
                 prompts: dict[str, str], source: str | None = None, costs: Costs | None = None) -> dict[str, Any]:
        """Everything needed to reproduce one image (stored beside it; older option names, as before), and with
        ``costs`` what it cost: ``unet_evaluations`` and ``seconds`` by stage (``pathup.sample.costs``)."""
        from pathup import __version__

        settings = {"class": class_name, "prompt": prompts.get("patch"), "overview_prompt": prompts.get("overview"),
                    "seed": seed, "model": self.model_name, "size": list(cfg.size), "overview_source": source,
                    "options": stored_options(cfg, seed=seed), "pathup_version": __version__}
        mpp = self.image_mpp(cfg)
        if mpp is not None:
            settings["mpp"] = mpp
        if costs is not None:
            settings.update(costs.to_dict())
        return settings

    def __call__(self, class_name: str | None = None, *, prompt: str | None = None,
                 overview_prompt: str | None = None, image: Any = None, num_images: int = 1,
                 output_type: str = "pil", num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, height: int | None = None, width: int | None = None,
                 generator: torch.Generator | None = None, **options: Any) -> PathUpOutput:
        """Generate ``num_images`` large images of a class (seeds ``seed`` .. ``seed + num_images - 1``).

        Args:
            class_name: the class (its prompts come from the model's prompt table).
            prompt: patch prompt override.
            overview_prompt: overview prompt override.
            image: a reference overview to upscale instead of generating one.
            num_images: number of images.
            output_type: ``pil``, ``np`` (uint8 (H, W, 3)), ``pt`` (float32 (3, H, W) in [0, 1], diffusers'
                layout: ``torch.stack(out.images)`` is its batch) or ``latent``.
            num_inference_steps, guidance_scale: diffusers' names of ``steps`` and ``guidance``.
            height, width: diffusers' names of the two sides of ``size`` (a side not given keeps ``size``'s).
            generator: a ``torch.Generator`` standing for ``seed``: its ``initial_seed()`` is used (as
                ``torch.Generator().manual_seed(s)`` gives ``s``), so the images are those of that seed.
            **options: any ``SampleConfig`` field (size, seed, steps, guidance, scheduler, strength,
                latent_patch, latent_overlap, weight_map, patch_batch, step_mode, cache_interval,
                token_merging, vae_tile, vae_overlap, negative_prompt, guidance_interval, mpp); ``size`` may also
                be an int or a (width, height) tuple; the older names ``patch_size`` and ``overlap`` are accepted.

        Raises:
            PathUpError: an invalid option, an unknown ``output_type``, or an option given in both spellings
                with different values (``steps=30`` and ``num_inference_steps=20``).
        """
        if output_type not in OUTPUT_TYPES:
            raise PathUpError(f"unknown output_type {output_type!r}; allowed: {', '.join(OUTPUT_TYPES)}")
        options = diffusers_options(options, num_inference_steps=num_inference_steps,
                                    guidance_scale=guidance_scale, height=height, width=width, generator=generator)
        cfg = config_from_options(SampleConfig, options, {"num", "format", "device", "dtype", "overwrite"})
        validate(cfg)
        prompts = {"overview": self._resolve_prompt(class_name, overview_prompt, "overview") if image is None else None,
                   "patch": self._resolve_prompt(class_name, prompt, "patch")}
        out = PathUpOutput(images=[], overviews=[])
        bar = tqdm(range(num_images), desc="images", disable=not self.progress or num_images < 2)
        for i in bar:
            seed = cfg.seed + i
            ref = image
            costs = Costs()
            if ref is None:
                ref = self.overview_with(prompts["overview"], cfg, seed, costs=costs)
            result = self.upscale_with(ref, prompts["patch"], cfg, seed,
                                       output_type="np" if output_type == "pt" else output_type, costs=costs)
            if output_type == "pt":
                result = torch.from_numpy(result).permute(2, 0, 1).float() / 255  # (3, H, W) in [0, 1]
            out.images.append(result)
            out.overviews.append(to_pil(ref))
            out.settings.append(self.settings(class_name, cfg, seed=seed, prompts=prompts,
                                              source="generated" if image is None else "given", costs=costs))
        return out

    def compose(self, layout: Any = None, *, legend: Any = None, num_images: int = 1, output_type: str = "pil",
                **options: Any) -> Any:
        """Mixed-tissue images from a class map, with label masks (``pathup compose``).

        Regional conditioning in the overview and in patch-wise timestep tracking (MultiDiffusion's
        region rule, Bar-Tal et al. 2023, inside PathUp Algorithm 1): see ``pathup.sample.compose``.

        Args:
            layout: a label image or JSON of regions (path), a ``pathup.sample.layout.Layout``, or None
                with ``random_layout=K``.
            legend: the label image's legend (file or dict ``class: colour`` / ``class: id``).
            num_images: images with seeds ``seed`` .. ``seed + num_images - 1``.
            output_type: ``pil``, ``np`` or ``latent``.
            **options: any ``ComposeConfig`` field (the generation options plus random_layout,
                layout_shape, region_size, feather).

        Returns:
            ``ComposeOutput``: images, masks (class ids at full resolution), overviews, layouts, UNet
            evaluation counts and settings per image.
        """
        from pathup.sample.compose import compose

        return compose(self, layout, legend=legend, num_images=num_images, output_type=output_type, **options)
