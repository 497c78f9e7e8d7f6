"""Deep-feature caching across steps, one cache entry per patch and branch (DeepCache, Ma et al. 2024).

DeepCache (Ma, Fang, Wang, "DeepCache: Accelerating Diffusion Models for Free", CVPR 2024) runs the
whole UNet only every N-th step; in the steps between, it runs only the shallowest skip branch and
reuses the deep features of the last full evaluation, which change little from one step to the next.
The DeepCache package hooks one pipeline and keeps one cache; patch-wise timestep tracking evaluates many
patches per step, in chunks of ``patch_batch``, so here every batch row has its own entry, keyed by the
caller (the patch box and the prompt or unconditional branch: ``RegionDenoiser``).

The split is the package's default (``cache_layer_id=0, cache_block_id=0``; ``DeepCache/sd/
unet_2d_condition.py``): a cached evaluation runs ``conv_in``, the first layer of the first down block
(resnet, and its attention where the block has one), the last two layers of the last up block, which
take those two outputs as skip connections, and ``conv_norm_out`` / ``conv_act`` / ``conv_out``. What
enters the last up block's second-to-last layer from deeper in the UNet (for ``layers_per_block=1`` the
input of ``up_blocks[-1]`` itself) is the cached deep feature, stored by every full evaluation.

Schedule: uniform, as the package's ``skip_mode='uniform'``: full at step 0 of a run and every
``interval``-th step after; ``interval=1`` never caches (the UNet runs as it always did). A step is a new
timestep: calls with the same ``t`` (the chunks of one step) share it, and a ``t`` above the last one
starts a new run (the cache is cleared; ``reset`` does it explicitly).

Batch invariance: every row's deep feature is stored and read by its key alone, so which patches share a
UNet call does not change what a row gets (up to the UNet's float rounding across batch sizes, as without
the cache). Memory: one feature map (C of the first UNet block, at the patch's latent size) per key, e.g.
320 x 64 x 64 float32 = 5 MB per patch and branch for Stable Diffusion 1.5.
"""

from __future__ import annotations

from typing import Any, Hashable, Sequence

import torch

from pathup.errors import OptionError, PathUpError


def check_supported(unet: torch.nn.Module) -> None:
    """Raise a one-line PathUpError when ``unet`` is not a ``UNet2DConditionModel`` the shallow path handles."""
    config = getattr(unet, "config", None)
    up = getattr(unet, "up_blocks", None)
    down = getattr(unet, "down_blocks", None)
    if config is None or not up or not down:
        raise PathUpError("cache_interval > 1 needs a diffusers UNet2DConditionModel "
                          f"(got {type(unet).__name__})")
    if getattr(config, "class_embed_type", None) is not None or getattr(config, "addition_embed_type", None) \
            is not None or getattr(config, "time_cond_proj_dim", None) is not None:
        raise PathUpError("cache_interval > 1 supports UNets without class, added or conditioned time "
                          "embeddings; use --cache-interval 1 with this model")
    if len(up[-1].resnets) < 2 or getattr(up[-1], "upsamplers", None) is not None:
        raise PathUpError("cache_interval > 1 needs a last up block with at least two layers and no upsampler")
    if any(getattr(up[-1], name, None) for name in ("s1", "s2", "b1", "b2")):
        raise PathUpError("cache_interval > 1 does not support FreeU; disable it or use --cache-interval 1")


