"""The Accelerate training loop: autoencoder stage (from scratch), L_r + beta L_e, EMA, checkpoints,
resume, sample grids, TensorBoard and the loss history."""

import lazy_loader

# The loop imports torch and diffusers: it loads on first use so that `pathup --help` stays fast.
__getattr__, __dir__, __all__ = lazy_loader.attach(__name__, submodules=["checkpoint", "config", "data", "ema", "loop", "sampling"], submod_attrs={
    "config": ["TrainConfig"],
    "loop": ["train"],
})
