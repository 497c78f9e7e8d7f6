"""First stage of a model built from scratch: the KL autoencoder and its latent scaling factor.

The PathUp paper fine-tunes Stable Diffusion, whose autoencoder (Rombach et al. 2022) is pretrained; a model
built from scratch (the ``tiny``, ``small``, ``sd15`` sizes) first trains its own on the dataset's tiles, with
the reconstruction + KL loss of ``pathup.losses.autoencoder_loss``, and the UNet then learns in its latents.

A second, shorter stage (``finetune_decoder``) then trains the decoder alone on the frozen encoder's latents
with Gaussian noise added. The UNet's samples are never exactly on the encoder's latents, and a decoder that
only ever saw clean ones turns the residue into speckle, which shows on flat tissue such as glass and fat.
By default that stage also trains against a 34-px patch discriminator (``pathup.losses.adversarial``): an
L1-only decoder blurs away the fine texture the classes are told apart by (README, "Blur").
The encoder, its latents and the scaling factor are unchanged, so the UNet learns in the same latents.
"""

from __future__ import annotations

import math

import torch

from pathup.errors import PathUpError
from pathup.losses import autoencoder_loss, grid_l1, lab_l1
from pathup.losses.autoencoder import latent_grid
from pathup.losses.adversarial import PatchDiscriminator, adaptive_weight, generator_loss, hinge_d_loss
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


