"""How much of a tile survives the autoencoder: reconstruction quality of real images.

Every latent diffusion model decodes its images through its autoencoder, so whatever the autoencoder
loses (nuclei, stain colour, texture below its latent grid) no generated image can show. These are pure
functions of (real, reconstruction) image pairs, uint8 (N, H, W, 3):

* PSNR (dB) and SSIM (scikit-image, data range 255, SSIM over the three channels);
* mean colour error CIEDE2000 in CIE Lab (``skimage.color.deltaE_ciede2000``; about 1 is the smallest
  difference a person sees, 2-3 a difference a pathologist may notice in a stain);
* the error in a border band of ``border`` pixels against the error of the centre (mean absolute error
  ratio): an autoencoder whose padding frames its output shows a ratio well above 1.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from pathup.errors import PathUpError

BORDER_PX = 8
STRIP_TILES = 8  # tiles in the real | reconstruction strip


def images_to_uint8(images: "torch.Tensor") -> np.ndarray:  # noqa: F821
    """(N, 3, H, W) in [-1, 1] -> (N, H, W, 3) uint8."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()




def _pairs(real: np.ndarray, recon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    real, recon = np.asarray(real), np.asarray(recon)
    if real.shape != recon.shape or real.ndim != 4 or real.shape[-1] != 3:
        raise PathUpError(f"reconstruction metrics need two (N, H, W, 3) image arrays of one shape, got "
                          f"{real.shape} and {recon.shape}")
    if real.dtype != np.uint8 or recon.dtype != np.uint8:
        raise PathUpError(f"reconstruction metrics need uint8 images, got {real.dtype} and {recon.dtype}")
    return real, recon


def border_ratio(real: np.ndarray, recon: np.ndarray, border: int = BORDER_PX) -> np.ndarray:
    """Per image: mean absolute error in the ``border``-px band along the edges / that of the centre.

    Args:
        real: (N, H, W, 3) uint8.
        recon: (N, H, W, 3) uint8.
        border: band width in pixels (the centre must keep at least one pixel).

    Returns:
        (N,) ratios (NaN where the centre error is 0).
    """
    real, recon = _pairs(real, recon)
    h, w = real.shape[1:3]
    if border < 1 or 2 * border >= min(h, w):
        raise PathUpError(f"border must be 1 to {(min(h, w) - 1) // 2} px for {h}x{w} images, got {border}")
    err = np.abs(real.astype(np.float64) - recon.astype(np.float64)).mean(-1)  # (N, H, W)
    inner = np.zeros((h, w), bool)
    inner[border:h - border, border:w - border] = True
    centre = err[:, inner].mean(1)  # (N,)
    edge = err[:, ~inner].mean(1)  # (N,)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(centre > 0, edge / np.where(centre > 0, centre, 1), np.nan)


def grid_ratio(images: np.ndarray, period: int) -> float:
    """How much a ``period``-px grid stands out in the images' power spectrum (1: not at all).

    The luminance of every image, minus its mean, is Fourier transformed; the power spectra are averaged.
    At each frequency of the grid (multiples of 1/period cycles/px along either axis, (0, 0) excluded) the
    power is divided by the median power of all frequencies at the same distance from the origin (rounded
    to a bin); the result is the mean of those ratios. Natural tissue gives about 1-2; a decoder that paints
    its latent grid (one latent pixel = ``period`` image pixels) gives a clearly larger value, seen in the
    images as a faint checker.

    Args:
        images: (N, H, W, 3) uint8, H and W multiples of ``period``.
        period: grid period in pixels (the autoencoder's downsampling factor).
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise PathUpError(f"grid_ratio needs (N, H, W, 3) images, got shape {images.shape}")
    h, w = images.shape[1:3]
    on_grid = _grid_mask(h, w, period)
    power = _luminance_power(images)  # (H, W)
    fy, fx = np.meshgrid(np.fft.fftfreq(h) * h, np.fft.fftfreq(w) * w, indexing="ij")  # integer frequency bins
    radius = np.rint(np.hypot(fy / h, fx / w) * max(h, w)).astype(int)
    ratios = []
    for y, x in zip(*np.nonzero(on_grid)):
        ring = power[radius == radius[y, x]]
        med = np.median(ring)
        if med > 0:
            ratios.append(power[y, x] / med)
    return float(np.mean(ratios)) if ratios else float("nan")


def _grid_mask(h: int, w: int, period: int) -> np.ndarray:
    """(H, W) bool: the frequencies of a ``period``-px grid in an unshifted H x W spectrum, (0, 0) excluded."""
    if period < 2 or h % period or w % period:
        raise PathUpError(f"grid period must be >= 2 px and divide the {h}x{w} images, got {period}")
    on = np.zeros((h, w), bool)
    on[:: h // period, :: w // period] = True
    on[0, 0] = False
    return on


def _luminance_power(images: np.ndarray) -> np.ndarray:
    """Mean power spectrum (H, W) of the images' luminance, each minus its mean."""
    lum = np.asarray(images).astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # (N, H, W)
    lum -= lum.mean(axis=(1, 2), keepdims=True)
    return (np.abs(np.fft.fft2(lum)) ** 2).mean(0)


def grid_power_vs_real(real: np.ndarray, recon: np.ndarray, period: int) -> dict[str, float]:
    """The power the reconstructions keep of the real images', at a ``period``-px grid's frequencies and elsewhere.

    ``grid``: the mean over the grid's frequencies ((0, 0) excluded) of recon power / real power at the same
    frequency; ``elsewhere``: the median of that ratio over all other frequencies. Above 1 at the grid, the
    decoder paints a checker on top of the tissue; below 1 but far above ``elsewhere``, it paints none: it
    blurs everything except its grid, which then stands out of the blur (``grid_ratio`` sees both alike).
    """
    real, recon = _pairs(real, recon)
    on = _grid_mask(*real.shape[1:3], period)
    ratio = _luminance_power(recon) / np.maximum(_luminance_power(real), 1e-12)
    off = ~on
    off[0, 0] = False
    return {"grid": float(ratio[on].mean()), "elsewhere": float(np.median(ratio[off]))}


def per_image(real: np.ndarray, recon: np.ndarray, border: int = BORDER_PX) -> dict[str, np.ndarray]:
    """PSNR, SSIM, mean CIEDE2000 and border ratio of every image pair: ``{name: (N,) array}``."""
    from skimage.color import deltaE_ciede2000, rgb2lab
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    real, recon = _pairs(real, recon)
    n = len(real)
    psnr, ssim, de = np.empty(n), np.empty(n), np.empty(n)
    for i in range(n):
        a, b = real[i], recon[i]
        psnr[i] = np.inf if np.array_equal(a, b) else peak_signal_noise_ratio(a, b, data_range=255)
        ssim[i] = structural_similarity(a, b, channel_axis=-1, data_range=255)
        de[i] = deltaE_ciede2000(rgb2lab(a), rgb2lab(b)).mean()
    return {"psnr": psnr, "ssim": ssim, "ciede2000": de, "border_ratio": border_ratio(real, recon, border)}


def summarise(real: np.ndarray, recon: np.ndarray, labels: Sequence[str] | None = None,
              border: int = BORDER_PX, grid_period: int | None = None) -> dict[str, Any]:
    """Means of ``per_image`` over all pairs, and per class when ``labels`` are given; with ``grid_period``,
    also ``grid_ratio`` of the reconstructions and of the real images (``{"reconstructed", "real"}``) and the
    power the reconstructions keep of the real images' (``"power_vs_real"``, ``grid_power_vs_real``).

    PSNR is averaged over images with a finite value (an exact copy has infinite PSNR); the border
    ratio is the ratio of the mean border and centre errors over all images (robust to near-white tiles
    whose centre error is almost 0).
    """
    vals = per_image(real, recon, border)
    h, w = np.asarray(real).shape[1:3]
    err = np.abs(np.asarray(real, np.float64) - np.asarray(recon, np.float64)).mean(-1)  # (N, H, W)
    inner = np.zeros((h, w), bool)
    inner[border:h - border, border:w - border] = True

    def block(idx: np.ndarray) -> dict[str, float]:
        psnr = vals["psnr"][idx]
        psnr = psnr[np.isfinite(psnr)]
        centre = err[idx][:, inner].mean()
        return {"psnr": float(psnr.mean()) if len(psnr) else float("inf"),
                "ssim": float(vals["ssim"][idx].mean()), "ciede2000": float(vals["ciede2000"][idx].mean()),
                "border_ratio": float(err[idx][:, ~inner].mean() / centre) if centre > 0 else float("nan"),
                "images": int(len(idx))}

    out: dict[str, Any] = block(np.arange(len(vals["psnr"])))
    out["border_px"] = border
    if grid_period:
        out["grid_ratio"] = {"period": int(grid_period), "reconstructed": grid_ratio(recon, grid_period),
                             "real": grid_ratio(real, grid_period),
                             "power_vs_real": grid_power_vs_real(real, recon, grid_period)}
    if labels is not None:
        labels = np.asarray(labels)
        if len(labels) != len(vals["psnr"]):
            raise PathUpError(f"{len(labels)} labels for {len(vals['psnr'])} images")
        out["per_class"] = {str(c): block(np.flatnonzero(labels == c)) for c in sorted(set(labels.tolist()))}
    return out


def reconstruct(vae, images: np.ndarray, *, batch_size: int = 16, device: "str | torch.device" = "cpu") -> np.ndarray:  # noqa: F821
    """Encode and decode (N, H, W, 3) uint8 images with a diffusers ``AutoencoderKL`` (posterior mode).

    The batch size does not change the result (each image is encoded alone by the network's maths).
    """
    import torch

    out = []
    dtype = next(vae.parameters()).dtype
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[i:i + batch_size])).permute(0, 3, 1, 2)  # (B, 3, H, W)
        x = (x.to(device, torch.float32) / 127.5 - 1.0).to(dtype)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mode()  # (B, C, h, w)
            out.append(images_to_uint8(vae.decode(z).sample))
    return np.concatenate(out) if out else np.zeros((0, *images.shape[1:]), np.uint8)


def strip(real: np.ndarray, recon: np.ndarray, n: int = STRIP_TILES) -> np.ndarray:
    """Two rows, real above reconstruction, of ``n`` tiles spread over the set: (2H, nW, 3) uint8."""
    idx = np.linspace(0, len(real) - 1, min(n, len(real))).round().astype(int)
    return np.concatenate([np.concatenate(list(real[idx]), 1), np.concatenate(list(recon[idx]), 1)], 0)
