"""Options of ``pathup train`` (the single source of their defaults)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Union

from pathup.config import accepts_aliases, option

# experiment trackers of Accelerate (``Accelerator(log_with=...)``); "none" logs only RUN/losses.jsonl
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio", "none")


@accepts_aliases
@dataclass
class TrainConfig:
    """Training of the latent diffusion model with patho-align and the feature entropy loss.

    Options left at ``None`` take a default that depends on where the model comes from: a model
    built from scratch (``tiny-f4``, ``tiny``, ``small``, ``sd15``) or a pretrained checkpoint being fine-tuned
    (the paper's defaults: lr 5e-6, batch 4, 50,000 steps). ``resolved()`` fills them in.

    Older names still accepted (keywords, YAML, hidden flags): ``dataset`` for ``data``, ``guidance_scale``
    for ``guidance``.
    """

    data: Optional[Path] = option(None, "prepared dataset folder (manifest.csv + dataset.json from 'pathup prepare')",
                                  metavar="DATASET", aliases=("dataset",))
    out: Path = option(None, "run folder (checkpoints, samples, logs, final model)", metavar="RUN")
    model: str = option("tiny-f4", "a size to build from scratch (tiny-f4: the CPU default, sharper, follows more "
                                   "classes, measured in the README; tiny: 1.8x cheaper per autoencoder step, "
                                   "2.3x per UNet step; small, sd15: GPU) or a diffusers Stable Diffusion folder / hub "
                                   "id to fine-tune",
                        metavar="SIZE_OR_PATH")
    resolution: Optional[int] = option(None, "training image size in pixels (multiple of the autoencoder's factor x "
                                             "2^(UNet blocks-1)); default: the model's", metavar="PX", min=8)
    split: str = option("train", "manifest split to train on")
    levels: list[str] = option(help="tile levels to train on (patch, overview); default: all levels in the dataset",
                               default_factory=list, metavar="LEVEL")
    patho_align: bool = option(True, "prompts from class and level (--no-patho-align: class-only prompts, one bank "
                                     "vector per class, tiles of every selected level; the paper's ablation)")
    # optimisation
    max_steps: Optional[Union[int, Literal["auto"]]] = option(
        None, "optimizer steps, or auto: validate every --val-every steps and stop once the validation measure has "
              "not improved for --patience validations, at most --max-epochs epochs (default: auto from scratch, "
              "50000 fine-tuning)", min=1, metavar="N|auto")
    max_epochs: float = option(40.0, "with --max-steps auto: the cap, in epochs of the training tiles (at least "
                                     "--min-steps, at most 100000 steps)", min=0, min_exclusive=True)
    min_steps: int = option(1000, "with --max-steps auto: train at least this many steps before stopping", min=0)
    patience: int = option(8, "with --max-steps auto: stop after this many validations without improvement (the "
                              "measure of a few images per class is noisy: too few stop on a lucky peak)", min=1)
    time_limit: float = option(0.0, "stop the diffusion stage after this many minutes of wall-clock time in this "
                                    "invocation (after a last validation; the best validated weights are kept as "
                                    "with --max-steps auto); 0 = no limit", metavar="MINUTES", min=0)
    batch_size: Optional[int] = option(None, "tiles per device per micro-batch (default: 8 from scratch, 4 fine-tuning)", min=1)
    grad_accum: int = option(1, "micro-batches accumulated per optimizer step", min=1)
    lr: Optional[float] = option(None, "AdamW learning rate (default: 2e-4 from scratch, 5e-6 fine-tuning)", min=0, min_exclusive=True)
    lr_schedule: Literal["constant", "cosine", "linear"] = option("constant", "learning-rate schedule after warm-up")
    lr_warmup_steps: Optional[int] = option(None, "linear warm-up steps (default: 100 from scratch, 0 fine-tuning)", min=0)
    weight_decay: float = option(1e-2, "AdamW weight decay", min=0)
    max_grad_norm: float = option(1.0, "gradient clipping norm (0 = off)", min=0)
    mixed_precision: Literal["no", "bf16", "fp16"] = option("no", "Accelerate mixed precision (fp16 needs a GPU)")
    gradient_checkpointing: bool = option(False, "recompute UNet activations in the backward pass (saves memory)")
    compile: bool = option(False, "torch.compile the UNet")
    cpu: bool = option(False, "train on the CPU even when a GPU is present")
    seed: int = option(0, "seed of the model initialisation, data order, noise and timesteps", min=0)
    num_workers: int = option(2, "data-loading worker processes", min=0)
    # conditioning and losses
    train_text_encoder: Optional[bool] = option(None, "train the text encoder with the UNet (default: on for a model built "
                                                      "from scratch, whose random encoder knows no words; off when "
                                                      "fine-tuning a pretrained checkpoint: the paper's frozen CLIP)")
    prediction_type: Optional[Literal["epsilon", "v_prediction"]] = option(
        None, "what the UNet predicts (default: v_prediction from scratch; the checkpoint's own when fine-tuning)")
    zero_terminal_snr: Optional[bool] = option(
        None, "rescale the noise schedule to zero SNR at its last step, with trailing sampling timesteps (Lin et al. "
              "2024; default: on from scratch, so that very light or dark classes can be generated; off when "
              "fine-tuning)")
    loss_weighting: Literal["none", "min-snr"] = option("none", "per-timestep weights of L_r: none (Eq. 2 as printed) or "
                                                               "min-snr (Hang et al. 2023, gamma --snr-gamma)")
    snr_gamma: float = option(5.0, "gamma of the min-snr weighting", min=0, min_exclusive=True)
    prompt_dropout: float = option(0.1, "share of samples trained with the empty prompt (classifier-free guidance)", min=0, max=1, max_exclusive=True)
    fel_beta: float = option(0.1, "weight beta of the feature entropy loss (0 turns it off)", min=0)
    fel_tau: float = option(0.07, "temperature tau of the feature entropy loss", min=0, min_exclusive=True)
    fel_momentum: float = option(0.99, "EMA momentum alpha of the memory bank", min=0, max=1, max_exclusive=True)
    fel_proj_dim: int = option(0, "output size of a projection head on the pooled mid-block features (0 = none)", min=0)
    ema: bool = option(True, "keep an exponential moving average of the UNet weights (saved as the final UNet)")
    ema_offload: bool = option(False, "keep the EMA weights in CPU memory between steps (saves GPU memory when "
                                      "fine-tuning Stable Diffusion 1.5; each step copies them to the GPU and back)")
    ema_decay: Optional[float] = option(None, "EMA decay (default: 0.999 from scratch, 0.9999 fine-tuning)", min=0, max=1, max_exclusive=True)
    # first stage of the from-scratch models
    vae_steps: Optional[int] = option(None, "autoencoder training steps before the UNet (from scratch only; default: "
                                            "1000 for tiny and tiny-f4, 600 for other sizes)", min=0)
    vae_batch_size: int = option(8, "autoencoder batch size", min=1)
    vae_lr: float = option(1e-3, "autoencoder learning rate (peak, after the warm-up)", min=0, min_exclusive=True)
    vae_lr_schedule: Literal["constant", "cosine", "linear"] = option(
        "cosine", "autoencoder learning-rate schedule after its warm-up (cosine: decays to 0 at the last of --vae-steps; "
                  "benchmarks/bench_autoencoder.py)")
    vae_lr_warmup_steps: int = option(50, "linear warm-up steps of the autoencoder learning rate", min=0)
    vae_kl_weight: float = option(1e-6, "KL weight of the autoencoder loss", min=0)
    vae_spectral_weight: float = option(0.0, "weight of a frequency-domain L1 in the autoencoder loss (0 = off; on "
                                              "held-out Kather tiles 1.0 gave +1.1 dB PSNR at 600 steps, with more "
                                              "energy at the latent grid's frequencies)", min=0)
    vae_lab_weight: Optional[float] = option(
        None, "weight of an L1 in CIE Lab in the autoencoder stage's loss (0 = off; default: 1 for "
              "tiny-f4, 0 for other sizes; on 1,200 held-out Kather tiles it lowered tiny-f4's colour error; "
              "benchmarks/bench_autoencoder.py)", min=0)
    vae_grid_weight: float = option(0.0, "weight of an L1 on the latent grid's frequencies in the autoencoder loss "
                                         "(0 = off; measured on held-out Kather tiles at 1000 steps, 0.05 and 0.5 "
                                         "did not lower the grid texture: the reconstructions already keep less "
                                         "than the real power there; benchmarks/bench_autoencoder.py)", min=0)
    vae_decoder_steps: Optional[int] = option(
        None, "then train the decoder alone this many steps on the frozen encoder's latents with noise added, so "
              "that it decodes the UNet's imperfect latents with less speckle (from scratch only; default: "
              "3/10 of --vae-steps; 0 = off)", min=0)
    vae_decoder_lab_weight: float = option(
        0.0, "weight of the CIE Lab L1 in the decoder stage's loss, which the discriminator's adaptive weight is "
             "then taken against too (0 = off; on the 1,200 Kather tiles, 1 after tiny-f4's autoencoder gave 26.54 "
             "dB / CIEDE2000 4.57 against 26.75 / 4.80, and generated class-consistency 0.760 against 0.802 with "
             "the same UNet)", min=0)
    vae_decoder_noise: float = option(0.4, "largest std of the Gaussian noise added to the latents in the decoder "
                                           "stage, in the UNet's units (unit-variance latents); each image draws "
                                           "its std uniformly from [0, this]", min=0)
    vae_decoder_lr: float = option(1e-4, "learning rate of the decoder stage (constant)", min=0, min_exclusive=True)
    vae_decoder_adv_weight: float = option(
        0.5, "weight of a patch discriminator's term in the decoder stage (the latent-diffusion autoencoder recipe; "
             "times taming's adaptive weight; 0 = off, an L1-only decoder: sharper by PSNR, blurrier by eye)", min=0)
    vae_decoder_grid_weight: float = option(
        0.5, "weight of an L1 on the latent grid's frequencies in the decoder stage, against the checker the "
             "discriminator can make the decoder paint (0 = off; on held-out Kather tiles 0.5 removed the checker "
             "and gained 0.4-1.5 dB; README, 'Grid-periodic texture')", min=0)
    vae_disc_layers: int = option(2, "stride-2 layers of the decoder stage's patch discriminator (2: 34-px fields, "
                                     "about two nuclei; 3: 70 px)", min=1, max=5)
    vae_crop: int = option(0, "train the autoencoder on random crops of this size (0 = whole tiles, as it is used)",
                           metavar="PX", min=0)
    vae_eval_tiles: int = option(256, "held-out tiles the autoencoder is measured on after its stage (PSNR, SSIM, "
                                      "CIEDE2000, border error, class-consistency; RUN/autoencoder.json)", min=0)
    # validation during training (pathup.train.validation)
    val_split: str = option("auto", "held-out split to validate on (auto: val when the dataset has one, else test; "
                                    "none: no validation)")
    val_every: Optional[int] = option(None, "validate every N steps: sample --val-per-class images per class, "
                                            "class-consistency and Frechet distance against the held-out split, "
                                            "best EMA weights kept (0 = off; default: 250 from scratch, 0 fine-tuning "
                                            "unless --max-steps auto)", min=0)
    val_per_class: int = option(6, "images per class sampled at each validation", min=1)
    val_features: str = option("auto", "features of the validation measure (auto: a domain encoder trained on the "
                                        "run's training tiles, RUN/encoder; or any 'pathup evaluate --features' "
                                        "extractor); color-stats is reported beside them")
    val_encoder_epochs: Optional[int] = option(None, "epochs of the domain encoder of --val-features auto (default: "
                                                     "'pathup features train''s, about 240 steps)", min=1)
    allow_empty_classes: bool = option(False, "train even when a class of the dataset has no tiles in --split (the model "
                                              "then advertises a class it never saw)")
    progress: bool = option(True, "show progress bars")
    # outputs
    checkpoint_every: int = option(500, "write a checkpoint every N steps (0 = only at the end)", min=0)
    keep_checkpoints: int = option(3, "number of most recent checkpoints to keep", min=1)
    resume: bool = option(False, "continue from the newest complete checkpoint in RUN/checkpoints")
    log_with: Literal[TRACKERS] = option("tensorboard", "experiment tracker of the losses (Accelerate's trackers; "
                                                       "RUN/losses.jsonl is always written)")
    log_every: int = option(10, "log losses (losses.jsonl and the --log-with tracker) every N steps", min=1)
    sample_every: int = option(500, "write a PNG grid of samples (class x level) every N steps (0 = off)", min=0)
    sample_steps: int = option(25, "DDIM steps of the sample grids", min=1)
    guidance: float = option(3.0, "classifier-free guidance scale of the sample grids", min=0, max=100,
                             aliases=("guidance_scale",))

    @property
    def from_scratch(self) -> bool:
        from pathup.model.registry import MODEL_SIZES

        return self.model in MODEL_SIZES

    def resolved(self) -> "TrainConfig":
        """A copy with the model-dependent defaults filled in."""
        import dataclasses

        from pathup.model.registry import MODEL_SIZES

        s = self.from_scratch
        # From scratch: a trained text encoder, v-prediction and a zero-terminal-SNR schedule are what let a
        # small model follow its class prompt within minutes (benchmarks/bench_classes.py; see the README).
        fill = {"train_text_encoder": s, "prediction_type": "v_prediction" if s else None,
                "zero_terminal_snr": True if s else None, "max_steps": "auto" if s else 50000,
                "vae_steps": 600 if s else 0, "batch_size": 8 if s else 4, "lr": 2e-4 if s else 5e-6,
                "lr_warmup_steps": 100 if s else 0, "ema_decay": 0.999 if s else 0.9999, "vae_lab_weight": 0.0}
        if s:
            fill.update(MODEL_SIZES[self.model].train)
        vae_steps = self.vae_steps if self.vae_steps is not None else fill["vae_steps"]
        fill["vae_decoder_steps"] = vae_steps * 3 // 10 if s else 0
        auto = (self.max_steps or fill["max_steps"]) == "auto"
        fill["val_every"] = 250 if s else (1000 if auto else 0)
        return dataclasses.replace(self, **{k: v for k, v in fill.items() if getattr(self, k) is None})

    def step_cap(self, n_tiles: int, world: int = 1) -> int:
        """The number of steps to run: ``max_steps``, or for ``auto`` the cap of ``max_epochs`` epochs of
        ``n_tiles`` tiles (at least ``min_steps``, at most 100,000): the run stops earlier when validation
        says so, and runs the whole cap when it cannot validate (no held-out split, ``val_every`` 0)."""
        if self.max_steps != "auto":
            return int(self.max_steps)
        per_step = self.batch_size * self.grad_accum * world
        return int(min(100_000, max(self.min_steps, round(self.max_epochs * n_tiles / per_step))))