class DeepCache:
    """Cached deep features of a ``UNet2DConditionModel``, one entry per key (a batch row's patch and branch).

    Args:
        unet: the diffusers UNet.
        interval: N: full evaluations at steps 0, N, 2N, ... of a run (1: off).

    Attributes:
        features: key -> (C, h, w) deep feature of that row's last full evaluation.
        step: index of the current step in the run (-1 before the first call).
    """

    def __init__(self, unet: torch.nn.Module, interval: int) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise OptionError("cache_interval", f"must be an integer >= 1 (1: off), got {interval!r}")
        if interval > 1:
            check_supported(unet)
        self.unet = unet
        self.interval = interval
        self.features: dict[Hashable, torch.Tensor] = {}
        self.step = -1
        self._t: float | None = None

    def reset(self) -> None:
        """Forget every stored feature and start a new run at step 0 (next call)."""
        self.features.clear()
        self.step = -1
        self._t = None

    def is_full(self, t: torch.Tensor | float) -> bool:
        """Advance the step counter when ``t`` changes and say whether this step runs the whole UNet."""
        tv = float(t)
        if self._t is None or tv > self._t:  # the first call, or a new run (timesteps descend in a run)
            self.reset()
        if tv != self._t:
            self.step += 1
            self._t = tv
        return self.step % self.interval == 0

    def full(self, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor, keys: Sequence[Hashable]) -> torch.Tensor:
        """The whole UNet on ``x`` (B, C, h, w), storing each row's deep feature under its key."""
        if len(keys) != x.shape[0]:
            raise PathUpError(f"{len(keys)} cache keys for a batch of {x.shape[0]}")
        layer = self.unet.up_blocks[-1].resnets[-2]
        skip_channels = self.unet.down_blocks[0].resnets[0].out_channels
        seen: list[torch.Tensor] = []

        def grab(_module: Any, args: tuple) -> None:
            seen.append(args[0][:, :args[0].shape[1] - skip_channels])  # (B, C_deep, h, w): cat(deep, skip)

        handle = layer.register_forward_pre_hook(grab)
        try:
            out = self.unet(x, t, encoder_hidden_states=emb, return_dict=False)[0]
        finally:
            handle.remove()
        deep = seen[-1]
        for row, key in enumerate(keys):
            self.features[key] = deep[row].clone()  # (C_deep, h, w), alone: no chunk's batch kept alive
        return out

    def cached(self, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor, keys: Sequence[Hashable]) -> torch.Tensor:
        """The shallow branch on ``x`` (B, C, h, w) with each row's stored deep feature (same output dtype
        as the UNet)."""
        missing = [k for k in keys if k not in self.features]
        if missing:
            raise PathUpError(f"no cached deep features for {missing[0]!r}: a cached step needs a full "
                              "evaluation of the same patch earlier in the run")
        deep = torch.stack([self.features[k] for k in keys])  # (B, C_deep, h, w)
        return shallow_unet(self.unet, x, t, emb, deep)


def shallow_unet(unet: torch.nn.Module, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor,
                 deep: torch.Tensor) -> torch.Tensor:
    """DeepCache's cached evaluation: the UNet's shallowest skip branch around the deep feature ``deep``.

    The same operations as diffusers' ``UNet2DConditionModel.forward`` on that branch: time embedding,
    ``conv_in`` (skip h0), the first down layer (skip h1), then the last up block's last two layers on
    ``cat(deep, h1)`` and ``cat(., h0)``, then the output convolution.

    Args:
        unet: the UNet.
        x: scaled model input, (B, C, h, w).
        t: the timestep (scalar tensor).
        emb: text embeddings, (B, L, D).
        deep: the deep features entering ``up_blocks[-1].resnets[-2]``, (B, C_deep, h, w).

    Returns:
        The model output, (B, C_out, h, w).
    """
    sample = 2 * x - 1.0 if unet.config.center_input_sample else x
    t_emb = unet.get_time_embed(sample=sample, timestep=t)
    temb = unet.time_embedding(t_emb, None)  # (B, D_t)
    if unet.time_embed_act is not None:
        temb = unet.time_embed_act(temb)
    ehs = unet.process_encoder_hidden_states(encoder_hidden_states=emb, added_cond_kwargs=None)
    if hasattr(unet, "_tome_info"):  # token merging (tomesd) reads the input size from a hook on forward
        unet._tome_info["size"] = tuple(sample.shape[2:])
    h0 = unet.conv_in(sample)  # (B, C0, h, w)
    first = unet.down_blocks[0]
    h1 = first.resnets[0](h0, temb)  # (B, C0, h, w)
    if getattr(first, "attentions", None):
        h1 = first.attentions[0](h1, encoder_hidden_states=ehs, return_dict=False)[0]
    last = unet.up_blocks[-1]
    h = deep.to(h0.dtype)
    for j, skip in ((-2, h1), (-1, h0)):
        h = torch.cat([h, skip], dim=1)
        h = last.resnets[j](h, temb)
        if getattr(last, "attentions", None):
            h = last.attentions[j](h, encoder_hidden_states=ehs, return_dict=False)[0]
    if unet.conv_norm_out is not None:
        h = unet.conv_act(unet.conv_norm_out(h))
    return unet.conv_out(h)  # (B, C_out, h, w)
