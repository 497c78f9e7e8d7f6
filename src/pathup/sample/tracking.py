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
``tracked_text2img`` runs the same loop from pure noise over the whole schedule.

Regions (SPEC.md section 7, ``pathup compose``): the denoiser may be a ``RegionDenoiser``, which is told
which patches it denoises and blends the guided noise predictions of several prompts per position by
soft class masks (MultiDiffusion's region rule, Bar-Tal et al. 2023, "MultiDiffusion: Fusing Diffusion
Paths for Controlled Image Generation", ICML). It evaluates, per patch, only the prompts whose mask is
non-zero under it; plain generation is its one-prompt case (``guided_denoiser``), so there is one loop.

Stochastic samplers (DDPM, DDIM with eta > 0, SDE solvers): the step noise is drawn once per step on the
whole latent canvas and every patch gets its own slice of it, so the weighted mean of overlapping patches
carries noise of the right standard deviation (independent noise per patch would be shrunk by the mean:
to about 0.5 of it where four patches overlap). With one patch it is exactly diffusers' own draw.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import math
import sys
import threading
from typing import Any, Callable, Iterator, Literal, Sequence

import torch
from tqdm.auto import tqdm

from pathup.errors import PathUpError
from pathup.sample.grid import PatchBox, patch_grid
from pathup.sample.weights import patch_weights

log = logging.getLogger(__name__)

# (x (B, C, h, w) scaled model input, t (scalar tensor)) -> model output (B, C, h, w), float32
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepMode = Literal["per-patch", "per-chunk"]


class RegionDenoiser:
    """Guided noise prediction of one or several prompts, blended per position by soft masks.

    MultiDiffusion's region rule (Bar-Tal et al. 2023, Eq. 5 with per-pixel masks) applied inside
    PathUp's patch-wise timestep tracking: for each patch, every prompt ``c`` whose mask is non-zero under
    the patch gets the guided prediction ``e_u + g * (e_c - e_u)``; the patch's prediction is
    ``sum_c m_c * guided_c`` with the masks (which sum to 1 at every position) cut to the patch. The
    unconditional pass ``e_u`` does not depend on the prompt, so it runs once per patch: a patch under
    ``n`` prompts costs ``n + 1`` UNet evaluations with guidance (``n`` without), a patch under one prompt
    exactly what plain generation costs. For a deterministic step (DDIM) ``x_{t-1}`` is affine in the
    prediction, so blending predictions equals MultiDiffusion's blending of the denoised patches.

    With one prompt and no masks it is plain classifier-free guidance (``guided_denoiser``); a one-prompt
    call builds the very same UNet batch as plain generation, so the two give bit-equal results.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (or any module with that call signature).
        conds: prompt embeddings, one (1, L, D) tensor per prompt (or a (K, L, D) tensor).
        uncond: empty-prompt embeddings, (1, L, D), or None.
        guidance: guidance scale g (``<= 1``: conditional passes only).
        masks: soft masks on the latent canvas, (K, H, W), non-negative, summing to 1 per position;
            None with one prompt.

    Attributes:
        evaluations: UNet samples evaluated so far (batch items; the cost measure of ``pathup compose``).
    """

    takes_boxes = True

    def __init__(self, unet: torch.nn.Module, conds: Sequence[torch.Tensor] | torch.Tensor,
                 uncond: torch.Tensor | None = None, guidance: float = 7.5,
                 masks: torch.Tensor | None = None) -> None:
        self.unet = unet
        self.conds = [c.reshape(1, *c.shape[-2:]) for c in conds]  # K x (1, L, D)
        if not self.conds:
            raise PathUpError("a region denoiser needs at least one prompt")
        if masks is None and len(self.conds) != 1:
            raise PathUpError(f"{len(self.conds)} prompts need masks to blend them")
        if masks is not None and (masks.ndim != 3 or masks.shape[0] != len(self.conds)):
            raise PathUpError(f"masks must be (K={len(self.conds)}, H, W), got {tuple(masks.shape)}")
        self.uncond = uncond
        self.guidance = float(guidance)
        self.use_cfg = uncond is not None and guidance > 1.0
        self.masks = masks
        self.evaluations = 0
        self._present: dict[Any, list[int]] = {}

    @property
    def cross_dim(self) -> tuple[int, int]:
        """(L, D) of the prompt embeddings."""
        return tuple(self.conds[0].shape[1:])  # type: ignore[return-value]

    def present(self, box: Any) -> list[int]:
        """Indices of the prompts whose mask is non-zero somewhere under ``box`` (all without masks)."""
        if self.masks is None or box is None:
            return list(range(len(self.conds)))
        if box not in self._present:  # the masks do not change during a run: one look per patch
            sy, sx = box.slices
            hit = (self.masks[:, sy, sx] > 0).flatten(1).any(1).tolist()  # (K,)
            self._present[box] = [c for c, h in enumerate(hit) if h]
        return self._present[box]

    def _unet(self, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        self.evaluations += x.shape[0]
        return self.unet(x, t, encoder_hidden_states=emb, return_dict=False)[0].float()

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, t: torch.Tensor, boxes: Sequence[Any] | None = None) -> torch.Tensor:
        """Predictions for a batch of patches ``x`` (B, C, h, w) lying at ``boxes`` (None: no masks)."""
        b = x.shape[0]
        if boxes is None:
            if self.masks is not None and len(self.conds) > 1:
                raise PathUpError("a region denoiser with several prompts needs the patch boxes")
            boxes = [None] * b
        dtype = self.unet.dtype
        xin = x.to(dtype)  # (B, C, h, w)
        present = [self.present(box) for box in boxes]
        pairs = [(k, c) for k in range(b) for c in present[k]]  # one conditional pass per (patch, prompt)
        rows = [k for k, _ in pairs]
        parts_x = ([xin] if self.use_cfg else []) + [xin[rows]]
        parts_e = ([self.uncond.expand(b, -1, -1)] if self.use_cfg else []) + [
            torch.cat([self.conds[c] for _, c in pairs])]
        allx = torch.cat(parts_x)  # (B + P, C, h, w) with guidance, (P, ...) without
        emb = torch.cat(parts_e).to(dtype)  # (B + P, L, D)
        # Memory stays that of plain generation (2 B samples per UNet call) however many prompts a patch sees.
        limit = 2 * b if self.use_cfg else b
        out = torch.cat([self._unet(allx[i:i + limit], t, emb[i:i + limit])
                         for i in range(0, allx.shape[0], limit)])  # (B + P, C, h, w) float32
        if self.use_cfg:
            e_u, e_c = out[:b], out[b:]
            guided = e_u[rows] + self.guidance * (e_c - e_u[rows])  # (P, C, h, w)
        else:
            guided = out
        result = torch.empty((b, *guided.shape[1:]), dtype=guided.dtype, device=guided.device)
        j = 0
        for k in range(b):
            n = len(present[k])
            if n == 1:  # one prompt under the patch: its mask is 1 there, the prediction is the guided one
                result[k] = guided[j]
            else:
                sy, sx = boxes[k].slices
                m = self.masks[present[k]][:, sy, sx].to(guided)  # (n, h, w)
                result[k] = (m[:, None] * guided[j:j + n]).sum(0)
            j += n
        return result


def guided_denoiser(unet: torch.nn.Module, cond: torch.Tensor, uncond: torch.Tensor | None = None,
                    guidance: float = 7.5) -> RegionDenoiser:
    """A denoiser with classifier-free guidance: ``e_u + g * (e_c - e_u)``.

    The unconditional and conditional inputs go through the UNet in one batch of ``2 B`` (as in
    diffusers' pipelines). With ``guidance <= 1`` or no ``uncond`` only the conditional pass runs.
    It is the one-prompt ``RegionDenoiser``.

    Args:
        unet: a diffusers ``UNet2DConditionModel``.
        cond: prompt embeddings, (1, L, D).
        uncond: empty-prompt embeddings, (1, L, D), or None.
        guidance: guidance scale g.
    """
    return RegionDenoiser(unet, [cond], uncond, guidance)


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
        raise PathUpError(f"--steps must be at least 1, got {steps}")
    if not 0.0 < strength <= 1.0:
        raise PathUpError(f"--strength must be in (0, 1], got {strength}")
    init = min(int(steps * strength), steps)
    if init < 1:
        raise PathUpError(f"--strength {strength} x --steps {steps} re-runs no step; raise either")
    if "skip_prk_steps" in scheduler.config and not scheduler.config.skip_prk_steps:
        scheduler.register_to_config(skip_prk_steps=True)
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


class CanvasNoise:
    """The step noise of one timestep, drawn on the whole latent canvas; each patch takes its slice.

    A stochastic step adds ``sigma_t * z``. If every patch drew its own ``z``, the weighted mean over
    ``n`` overlapping patches would have standard deviation ``sigma_t * sqrt(sum w^2) / sum w`` (1/2 of
    it where four equal weights overlap). Giving every patch the slice of one canvas draw ``Z`` makes the
    combined noise ``sigma_t * Z`` exactly, for any weights. Draws are made lazily (deterministic
    samplers draw nothing) with diffusers' ``randn_tensor`` and the run's generator, so with one patch
    the draw is bit-equal to diffusers' own. A scheduler that draws twice in a step gets a second canvas
    draw for the second.
    """

    def __init__(self, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.shape, self.generator, self.device, self.dtype = tuple(shape), generator, device, dtype
        self.draws: list[torch.Tensor] = []  # (1, C, H, W) each

    def canvas(self, index: int) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        while len(self.draws) <= index:
            self.draws.append(randn_tensor(self.shape, generator=self.generator, device=self.device,
                                           dtype=self.dtype))
        return self.draws[index]

    def for_patches(self, boxes: Sequence[PatchBox], index: int) -> torch.Tensor:
        """The slices of canvas draw ``index`` under ``boxes``, stacked: (n, C, ph, pw)."""
        z = self.canvas(index)
        return torch.stack([z[0, :, box.slices[0], box.slices[1]] for box in boxes])


_NOISE_LOCK = threading.RLock()
_NOISE_LOCAL = threading.local()


@contextlib.contextmanager
def canvas_step_noise(scheduler: Any, noise: CanvasNoise, boxes: Sequence[PatchBox]) -> Iterator[None]:
    """While a scheduler steps the patches ``boxes``, its noise draws return their slices of ``noise``.

    diffusers' schedulers draw step noise with ``randn_tensor`` (DDPM has no ``variance_noise``
    argument), so the name is pointed, for this thread and this call only, to the canvas slices; other
    threads calling the same function meanwhile still get diffusers' own draw.
    """
    globs = getattr(type(scheduler).step, "__globals__", {})
    original = globs.get("randn_tensor")
    if original is None:  # this scheduler draws no noise through randn_tensor
        yield
        return
    counter = [0]

    def draw(shape: Any, generator: Any = None, device: Any = None, dtype: Any = None, **kw: Any) -> torch.Tensor:
        if getattr(_NOISE_LOCAL, "active", None) is not counter:
            return original(shape, generator=generator, device=device, dtype=dtype, **kw)
        z = noise.for_patches(boxes, counter[0])
        counter[0] += 1
        if tuple(z.shape) != tuple(shape):
            raise PathUpError(f"{type(scheduler).__name__} drew step noise of shape {tuple(shape)}, expected "
                              f"{tuple(z.shape)}; use --step-mode per-patch or another sampler")
        return z.to(device=device if device is not None else z.device, dtype=dtype or z.dtype)

    with _NOISE_LOCK:
        globs["randn_tensor"] = draw
        _NOISE_LOCAL.active = counter
        try:
            yield
        finally:
            globs["randn_tensor"] = original
            _NOISE_LOCAL.active = None


def _call_denoiser(denoiser: Any, x: torch.Tensor, t: torch.Tensor, boxes: Sequence[PatchBox]) -> torch.Tensor:
    """A ``RegionDenoiser`` (``takes_boxes``) is told where the patches lie; a plain one gets ``(x, t)``."""
    if getattr(denoiser, "takes_boxes", False):
        return denoiser(x, t, boxes)
    return denoiser(x, t)


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
            stepped on the stacked chunk; each patch still keeps its own state (its rows of the
            stacked tensors), so the result is the same, with fewer kernel launches.
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
        noise = CanvasNoise(tuple(x.shape), generator, x.device, x.dtype)  # this step's noise, drawn on need
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
        raise PathUpError(f"--steps must be at least 1, got {steps}")
    scheduler = copy.deepcopy(scheduler)
    scheduler.set_timesteps(steps, device=device)
    x = randn_tensor(tuple(shape), generator=generator, device=torch.device(device or "cpu"), dtype=torch.float32)
    x = x * scheduler.init_noise_sigma
    return track_patches(denoiser, x, scheduler, scheduler.timesteps, generator=generator, **track_kwargs)
