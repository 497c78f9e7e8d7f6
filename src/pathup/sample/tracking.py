"""Patch-wise timestep tracking (PathUp section 3.2, Algorithm 1).

A pure function on tensors in the style of k-diffusion's samplers: ``track_patches(denoiser, x, scheduler,
timesteps, ...)`` takes the noised latent canvas X_t, splits it into overlapping patches, gives every
patch its own copy of the diffusers scheduler ("timestep tracking": multistep solvers such as
DPM-Solver++ keep each patch's own history), denoises every patch one step per timestep and combines
them into X_{t-1} with the weighted mean ``sum(w * x) / sum(w)`` (Eq. 6 weights, or uniform).

Batching is only a speed choice: patches go through the UNet in chunks of ``patch_batch``, but the
scheduler steps and the combination run in patch order on each patch alone, so the result does not
depend on the chunk size (up to the UNet's own float rounding across batch sizes).

``tracked_img2img`` wraps the upscaling steps of Algorithm 1: img2img timesteps from ``strength`` (the same
rule as diffusers' ``StableDiffusionImg2ImgPipeline``), forward noising with the scheduler's own
``add_noise``, then ``track_patches``. With one patch covering the whole canvas it is plain img2img.
``tracked_text2img`` runs the same loop from pure noise over the whole schedule.

Regions (``pathup compose``): the denoiser may be a ``RegionDenoiser``, which is told
which patches it denoises and blends the guided noise predictions of several prompts per position by
soft class masks (MultiDiffusion's region rule, Bar-Tal et al. 2023, "MultiDiffusion: Fusing Diffusion
Paths for Controlled Image Generation", ICML). It evaluates, per patch, only the prompts whose mask is
non-zero under it; plain generation is its one-prompt case (``guided_denoiser``), so there is one loop.
A ``RegionDenoiser`` may cache deep UNet features across steps, one entry per patch and branch (DeepCache,
``cache_interval``; ``pathup.sample.deepcache``); ``track_patches`` clears that cache before a run.
The denoisers live in ``pathup.sample.denoisers``, the canvas step noise in ``pathup.sample.step_noise``
and the UNet batch size in ``pathup.sample.batching`` (their names stay importable from here).

Stochastic samplers (DDPM, DDIM with eta > 0, SDE solvers): the step noise is drawn once per step on the
whole latent canvas and every patch gets its own slice of it, so the weighted mean of overlapping patches
carries noise of the right standard deviation (independent noise per patch would be shrunk by the mean:
to about 0.5 of it where four patches overlap). With one patch it is exactly diffusers' own draw.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from pathup.errors import OptionError, PathUpError
from pathup.sample.batching import auto_patch_batch, balanced_batch, resolve_patch_batch  # noqa: F401 (re-exported)
from pathup.sample.denoisers import STEP_MODES, Denoiser, RegionDenoiser, StepMode, guided_denoiser  # noqa: F401
from pathup.sample.grid import PatchBox, patch_grid
from pathup.sample.step_noise import CanvasNoise, _step_kwargs, canvas_step_noise  # noqa: F401
from pathup.sample.weights import patch_weights

log = logging.getLogger(__name__)

def img2img_timesteps(scheduler: Any, steps: int, strength: float,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Set ``scheduler`` for ``steps`` inference steps and return the last ``strength`` share of them.

    The same rule as diffusers' img2img pipeline: ``int(steps * strength)`` steps are re-run, and the
    scheduler's begin index is set so that order-aware schedulers start in the right place.

    PNDM runs with ``skip_prk_steps=True`` (set on ``scheduler``'s config when it is off, as it is for
    models trained from scratch): its Runge-Kutta warm-up adds steps at the start of the schedule that
    img2img's cut ignores (50 steps at strength 0.8 would run 49 steps from t=931 instead of 41 from t=801).
    Stable Diffusion's own scheduler config sets it, and so does diffusers' img2img with SD.
    """
    if steps < 1:
        raise OptionError("steps", f"must be at least 1, got {steps}")
    if not 0.0 < strength <= 1.0:
        raise OptionError("strength", f"must be in (0, 1], got {strength}")
    init = min(int(steps * strength), steps)
    if init < 1:
        raise OptionError("strength", f"{strength} x steps {steps} re-runs no step; raise either")
    if "skip_prk_steps" in scheduler.config and not scheduler.config.skip_prk_steps:
        scheduler.register_to_config(skip_prk_steps=True)
    scheduler.set_timesteps(steps, device=device)
    t_start = max(steps - init, 0)
    timesteps = scheduler.timesteps[t_start * scheduler.order:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * scheduler.order)
    return timesteps


