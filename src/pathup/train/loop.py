"""The training loop (Accelerate): L = L_r + beta L_e (Eqs. 2-3 of the PathUp paper; SPEC.md sections 3-4).

Layout of a run folder ``RUN``:

* ``config.yaml``: the resolved options;
* ``base/``: from-scratch models only: the model after the autoencoder stage (trained VAE with its
  scaling factor, frozen text encoder, untrained UNet), a diffusers folder; a resumed run reloads it;
* ``checkpoints/checkpoint-<step>/``: see ``pathup.train.checkpoint``;
* ``losses.jsonl``: one JSON line per logged step (step, loss, L_r, L_e, lr);
* ``tensorboard/``: the same scalars for TensorBoard; ``samples/step-<step>.png``: sample grids
  (rows: classes, columns: levels; EMA weights);
* ``model/``: the final model (``pathup.model.save_ldm``): EMA UNet, prompt table, FEL bank.

Randomness of a step (flips, posterior sample, noise, timesteps, prompt dropout) comes from a
generator seeded by (seed, step, micro-batch, process) and the data order from (seed, epoch), so a
resumed run repeats the uninterrupted run's steps.

The text encoder trains with the UNet for models built from scratch (``--train-text-encoder``, on by
default there: a random encoder gives every prompt an embedding, but one the UNet cannot tell apart
at small compute) and stays frozen when fine-tuning a pretrained checkpoint (the paper's recipe; its
few prompt embeddings are then computed once). The EMA covers whatever trains. The VAE is frozen
during UNet training.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from pathup.config import save_config, to_dict
from pathup.errors import PathUpError
from pathup.losses import (FeatureBank, MidBlockFeatures, ProjectionHead, autoencoder_loss, denoising_loss,
                           denoising_target, feature_vector, min_snr_weights)
from pathup.train import checkpoint as ckpt_io
from pathup.train.config import TrainConfig
from pathup.train.data import StepBatches, TrainTiles, collate
from pathup.train.ema import EMA

log = logging.getLogger(__name__)


def step_generator(seed: int, step: int, micro: int = 0, rank: int = 0) -> torch.Generator:
    """The CPU generator of one micro-batch of one step on one process."""
    key = (((int(seed) * 1_000_003 + int(step)) * 131 + int(micro)) * 4099 + int(rank)) % (2 ** 63 - 1)
    return torch.Generator().manual_seed(key)


def _validate(cfg: TrainConfig) -> None:
    from pathup.config import validate

    validate(cfg)  # every option finite and in its range (the fields' metadata)
    if cfg.dataset is None:
        raise PathUpError("no dataset given (DATASET: a folder written by 'pathup prepare')")
    if cfg.out is None:
        raise PathUpError("no run folder given (--out RUN)")


def _sized(name: str, resolution: int | None):
    """The registry size ``name``, its sample sizes changed for ``resolution`` pixels."""
    from pathup.model.registry import MODEL_SIZES

    size = MODEL_SIZES[name]
    if resolution is None or resolution == size.resolution:
        return size
    mult = 8 * 2 ** (len(size.unet["block_out_channels"]) - 1)
    if resolution <= 0 or resolution % mult:
        raise PathUpError(f"--resolution {resolution} must be a positive multiple of {mult} for model {name!r}")
    return dataclasses.replace(size, resolution=resolution, vae=dict(size.vae, sample_size=resolution),
                               unet=dict(size.unet, sample_size=resolution // 8))


class _AutoencoderObjective(torch.nn.Module):
    """Wraps the VAE so that its loss runs inside ``forward`` (needed for DDP's gradient sync)."""

    def __init__(self, vae, kl_weight: float) -> None:
        super().__init__()
        self.vae = vae
        self.kl_weight = kl_weight

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None):
        return autoencoder_loss(self.vae, images, kl_weight=self.kl_weight, generator=generator)


