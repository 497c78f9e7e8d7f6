"""First stage of a model built from scratch: the KL autoencoder and its latent scaling factor.

The PathUp paper fine-tunes Stable Diffusion, whose autoencoder (Rombach et al. 2022) is pretrained; a model
built from scratch (the ``tiny``, ``small``, ``sd15`` sizes) first trains its own on the dataset's tiles, with
the reconstruction + KL loss of ``pathup.losses.autoencoder_loss``, and the UNet then learns in its latents.
"""

from __future__ import annotations

import math

import torch

from pathup.errors import PathUpError
from pathup.losses import autoencoder_loss
from pathup.train.config import TrainConfig
from pathup.train.data import StepBatches, TrainTiles, loader, random_crop, random_flips, step_generator

SEED_OFFSET = 7919  # the autoencoder stage's random streams differ from the UNet stage's


class AutoencoderObjective(torch.nn.Module):
    """Wraps the VAE so that its loss runs inside ``forward`` (needed for DDP's gradient sync)."""

    def __init__(self, vae, kl_weight: float, spectral_weight: float = 0.0, lab_weight: float = 0.0,
                 grid_weight: float = 0.0) -> None:
        super().__init__()
        self.vae = vae
        self.kl_weight = kl_weight
        self.spectral_weight = spectral_weight
        self.lab_weight = lab_weight
        self.grid_weight = grid_weight

    @classmethod
    def from_config(cls, vae, cfg: TrainConfig) -> "AutoencoderObjective":
        """The objective with the loss weights of ``cfg`` (``--vae-kl-weight``, ``--vae-*-weight``)."""
        return cls(vae, cfg.vae_kl_weight, cfg.vae_spectral_weight, cfg.vae_lab_weight, cfg.vae_grid_weight)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None):
        return autoencoder_loss(self.vae, images, kl_weight=self.kl_weight, spectral_weight=self.spectral_weight,
                                lab_weight=self.lab_weight, grid_weight=self.grid_weight, generator=generator)


def lr_schedule(opt: torch.optim.Optimizer, cfg: TrainConfig):
    """diffusers' learning-rate schedule ``cfg.vae_lr_schedule`` over ``cfg.vae_steps``, after
    ``cfg.vae_lr_warmup_steps`` of linear warm-up (``constant`` keeps ``--vae-lr`` after it)."""
    from diffusers.optimization import get_scheduler

    name = "constant_with_warmup" if cfg.vae_lr_schedule == "constant" else cfg.vae_lr_schedule
    return get_scheduler(name, opt, num_warmup_steps=min(cfg.vae_lr_warmup_steps, max(cfg.vae_steps - 1, 0)),
                         num_training_steps=max(cfg.vae_steps, 1))


def train_autoencoder(accelerator, vae, dataset: TrainTiles, cfg: TrainConfig) -> float:
    """Train the KL autoencoder for ``cfg.vae_steps`` steps (learning rate ``cfg.vae_lr`` on the schedule of
    ``lr_schedule``), then set its scaling factor; return it.

    The scaling factor is 1 / std of the posterior samples of up to 512 tiles, so that the UNet sees
    latents of unit variance (as Stable Diffusion's 0.18215 was chosen).
    """
    from tqdm.auto import tqdm

    seed = cfg.seed + SEED_OFFSET
    if cfg.vae_steps > 0:
        vae.train().requires_grad_(True)
        objective = AutoencoderObjective.from_config(vae, cfg)
        opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
        sched = lr_schedule(opt, cfg)
        objective, opt = accelerator.prepare(objective, opt)
        sampler = StepBatches(len(dataset), cfg.vae_batch_size, 1, seed, 0, cfg.vae_steps,
                              accelerator.process_index, accelerator.num_processes)
        bar = tqdm(loader(dataset, sampler, cfg.num_workers), total=cfg.vae_steps, desc="autoencoder",
                   disable=not (accelerator.is_main_process and cfg.progress), dynamic_ncols=True)
        for step, (images, _, _) in enumerate(bar):
            g = step_generator(seed, step, 0, accelerator.process_index)
            images = random_crop(random_flips(images, g), cfg.vae_crop, g).to(accelerator.device)
            loss, rec, kl = objective(images, g)
            if not torch.isfinite(loss):
                raise PathUpError(f"autoencoder loss is {loss.item()} at step {step + 1}; lower --vae-lr")
            accelerator.backward(loss)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            bar.set_postfix(rec=f"{rec.item():.4f}", kl=f"{kl.item():.1f}", lr=f"{sched.get_last_lr()[0]:.1e}")
        accelerator.free_memory()
    vae.eval().requires_grad_(False)
    n = min(len(dataset), 512)
    g = step_generator(seed, -1)
    stats = []
    with torch.no_grad():
        for i in range(0, n, 16):
            images = torch.stack([dataset[j][0] for j in range(i, min(n, i + 16))]).to(accelerator.device)
            stats.append(vae.encode(images).latent_dist.sample(g).float().flatten().cpu())
    std = float(torch.cat(stats).std())
    if not math.isfinite(std) or std <= 0:
        raise PathUpError(f"the trained autoencoder's latents have std {std}; lower --vae-lr or raise --vae-steps")
    sf = 1.0 / std
    vae.register_to_config(scaling_factor=sf)
    return sf
