"""Training of the PathUp latent diffusion model (Accelerate): the autoencoder stage of the from-scratch
sizes, then the UNet with L_r + beta L_e (the PathUp paper, section 3.2, Eqs. 2-3), an EMA of the weights,
resumable checkpoints, sample grids, the loss history and an experiment tracker.

Modules: ``config`` (options), ``data`` (tiles, order, per-step randomness), ``autoencoder``, ``base`` (the
model a run starts from), ``trainer`` (the UNet loop, ``train``), ``resume``, ``checkpoint``, ``ema``,
``accelerator`` (tracker, loss history), ``sampling`` (sample grids).
"""

import lazy_loader

# The trainer imports torch and diffusers: it loads on first use so that `pathup --help` stays fast.
__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submodules=[
    "accelerator", "autoencoder", "base", "checkpoint", "config", "data", "ema", "resume", "sampling", "trainer",
], submod_attrs={
    "config": ["TrainConfig"],
    "trainer": ["train"],
})