def _random_crop(images: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    b, _, h, w = images.shape
    if size <= 0 or size >= min(h, w):
        return images
    ys = torch.randint(0, h - size + 1, (b,), generator=g).tolist()
    xs = torch.randint(0, w - size + 1, (b,), generator=g).tolist()
    return torch.stack([im[:, y:y + size, x:x + size] for im, y, x in zip(images, ys, xs)])  # (B, 3, s, s)


def _random_flips(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    flips = torch.rand(images.shape[0], 2, generator=g) < 0.5  # (B, 2)
    out = images.clone()
    for i, (fh, fv) in enumerate(flips.tolist()):
        if fh:
            out[i] = out[i].flip(-1)
        if fv:
            out[i] = out[i].flip(-2)
    return out


def _loader(dataset, sampler, num_workers: int):
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate,
                                       pin_memory=torch.cuda.is_available())


def train_autoencoder(accelerator, vae, dataset: TrainTiles, cfg: TrainConfig) -> float:
    """First stage of a from-scratch model: train the KL autoencoder, then set its scaling factor.

    The scaling factor is 1 / std of the posterior samples of up to 512 tiles, so that the UNet sees
    latents of unit variance (as Stable Diffusion's 0.18215 was chosen). Returns it.
    """
    from tqdm.auto import tqdm

    if cfg.vae_steps > 0:
        vae.train().requires_grad_(True)
        objective = _AutoencoderObjective(vae, cfg.vae_kl_weight)
        opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
        objective, opt = accelerator.prepare(objective, opt)
        sampler = StepBatches(len(dataset), cfg.vae_batch_size, 1, cfg.seed + 7919, 0, cfg.vae_steps,
                              accelerator.process_index, accelerator.num_processes)
        bar = tqdm(_loader(dataset, sampler, cfg.num_workers), total=cfg.vae_steps, desc="autoencoder",
                   disable=not (accelerator.is_main_process and cfg.progress), dynamic_ncols=True)
        for step, (images, _, _) in enumerate(bar):
            g = step_generator(cfg.seed + 7919, step, 0, accelerator.process_index)
            images = _random_crop(_random_flips(images, g), cfg.vae_crop, g).to(accelerator.device)
            loss, rec, kl = objective(images, g)
            if not torch.isfinite(loss):
                raise PathUpError(f"autoencoder loss is {loss.item()} at step {step + 1}; lower --vae-lr")
            accelerator.backward(loss)
            opt.step()
            opt.zero_grad(set_to_none=True)
            bar.set_postfix(rec=f"{rec.item():.4f}", kl=f"{kl.item():.1f}")
        accelerator.free_memory()
    vae.eval().requires_grad_(False)
    n = min(len(dataset), 512)
    g = step_generator(cfg.seed + 7919, -1)
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


class _StepOutput:
    __slots__ = ("loss", "l_r", "l_e", "z", "ids", "keep")

    def __init__(self, **kw: Any) -> None:
        for k, v in kw.items():
            setattr(self, k, v)


class Trainer:
    """The state of one training run; ``train(cfg)`` builds one and calls ``run()``."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg.resolved()
        _validate(self.cfg)
        self.run_dir = Path(self.cfg.out)

    # ----------------------------------------------------------------- setup
    def _accelerator(self):
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        cfg = self.cfg
        if cfg.mixed_precision == "fp16" and (cfg.cpu or not torch.cuda.is_available()):
            raise PathUpError("--mixed-precision fp16 needs a GPU; use bf16 or no on the CPU")
        try:
            acc = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
                              cpu=cfg.cpu)
        except (ValueError, RuntimeError) as err:
            raise PathUpError(f"cannot start Accelerate with --mixed-precision {cfg.mixed_precision}: "
                              f"{str(err).splitlines()[0]}") from None
        set_seed(cfg.seed)
        return acc

    def _check_run_folder(self) -> Path | None:
        run, cfg = self.run_dir, self.cfg
        ckpt = ckpt_io.newest_checkpoint(run)
        used = [p for p in (run / "base", run / "model") if p.exists()] + ([ckpt] if ckpt else [])
        if not cfg.resume and used:
            raise PathUpError(f"{run} already holds a training run ({used[0].name}); pass --resume to continue "
                              "it or choose another --out")
        if cfg.resume and ckpt is None:
            log.info("no complete checkpoint in %s: starting from step 0", ckpt_io.checkpoint_dir(run))
        return ckpt

    def _check_resume_state(self, state: dict, table) -> None:
        cfg = self.cfg
        old = state.get("prompts") or {}
        if list(old.get("classes", [])) != list(table.classes):
            raise PathUpError(f"the dataset's classes {table.classes} differ from the checkpoint's "
                              f"{old.get('classes')} ({self.run_dir}); resume with the same dataset or use a new --out")
        if list(old.get("levels", [])) != list(table.levels):
            raise PathUpError(f"the prompt levels {table.levels} differ from the checkpoint's {old.get('levels')} "
                              "(--no-patho-align or --levels changed); use a new --out")
        for key in ("model", "fel_proj_dim", "ema", "train_text_encoder", "prediction_type", "zero_terminal_snr"):
            if state["config"].get(key) != getattr(cfg, key):
                raise PathUpError(f"--{key.replace('_', '-')} {getattr(cfg, key)} differs from the checkpoint's "
                                  f"{state['config'].get(key)}; resume with the same value or use a new --out")
        if (state["config"].get("fel_beta", 0) > 0) != (cfg.fel_beta > 0):
            raise PathUpError("the feature entropy loss is on in one of the checkpoint and this run and off in the "
                              "other (--fel-beta); resume with the same setting or use a new --out")

    def _load_model(self, acc, ckpt: Path | None):
        """The LDM to train (from the run's base, a size or a pretrained checkpoint) and its tiles."""
        from pathup.model import build_ldm, load_ldm, save_ldm
        from pathup.model.tokenizer import check_prompts

        cfg, run = self.cfg, self.run_dir
        base = run / "base"
        if cfg.from_scratch:
            res = cfg.resolution or _sized(cfg.model, None).resolution
            size = _sized(cfg.model, res)
            tiles = TrainTiles(cfg.dataset, cfg.split, cfg.levels, cfg.patho_align, res,
                               allow_empty_classes=cfg.allow_empty_classes)
            if cfg.resume and (base / "model_index.json").is_file():
                ldm = load_ldm(base)
                self._configure_scheduler(ldm)
                if ldm.resolution != res:
                    raise PathUpError(f"--resolution {res} differs from the run's model ({ldm.resolution} px)")
                ldm.prompts = tiles.table
            else:
                ldm = build_ldm(size, tiles.table, seed=cfg.seed)
                self._configure_scheduler(ldm)  # saved with the base, so that base/ is what the UNet learns
                ldm.vae.to(acc.device)
                sf = train_autoencoder(acc, ldm.vae, tiles, cfg)
                log.info("autoencoder trained; latent scaling factor %.4f", sf)
                ldm.vae.cpu()
                if acc.is_main_process:
                    save_ldm(ldm, base)
                acc.wait_for_everyone()
            return ldm, tiles, str(base)
        try:
            ldm = load_ldm(cfg.model)
            self._configure_scheduler(ldm)
        except PathUpError:
            raise
        except Exception as err:  # noqa: BLE001 - hub/IO errors of diffusers and transformers
            raise PathUpError(f"cannot load --model {cfg.model}: {str(err).splitlines()[0]}") from None
        res = cfg.resolution or ldm.resolution
        tiles = TrainTiles(cfg.dataset, cfg.split, cfg.levels, cfg.patho_align, res,
                               allow_empty_classes=cfg.allow_empty_classes)
        check_prompts(ldm.tokenizer, tiles.table.prompts() + tiles.unique_prompts())
        ldm.prompts = tiles.table
        return ldm, tiles, cfg.model

    def _configure_scheduler(self, ldm) -> None:
        """Set the noise schedule's prediction type and terminal SNR when asked (saved with the model)."""
        from pathup.model.ldm import make_scheduler

        cfg = self.cfg
        sc = dict(ldm.scheduler.config)
        want = dict(sc)
        if cfg.prediction_type is not None:
            want["prediction_type"] = cfg.prediction_type
        if cfg.zero_terminal_snr is not None:
            want["rescale_betas_zero_snr"] = bool(cfg.zero_terminal_snr)
            if cfg.zero_terminal_snr:
                want["timestep_spacing"] = "trailing"
        if want != sc:
            ldm.scheduler = make_scheduler("ddim", want)

    # ----------------------------------------------------------------- one step
    def _forward(self, images, ids, prompts, g: torch.Generator) -> _StepOutput:
        cfg, acc, ldm = self.cfg, self.acc, self.ldm
        dev = acc.device
        images = _random_flips(images, g).to(dev, self.weight_dtype)  # (B, 3, R, R)
        with torch.no_grad():
            latents = ldm.vae.encode(images).latent_dist.sample(g).float() * ldm.scaling_factor  # (B, 4, h, w)
        b = latents.shape[0]
        noise = torch.randn(latents.shape, generator=g).to(dev)  # (B, 4, h, w)
        t = torch.randint(0, ldm.scheduler.config.num_train_timesteps, (b,), generator=g).to(dev)  # (B,)
        drop = torch.rand(b, generator=g) < cfg.prompt_dropout  # (B,)
        emb_idx = torch.tensor([self.prompt_index[p] for p in prompts])  # (B,)
        emb_idx[drop] = self.empty_index
        emb = self._prompt_embeddings()[emb_idx.to(dev)]  # (B, L, D)
        noisy = ldm.scheduler.add_noise(latents, noise, t)  # (B, 4, h, w)
        target = denoising_target(ldm.scheduler, latents, noise, t)
        pred = self.unet(noisy, t, encoder_hidden_states=emb).sample  # (B, 4, h, w)
        weights = min_snr_weights(ldm.scheduler, t, cfg.snr_gamma) if cfg.loss_weighting == "min-snr" else None
        l_r = denoising_loss(pred, target) if weights is None else denoising_loss(pred, target, weights)
        ids = ids.to(dev)
        keep = (~drop).to(dev)  # the empty prompt has no prompt id: no L_e, no bank update
        if self.bank is not None:
            z = feature_vector(self.capture.pop(), self.head)  # (B, D), keeps its gradient
            l_e = self.bank.loss(z[keep], ids[keep], cfg.fel_tau)
            loss = l_r + cfg.fel_beta * l_e
        else:
            z, l_e, loss = None, torch.zeros((), device=dev), l_r
        return _StepOutput(loss=loss, l_r=l_r, l_e=l_e, z=z, ids=ids, keep=keep)

    def _prompt_embeddings(self) -> torch.Tensor:
        """Embeddings of every training prompt and, last, of "": (P + 1, L, D).

        A trained text encoder recomputes them (with gradient in training mode); a frozen one's were
        computed once.
        """
        if self.text_encoder is None:
            return self.emb_table
        return self.text_encoder(self.prompt_ids)[0].to(self.weight_dtype)  # (P + 1, L, D)

    def _trained_modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.unet, self.head, self.text_encoder) if m is not None]

    def _ema_target(self) -> torch.nn.Module:
        """The modules the EMA averages: the UNet, with the text encoder when that trains."""
        unet = self.acc.unwrap_model(self.unet)
        if self.text_encoder is None:
            return unet
        return torch.nn.ModuleDict({"unet": unet, "text_encoder": self.acc.unwrap_model(self.text_encoder)})

    def _sample_grid(self, step: int) -> None:
        from pathup.train.sampling import ddim_sample, image_grid

        unet = self.acc.unwrap_model(self.unet)
        table = self.table
        n_cols = table.n_levels
        prompts = table.prompts()
        target = self._ema_target()
        was_training = target.training
        target.eval()
        if self.ema is not None:
            self.ema.swap(target)
        try:
            with torch.no_grad():
                emb_table = self._prompt_embeddings()  # (P + 1, L, D)
            cond = emb_table[[self.prompt_index[p] for p in prompts]]  # (N, L, D)
            with self.acc.autocast():
                lat = ddim_sample(unet, self.ldm.scheduler, cond, emb_table[self.empty_index][None],
                                  (unet.config.in_channels, self.latent_size, self.latent_size),
                                  steps=self.cfg.sample_steps, guidance_scale=self.cfg.guidance_scale,
                                  generator=torch.Generator().manual_seed(self.cfg.seed))
                with torch.no_grad():
                    imgs = self.ldm.decode_latents(lat.to(self.weight_dtype))  # (N, 3, R, R)
        finally:
            if self.ema is not None:
                self.ema.swap(target)
            target.train(was_training)
        out = self.run_dir / "samples" / f"step-{step:08d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        from pathup.io import atomic_path

        with atomic_path(out) as tmp:
            image_grid(imgs, len(table.classes), n_cols).save(tmp, format="PNG")
        legend = self.run_dir / "samples" / "layout.json"
        if not legend.exists():
            legend.write_text(json.dumps({"rows": table.classes, "columns": table.levels or ["class only"],
                                          "prompts": prompts}, indent=2))

    # ----------------------------------------------------------------- the run
    def run(self) -> Path:
        from tqdm.auto import tqdm

        cfg, run = self.cfg, self.run_dir
        ckpt = self._check_run_folder()
        self.acc = acc = self._accelerator()
        if acc.is_main_process:
            run.mkdir(parents=True, exist_ok=True)
            ckpt_io.clean_partial(run)
        state = ckpt_io.read_state(ckpt) if ckpt else None
        if state is not None and state["config"].get("model") != cfg.model:
            raise PathUpError(f"--model {cfg.model} differs from the checkpoint's {state['config'].get('model')}; "
                              "resume with the same model or use a new --out")
        self.ldm, tiles, base = self._load_model(acc, ckpt)
        self.table = table = tiles.table
        if state is not None:
            self._check_resume_state(state, table)
        if acc.is_main_process:
            save_config(cfg, run / "config.yaml")
        ldm = self.ldm
        self.weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(acc.mixed_precision, torch.float32)
        self.latent_size = tiles.tiles.size // ldm.vae_scale_factor if tiles.tiles.size else ldm.unet.config.sample_size
        frozen = [ldm.vae] + ([] if cfg.train_text_encoder else [ldm.text_encoder])
        for m in frozen:
            m.requires_grad_(False).eval()
            m.to(acc.device) if self.weight_dtype == torch.float32 else m.to(acc.device, self.weight_dtype)

        # every training prompt and, last, "": their token ids (P + 1, L) and, for a frozen text encoder,
        # their embeddings computed once (P + 1, L, D)
        train_prompts = tiles.unique_prompts()
        all_prompts = list(dict.fromkeys(train_prompts + table.prompts()))
        self.prompt_ids = ldm.tokenize(all_prompts + [""]).to(acc.device)  # (P + 1, L)
        self.prompt_index = {p: i for i, p in enumerate(all_prompts)}
        self.empty_index = len(all_prompts)
        self.text_encoder = None
        if cfg.train_text_encoder:
            ldm.text_encoder.to(acc.device).train().requires_grad_(True)
            self.emb_table = None
        else:
            with torch.no_grad():
                self.emb_table = ldm.encode_prompts(all_prompts + [""]).to(self.weight_dtype)  # (P + 1, L, D)

        unet = ldm.unet
        unet.train().requires_grad_(True)
        if cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self.bank = self.head = self.capture = None
        if cfg.fel_beta > 0:
            self.capture = MidBlockFeatures(unet)
            dim = cfg.fel_proj_dim or self.capture.channels
            if cfg.fel_proj_dim:
                self.head = ProjectionHead(self.capture.channels, cfg.fel_proj_dim)
            self.bank = FeatureBank(len(table), dim, cfg.fel_momentum, seed=cfg.seed).to(acc.device)
        if cfg.compile:
            unet = torch.compile(unet)
        params = list(unet.parameters()) + (list(self.head.parameters()) if self.head is not None else [])
        if cfg.train_text_encoder:
            params += list(ldm.text_encoder.parameters())
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                fused=acc.device.type == "cuda")
        from diffusers.optimization import get_scheduler

        name = "constant_with_warmup" if cfg.lr_schedule == "constant" else cfg.lr_schedule
        lr_sched = get_scheduler(name, opt, num_warmup_steps=cfg.lr_warmup_steps,
                                 num_training_steps=cfg.max_steps)
        trained = [unet] + ([self.head] if self.head is not None else []) + \
            ([ldm.text_encoder] if cfg.train_text_encoder else [])
        prepared = acc.prepare(*trained, opt)
        self.unet, self.opt = prepared[0], prepared[-1]
        if self.head is not None:
            self.head = prepared[1]
        if cfg.train_text_encoder:
            self.text_encoder = prepared[-2]
        self.lr_sched = lr_sched
        self.ema = EMA(self._ema_target(), cfg.ema_decay).to(acc.device) if cfg.ema else None
        acc.register_for_checkpointing(lr_sched)
        if self.ema is not None:
            acc.register_for_checkpointing(self.ema)
        if self.bank is not None:
            acc.register_for_checkpointing(self.bank)

        start = 0
        if ckpt is not None:
            try:
                acc.load_state(str(ckpt))
            except PathUpError:
                raise
            except Exception as err:  # noqa: BLE001 - a checkpoint that does not fit this model
                raise PathUpError(f"cannot load checkpoint {ckpt}: {str(err).splitlines()[0]}") from None
            start = int(state["step"])
            log.info("resumed from %s (step %d)", ckpt, start)
        if start >= cfg.max_steps:
            log.info("the checkpoint is at step %d >= --max-steps %d: nothing to train", start, cfg.max_steps)

        history = run / "losses.jsonl"
        writer = None
        if acc.is_main_process:
            _trim_history(history, start)
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run / "tensorboard"), purge_step=start + 1)

        sampler = StepBatches(len(tiles), cfg.batch_size, cfg.grad_accum, cfg.seed, start, cfg.max_steps,
                              acc.process_index, acc.num_processes)
        batches = iter(_loader(tiles, sampler, cfg.num_workers))
        bar = tqdm(total=cfg.max_steps, initial=start, desc="train", disable=not (acc.is_main_process and cfg.progress),
                   dynamic_ncols=True)
        last_saved = start if ckpt is not None else -1
        step = start
        try:
            for step in range(start, cfg.max_steps):
                self._train_step(step, batches)
                bar.update(1)
                bar.set_postfix(L_r=f"{self._last['l_r']:.4f}", L_e=f"{self._last['l_e']:.3f}",
                                lr=f"{self._last['lr']:.2e}")
                done = step + 1
                if acc.is_main_process and (done % cfg.log_every == 0 or done == cfg.max_steps):
                    rec = {"step": done, **self._last, "time": round(time.time(), 3)}
                    with history.open("a") as f:
                        f.write(json.dumps(rec) + "\n")
                    writer.add_scalar("loss/L_r", rec["l_r"], done)
                    writer.add_scalar("loss/L_e", rec["l_e"], done)
                    writer.add_scalar("loss/total", rec["loss"], done)
                    writer.add_scalar("lr", rec["lr"], done)
                if cfg.sample_every and done % cfg.sample_every == 0 and acc.is_main_process:
                    self._sample_grid(done)
                if cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
                    self._save_checkpoint(done, base)
                    last_saved = done
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        final_step = max(start, cfg.max_steps)
        if last_saved != final_step:
            self._save_checkpoint(final_step, base)
        if acc.is_main_process and cfg.sample_every and final_step % cfg.sample_every:
            self._sample_grid(final_step)
        out = run / "model"
        if acc.is_main_process:
            self._save_final(out, base)
        acc.wait_for_everyone()
        if self.capture is not None:
            self.capture.remove()
        acc.free_memory()
        return out

    def _train_step(self, step: int, batches) -> None:
        cfg, acc = self.cfg, self.acc
        sums = {"loss": 0.0, "l_r": 0.0, "l_e": 0.0}
        zs, idss, keeps = [], [], []
        for micro in range(cfg.grad_accum):
            images, ids, prompts = next(batches)
            g = step_generator(cfg.seed, step, micro, acc.process_index)
            with acc.accumulate(*self._trained_modules()):
                out = self._forward(images, ids, prompts, g)
                if not torch.isfinite(out.loss):
                    newest = ckpt_io.newest_checkpoint(self.run_dir)
                    raise PathUpError(
                        f"the loss is {out.loss.item()} at step {step + 1} (L_r={out.l_r.item():.4g}, "
                        f"L_e={out.l_e.item():.4g}); stopped. Last good checkpoint: {newest or 'none'}. "
                        "Lower --lr, use --mixed-precision no or bf16, or check the tiles")
                acc.backward(out.loss)  # Accelerate divides by --grad-accum
                if acc.sync_gradients and cfg.max_grad_norm > 0:
                    params = [p for group in self.opt.param_groups for p in group["params"]]
                    acc.clip_grad_norm_(params, cfg.max_grad_norm)
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
            for k in sums:
                sums[k] += float(getattr(out, k).detach()) / cfg.grad_accum
            if out.z is not None:
                zs.append(out.z.detach())
                idss.append(out.ids)
                keeps.append(out.keep)
        lr = float(self.lr_sched.get_last_lr()[0])  # the rate this step used
        self.lr_sched.step()
        if self.ema is not None:
            self.ema.update(self._ema_target())
        if self.bank is not None:
            z = acc.gather(torch.cat(zs).float().contiguous())  # (B * accum * world, D)
            ids = acc.gather(torch.cat(idss))
            keep = acc.gather(torch.cat(keeps))
            self.bank.update(z[keep], ids[keep])
        self._last = {**sums, "lr": lr}

    def _save_checkpoint(self, step: int, base: str) -> None:
        state = {"step": step, "base": base, "prompts": self.table.to_dict(), "config": to_dict(self.cfg),
                 "fel_dim": self.bank.dim if self.bank is not None else None, "format": "pathup-train/1"}
        ckpt_io.save_checkpoint(self.acc, self.run_dir, step, state, self.cfg.keep_checkpoints)

    def _save_final(self, out: Path, base: str) -> None:
        from pathup.model import LDM, load_ldm, save_ldm

        unet = self.acc.unwrap_model(self.unet)
        unet = getattr(unet, "_orig_mod", unet)
        target = self._ema_target()
        if self.ema is not None:
            self.ema.swap(target)
        try:
            if self.weight_dtype != torch.float32:  # the frozen parts were cast down: save the originals
                frozen = load_ldm(base)
                vae, text_encoder = frozen.vae, frozen.text_encoder
            else:
                vae, text_encoder = self.ldm.vae, self.ldm.text_encoder
            if self.text_encoder is not None:
                text_encoder = self.acc.unwrap_model(self.text_encoder)
            ldm = LDM(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=self.ldm.tokenizer,
                      scheduler=self.ldm.scheduler, prompts=self.table,
                      fel_bank=self.bank.bank.detach().cpu() if self.bank is not None else None,
                      size=self.ldm.size)
            save_ldm(ldm, out)
            if self.head is not None:
                from safetensors.torch import save_file

                head = self.acc.unwrap_model(self.head)
                save_file({k: v.detach().float().cpu().contiguous() for k, v in head.state_dict().items()},
                          str(out / "fel_head.safetensors"))
        finally:
            if self.ema is not None:
                self.ema.swap(target)


