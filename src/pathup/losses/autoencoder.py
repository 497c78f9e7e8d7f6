"""First-stage loss of the from-scratch models' KL autoencoder (reconstruction + a small KL term).

The paper fine-tunes Stable Diffusion, whose autoencoder is pretrained; a model built from scratch
(``tiny``, ``small``) needs its own, trained briefly before the UNet (Rombach et al. 2022, the
KL-regularised autoencoder, here without the perceptual and adversarial terms).
"""

from __future__ import annotations

import torch


def autoencoder_loss(vae, images: torch.Tensor, *, kl_weight: float = 1e-6,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L = |x - D(z)|_1 + kl_weight * KL(q(z|x) || N(0, I)), z ~ q(z|x).

    Both terms are sums over an image, as in the latent-diffusion code (so ``kl_weight`` means the
    same as there); the total is then divided by the pixel count, which Adam does not mind.

    Args:
        vae: a diffusers ``AutoencoderKL``.
        images: (B, 3, H, W) in [-1, 1].
        kl_weight: the KL weight (1e-6 as in Stable Diffusion's kl-f8).
        generator: for the posterior sample.

    Returns:
        (total, reconstruction per pixel, KL per image), scalars.
    """
    dist = vae.encode(images).latent_dist
    z = dist.sample(generator)  # (B, 4, H/8, W/8)
    recon = vae.decode(z).sample  # (B, 3, H, W)
    rec = (recon.float() - images.float()).abs().mean()  # per pixel
    kl = dist.kl().float().mean()  # per image, summed over latent elements
    return rec + kl_weight * kl / images[0].numel(), rec, kl