def _call_denoiser(denoiser: Any, x: torch.Tensor, t: torch.Tensor, boxes: Sequence[PatchBox]) -> torch.Tensor:
    """A ``RegionDenoiser`` (``takes_boxes``) is told where the patches lie; a plain one gets ``(x, t)``."""
    if getattr(denoiser, "takes_boxes", False):
        return denoiser(x, t, boxes)
    return denoiser(x, t)


def combine_weights(boxes: Sequence[PatchBox], weight: torch.Tensor, canvas_hw: tuple[int, int]) -> torch.Tensor:
    """The denominator of Eq. 6's weighted mean: sum over patches of their weights, (H, W)."""
    den = torch.zeros(canvas_hw, dtype=weight.dtype, device=weight.device)  # (H, W)
    for box in boxes:
        den[box.slices] += weight
    return den


def accumulate_patches(num: torch.Tensor, patches: torch.Tensor, boxes: Sequence[PatchBox],
                       weight: torch.Tensor) -> None:
    """Add ``weight * patch`` of each patch into the canvas ``num`` (1, C, H, W), in patch order."""
    for patch_value, box in zip(patches, boxes):  # patch_value: (C, ph, pw)
        sy, sx = box.slices
        num[0, :, sy, sx] += weight * patch_value


def patch_index(boxes: Sequence[PatchBox], width: int, device: Any = None) -> torch.Tensor:
    """Flat canvas positions (``y * width + x``) of every patch's pixels, patch after patch, (N * ph * pw,): one
    gather reads all patches and one ``index_add_`` adds them back (``gather_patches``, ``scatter_patches``)."""
    ph, pw = boxes[0].height, boxes[0].width
    iy, ix = torch.arange(ph, device=device), torch.arange(pw, device=device)
    return torch.cat([((box.top + iy)[:, None] * width + (box.left + ix)[None, :]).reshape(-1) for box in boxes])


def gather_patches(x: torch.Tensor, index: torch.Tensor, n: int, ph: int, pw: int) -> torch.Tensor:
    """The patches of ``patch_index`` from the canvas ``x`` (1, C, H, W), as (N, C, ph, pw)."""
    c = x.shape[1]
    return x[0].reshape(c, -1)[:, index].reshape(c, n, ph, pw).transpose(0, 1).contiguous()


