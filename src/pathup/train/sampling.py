"""Sample grids during training: a small DDIM loop with classifier-free guidance.

Deliberately separate from ``pathup.sample`` (the large-image sampler): this only previews the
model, one image per prompt, at the training resolution.
"""

from __future__ import annotations

import numpy as np
import torch


@torch.no_grad()
def ddim_sample(unet, scheduler, cond: torch.Tensor, uncond: torch.Tensor, latent_shape: tuple[int, ...], *,
                steps: int = 25, guidance_scale: float = 3.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample latents with DDIM (Song et al. 2021) and classifier-free guidance.

    Args:
        unet: the UNet (eval mode is the caller's choice).
        scheduler: a diffusers scheduler (a fresh copy is configured here).
        cond: prompt embeddings, (N, L, D).
        uncond: the empty prompt's embedding, (1, L, D).
        latent_shape: (C, h, w) of one latent.
        steps: number of sampling steps.
        guidance_scale: eps = eps_u + g (eps_c - eps_u); 1 disables guidance.
        generator: for the initial noise (on the CPU).

    Returns:
        Latents in the scaled space, (N, C, h, w).
    """
    from pathup.model.ldm import make_scheduler

    sched = make_scheduler("ddim", dict(scheduler.config))
    sched.set_timesteps(steps)
    n = cond.shape[0]
    dtype = next(unet.parameters()).dtype
    device = cond.device
    x = torch.randn((n, *latent_shape), generator=generator).to(device, dtype)  # (N, C, h, w)
    x = x * sched.init_noise_sigma
    emb = torch.cat([uncond.expand(n, -1, -1), cond]).to(dtype)  # (2N, L, D)
    for t in sched.timesteps:
        xin = sched.scale_model_input(torch.cat([x, x]), t)  # (2N, C, h, w)
        eps = unet(xin, t, encoder_hidden_states=emb).sample  # (2N, C, h, w)
        eps_u, eps_c = eps.chunk(2)
        eps = eps_u + guidance_scale * (eps_c - eps_u)
        x = sched.step(eps, t, x).prev_sample
    return x


def image_grid(images: torch.Tensor, rows: int, cols: int):
    """Images in [-1, 1], (rows * cols, 3, H, W) -> one PIL image, row-major."""
    from PIL import Image

    arr = ((images.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, 3)
    n, h, w, _ = arr.shape
    grid = np.full((rows * h, cols * w, 3), 255, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = arr[i]
    return Image.fromarray(grid)
