"""Patch-wise timestep tracking (PathUp paper 3.3, Algorithm 1; SPEC.md section 5).

A pure function on tensors in the style of k-diffusion's samplers: ``track_patches(denoiser, x, scheduler,
timesteps, ...)`` takes the noised latent canvas X_t, splits it into overlapping patches, gives every
patch its own copy of the diffusers scheduler ("timestep tracking": multistep solvers such as
DPM-Solver++ keep each patch's own history), denoises every patch one step per timestep and combines
them into X_{t-1} with the weighted mean ``sum(w * x) / sum(w)`` (Eq. 6 weights, or uniform).

Batching is only a speed choice: patches go through the UNet in chunks of ``patch_batch``, but the
scheduler steps and the combination run in patch order on each patch alone, so the result does not
depend on the chunk size (up to the UNet's own float rounding across batch sizes).

``tracked_img2img`` wraps steps 2-5 of SPEC.md section 5: img2img timesteps from ``strength`` (the same
rule as diffusers' ``StableDiffusionImg2ImgPipeline``), forward noising with the scheduler's own
``add_noise``, then ``track_patches``. With one patch covering the whole canvas it is plain img2img.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
from typing import Any, Callable, Literal, Sequence

import torch
from tqdm.auto import tqdm

from pathup.errors import PathUpError
from pathup.sample.grid import PatchBox, patch_grid
from pathup.sample.weights import patch_weights

log = logging.getLogger(__name__)

# (x (B, C, h, w) scaled model input, t (scalar tensor)) -> model output (B, C, h, w), float32
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepMode = Literal["per-patch", "per-chunk"]


def guided_denoiser(unet: torch.nn.Module, cond: torch.Tensor, uncond: torch.Tensor | None = None,
                    guidance: float = 7.5) -> Denoiser:
    """A denoiser with classifier-free guidance: ``e_u + g * (e_c - e_u)``.

    The unconditional and conditional inputs go through the UNet in one batch of ``2 B`` (as in
    diffusers' pipelines). With ``guidance <= 1`` or no ``uncond`` only the conditional pass runs.

    Args:
        unet: a diffusers ``UNet2DConditionModel``.
        cond: prompt embeddings, (1, L, D).
        uncond: empty-prompt embeddings, (1, L, D), or None.
        guidance: guidance scale g.
    """
    use_cfg = uncond is not None and guidance > 1.0

    @torch.no_grad()
    def denoise(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        xin = x.to(unet.dtype)  # (B, C, h, w)
        if use_cfg:
            xin = torch.cat([xin, xin])  # (2B, C, h, w)
            emb = torch.cat([uncond.expand(b, -1, -1), cond.expand(b, -1, -1)])  # (2B, L, D)
        else:
            emb = cond.expand(b, -1, -1)  # (B, L, D)
        out = unet(xin, t, encoder_hidden_states=emb.to(unet.dtype), return_dict=False)[0].float()
        if use_cfg:
            e_u, e_c = out.chunk(2)  # (B, C, h, w) each
            return e_u + guidance * (e_c - e_u)
        return out

    return denoise


def img2img_timesteps(scheduler: Any, steps: int, strength: float,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Set ``scheduler`` for ``steps`` inference steps and return the last ``strength`` share of them.

    The same rule as diffusers' img2img pipeline: ``int(steps * strength)`` steps are re-run, and the
    scheduler's begin index is set so that order-aware schedulers start in the right place.
    """
    if steps < 1:
        raise PathUpError(f"--steps must be at least 1, got {steps}")
    if not 0.0 < strength <= 1.0:
        raise PathUpError(f"--strength must be in (0, 1], got {strength}")
    init = min(int(steps * strength), steps)
    if init < 1:
        raise PathUpError(f"--strength {strength} x --steps {steps} re-runs no step; raise either")
    scheduler.set_timesteps(steps, device=device)
    t_start = max(steps - init, 0)
    timesteps = scheduler.timesteps[t_start * scheduler.order:]
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(t_start * scheduler.order)
    return timesteps


def _step_kwargs(scheduler: Any, generator: torch.Generator | None, eta: float) -> dict[str, Any]:
    params = set(inspect.signature(scheduler.step).parameters)
    kw: dict[str, Any] = {}
    if "eta" in params:
        kw["eta"] = eta
    if "generator" in params:
        kw["generator"] = generator
    return kw


def resolve_patch_batch(patch_batch: int | str | None, n_patches: int) -> int:
    """``None``/``'all'`` -> all patches; an int (or its string) -> clipped to [1, n_patches]."""
    if patch_batch is None or patch_batch == "all":
        return n_patches
    try:
        n = int(patch_batch)
    except (TypeError, ValueError):
        raise PathUpError(f"--patch-batch must be 'auto' or a positive integer, got {patch_batch!r}") from None
    if n < 1:
        raise PathUpError(f"--patch-batch must be 'auto' or a positive integer, got {patch_batch!r}")
    return min(n, n_patches)


# The automatic patch batch never exceeds the 49 patches of a 2048 px image (p = 64, o = 32): larger
# canvases run in chunks of that size, so their peak memory is a 2048 px image's plus the larger canvas.
AUTO_MAX_PATCHES = 49


def balanced_batch(n_patches: int, batch: int) -> int:
    """The smallest chunk size that needs as few chunks as ``batch`` does (evens out the last chunk)."""
    batch = max(1, min(batch, n_patches))
    chunks = math.ceil(n_patches / batch)
    return math.ceil(n_patches / chunks)


def auto_patch_batch(unet: torch.nn.Module, n_patches: int, patch_hw: tuple[int, int], *, guidance: bool,
                     cross_dim: tuple[int, int] | None = None, memory_fraction: float = 0.7,
                     max_patches: int = AUTO_MAX_PATCHES, cpu_batch: int = 16) -> int:
    """How many patches to put through the UNet at once, from free accelerator memory.

    On CUDA, one probe forward with one patch (two with guidance) measures the activation memory per
    patch; the batch is the share ``memory_fraction`` of free memory divided by it, at most
    ``max_patches``. On the CPU the batch is ``cpu_batch``. Chunks are evened out
    (``balanced_batch``). The result never changes the image, only the speed.
    """
    device = unet.device
    if device.type != "cuda":
        return balanced_batch(n_patches, cpu_batch)
    per_call = 2 if guidance else 1
    seq, dim = cross_dim or (77, int(unet.config.cross_attention_dim))
    x = torch.zeros(per_call, unet.config.in_channels, *patch_hw, device=device, dtype=unet.dtype)
    emb = torch.zeros(per_call, seq, dim, device=device, dtype=unet.dtype)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad():
        unet(x, torch.tensor(999, device=device), encoder_hidden_states=emb)
    torch.cuda.synchronize(device)
    per_patch = max(1, torch.cuda.max_memory_allocated(device) - base)
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    n = int(memory_fraction * free / per_patch)
    log.debug("auto patch batch: %d bytes per patch, %d free -> %d", per_patch, free, n)
    return balanced_batch(n_patches, max(1, min(n, max_patches)))


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


def track_patches(denoiser: Denoiser, x: torch.Tensor, scheduler: Any, timesteps: Sequence | torch.Tensor, *,
                  patch: int = 64, overlap: int = 32, weight_map: str = "pyramid",
                  patch_batch: int | str | None = None, step_mode: StepMode = "per-patch",
                  generator: torch.Generator | None = None, eta: float = 0.0, progress: bool = False,
                  callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Implements Algorithm 1 of the PathUp paper (patch-wise timestep tracking), steps 3-5.

    Args:
        denoiser: ``(x, t) -> model output`` on a batch of patches (e.g. ``guided_denoiser``).
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
            stepped on the stacked chunk; each patch still keeps its own state (its rows of the
            stacked tensors), so for deterministic schedulers (DDIM, DPM-Solver++, Euler, PNDM) the
            result is the same, with fewer kernel launches. Stochastic steps (DDPM, DDIM eta > 0)
            then draw their noise per chunk.
        generator: random generator for stochastic scheduler steps.
        eta: DDIM eta (ignored by schedulers without it).
        progress: show a progress bar over the timesteps.
        callback: called as ``callback(i, t, x)`` after each combined step.

    Returns:
        The denoised latent canvas X_0, (1, C, H, W), in ``x``'s dtype (float32 recommended).
    """
    if x.ndim != 4 or x.shape[0] != 1:
        raise PathUpError(f"track_patches expects one latent canvas (1, C, H, W), got {tuple(x.shape)}")
    if step_mode not in ("per-patch", "per-chunk"):
        raise PathUpError(f"unknown step mode {step_mode!r}; allowed: per-patch, per-chunk")
    _, _, height, width = x.shape
    boxes = patch_grid(height, width, patch, overlap)
    chunk = resolve_patch_batch(patch_batch, len(boxes))
    ph, pw = boxes[0].height, boxes[0].width
    weight = patch_weights(weight_map, ph, pw, dtype=x.dtype, device=x.device)  # (ph, pw)
    den = combine_weights(boxes, weight, (height, width))  # (H, W)
    chunks = [list(range(i, min(i + chunk, len(boxes)))) for i in range(0, len(boxes), chunk)]
    # Timestep tracking: every patch (or chunk of patches) gets its own scheduler state.
    groups = [[k] for k in range(len(boxes))] if step_mode == "per-patch" else chunks
    schedulers = [copy.deepcopy(scheduler) for _ in groups]
    group_of = {k: g for g, members in enumerate(groups) for k in members}
    step_kw = _step_kwargs(scheduler, generator, eta)

    x = x.clone()
    steps = tqdm(timesteps, desc="denoising", leave=False, disable=not progress)
    for i, t in enumerate(steps):
        num = torch.zeros_like(x)  # (1, C, H, W)
        for members in chunks:
            xs = torch.stack([x[0, :, boxes[k].slices[0], boxes[k].slices[1]] for k in members])  # (B, C, ph, pw)
            # Scale inputs per scheduler state (identity for DDIM/DPM++, sigma scaling for Euler).
            xin = torch.cat([schedulers[g].scale_model_input(xs[_rows(groups[g], members)], t)
                             for g in _groups_in(members, group_of)])  # (B, C, ph, pw)
            eps = denoiser(xin, t)  # (B, C, ph, pw)
            for g in _groups_in(members, group_of):
                rows = _rows(groups[g], members)
                new = schedulers[g].step(eps[rows].to(x.dtype), t, xs[rows], **step_kw,
                                         return_dict=False)[0]  # (b, C, ph, pw)
                accumulate_patches(num, new, [boxes[k] for k in groups[g]], weight)
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
    """SPEC.md section 5 steps 2-5: noise X_0 to the start timestep, then ``track_patches`` to X_0'.

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
