"""Denoisers for patch-wise timestep tracking: classifier-free guidance and MultiDiffusion's region rule.

``guided_denoiser`` is classifier-free guidance ``e_u + g * (e_c - e_u)`` (one prompt), optionally only
inside a limited interval of noise levels (Kynkaanniemi et al. 2024, "Applying guidance in a limited
interval improves sample and distribution quality in diffusion models": ``lo < sigma_t <= hi``, elsewhere
the conditional prediction alone, one UNet pass per patch); ``RegionDenoiser`` blends the guided predictions of several prompts per position by soft class masks
(Bar-Tal et al. 2023, "MultiDiffusion", Eq. 5 with per-pixel masks) inside PathUp's Algorithm 1
(section 3.2), evaluating per patch only the prompts whose mask is non-zero under it.
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Sequence

import torch

from pathup.errors import PathUpError
from pathup.sample.deepcache import DeepCache

# (x (B, C, h, w) scaled model input, t (scalar tensor)) -> model output (B, C, h, w), float32
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepMode = Literal["per-patch", "per-chunk", "per-canvas"]
STEP_MODES = ("per-patch", "per-chunk", "per-canvas")


def noise_levels(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The noise level of every training timestep, ``sigma_t = sqrt((1 - alphabar_t) / alphabar_t)``, (T,) float64.

    The variance-exploding parametrisation (Karras et al. 2022, Eq. 2 with ``x / sqrt(alphabar)``) in which
    Kynkaanniemi et al. 2024 state their guidance intervals; it does not depend on the sampler. A
    zero-terminal-SNR schedule (``alphabar_T = 0``) gives ``inf`` there.
    """
    ab = torch.as_tensor(alphas_cumprod, dtype=torch.float64).cpu()  # (T,)
    return ((1 - ab) / ab).sqrt()


def noise_level(sigmas: torch.Tensor, t: Any) -> float:
    """``sigma`` at timestep ``t`` of a ``noise_levels`` table; a fractional ``t`` (Euler's timesteps)
    interpolates linearly between the neighbouring training timesteps (as Euler's own sigmas do)."""
    tf = float(t)
    lo = min(max(int(tf), 0), len(sigmas) - 1)
    hi = min(lo + 1, len(sigmas) - 1)
    w = tf - lo
    if w <= 0 or hi == lo:
        return float(sigmas[lo])
    return float((1 - w) * sigmas[lo] + w * sigmas[hi])


def in_interval(sigma: float, interval: tuple[float, float] | None) -> bool:
    """Whether guidance applies at noise level ``sigma``: ``lo < sigma <= hi`` (always with no interval)."""
    return interval is None or interval[0] < sigma <= interval[1]


