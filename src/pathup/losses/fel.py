"""The feature entropy loss L_e and its memory bank (Eq. 3 of the PathUp paper, section 3.2).

An InfoNCE over prompts: the UNet's mid-block output for a noisy latent and its prompt, pooled over
space and L2-normalised, is ``z``; the memory bank holds one unit vector ``k_i`` per prompt id
(classes x levels). ``L_e = CE(z . k / tau, prompt id)``: features of the same prompt are pulled
together (toward their anchor) and pushed away from the other prompts' anchors. ``z`` keeps its
gradient, so L_e trains the UNet; the bank has none and moves after each step by an exponential
moving average toward the batch mean of its features, then is renormalised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pool_features(h: torch.Tensor) -> torch.Tensor:
    """Mean over space of a feature map: (B, C, H, W) -> (B, C), in float32, keeping the gradient."""
    return h.float().mean(dim=(2, 3))  # (B, C)


def feature_vector(h: torch.Tensor, head: nn.Module | None = None) -> torch.Tensor:
    """z of Eq. 3: mid-block output (B, C, h, w) -> pooled, optionally projected, L2-normalised (B, D)."""
    z = pool_features(h)  # (B, C)
    if head is not None:
        z = head(z)  # (B, D)
    return F.normalize(z, dim=1)  # (B, D)


def feature_entropy_loss(z: torch.Tensor, bank: torch.Tensor, ids: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
    """L_e = -1/B sum_b log softmax_i(z_b . k_i / tau)[id_b] (Eq. 3).

    Args:
        z: L2-normalised features, (B, D); their gradient flows back.
        bank: the memory bank, (n_prompts, D), unit rows; treated as a constant.
        ids: prompt id of each feature, (B,), int64.
        tau: the temperature.

    Returns:
        The mean cross-entropy, a scalar (0 for an empty batch).
    """
    if z.shape[0] == 0:
        return z.sum() * 0.0
    logits = z.float() @ bank.detach().float().t() / tau  # (B, n_prompts)
    return F.cross_entropy(logits, ids.long())


class FeatureBank(nn.Module):
    """The memory bank k: one unit vector per prompt id, without gradient (a buffer).

    Args:
        n_prompts: number of prompt ids (classes x levels).
        dim: feature size D (the UNet's mid-block channels, or the projection head's output).
        momentum: the EMA momentum alpha (0.99 by default).
        seed: the random initialisation's seed.
    """

    def __init__(self, n_prompts: int, dim: int, momentum: float = 0.99, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        bank = F.normalize(torch.randn(n_prompts, dim, generator=g), dim=1)  # (n_prompts, D)
        self.register_buffer("bank", bank)
        self.momentum = float(momentum)

    @property
    def n_prompts(self) -> int:
        return int(self.bank.shape[0])

    @property
    def dim(self) -> int:
        return int(self.bank.shape[1])

    def loss(self, z: torch.Tensor, ids: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
        """``feature_entropy_loss(z, self.bank, ids, tau)``."""
        return feature_entropy_loss(z, self.bank, ids, tau)

    @torch.no_grad()
    def update(self, z: torch.Tensor, ids: torch.Tensor) -> None:
        """k_c <- normalise(alpha k_c + (1 - alpha) mean{z_b : id_b = c}) for each id c in the batch.

        Args:
            z: features of the step, (B, D) (detached here).
            ids: their prompt ids, (B,).
        """
        if z.shape[0] == 0:
            return
        z = z.detach().to(self.bank.device, torch.float32)  # (B, D)
        ids = ids.to(self.bank.device).long()  # (B,)
        sums = torch.zeros_like(self.bank).index_add_(0, ids, z)  # (n_prompts, D)
        counts = torch.bincount(ids, minlength=self.n_prompts).to(z.dtype)  # (n_prompts,)
        present = counts > 0
        means = sums[present] / counts[present, None]  # (P, D)
        moved = self.momentum * self.bank[present] + (1.0 - self.momentum) * means  # (P, D)
        self.bank[present] = F.normalize(moved, dim=1)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # noqa: D102
        if state_dict["bank"].shape != self.bank.shape:
            from pathup.errors import PathUpError

            raise PathUpError(f"memory bank shape {tuple(state_dict['bank'].shape)} does not match this model's "
                              f"{tuple(self.bank.shape)} (prompts x feature size)")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


class ProjectionHead(nn.Module):
    """An optional small projection of the pooled mid-block features (Linear, SiLU, Linear)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, in_dim), nn.SiLU(), nn.Linear(in_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, out_dim)


class MidBlockFeatures:
    """Captures the UNet's mid-block output with a forward hook, keeping its gradient.

    Use as ``cap = MidBlockFeatures(unet)``; after ``unet(...)``, ``cap.pop()`` returns the
    mid-block output (B, C, h, w) of that forward call and clears it. ``cap.remove()`` detaches the hook.
    Works on a diffusers ``UNet2DConditionModel`` (also wrapped by DDP: pass the wrapped model or
    the inner one).
    """

    def __init__(self, unet: nn.Module) -> None:
        inner = getattr(unet, "module", unet)
        inner = getattr(inner, "_orig_mod", inner)  # torch.compile
        if getattr(inner, "mid_block", None) is None:
            from pathup.errors import PathUpError

            raise PathUpError("the feature entropy loss needs a UNet with a mid block (unet.mid_block is None); "
                              "use --fel-beta 0")
        self._out: torch.Tensor | None = None
        self._handle = inner.mid_block.register_forward_hook(self._hook)
        self.channels = int(inner.config.block_out_channels[-1])

    def _hook(self, module, inputs, output) -> None:
        self._out = output[0] if isinstance(output, (tuple, list)) else output

    def pop(self) -> torch.Tensor:
        out, self._out = self._out, None
        if out is None:
            raise RuntimeError("no mid-block output captured: call the UNet first")
        return out

    def remove(self) -> None:
        self._handle.remove()
