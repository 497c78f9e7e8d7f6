"""The denoising loss L_r (Eq. 2 of the PathUp paper; SPEC.md section 4)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pathup.errors import PathUpError


def denoising_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet must predict for the scheduler's ``prediction_type``.

    ``epsilon`` -> the noise; ``v_prediction`` -> ``sqrt(abar_t) noise - sqrt(1 - abar_t) x_0``;
    ``sample`` -> the clean latent ``x_0``.
    """
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise PathUpError(f"unsupported scheduler prediction_type {kind!r}; allowed: epsilon, v_prediction, sample")


def denoising_loss(model_pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L_r = E ||target - eps_theta(x_t, t, c)||^2 (Eq. 2), the mean squared error in float32.

    Args:
        model_pred: the UNet output, (B, C, h, w).
        target: ``denoising_target(...)``, (B, C, h, w).
    """
    return F.mse_loss(model_pred.float(), target.float(), reduction="mean")