def guided_steps(timesteps: Any, alphas_cumprod: torch.Tensor, guidance: float,
                 interval: tuple[float, float] | None, *, has_uncond: bool = True) -> int:
    """How many of ``timesteps`` run the unconditional pass (guidance on and ``sigma_t`` in ``interval``)."""
    if not has_uncond or guidance <= 1.0:
        return 0
    sigmas = noise_levels(alphas_cumprod)
    return sum(in_interval(noise_level(sigmas, t), interval) for t in timesteps)


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

    Guidance interval (Kynkaanniemi et al. 2024, Sec. 3): with ``guidance_interval=(lo, hi)`` a step at
    timestep ``t`` is guided only when ``lo < sigma_t <= hi`` (``noise_levels``); outside it the prediction
    is the conditional one, ``e_c`` (guidance scale 1), and the unconditional pass is not run: a patch under
    ``n`` prompts then costs ``n`` UNet evaluations. The decision depends on ``t`` alone, so all patches of a
    step take the same branch and the result stays independent of the patch batch.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (or any module with that call signature).
        conds: prompt embeddings, one (1, L, D) tensor per prompt (or a (K, L, D) tensor).
        uncond: empty-prompt embeddings, (1, L, D), or None.
        guidance: guidance scale g (``<= 1``: conditional passes only).
        masks: soft masks on the latent canvas, (K, H, W), non-negative, summing to 1 per position;
            None with one prompt.
        cache_interval: DeepCache's N (``pathup.sample.deepcache``): the whole UNet at steps 0, N, 2N, ...
            of a run, the shallow branch with each row's cached deep features between; 1: off (the UNet
            runs as it always did). Each batch row has its own entry, keyed by its patch box and branch
            (``"uncond"`` or the prompt index), so the result does not depend on ``patch_batch``.
        guidance_interval: ``(lo, hi)`` noise levels between which guidance applies; None: every step.
        alphas_cumprod: the model's training schedule ``alphabar_t``, (T,) (a diffusers scheduler's
            ``alphas_cumprod``); needed with ``guidance_interval``.

    Attributes:
        evaluations: full UNet samples evaluated so far (batch items; the cost measure of ``pathup compose``).
        cached_evaluations: samples evaluated through the shallow branch only (``cache_interval > 1``);
            each costs a fraction of a full one (measured in ``benchmarks/_speed_levers.py``).
    """

    takes_boxes = True

    def __init__(self, unet: torch.nn.Module, conds: Sequence[torch.Tensor] | torch.Tensor,
                 uncond: torch.Tensor | None = None, guidance: float = 7.5,
                 masks: torch.Tensor | None = None, cache_interval: int = 1,
                 guidance_interval: tuple[float, float] | None = None,
                 alphas_cumprod: torch.Tensor | None = None) -> None:
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
        self.guidance_interval = None if guidance_interval is None else tuple(map(float, guidance_interval))
        if self.guidance_interval is not None and alphas_cumprod is None:
            raise PathUpError("a guidance interval needs the model's alphas_cumprod to know each step's noise level")
        self.sigmas = None if alphas_cumprod is None else noise_levels(alphas_cumprod)  # (T,)
        self.evaluations = 0
        self.cached_evaluations = 0
        self._present: dict[Any, list[int]] = {}
        self._emb_cache: dict[tuple, torch.Tensor] = {}  # the UNet batches' prompt embeddings (_embeddings)
        self.set_cache_interval(cache_interval)

    @property
    def cache_interval(self) -> int:
        """DeepCache's N (1: off)."""
        return self.cache.interval

    def set_cache_interval(self, interval: int) -> None:
        """Use DeepCache with interval ``interval`` from the next run on (1: off); clears the cache."""
        self.cache = DeepCache(self.unet, interval)

    def reset_cache(self) -> None:
        """Forget the cached deep features (``track_patches`` calls it before a run)."""
        self.cache.reset()

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

    def guides(self, t: Any) -> bool:
        """Whether the step at timestep ``t`` runs classifier-free guidance (``use_cfg`` and, with an interval,
        ``sigma_t`` inside it)."""
        if not self.use_cfg or self.guidance_interval is None:
            return self.use_cfg
        return in_interval(noise_level(self.sigmas, t), self.guidance_interval)

    def _unet(self, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor, keys: Sequence[Any] = (),
              full: bool = True) -> torch.Tensor:
        """The UNet on one batch; with the cache on, a full evaluation stores and a cached one reads the
        deep features of ``keys`` (one per row). A row without stored features on a cached step (the
        unconditional branch when a guidance interval begins between two full steps) runs the whole UNet."""
        if self.cache.interval == 1:
            self.evaluations += x.shape[0]
            return self.unet(x, t, encoder_hidden_states=emb, return_dict=False)[0].float()
        if full:
            self.evaluations += x.shape[0]
            return self.cache.full(x, t, emb, keys).float()
        fresh = [r for r, k in enumerate(keys) if k not in self.cache.features]
        if not fresh:
            self.cached_evaluations += x.shape[0]
            return self.cache.cached(x, t, emb, keys).float()
        kept = [r for r in range(x.shape[0]) if r not in set(fresh)]
        out = torch.empty((x.shape[0], *x.shape[1:]), dtype=torch.float32, device=x.device)
        out[fresh] = self._unet(x[fresh], t, emb[fresh], [keys[r] for r in fresh], True)
        if kept:
            out[kept] = self._unet(x[kept], t, emb[kept], [keys[r] for r in kept], False)
        return out

    def _embeddings(self, use_cfg: bool, b: int, prompts: list[int], dtype: torch.dtype) -> torch.Tensor:
        """The prompt embeddings of a UNet batch: ``b`` unconditional rows (with guidance), then one row per
        (patch, prompt) pair; built once per chunk layout and reused on every step (the embeddings of a run
        do not change, and copying them each step was most of the time spent outside the UNet)."""
        key = (use_cfg, b, tuple(prompts), dtype)
        if key not in self._emb_cache:
            if len(self._emb_cache) >= 4:  # a run has a few layouts (full chunks, the last one): keep those
                self._emb_cache.pop(next(iter(self._emb_cache)))
            parts = ([self.uncond.expand(b, -1, -1)] if use_cfg else []) + (
                [self.conds[prompts[0]].expand(len(prompts), -1, -1)] if len(set(prompts)) == 1
                else [self.conds[c] for c in prompts])
            self._emb_cache[key] = torch.cat(parts).to(dtype)
        return self._emb_cache[key]

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
        use_cfg = self.guides(t)  # one decision per step: every patch of the step takes the same branch
        present = [self.present(box) for box in boxes]
        pairs = [(k, c) for k in range(b) for c in present[k]]  # one conditional pass per (patch, prompt)
        one_each = all(len(p) == 1 for p in present)  # one prompt under each patch (always without masks)
        rows: Any = slice(None) if one_each else [k for k, _ in pairs]
        parts_x = ([xin] if use_cfg else []) + [xin[rows]]
        allx = torch.cat(parts_x)  # (B + P, C, h, w) with guidance, (P, ...) without
        emb = self._embeddings(use_cfg, b, [c for _, c in pairs], dtype)  # (B + P, L, D)
        # Cache keys, one per row: the patch (its box; its row without boxes) and the branch.
        where = [box if box is not None else ("row", k) for k, box in enumerate(boxes)]
        keys = ([(w, "uncond") for w in where] if use_cfg else []) + [(where[k], c) for k, c in pairs]
        full = self.cache.interval == 1 or self.cache.is_full(t)
        # Memory stays that of plain generation (2 B samples per UNet call) however many prompts a patch sees.
        limit = 2 * b if use_cfg else b
        outs = [self._unet(allx[i:i + limit], t, emb[i:i + limit], keys[i:i + limit], full)
                for i in range(0, allx.shape[0], limit)]
        out = outs[0] if len(outs) == 1 else torch.cat(outs)  # (B + P, C, h, w) float32
        if use_cfg:
            e_u, e_c = out[:b], out[b:]
            guided = e_u[rows] + self.guidance * (e_c - e_u[rows])  # (P, C, h, w)
        else:
            guided = out
        if one_each:  # one prompt under each patch: its mask is 1 there, the prediction is the guided one
            return guided
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
                    guidance: float = 7.5, cache_interval: int = 1,
                    guidance_interval: tuple[float, float] | None = None,
                    alphas_cumprod: torch.Tensor | None = None) -> RegionDenoiser:
    """A denoiser with classifier-free guidance: ``e_u + g * (e_c - e_u)``.

    The unconditional and conditional inputs go through the UNet in one batch of ``2 B`` (as in
    diffusers' pipelines). With ``guidance <= 1`` or no ``uncond`` only the conditional pass runs.
    It is the one-prompt ``RegionDenoiser``.

    Args:
        unet: a diffusers ``UNet2DConditionModel``.
        cond: prompt embeddings, (1, L, D).
        uncond: empty-prompt embeddings, (1, L, D), or None.
        guidance: guidance scale g.
        cache_interval: DeepCache's N (1: off); see ``RegionDenoiser``.
        guidance_interval: ``(lo, hi)``: guidance only where ``lo < sigma_t <= hi`` (None: every step).
        alphas_cumprod: the training schedule, needed with ``guidance_interval``.
    """
    return RegionDenoiser(unet, [cond], uncond, guidance, cache_interval=cache_interval,
                          guidance_interval=guidance_interval, alphas_cumprod=alphas_cumprod)