def _trim_history(path: Path, step: int) -> None:
    """Keep only the logged steps <= ``step`` (a resumed run rewrites the later ones)."""
    if not path.is_file():
        return
    from pathup.io import atomic_write_text

    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError):
            continue
    atomic_write_text(path, "".join(x + "\n" for x in keep))


def train(cfg: TrainConfig) -> Path:
    """Train a PathUp latent diffusion model; return the folder of the final model (``RUN/model``)."""
    from pathup.progress import library_bars

    trainer = Trainer(cfg)
    cfg = trainer.cfg
    try:
        with library_bars(cfg.progress):
            return trainer.run()
    except torch.OutOfMemoryError:
        stage = "the autoencoder stage (--vae-batch-size, --vae-crop)" if not hasattr(trainer, "emb_table") else \
            f"--batch-size {cfg.batch_size}"
        raise PathUpError(f"out of GPU memory in {stage}: lower --batch-size or --vae-batch-size (raise "
                          "--grad-accum to keep the effective batch), use --mixed-precision bf16, "
                          "--gradient-checkpointing, or a lower --resolution") from None
    finally:
        _reset_accelerate()


def _reset_accelerate() -> None:
    """Forget Accelerate's process-wide state after a single-process run, so that a later ``train``
    call in the same Python process may use other settings (e.g. another --mixed-precision)."""
    try:
        from accelerate.state import AcceleratorState, PartialState

        if PartialState._shared_state and PartialState().num_processes == 1:
            AcceleratorState._reset_state(reset_partial_state=True)
    except Exception:  # noqa: BLE001 - best effort, internal API
        pass


