"""The UNet trainer (Accelerate): L = L_r + beta L_e (the PathUp paper, section 3.2, Eqs. 2-3).

L_r is the denoising loss of the latent diffusion model (Eq. 2; ``pathup.losses.denoising_loss``) and L_e
the feature entropy loss of the UNet's pooled mid-block features against a memory bank of one vector per
prompt id (Eq. 3; ``pathup.losses.FeatureBank``). ``train(cfg)`` is the entry point.

Layout of a run folder ``RUN``:

* ``config.yaml``: the resolved options;
* ``base/``: from-scratch models only, see ``pathup.train.base``;
* ``checkpoints/checkpoint-<step>/``: see ``pathup.train.checkpoint`` (with the EMA state);
* ``losses.jsonl`` and the tracker's files (``tensorboard/`` by default): see ``pathup.train.accelerator``;
* ``samples/step-<step>.png``: sample grids (rows: classes, columns: levels; EMA weights);
* ``model/``: the final model (``pathup.model.save_ldm``): EMA UNet, prompt table, FEL bank, and the
  dataset's microns per pixel (``pathup.json``'s ``"mpp"``).

Randomness of a step (flips, posterior sample, noise, timesteps, prompt dropout) comes from a
generator seeded by (seed, step, micro-batch, process) and the data order from (seed, epoch), so a
resumed run repeats the uninterrupted run's steps.

The text encoder trains with the UNet for models built from scratch (``train_text_encoder``, on by
default there: a random encoder gives every prompt an embedding, but one the UNet cannot tell apart
at small compute) and stays frozen when fine-tuning a pretrained checkpoint (the paper's recipe; its
few prompt embeddings are then computed once). The EMA covers whatever trains. The VAE is frozen
during UNet training.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import NamedTuple

import torch

from pathup.config import save_config, to_dict, validate
from pathup.errors import PathUpError
from pathup.io import FolderLock, check_apart
from pathup.losses import (FeatureBank, MidBlockFeatures, ProjectionHead, denoising_loss, denoising_target,
                           feature_vector, min_snr_weights)
from pathup.train import checkpoint as ckpt_io
from pathup.train import resume
from pathup.train.accelerator import LossLog, make_accelerator, release
from pathup.train.base import load_model
from pathup.train.config import TrainConfig
from pathup.train.data import StepBatches, dataset_mpp, loader, random_flips, step_generator
from pathup.train.ema import TrainEMA, averaged_weights
from pathup.train.validation import Validation

log = logging.getLogger(__name__)
_clock = time.monotonic  # the clock of --time-limit (a test replaces it)


class StepOutput(NamedTuple):
    loss: torch.Tensor  # L_r + beta L_e
    l_r: torch.Tensor
    l_e: torch.Tensor
    z: torch.Tensor | None  # (B, D) features of L_e (None without FEL)
    ids: torch.Tensor  # (B,) prompt ids
    keep: torch.Tensor  # (B,) samples with their prompt (not dropped for classifier-free guidance)


class Trainer:
    """The state of one training run; ``train(cfg)`` builds one and calls ``run()``."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg = cfg.resolved()
        validate(cfg)  # every option finite and in its range (the fields' metadata)
        if cfg.data is None:
            raise PathUpError("no dataset given (data: a folder written by 'pathup prepare')")
        if cfg.out is None:
            raise PathUpError("no run folder given (out)")
        check_apart(cfg.data, cfg.out, "--data")
        self.run_dir = Path(cfg.out)
        self.acc = self.lock = None

    # ----------------------------------------------------------------- setup
    def _setup_prompts(self, tiles) -> None:
        """Token ids of every training prompt and, last, "" (P + 1, L); a frozen encoder's embeddings once."""
        cfg, acc, ldm = self.cfg, self.acc, self.ldm
        all_prompts = list(dict.fromkeys(tiles.unique_prompts() + self.table.prompts()))
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

    def _setup_training(self) -> None:
        """UNet (+ text encoder, FEL head and bank), optimizer, LR schedule and EMA, prepared by Accelerate."""
        from diffusers.optimization import get_scheduler

        cfg, acc, ldm = self.cfg, self.acc, self.ldm
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
            self.bank = FeatureBank(len(self.table), dim, cfg.fel_momentum, seed=cfg.seed).to(acc.device)
        if cfg.compile:
            unet = torch.compile(unet)
        params = list(unet.parameters()) + (list(self.head.parameters()) if self.head is not None else [])
        if cfg.train_text_encoder:
            params += list(ldm.text_encoder.parameters())
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=acc.device.type == "cuda")
        name = "constant_with_warmup" if cfg.lr_schedule == "constant" else cfg.lr_schedule
        self.lr_sched = get_scheduler(name, opt, num_warmup_steps=cfg.lr_warmup_steps,
                                      num_training_steps=self.max_steps)
        trained = [unet] + ([self.head] if self.head is not None else []) + \
            ([ldm.text_encoder] if cfg.train_text_encoder else [])
        prepared = acc.prepare(*trained, opt)
        self.unet, self.opt = prepared[0], prepared[-1]
        if self.head is not None:
            self.head = prepared[1]
        if cfg.train_text_encoder:
            self.text_encoder = prepared[-2]
        self.ema = TrainEMA(self._ema_target().parameters(), cfg.ema_decay, offload=cfg.ema_offload) \
            if cfg.ema else None
        # saved and loaded by PathUp without pickle (not Accelerate's register_for_checkpointing; checkpoint.py)
        self.custom_state = {"lr_schedule": self.lr_sched, "ema": self.ema, "fel_bank": self.bank}
        self.custom_state = {k: v for k, v in self.custom_state.items() if v is not None}

    # ----------------------------------------------------------------- one step
    def _forward(self, images, ids, prompts, g: torch.Generator) -> StepOutput:
        cfg, acc, ldm = self.cfg, self.acc, self.ldm
        dev = acc.device
        images = random_flips(images, g).to(dev, self.weight_dtype)  # (B, 3, R, R)
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
        l_r = denoising_loss(pred, target, weights)  # weights None: the plain mean squared error
        ids = ids.to(dev)
        keep = (~drop).to(dev)  # the empty prompt has no prompt id: no L_e, no bank update
        if self.bank is not None:
            z = feature_vector(self.capture.pop(), self.head)  # (B, D), keeps its gradient
            l_e = self.bank.loss(z[keep], ids[keep], cfg.fel_tau)
            loss = l_r + cfg.fel_beta * l_e
        else:
            z, l_e, loss = None, torch.zeros((), device=dev), l_r
        return StepOutput(loss=loss, l_r=l_r, l_e=l_e, z=z, ids=ids, keep=keep)

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

    def _train_step(self, step: int, batches) -> dict[str, float]:
        """One optimizer step (``grad_accum`` micro-batches); returns its mean losses and learning rate."""
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
            self.ema.step(self._ema_target().parameters())
        if self.bank is not None:
            z = acc.gather(torch.cat(zs).float().contiguous())  # (B * accum * world, D)
            ids = acc.gather(torch.cat(idss))
            keep = acc.gather(torch.cat(keeps))
            self.bank.update(z[keep], ids[keep])
        return {**sums, "lr": lr}

    # ----------------------------------------------------------------- the run
    def run(self) -> Path:
        from tqdm.auto import tqdm

        cfg, run = self.cfg, self.run_dir
        ckpt = resume.checkpoint_to_resume(run, cfg.resume)
        self.acc = acc = make_accelerator(cfg, run)
        if acc.is_main_process:  # one training process per run folder (another's checkpoints are not ours)
            self.lock = FolderLock(run, "pathup train").acquire()
            ckpt_io.clean_partial(run)
        state = ckpt_io.read_state(ckpt) if ckpt else None
        if state is not None:
            resume.check_model(state, cfg)
        self.ldm, tiles, base = load_model(acc, cfg, run)
        self.table = tiles.table
        self.mpp = dataset_mpp(cfg.data)
        self.max_steps = cfg.step_cap(len(tiles), acc.num_processes)
        if state is not None:
            resume.check_state(state, self.table, cfg, run)
        resume.check_tokenizer(self.ldm, self.table, base)
        if acc.is_main_process:
            save_config(cfg, run / "config.yaml")
        self.validation = Validation(self, tiles) if acc.is_main_process else None
        if cfg.max_steps == "auto" and not cfg.val_every:
            log.warning("--max-steps auto without validation (--val-every 0): training the whole cap of %d steps",
                        self.max_steps)
        ldm = self.ldm
        self.weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(acc.mixed_precision, torch.float32)
        self.latent_size = tiles.tiles.size // ldm.vae_scale_factor if tiles.tiles.size else ldm.unet.config.sample_size
        for m in [ldm.vae] + ([] if cfg.train_text_encoder else [ldm.text_encoder]):  # frozen
            m.requires_grad_(False).eval()
            m.to(acc.device) if self.weight_dtype == torch.float32 else m.to(acc.device, self.weight_dtype)
        self._setup_prompts(tiles)
        self._setup_training()

        start = 0
        if ckpt is not None:
            try:
                ckpt_io.load_checkpoint(acc, ckpt, self.custom_state)
            except PathUpError:
                raise
            except Exception as err:  # noqa: BLE001 - a checkpoint that does not fit this model
                raise PathUpError(f"cannot load checkpoint {ckpt}: {str(err).splitlines()[0]}") from None
            start = int(state["step"])
            log.info("resumed from %s (step %d)", ckpt, start)
        if start >= self.max_steps:
            log.info("the checkpoint is at step %d >= --max-steps %d: nothing to train", start, self.max_steps)

        losses = LossLog(acc, cfg, run)
        losses.start(start)
        if self.validation is not None:
            self.validation.start(start)
        sampler = StepBatches(len(tiles), cfg.batch_size, cfg.grad_accum, cfg.seed, start, self.max_steps,
                              acc.process_index, acc.num_processes)
        batches = iter(loader(tiles, sampler, cfg.num_workers))
        last_saved = start if ckpt is not None else -1
        final_step = max(start, self.max_steps)
        started = _clock()
        with tqdm(total=self.max_steps, initial=start, desc="train", dynamic_ncols=True,
                  disable=not (acc.is_main_process and cfg.progress)) as bar:
            for step in range(start, self.max_steps):
                last = self._train_step(step, batches)
                bar.update(1)
                bar.set_postfix(L_r=f"{last['l_r']:.4f}", L_e=f"{last['l_e']:.3f}", lr=f"{last['lr']:.2e}")
                done = step + 1
                if done % cfg.log_every == 0 or done == self.max_steps:
                    losses.log(done, last)
                if cfg.sample_every and done % cfg.sample_every == 0 and acc.is_main_process:
                    self._sample_grid(done)
                stop = False
                validated = bool(cfg.val_every and (done % cfg.val_every == 0 or done == self.max_steps))
                if validated:
                    stop = self._validate(done)
                out_of_time = not stop and self._out_of_time(done, started)
                if out_of_time and cfg.val_every and not validated:
                    self._validate(done)  # the last weights are measured too before the stop
                stop = stop or out_of_time
                if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0) or stop:
                    self._save_checkpoint(done, base)
                    last_saved = done
                if stop:
                    final_step = done
                    best = self.validation.history.best if self.validation else None
                    why = (f"the time limit of {cfg.time_limit:g} minutes" if out_of_time else
                           f"no better validation measure in the last {cfg.patience} validations")
                    bar.write(f"stopped at step {done}: {why}"
                              + (f" (best at step {best['step']})" if best else ""))
                    break
        if last_saved != final_step:
            self._save_checkpoint(final_step, base)
        if acc.is_main_process and cfg.sample_every and final_step % cfg.sample_every and final_step > start:
            self._sample_grid(final_step)
        out = run / "model"
        if acc.is_main_process:
            self._save_final(out, base)
        acc.wait_for_everyone()
        if self.capture is not None:
            self.capture.remove()
        acc.free_memory()
        return out

    def _out_of_time(self, done: int, started: float) -> bool:
        """True (on every process: the main process's clock decides) once ``--time-limit`` minutes have passed.

        Checked every 10 steps under several processes, so that they agree without a sync at every step."""
        limit = self.cfg.time_limit
        if not limit:
            return False
        if self.acc.num_processes > 1:
            if done % 10:
                return False
            from accelerate.utils import broadcast

            over = torch.tensor([int(_clock() - started > 60 * limit)], device=self.acc.device)
            return bool(broadcast(over).item())
        return _clock() - started > 60 * limit

    # ----------------------------------------------------------------- outputs
    def _sample_grid(self, step: int) -> None:
        from pathup.io import atomic_path
        from pathup.train.sampling import image_grid

        table = self.table
        prompts = table.prompts()
        with self._ema_eval():
            imgs = self._sample_images(prompts, 1, self.cfg.seed, chunk=len(prompts))  # (N, 3, R, R)
        out = self.run_dir / "samples" / f"step-{step:08d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            image_grid(imgs, len(table.classes), table.n_levels).save(tmp, format="PNG")
        legend = self.run_dir / "samples" / "layout.json"
        if not legend.exists():
            legend.write_text(json.dumps({"rows": table.classes, "columns": table.levels or ["class only"],
                                          "prompts": prompts}, indent=2))

    @contextlib.contextmanager
    def _ema_eval(self):
        """Within the block the trained modules hold the EMA weights, in eval mode, without gradients."""
        target = self._ema_target()
        was_training = target.training
        target.eval()
        try:
            with averaged_weights(self.ema, target), torch.no_grad():
                yield target
        finally:
            target.train(was_training)

    def _validate(self, step: int) -> bool:
        """Validate on the main process (``Validation.run``); True (on every process) when --max-steps auto stops."""
        stop = False
        if self.validation is not None:
            with self._ema_eval() as target:
                stop = self.validation.run(step, self._sample_images, target)
        if self.acc.num_processes > 1:
            from accelerate.utils import broadcast

            stop = bool(broadcast(torch.tensor([int(stop)], device=self.acc.device)).item())
        return stop and self.cfg.max_steps == "auto"

    def _sample_images(self, prompts: list[str], per_prompt: int, seed: int, chunk: int = 16) -> torch.Tensor:
        """``per_prompt`` images of each prompt from the current weights (DDIM, ``--guidance``), ``chunk`` at a
        time, chunk ``i`` from the noise of seed ``seed + i``: (N, 3, R, R)."""
        from pathup.train.sampling import ddim_sample

        unet = self.acc.unwrap_model(self.unet)
        emb_table = self._prompt_embeddings()  # (P + 1, L, D)
        cond = emb_table[[self.prompt_index[p] for p in prompts for _ in range(per_prompt)]]  # (N, L, D)
        out = []
        for i in range(0, len(cond), chunk):
            with self.acc.autocast():
                lat = ddim_sample(unet, self.ldm.scheduler, cond[i:i + chunk], emb_table[self.empty_index][None],
                                  (unet.config.in_channels, self.latent_size, self.latent_size),
                                  steps=self.cfg.sample_steps, guidance_scale=self.cfg.guidance,
                                  generator=torch.Generator().manual_seed(seed + i))
                out.append(self.ldm.decode_latents(lat.to(self.weight_dtype)).float().cpu())  # (b, 3, R, R)
        return torch.cat(out)

    def _save_checkpoint(self, step: int, base: str) -> None:
        state = {"step": step, "base": base, "prompts": self.table.to_dict(), "config": to_dict(self.cfg),
                 "fel_dim": self.bank.dim if self.bank is not None else None, "format": "pathup-train/2"}
        ckpt_io.save_checkpoint(self.acc, self.run_dir, step, state, self.cfg.keep_checkpoints, self.custom_state)

    def _save_final(self, out: Path, base: str) -> None:
        from pathup.model import LDM, load_ldm, save_ldm

        unet = self.acc.unwrap_model(self.unet)
        unet = getattr(unet, "_orig_mod", unet)
        with averaged_weights(self.ema, self._ema_target()):
            if self.validation is not None:
                self.validation.load_best(self._ema_target())
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
                      size=self.ldm.size, mpp=self.mpp)
            save_ldm(ldm, out)
            if self.head is not None:
                from safetensors.torch import save_file

                head = self.acc.unwrap_model(self.head)
                save_file({k: v.detach().float().cpu().contiguous() for k, v in head.state_dict().items()},
                          str(out / "fel_head.safetensors"))


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
        if trainer.acc is not None:
            release(trainer.acc)
        if trainer.lock is not None:
            trainer.lock.release()
