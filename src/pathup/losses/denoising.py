"""The denoising loss L_r (Eq. 2 of the PathUp paper, section 3.2)."""

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


def denoising_loss(model_pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """L_r = E w_t ||target - eps_theta(x_t, t, c)||^2 (Eq. 2), the mean squared error in float32.

    Args:
        model_pred: the UNet output, (B, C, h, w).
        target: ``denoising_target(...)``, (B, C, h, w).
        weights: optional per-sample weights w_t, (B,) (e.g. ``min_snr_weights``); None: all 1.
    """
    if weights is None:
        return F.mse_loss(model_pred.float(), target.float(), reduction="mean")
    per_sample = (model_pred.float() - target.float()).pow(2).flatten(1).mean(1)  # (B,)
    return (per_sample * weights.float()).mean()


def snr(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio abar_t / (1 - abar_t) of the training timesteps, (B,) float32."""
    abar = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()  # (B,)
    return abar / (1.0 - abar)


def min_snr_weights(scheduler, timesteps: torch.Tensor, gamma: float = 5.0) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al., ICCV 2023, Eq. 9 and its epsilon / v forms), (B,).

    The weight of the x_0 loss is min(SNR, gamma); expressed for the prediction being trained it is
    ``min(SNR, gamma) / SNR`` (epsilon), ``min(SNR, gamma) / (SNR + 1)`` (v) or ``min(SNR, gamma)`` (sample).
    """
    s = snr(scheduler, timesteps)
    clipped = torch.clamp(s, max=gamma)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":  # -> 1 as SNR -> 0 (a zero-terminal-SNR schedule's last step)
        return torch.where(s > 0, clipped / s.clamp(min=1e-20), torch.ones_like(s))
    if kind == "v_prediction":
        return clipped / (s + 1.0)
    if kind == "sample":
        return clipped
    raise PathUpError(f"unsupported scheduler prediction_type {kind!r}; allowed: epsilon, v_prediction, sample")
