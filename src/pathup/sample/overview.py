"""Step 1 of generation: the low-resolution reference overview I_ref (PathUp section 3.2).

Text-to-image with the class's ``overview`` prompt at the model's training resolution, through
diffusers' own ``StableDiffusionPipeline`` built from the model's components (the reference
text-to-image sampler; PathUp changes nothing here). Options diffusers' pipeline cannot do (a guidance
interval, Kynkaanniemi et al. 2024) run PathUp's own loop instead: ``tracked_text2img`` with one patch
covering the canvas, which without them is diffusers' text-to-image (tested against it).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from pathup.errors import OptionError, PathUpError
from pathup.sample.config import DEFAULT_STEPS


def text_embeddings(ldm: Any, prompt: str, negative_prompt: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    """(cond, uncond) prompt embeddings, each (1, L, D), from the model's own text encoder."""
    with torch.no_grad():
        cond = ldm.encode_prompts([prompt])  # (1, L, D)
        uncond = ldm.encode_prompts([negative_prompt])  # (1, L, D)
    return cond, uncond


def generate_overview(ldm: Any, prompt: str, *, scheduler: Any, steps: int = DEFAULT_STEPS, guidance: float = 7.5,
                      seed: int = 0, negative_prompt: str = "", height: int | None = None,
                      width: int | None = None, progress: bool = True,
                      guidance_interval: tuple[float, float] | None = None, device: Any = None) -> torch.Tensor:
    """Generate the reference overview with the model's text-to-image sampler.

    Args:
        ldm: a ``pathup.model.LDM``.
        prompt: the class's overview prompt.
        scheduler: a diffusers scheduler (deep-copied).
        steps: inference steps.
        guidance: classifier-free guidance scale.
        seed: seed of the initial noise (a CPU generator, so the result does not depend on the device).
        negative_prompt: the unconditional prompt (empty by default, as in training).
        height: image height in pixels (default: the model's training resolution).
        width: image width in pixels (default: the model's training resolution).
        progress: show diffusers' progress bar.
        guidance_interval: ``(lo, hi)``: guidance only where ``lo < sigma_t <= hi`` (PathUp's own loop,
            ``own_overview``); None: every step (diffusers' pipeline, unless the schedule repeats its first
            timestep: ``repeats_first_timestep``).
        device: where the own loop's latents live (None: the UNet's device).

    Returns:
        Images in [0, 1], (1, 3, H, W), float32 on the CPU.
    """
    from diffusers import StableDiffusionPipeline

    if steps < 1:
        raise OptionError("steps", f"must be at least 1, got {steps}")
    res = ldm.resolution
    height, width = height or res, width or res
    if guidance_interval is not None or repeats_first_timestep(scheduler, steps):
        return own_overview(ldm, prompt, scheduler=scheduler, steps=steps, guidance=guidance, seed=seed,
                            negative_prompt=negative_prompt, height=height, width=width, progress=progress,
                            guidance_interval=guidance_interval, device=device)
    pipe = StableDiffusionPipeline(vae=ldm.vae, text_encoder=ldm.text_encoder, tokenizer=ldm.tokenizer,
                                   unet=ldm.unet, scheduler=copy.deepcopy(scheduler), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=not progress, desc="overview", leave=False)
    cond, uncond = text_embeddings(ldm, prompt, negative_prompt)
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        out = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, height=height, width=width,
                   num_inference_steps=steps, guidance_scale=guidance, generator=generator,
                   output_type="pt")
    return out.images.float().cpu()  # (1, 3, H, W) in [0, 1]


def repeats_first_timestep(scheduler: Any, steps: int) -> bool:
    """Whether ``scheduler`` set for ``steps`` steps begins with a repeated timestep.

    Karras sigmas on a zero-terminal-SNR model (PathUp's own models: sigma_max about 4096) crowd the first
    steps near t = 999, and rounding repeats timesteps there. diffusers' text-to-image pipeline finds its first
    step by the timestep's value, and for a repeated value it takes the second position (the img2img rule): it
    then runs one step past the schedule's end (an IndexError from ``dpm++-karras`` at 25 or more steps).
    ``generate_overview`` runs such schedules by its own loop, which starts at index 0.
    """
    probe = copy.deepcopy(scheduler)
    probe.set_timesteps(steps)
    ts = probe.timesteps
    return len(ts) > 1 and bool(ts[0] == ts[1])


def own_overview(ldm: Any, prompt: str, *, scheduler: Any, steps: int, guidance: float, seed: int,
                 negative_prompt: str, height: int, width: int, progress: bool = True,
                 guidance_interval: tuple[float, float] | None = None, device: Any = None) -> torch.Tensor:
    """The overview by PathUp's own loop: ``tracked_text2img`` with one patch covering the latent canvas.

    Without a guidance interval it equals diffusers' text-to-image (same initial noise from a CPU generator
    seeded with ``seed``, same scheduler steps, same guided batch); the arguments are ``generate_overview``'s.

    Returns:
        Images in [0, 1], (1, 3, H, W), float32 on the CPU.
    """
    from pathup.sample.denoisers import guided_denoiser
    from pathup.sample.tracking import tracked_text2img

    f = ldm.vae_scale_factor
    h, w = height // f, width // f
    cond, uncond = text_embeddings(ldm, prompt, negative_prompt)
    denoiser = guided_denoiser(ldm.unet, cond, uncond, guidance, guidance_interval=guidance_interval,
                               alphas_cumprod=scheduler.alphas_cumprod)
    channels = int(ldm.unet.config.in_channels)
    z = tracked_text2img(denoiser, (1, channels, h, w), scheduler, steps=steps,
                         generator=torch.Generator().manual_seed(int(seed)), device=device or ldm.unet.device,
                         patch=max(h, w), overlap=0, progress=progress)  # (1, C, h, w)
    with torch.no_grad():
        return (ldm.decode_latents(z).float() / 2 + 0.5).clamp(0, 1).cpu()  # (1, 3, H, W)


def to_pil(image: Any) -> "Image.Image":  # noqa: F821
    """An RGB PIL image from a PIL image, a uint8 (H, W, 3) array or a [0, 1] tensor ((1, 3, H, W) or (3, H, W))."""
    from PIL import Image

    from pathup.io import to_rgb8

    if isinstance(image, Image.Image):
        return to_rgb8(image)
    if isinstance(image, torch.Tensor):  # (1, 3, H, W) or (3, H, W) in [0, 1]
        t = image[0] if image.ndim == 4 else image
        image = (t.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise PathUpError(f"expected an RGB image (PIL, uint8 (H, W, 3) or a [0, 1] tensor), got {arr.dtype} {arr.shape}")
    return Image.fromarray(arr, "RGB")
