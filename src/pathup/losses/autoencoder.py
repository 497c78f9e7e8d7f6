"""First-stage loss of the from-scratch models' KL autoencoder (reconstruction + a small KL term).

The paper fine-tunes Stable Diffusion, whose autoencoder is pretrained; a model built from scratch
(``tiny``, ``small``) needs its own, trained briefly before the UNet (Rombach et al. 2022, the
KL-regularised autoencoder, here without the perceptual and adversarial terms).
"""

from __future__ import annotations

import torch


def spectral_l1(recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Mean |F(recon) - F(x)| of the orthonormal 2-D FFTs of each channel (a frequency-domain L1, in the spirit of
    the focal frequency loss of Jiang et al., ICCV 2021, without its adaptive weights): it charges blur, which a
    pixel L1 averages away, at every frequency alike."""
    diff = torch.fft.rfft2(recon.float(), norm="ortho") - torch.fft.rfft2(images.float(), norm="ortho")  # (B, 3, H, W/2+1)
    return diff.abs().mean()


_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
_D65 = (0.95047, 1.0, 1.08883)


def rgb_to_lab(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) sRGB in [-1, 1] -> CIE Lab (D65 white; L in [0, 100]), differentiable; the formulas of
    ``skimage.color.rgb2lab``, which the colour error CIEDE2000 of ``pathup.metrics.reconstruction`` reads."""
    c = ((images.float() + 1) / 2).clamp(0, 1)
    lin = torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055).clamp_min(1e-8) ** 2.4)
    m = torch.tensor(_RGB_TO_XYZ, dtype=lin.dtype, device=lin.device)
    xyz = torch.einsum("ij,bjhw->bihw", m, lin) / torch.tensor(_D65, dtype=lin.dtype, device=lin.device).view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-8) ** (1 / 3), 7.787 * xyz + 16 / 116)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], 1)


def lab_l1(recon: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Mean |Lab(recon) - Lab(x)| / 100: a colour error in the space a stain is judged in (a shift of
    haematoxylin toward magenta costs more here than in RGB)."""
    return (rgb_to_lab(recon) - rgb_to_lab(images)).abs().mean() / 100


def latent_grid(vae) -> int:
    """The autoencoder's downsampling factor: one latent pixel, in image pixels (8 for Stable Diffusion's)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


def grid_l1(recon: torch.Tensor, images: torch.Tensor, period: int) -> torch.Tensor:
    """Mean |F(recon) - F(x)| over the frequencies of a ``period``-px grid only (multiples of 1/period cycles/px
    along either axis, (0, 0) excluded; orthonormal 2-D FFT of each channel).

    A decoder that upsamples by nearest neighbour paints its latent grid (one latent pixel = ``period`` image
    pixels) as a faint checker; its energy sits on these few frequencies, where a pixel L1 spreads it thinly
    over every pixel and barely sees it. This term charges exactly there, against the real tile's own power
    at those frequencies (``pathup.metrics.reconstruction.grid_ratio`` measures the result).
    """
    h, w = images.shape[-2:]
    if period < 2 or h % period or w % period:
        raise ValueError(f"grid period must be >= 2 px and divide the {h}x{w} images, got {period}")
    diff = torch.fft.rfft2(recon.float(), norm="ortho") - torch.fft.rfft2(images.float(), norm="ortho")
    on = diff[..., :: h // period, :: w // period]  # (B, 3, period, <= period/2 + 1): the grid's bins
    keep = torch.ones(on.shape[-2:], dtype=torch.bool, device=on.device)
    keep[0, 0] = False  # the mean colour is the pixel L1's business
    return on.abs()[..., keep].mean()


def autoencoder_loss(vae, images: torch.Tensor, *, kl_weight: float = 1e-6, spectral_weight: float = 0.0,
                     lab_weight: float = 0.0, grid_weight: float = 0.0,
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L = |x - D(z)|_1 + spectral_weight * spectral_l1 + lab_weight * lab_l1 + grid_weight * grid_l1
    + kl_weight * KL(q(z|x) || N(0, I)), z ~ q(z|x).

    Both terms are sums over an image, as in the latent-diffusion code (so ``kl_weight`` means the
    same as there); the total is then divided by the pixel count, which Adam does not mind.

    Args:
        vae: a diffusers ``AutoencoderKL``.
        images: (B, 3, H, W) in [-1, 1].
        kl_weight: the KL weight (1e-6 as in Stable Diffusion's kl-f8).
        spectral_weight: weight of ``spectral_l1`` (0: off).
        lab_weight: weight of ``lab_l1`` (0: off).
        grid_weight: weight of ``grid_l1`` at the autoencoder's downsampling factor (0: off).
        generator: for the posterior sample.

    Returns:
        (total, reconstruction per pixel, KL per image), scalars.
    """
    dist = vae.encode(images).latent_dist
    z = dist.sample(generator)  # (B, 4, H/8, W/8)
    recon = vae.decode(z).sample  # (B, 3, H, W)
    rec = (recon.float() - images.float()).abs().mean()  # per pixel
    kl = dist.kl().float().mean()  # per image, summed over latent elements
    total = rec + kl_weight * kl / images[0].numel()
    if spectral_weight:
        total = total + spectral_weight * spectral_l1(recon, images)
    if lab_weight:
        total = total + lab_weight * lab_l1(recon, images)
    if grid_weight:
        total = total + grid_weight * grid_l1(recon, images, latent_grid(vae))
    return total, rec, kl