@torch.no_grad()
def denoising_loss_on(ldm, unet, images: torch.Tensor, prompts: list[str], *, seed: int = 0,
                      timesteps: torch.Tensor | None = None) -> float:
    """L_r of ``unet`` on fixed images, prompts, noise and timesteps (a fair before/after measure).

    Args:
        ldm: gives the VAE (posterior mean), text encoder and scheduler.
        unet: the UNet to measure.
        images: (B, 3, R, R) in [-1, 1].
        prompts: B prompt strings.
        seed: seed of the noise (and of the timesteps when ``timesteps`` is None).
        timesteps: (B,) training timesteps; default: spread evenly over the schedule.
    """
    dev = next(unet.parameters()).device
    latents = ldm.encode_images(images.to(dev)).float()  # (B, 4, h, w)
    b = latents.shape[0]
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(latents.shape, generator=g).to(dev)  # (B, 4, h, w)
    n_t = ldm.scheduler.config.num_train_timesteps
    t = timesteps if timesteps is not None else torch.linspace(0, n_t - 1, b).round().long()
    t = t.to(dev)
    emb = ldm.encode_prompts(prompts).to(dev)  # (B, L, D)
    noisy = ldm.scheduler.add_noise(latents, noise, t)
    pred = unet(noisy, t, encoder_hidden_states=emb).sample
    return float(denoising_loss(pred, denoising_target(ldm.scheduler, latents, noise, t)))