def noisy_latents(z: torch.Tensor, max_std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``z + s * eps``: one ``s ~ U(0, max_std)`` per image, ``eps ~ N(0, I)``; ``z`` is (B, C, h, w).

    Both are drawn on the CPU from ``generator`` (as diffusers' ``randn_tensor``), so the noise does not
    depend on the device.
    """
    s = torch.rand(z.shape[0], 1, 1, 1, generator=generator) * max_std  # (B, 1, 1, 1)
    eps = torch.randn(z.shape, generator=generator)  # (B, C, h, w)
    return z + (s * eps).to(z.device, z.dtype)


class DecoderObjective(torch.nn.Module):
    """The decoder stage's loss inside ``forward`` (DDP): the L1 between the tiles and the decoding of their
    encoder's posterior samples with ``noisy_latents`` noise of up to ``noise`` in the UNet's units (latents
    times ``scaling_factor``, unit variance), plus, with a ``discriminator`` and ``adv_weight`` > 0, the
    adversarial term of the latent-diffusion autoencoder recipe (``pathup.losses.adversarial``): its
    generator loss times ``adv_weight`` times taming's adaptive weight on the decoder's last layer.

    With ``grid_weight`` > 0, ``grid_weight`` times ``grid_l1`` at the autoencoder's downsampling factor is
    added (against the checker on the latent grid that the discriminator can make the decoder paint); with
    ``lab_weight`` > 0 (``--vae-decoder-lab-weight``), ``lab_weight`` times ``lab_l1`` (the autoencoder stage's
    colour term). The adaptive weight is taken against the whole reconstruction loss, L1 plus the Lab term (as
    taming takes it against its ``nll_loss``), so the adversarial term keeps its share of the loss. (Taken
    against the L1 alone, measured on the 1,200 Kather tiles, the term kept 27.94 dB but gave up the texture the
    stage is for; taken against both, 26.54 dB / CIEDE2000 4.57 against 26.75 / 4.80 without the term, and
    generated class-consistency 0.760 against 0.802: off by default.)

    ``forward`` returns ``(loss, l1, adversarial weight, decoded images detached)``; the discriminator is held
    outside the module's parameters (it has its own optimiser and objective, ``DiscriminatorObjective``).
    """

    def __init__(self, vae, noise: float, scaling_factor: float, discriminator: torch.nn.Module | None = None,
                 adv_weight: float = 0.0, grid_weight: float = 0.0, lab_weight: float = 0.0) -> None:
        super().__init__()
        self.vae = vae
        self.max_std = noise / scaling_factor  # in the autoencoder's own latent units
        self._disc = (discriminator,) if discriminator is not None and adv_weight > 0 else ()  # not a submodule
        self.adv_weight = adv_weight
        self.grid_weight = grid_weight
        self.lab_weight = lab_weight
        self.period = latent_grid(vae)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None):
        with torch.no_grad():
            z = self.vae.encode(images).latent_dist.sample(generator)  # (B, C, h, w)
        recon = self.vae.decode(noisy_latents(z, self.max_std, generator)).sample  # (B, 3, H, W)
        rec = (recon.float() - images.float()).abs().mean()
        fit = rec + self.lab_weight * lab_l1(recon, images) if self.lab_weight else rec  # the reconstruction loss
        loss = fit + self.grid_weight * grid_l1(recon, images, self.period) if self.grid_weight else fit
        if not self._disc:
            return loss, rec.detach(), torch.zeros(()), recon.detach()
        adv = generator_loss(self._disc[0](recon))
        w = adaptive_weight(fit, adv, self.vae.decoder.conv_out.weight) * self.adv_weight
        return loss + w * adv, rec.detach(), w, recon.detach()


class DiscriminatorObjective(torch.nn.Module):
    """The patch discriminator's hinge loss on real tiles against decoded ones, inside ``forward`` (DDP)."""

    def __init__(self, discriminator: torch.nn.Module) -> None:
        super().__init__()
        self.discriminator = discriminator

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return hinge_d_loss(self.discriminator(real), self.discriminator(fake.detach()))


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


def finetune_decoder(accelerator, vae, dataset: TrainTiles, cfg: TrainConfig) -> None:
    """Train the decoder alone for ``cfg.vae_decoder_steps`` steps (constant learning rate
    ``cfg.vae_decoder_lr``) to decode latents with noise of up to ``cfg.vae_decoder_noise`` (``DecoderObjective``),
    with a patch discriminator when ``cfg.vae_decoder_adv_weight`` > 0 (``pathup.losses.adversarial``; trained
    in alternation with the decoder at the same learning rate, Adam betas (0.5, 0.9) as in taming).

    Run after ``train_autoencoder`` (its scaling factor sets the noise's units). The encoder and
    ``quant_conv`` stay frozen: the latents, and so the UNet's training data, do not change.

    Measured on the 1,200 Kather development tiles (``benchmarks/bench_decoder_noise.py``; README, "Glass and fat
    come out speckled"): 800 steps with noise 0.4 after a 4000-step autoencoder, with the same UNet and seeds,
    took generated glass from 0 of 8 to 4 of 8 recognised, and all classes from 0.594 to 0.672 (ceiling 0.713).
    """
    from tqdm.auto import tqdm

    steps = cfg.vae_decoder_steps or 0
    if steps <= 0:
        return
    seed = cfg.seed + 2 * SEED_OFFSET
    decoder = [vae.post_quant_conv, vae.decoder]
    vae.train().requires_grad_(False)
    for m in decoder:
        m.requires_grad_(True)
    disc = d_objective = d_opt = None
    if cfg.vae_decoder_adv_weight > 0:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            disc = PatchDiscriminator(layers=cfg.vae_disc_layers).to(accelerator.device)
        d_objective = DiscriminatorObjective(disc)
        d_opt = torch.optim.Adam(disc.parameters(), lr=cfg.vae_decoder_lr, betas=(0.5, 0.9))
        d_objective, d_opt = accelerator.prepare(d_objective, d_opt)
    objective = DecoderObjective(vae, cfg.vae_decoder_noise, float(vae.config.scaling_factor), disc,
                                 cfg.vae_decoder_adv_weight, cfg.vae_decoder_grid_weight, cfg.vae_decoder_lab_weight)
    betas = (0.5, 0.9) if disc is not None else (0.9, 0.999)
    opt = torch.optim.AdamW([p for m in decoder for p in m.parameters()], lr=cfg.vae_decoder_lr, weight_decay=0.0,
                            betas=betas)
    objective, opt = accelerator.prepare(objective, opt)
    sampler = StepBatches(len(dataset), cfg.vae_batch_size, 1, seed, 0, steps,
                          accelerator.process_index, accelerator.num_processes)
    bar = tqdm(loader(dataset, sampler, cfg.num_workers), total=steps, desc="decoder (noisy latents)",
               disable=not (accelerator.is_main_process and cfg.progress), dynamic_ncols=True)
    for step, (images, _, _) in enumerate(bar):
        g = step_generator(seed, step, 0, accelerator.process_index)
        images = random_crop(random_flips(images, g), cfg.vae_crop, g).to(accelerator.device)
        if disc is not None:
            disc.requires_grad_(False)
        loss, rec, w, fake = objective(images, g)
        if not torch.isfinite(loss):
            raise PathUpError(f"decoder loss is {loss.item()} at step {step + 1}; lower --vae-decoder-lr")
        accelerator.backward(loss)
        opt.step()
        opt.zero_grad(set_to_none=True)
        post = {"rec": f"{rec.item():.4f}"}
        if disc is not None:
            disc.requires_grad_(True)
            d_loss = d_objective(images, fake)
            accelerator.backward(d_loss)
            d_opt.step()
            d_opt.zero_grad(set_to_none=True)
            post.update(d=f"{d_loss.item():.3f}", w=f"{w.item():.2f}")
        bar.set_postfix(**post)
    accelerator.free_memory()
    vae.eval().requires_grad_(False)
