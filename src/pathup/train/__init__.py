"""The Accelerate training loop: autoencoder stage (from scratch), L_r + beta L_e, EMA, checkpoints,
resume, sample grids, TensorBoard and the loss history."""

from typing import Any

from pathup.train.config import TrainConfig

__all__ = ["TrainConfig", "train"]


def __getattr__(name: str) -> Any:
    # The loop imports torch and diffusers: load it on first use so that `pathup --help` stays fast.
    if name == "train":
        from pathup.train.loop import train

        return train
    raise AttributeError(name)
