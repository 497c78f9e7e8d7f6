"""The step noise of stochastic samplers in patch-wise timestep tracking (PathUp Algorithm 1).

The noise of a step is drawn once on the whole latent canvas and every patch gets its own slice of it, so
the weighted mean of overlapping patches carries noise of the right standard deviation (``CanvasNoise``,
``canvas_step_noise``).
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from typing import Any, Iterator, Sequence

import torch

from pathup.errors import PathUpError
from pathup.sample.grid import PatchBox


def _step_kwargs(scheduler: Any, generator: torch.Generator | None, eta: float) -> dict[str, Any]:
    params = set(inspect.signature(scheduler.step).parameters)
    kw: dict[str, Any] = {}
    if "eta" in params:
        kw["eta"] = eta
    if "generator" in params:
        kw["generator"] = generator
    return kw


class CanvasNoise:
    """The step noise of one timestep, drawn on the whole latent canvas; each patch takes its slice.

    A stochastic step adds ``sigma_t * z``. If every patch drew its own ``z``, the weighted mean over
    ``n`` overlapping patches would have standard deviation ``sigma_t * sqrt(sum w^2) / sum w`` (1/2 of
    it where four equal weights overlap). Giving every patch the slice of one canvas draw ``Z`` makes the
    combined noise ``sigma_t * Z`` exactly, for any weights. Draws are made lazily (deterministic
    samplers draw nothing) with diffusers' ``randn_tensor`` and the run's generator, so with one patch
    the draw is bit-equal to diffusers' own. A scheduler that draws twice in a step gets a second canvas
    draw for the second.
    """

    def __init__(self, shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.shape, self.generator, self.device, self.dtype = tuple(shape), generator, device, dtype
        self.draws: list[torch.Tensor] = []  # (1, C, H, W) each

    def canvas(self, index: int) -> torch.Tensor:
        from diffusers.utils.torch_utils import randn_tensor

        while len(self.draws) <= index:
            self.draws.append(randn_tensor(self.shape, generator=self.generator, device=self.device,
                                           dtype=self.dtype))
        return self.draws[index]

    def for_patches(self, boxes: Sequence[PatchBox], index: int) -> torch.Tensor:
        """The slices of canvas draw ``index`` under ``boxes``, stacked: (n, C, ph, pw)."""
        z = self.canvas(index)
        return torch.stack([z[0, :, box.slices[0], box.slices[1]] for box in boxes])


_NOISE_LOCK = threading.RLock()
_NOISE_LOCAL = threading.local()


@contextlib.contextmanager
def canvas_step_noise(scheduler: Any, noise: CanvasNoise, boxes: Sequence[PatchBox]) -> Iterator[None]:
    """While a scheduler steps the patches ``boxes``, its noise draws return their slices of ``noise``.

    diffusers' schedulers draw step noise with ``randn_tensor`` (DDPM has no ``variance_noise``
    argument), so the name is pointed, for this thread and this call only, to the canvas slices; other
    threads calling the same function meanwhile still get diffusers' own draw.
    """
    globs = getattr(type(scheduler).step, "__globals__", {})
    original = globs.get("randn_tensor")
    if original is None:  # this scheduler draws no noise through randn_tensor
        yield
        return
    counter = [0]

    def draw(shape: Any, generator: Any = None, device: Any = None, dtype: Any = None, **kw: Any) -> torch.Tensor:
        if getattr(_NOISE_LOCAL, "active", None) is not counter:
            return original(shape, generator=generator, device=device, dtype=dtype, **kw)
        z = noise.for_patches(boxes, counter[0])
        counter[0] += 1
        if tuple(z.shape) != tuple(shape):
            raise PathUpError(f"{type(scheduler).__name__} drew step noise of shape {tuple(shape)}, expected "
                              f"{tuple(z.shape)}; use --step-mode per-patch or another sampler")
        return z.to(device=device if device is not None else z.device, dtype=dtype or z.dtype)

    with _NOISE_LOCK:
        globs["randn_tensor"] = draw
        _NOISE_LOCAL.active = counter
        try:
            yield
        finally:
            globs["randn_tensor"] = original
            _NOISE_LOCAL.active = None


