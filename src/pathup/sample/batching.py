"""How many latent patches go through the UNet at once (a speed choice that never changes the image)."""

from __future__ import annotations

import logging
import math

import torch

from pathup.errors import OptionError

log = logging.getLogger(__name__)


def resolve_patch_batch(patch_batch: int | str | None, n_patches: int) -> int:
    """``None``/``'all'`` -> all patches; an int (or its string) -> clipped to [1, n_patches]."""
    if patch_batch is None or patch_batch == "all":
        return n_patches
    try:
        n = int(patch_batch)
    except (TypeError, ValueError):
        raise OptionError("patch_batch", f"must be 'auto' or a positive integer, got {patch_batch!r}") from None
    if n < 1:
        raise OptionError("patch_batch", f"must be 'auto' or a positive integer, got {patch_batch!r}")
    return min(n, n_patches)


# The automatic patch batch never exceeds the 49 patches of a 2048 px image (p = 64, o = 32): larger
# canvases run in chunks of that size, so their peak memory is a 2048 px image's plus the larger canvas.
AUTO_MAX_PATCHES = 49


def balanced_batch(n_patches: int, batch: int) -> int:
    """The smallest chunk size that needs as few chunks as ``batch`` does (evens out the last chunk)."""
    batch = max(1, min(batch, n_patches))
    chunks = math.ceil(n_patches / batch)
    return math.ceil(n_patches / chunks)


def auto_patch_batch(unet: torch.nn.Module, n_patches: int, patch_hw: tuple[int, int], *, guidance: bool,
                     cross_dim: tuple[int, int] | None = None, memory_fraction: float = 0.7,
                     max_patches: int = AUTO_MAX_PATCHES, cpu_batch: int = 16) -> int:
    """How many patches to put through the UNet at once, from free accelerator memory.

    On CUDA, one probe forward with one patch (two with guidance) measures the activation memory per
    patch; the batch is the share ``memory_fraction`` of free memory divided by it, at most
    ``max_patches``. On the CPU the batch is ``cpu_batch``. Chunks are evened out
    (``balanced_batch``). The result never changes the image, only the speed.
    """
    device = unet.device
    if device.type != "cuda":
        return balanced_batch(n_patches, cpu_batch)
    per_call = 2 if guidance else 1
    seq, dim = cross_dim or (77, int(unet.config.cross_attention_dim))
    x = torch.zeros(per_call, unet.config.in_channels, *patch_hw, device=device, dtype=unet.dtype)
    emb = torch.zeros(per_call, seq, dim, device=device, dtype=unet.dtype)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad():
        unet(x, torch.tensor(999, device=device), encoder_hidden_states=emb)
    torch.cuda.synchronize(device)
    per_patch = max(1, torch.cuda.max_memory_allocated(device) - base)
    free, _ = torch.cuda.mem_get_info(device)
    free += torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    n = int(memory_fraction * free / per_patch)
    log.debug("auto patch batch: %d bytes per patch, %d free -> %d", per_patch, free, n)
    return balanced_batch(n_patches, max(1, min(n, max_patches)))