def scatter_patches(num: torch.Tensor, patches: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> None:
    """``accumulate_patches`` in one ``index_add_`` (on the CPU it adds in index order, so each position sums its
    patches in patch order as the loop does, to the bit); on other devices, where ``index_add_`` adds in any
    order, the loop."""
    if num.device.type != "cpu":
        raise PathUpError("scatter_patches adds in a fixed order only on the CPU")
    c = num.shape[1]
    values = (patches * weight).transpose(0, 1).reshape(c, -1)  # (C, N * ph * pw)
    num.view(c, -1).index_add_(1, index, values)


def combine_patches(patches: torch.Tensor, boxes: Sequence[PatchBox], weight: torch.Tensor,
                    canvas_hw: tuple[int, int]) -> torch.Tensor:
    """Eq. 6's combination: every position takes ``sum(w * x) / sum(w)`` over the patches covering it.

    Args:
        patches: patch values, (N, C, ph, pw).
        boxes: where each patch lies on the canvas.
        weight: the per-patch weight map, (ph, pw).
        canvas_hw: canvas (H, W); the boxes must cover it.

    Returns:
        The combined canvas, (1, C, H, W).
    """
    num = torch.zeros(1, patches.shape[1], *canvas_hw, dtype=patches.dtype, device=patches.device)
    accumulate_patches(num, patches, boxes, weight)
    den = combine_weights(boxes, weight, canvas_hw)  # (H, W)
    if bool((den <= 0).any()):
        raise PathUpError("the patches do not cover the whole canvas")
    return num / den


def track_patches(denoiser: Denoiser | RegionDenoiser, x: torch.Tensor, scheduler: Any, timesteps: Sequence | torch.Tensor, *,
                  patch: int = 64, overlap: int = 32, weight_map: str = "pyramid",
                  patch_batch: int | str | None = None, step_mode: StepMode = "per-patch",
                  generator: torch.Generator | None = None, eta: float = 0.0, progress: bool = False,
                  callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Implements Algorithm 1 of the PathUp paper (patch-wise timestep tracking), steps 3-5.

    Args:
        denoiser: ``(x, t) -> model output`` on a batch of patches (e.g. ``guided_denoiser``), or a
            ``RegionDenoiser`` (called as ``(x, t, boxes)`` with the patches' boxes on the canvas).
        x: the noised latent canvas X_t at ``timesteps[0]``, (1, C, H, W).
        scheduler: a diffusers scheduler already set for these timesteps (``img2img_timesteps``);
            it is deep-copied, never stepped itself.
        timesteps: the timesteps to run, from the start down to the last.
        patch: latent patch size p (clipped to the canvas).
        overlap: overlap o between neighbouring patches.
        weight_map: ``pyramid`` (Eq. 6) or ``uniform``.
        patch_batch: patches per UNet call (None: all at once). Does not change the result.
        step_mode: ``per-patch`` (default): one scheduler per patch, stepped on that patch alone, as
            Algorithm 1 reads. ``per-chunk``: one scheduler per chunk of ``patch_batch`` patches,
            stepped on the stacked chunk. ``per-canvas``: one scheduler stepped once per step on all
            patches stacked (the UNet still runs in chunks of ``patch_batch``; the stack of all patches'
            latents, predictions and solver history is held, a few times the latent canvas). In every mode
            each patch keeps its own state (its rows of the stacked tensors), so the result is the same;
            the stacked modes spend less time outside the UNet.
        generator: random generator for stochastic scheduler steps (DDPM, DDIM eta > 0): their step
            noise is drawn once per step on the whole canvas and sliced per patch (``CanvasNoise``).
        eta: DDIM eta (ignored by schedulers without it).
        progress: show a progress bar over the timesteps.
        callback: called as ``callback(i, t, x)`` after each combined step.

    Returns:
        The denoised latent canvas X_0, (1, C, H, W), in ``x``'s dtype (float32 recommended).
    """
    if x.ndim != 4 or x.shape[0] != 1:
        raise PathUpError(f"track_patches expects one latent canvas (1, C, H, W), got {tuple(x.shape)}")
    if step_mode not in STEP_MODES:
        raise PathUpError(f"unknown step mode {step_mode!r}; allowed: {', '.join(STEP_MODES)}")
    _, _, height, width = x.shape
    boxes = patch_grid(height, width, patch, overlap)
    chunk = resolve_patch_batch(patch_batch, len(boxes))
    ph, pw = boxes[0].height, boxes[0].width
    weight = patch_weights(weight_map, ph, pw, dtype=x.dtype, device=x.device)  # (ph, pw)
    den = combine_weights(boxes, weight, (height, width))  # (H, W)
    chunks = [list(range(i, min(i + chunk, len(boxes)))) for i in range(0, len(boxes), chunk)]
    # Timestep tracking: every patch (or chunk of patches) gets its own scheduler state.
    groups = {"per-patch": [[k] for k in range(len(boxes))], "per-chunk": chunks,
              "per-canvas": [list(range(len(boxes)))]}[step_mode]
    schedulers = [copy.deepcopy(scheduler) for _ in groups]
    group_of = {k: g for g, members in enumerate(groups) for k in members}
    step_kw = _step_kwargs(scheduler, generator, eta)
    # per-canvas on the CPU: all patches read and added back by one indexed op each (the same sums, in order)
    index = patch_index(boxes, width, x.device) if step_mode == "per-canvas" and x.device.type == "cpu" else None

    if hasattr(denoiser, "reset_cache"):  # DeepCache (RegionDenoiser): no deep features carried between runs
        denoiser.reset_cache()
    x = x.clone()
    steps = tqdm(timesteps, desc="denoising", leave=False, disable=not progress)
    for i, t in enumerate(steps):
        num = torch.zeros_like(x)  # (1, C, H, W)
        noise = CanvasNoise(tuple(x.shape), generator, x.device, x.dtype)  # this step's noise, drawn on need
        if step_mode == "per-canvas":  # one scheduler step on every patch of the canvas
            xs = (gather_patches(x, index, len(boxes), ph, pw) if index is not None
                  else torch.stack([x[0, :, box.slices[0], box.slices[1]] for box in boxes]))  # (N, C, ph, pw)
            xin = schedulers[0].scale_model_input(xs, t)
            eps = torch.cat([_call_denoiser(denoiser, xin[m[0]:m[-1] + 1], t, [boxes[k] for k in m])
                             for m in chunks])  # (N, C, ph, pw)
            with canvas_step_noise(schedulers[0], noise, boxes):
                new = schedulers[0].step(eps.to(x.dtype), t, xs, **step_kw, return_dict=False)[0]
            if index is not None:
                scatter_patches(num, new, index, weight)
            else:
                accumulate_patches(num, new, boxes, weight)
            x = num / den
            if callback is not None:
                callback(i, t, x)
            continue
        for members in chunks:
            xs = torch.stack([x[0, :, boxes[k].slices[0], boxes[k].slices[1]] for k in members])  # (B, C, ph, pw)
            # Scale inputs per scheduler state (identity for DDIM/DPM++, sigma scaling for Euler).
            xin = torch.cat([schedulers[g].scale_model_input(xs[_rows(groups[g], members)], t)
                             for g in _groups_in(members, group_of)])  # (B, C, ph, pw)
            eps = _call_denoiser(denoiser, xin, t, [boxes[k] for k in members])  # (B, C, ph, pw)
            for g in _groups_in(members, group_of):
                rows = _rows(groups[g], members)
                group_boxes = [boxes[k] for k in groups[g]]
                with canvas_step_noise(schedulers[g], noise, group_boxes):
                    new = schedulers[g].step(eps[rows].to(x.dtype), t, xs[rows], **step_kw,
                                             return_dict=False)[0]  # (b, C, ph, pw)
                accumulate_patches(num, new, group_boxes, weight)
        x = num / den  # (1, C, H, W): Eq. 6's weighted mean
        if callback is not None:
            callback(i, t, x)
    return x


def _groups_in(members: list[int], group_of: dict[int, int]) -> list[int]:
    """The scheduler groups of a chunk's patches, in patch order (each group lies within one chunk)."""
    seen: list[int] = []
    for k in members:
        if group_of[k] not in seen:
            seen.append(group_of[k])
    return seen


def _rows(group: list[int], members: list[int]) -> slice:
    """Rows of a chunk's stacked batch that hold ``group`` (consecutive patch indices)."""
    start = members.index(group[0])
    return slice(start, start + len(group))


def tracked_img2img(denoiser: Denoiser, x0: torch.Tensor, scheduler: Any, *, steps: int, strength: float,
                    noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                    **track_kwargs: Any) -> torch.Tensor:
    """PathUp Algorithm 1, the upscale: noise X_0 to the start timestep, then ``track_patches`` to X_0'.

    Args:
        denoiser: ``(x, t) -> model output`` on a batch of patches.
        x0: clean latents of the resized reference, (1, C, H, W).
        scheduler: a diffusers scheduler (deep-copied; the caller's object is not changed).
        steps: number of inference steps of the full schedule.
        strength: share of the schedule re-run (0.8: the last 80 % of the steps).
        noise: the forward-process noise, (1, C, H, W); drawn from ``generator`` when None
            (as diffusers' ``randn_tensor``, so a seeded generator gives the same noise as diffusers).
        generator: random generator for the noise and for stochastic steps.
        **track_kwargs: passed to ``track_patches`` (patch, overlap, weight_map, patch_batch, ...).

    Returns:
        The denoised latent canvas, (1, C, H, W).
    """
    from diffusers.utils.torch_utils import randn_tensor

    scheduler = copy.deepcopy(scheduler)
    timesteps = img2img_timesteps(scheduler, steps, strength, x0.device)
    if noise is None:
        noise = randn_tensor(tuple(x0.shape), generator=generator, device=x0.device, dtype=x0.dtype)
    if noise.shape != x0.shape:
        raise PathUpError(f"noise shape {tuple(noise.shape)} does not match the latents {tuple(x0.shape)}")
    xt = scheduler.add_noise(x0, noise.to(x0.device, x0.dtype), timesteps[:1])  # (1, C, H, W)
    return track_patches(denoiser, xt, scheduler, timesteps, generator=generator, **track_kwargs)


def tracked_text2img(denoiser: Denoiser | RegionDenoiser, shape: tuple[int, int, int, int], scheduler: Any, *,
                     steps: int, generator: torch.Generator | None = None, device: torch.device | str | None = None,
                     **track_kwargs: Any) -> torch.Tensor:
    """Text-to-image with the same loop: pure noise ``x_T`` over the whole schedule, then ``track_patches``.

    With a ``RegionDenoiser`` and one patch covering the canvas this is MultiDiffusion's region-based
    generation (Bar-Tal et al. 2023): each prompt's guided prediction counts where its mask is; with one
    prompt it is diffusers' text-to-image loop (``randn_tensor(shape, generator) * init_noise_sigma``,
    all timesteps).

    Args:
        denoiser: ``(x, t) -> model output`` or a ``RegionDenoiser``.
        shape: latent shape (1, C, H, W).
        scheduler: a diffusers scheduler (deep-copied).
        steps: inference steps.
        generator: random generator for the initial noise and stochastic steps.
        device: device of the latents.
        **track_kwargs: passed to ``track_patches`` (patch, overlap, weight_map, patch_batch, ...).

    Returns:
        The denoised latents, (1, C, H, W), float32.
    """
    from diffusers.utils.torch_utils import randn_tensor

    if steps < 1:
        raise OptionError("steps", f"must be at least 1, got {steps}")
    scheduler = copy.deepcopy(scheduler)
    scheduler.set_timesteps(steps, device=device)
    if hasattr(scheduler, "set_begin_index"):  # from the first step, also when the schedule repeats its first
        scheduler.set_begin_index(0)           # timestep (Karras sigmas on a zero-terminal-SNR model)
    x = randn_tensor(tuple(shape), generator=generator, device=torch.device(device or "cpu"), dtype=torch.float32)
    x = x * scheduler.init_noise_sigma
    return track_patches(denoiser, x, scheduler, scheduler.timesteps, generator=generator, **track_kwargs)
