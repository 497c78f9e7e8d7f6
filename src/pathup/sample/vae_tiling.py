"""Encode and decode with the autoencoder in overlapping tiles (PathUp Algorithm 1: encoding the reference, decoding the result).

Large images do not fit through the autoencoder at once. Both directions cut the input into
overlapping tiles (the same border-aligned grid as the patch sampler, ``pathup.sample.grid``),
run each tile alone and blend the overlaps with feathering weights (``ramp_weights``: linear over
the overlap, full weight on the canvas border), so there is no visible seam.

Memory: the accelerator holds one tile's activations plus the latent canvas; decoded pixels are
blended on the CPU one row of tiles at a time and written straight into the 8-bit output, so even
the CPU never holds a float copy of the whole output image.

Both functions take the autoencoder as plain callables (``encode``: images in [-1, 1] -> scaled
latents; ``decode``: scaled latents -> images in [-1, 1]), e.g. ``LDM.encode_images`` and
``LDM.decode_latents``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from pathup.errors import OptionError, PathUpError
from pathup.sample.grid import axis_starts
from pathup.sample.weights import ramp_weights


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1], (..., 3, H, W) -> uint8 (..., H, W, 3), rounded as diffusers' postprocessing."""
    x = (images.float() / 2 + 0.5).clamp(0, 1)
    return (x * 255).round().to(torch.uint8).movedim(-3, -1)


def from_uint8(pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (H, W, 3) -> float images in [-1, 1], (1, 3, H, W)."""
    t = torch.from_numpy(np.array(pixels, dtype=np.uint8))  # a writable copy of the tile
    return (t.permute(2, 0, 1)[None].float() / 127.5 - 1.0)


def _check(tile: int, overlap: int) -> None:
    if tile < 1:
        raise OptionError("vae_tile", f"must be positive, got {tile}")
    if overlap < 0 or overlap >= tile:
        raise PathUpError(f"VAE tile overlap must be in [0, {tile}), got {overlap}")


def decode_tiled(decode: Callable[[torch.Tensor], torch.Tensor], latents: torch.Tensor, *, tile: int = 64,
                 overlap: int = 16, factor: int = 8, progress: bool = False) -> np.ndarray:
    """Decode a latent canvas in overlapping tiles into an 8-bit RGB image.

    Args:
        decode: scaled latents (1, C, h, w) -> images in [-1, 1], (1, 3, h * factor, w * factor).
        latents: the latent canvas, (1, C, H, W), on the autoencoder's device.
        tile: tile size in latent positions (a canvas that fits in one tile is decoded whole).
        overlap: overlap between tiles in latent positions; blended over ``overlap * factor`` pixels.
        factor: the autoencoder's spatial factor.
        progress: show a progress bar over tiles.

    Returns:
        uint8 array (H * factor, W * factor, 3).
    """
    _check(tile, overlap)
    _, _, height, width = latents.shape
    rows, cols = axis_starts(height, tile, overlap), axis_starts(width, tile, overlap)
    th, tw = min(tile, height), min(tile, width)
    out_h, out_w = height * factor, width * factor
    out = np.empty((out_h, out_w, 3), dtype=np.uint8)
    ramp = overlap * factor
    carry_num: torch.Tensor | None = None
    carry_den: torch.Tensor | None = None
    bar = tqdm(total=len(rows) * len(cols), desc="decoding", leave=False, disable=not progress)
    for r, top in enumerate(rows):
        y0, y1 = top * factor, (top + th) * factor
        num = torch.zeros(3, y1 - y0, out_w)  # (3, band, W): one row of tiles, on the CPU
        den = torch.zeros(1, y1 - y0, out_w)  # (1, band, W)
        if carry_num is not None:
            num[:, :carry_num.shape[1]] += carry_num
            den[:, :carry_den.shape[1]] += carry_den
        for c, left in enumerate(cols):
            with torch.no_grad():
                img = decode(latents[:, :, top:top + th, left:left + tw])[0].float().cpu()  # (3, th*f, tw*f)
            w = ramp_weights(th * factor, tw * factor, ramp, top=r > 0, bottom=r < len(rows) - 1,
                             left=c > 0, right=c < len(cols) - 1)  # (th*f, tw*f)
            x0, x1 = left * factor, (left + tw) * factor
            num[:, :, x0:x1] += img * w
            den[:, :, x0:x1] += w
            bar.update()
        # Rows above the next tile row are final: write them out, carry the rest.
        done = (rows[r + 1] * factor if r + 1 < len(rows) else y1) - y0
        out[y0:y0 + done] = to_uint8(num[:, :done] / den[:, :done]).numpy()
        carry_num, carry_den = num[:, done:], den[:, done:]
    bar.close()
    return out


def encode_tiled(encode: Callable[[torch.Tensor], torch.Tensor], pixels: np.ndarray, *, tile: int = 64,
                 overlap: int = 16, factor: int = 8, latent_channels: int | None = None,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 progress: bool = False) -> torch.Tensor:
    """Encode an 8-bit RGB image in overlapping tiles into a latent canvas (X_0 of Algorithm 1).

    Args:
        encode: images in [-1, 1], (1, 3, h, w) -> scaled latents (1, C, h / factor, w / factor).
        pixels: uint8 (H, W, 3), H and W multiples of ``factor``; stays on the CPU.
        tile: tile size in latent positions (``tile * factor`` pixels).
        overlap: overlap in latent positions; latents are blended over ``overlap`` positions.
        factor: the autoencoder's spatial factor.
        latent_channels: channels of the latent (default: those of the first encoded tile).
        device: where the latent canvas and the tiles go.
        dtype: dtype of the returned canvas.
        progress: show a progress bar over tiles.

    Returns:
        Latents, (1, C, H / factor, W / factor), on ``device``.
    """
    _check(tile, overlap)
    out_h, out_w = pixels.shape[:2]
    if out_h % factor or out_w % factor:
        raise PathUpError(f"image size {out_w}x{out_h} is not a multiple of the autoencoder factor {factor}")
    height, width = out_h // factor, out_w // factor
    rows, cols = axis_starts(height, tile, overlap), axis_starts(width, tile, overlap)
    th, tw = min(tile, height), min(tile, width)
    num = None if latent_channels is None else \
        torch.zeros(1, latent_channels, height, width, device=device, dtype=torch.float32)  # (1, C, H, W)
    den = torch.zeros(height, width, device=device, dtype=torch.float32)  # (H, W)
    bar = tqdm(total=len(rows) * len(cols), desc="encoding", leave=False, disable=not progress)
    for r, top in enumerate(rows):
        for c, left in enumerate(cols):
            crop = pixels[top * factor:(top + th) * factor, left * factor:(left + tw) * factor]
            with torch.no_grad():
                z = encode(from_uint8(crop).to(device)).float()  # (1, C, th, tw)
            if num is None:
                num = torch.zeros(1, z.shape[1], height, width, device=device, dtype=torch.float32)  # (1, C, H, W)
            w = ramp_weights(th, tw, overlap, top=r > 0, bottom=r < len(rows) - 1, left=c > 0,
                             right=c < len(cols) - 1, device=device)  # (th, tw)
            num[:, :, top:top + th, left:left + tw] += z * w
            den[top:top + th, left:left + tw] += w
            bar.update()
    bar.close()
    return (num / den).to(dtype)
