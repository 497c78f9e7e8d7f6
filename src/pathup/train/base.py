"""The model a training run starts from: the run's own ``base/``, a size built from scratch (after its
autoencoder stage), or a pretrained Stable Diffusion checkpoint to fine-tune (the PathUp paper's recipe).

``RUN/base/`` (from-scratch models only) is a diffusers folder holding the model after the autoencoder
stage: trained VAE with its scaling factor, the initial text encoder and UNet, the noise schedule the
UNet learns. A resumed run reloads it instead of training the autoencoder again.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from pathup.errors import OptionError, PathUpError
from pathup.train.autoencoder import finetune_decoder, train_autoencoder
from pathup.train.config import TrainConfig
from pathup.train.data import TrainTiles

log = logging.getLogger(__name__)


def sized(name: str, resolution: int | None):
    """The registry size ``name``, its sample sizes changed for ``resolution`` pixels."""
    from pathup.model.registry import MODEL_SIZES

    size = MODEL_SIZES[name]
    if resolution is None or resolution == size.resolution:
        return size
    factor = 2 ** (len(size.vae["block_out_channels"]) - 1)  # the autoencoder's downsampling
    mult = factor * 2 ** (len(size.unet["block_out_channels"]) - 1)
    if resolution <= 0 or resolution % mult:
        raise OptionError("resolution", f"{resolution} must be a positive multiple of {mult} for model {name!r}")
    return dataclasses.replace(size, resolution=resolution, vae=dict(size.vae, sample_size=resolution),
                               unet=dict(size.unet, sample_size=resolution // factor))


def check_crop(crop: int, resolution: int, vae) -> None:
    """Refuse an autoencoder crop (``--vae-crop``) that is not whole latent cells: its decoding would come back
    at another size, and the grid term would not line up with the latent grid."""
    from pathup.losses.autoencoder import latent_grid

    grid = latent_grid(vae)
    if 0 < crop < resolution and crop % grid:
        raise OptionError("vae_crop", f"{crop} must be 0 (whole tiles) or a multiple of the autoencoder's latent "
                                      f"grid ({grid} px), e.g. {max(grid, crop // grid * grid)}")


def configure_scheduler(ldm, cfg: TrainConfig) -> None:
    """Set the noise schedule's prediction type and terminal SNR when asked (saved with the model)."""
    from pathup.model.ldm import make_scheduler

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


def _tiles(cfg: TrainConfig, resolution: int) -> TrainTiles:
    return TrainTiles(cfg.data, cfg.split, cfg.levels, cfg.patho_align, resolution,
                      allow_empty_classes=cfg.allow_empty_classes)


def load_model(acc, cfg: TrainConfig, run: Path):
    """The LDM to train, the tiles it trains on and where its frozen parts come from (``base``).

    Returns ``(ldm, tiles, base)``: ``base`` is ``RUN/base`` for a from-scratch model, else ``cfg.model``.
    """
    from pathup.model import build_ldm, load_ldm, save_ldm
    from pathup.model.tokenizer import check_prompts

    base = run / "base"
    if cfg.from_scratch:
        res = cfg.resolution or sized(cfg.model, None).resolution
        size = sized(cfg.model, res)
        tiles = _tiles(cfg, res)
        if cfg.resume and (base / "model_index.json").is_file():
            ldm = load_ldm(base)
            configure_scheduler(ldm, cfg)
            if ldm.resolution != res:
                raise OptionError("resolution", f"{res} differs from the run's model ({ldm.resolution} px)")
            ldm.prompts = tiles.table
        else:
            ldm = build_ldm(size, tiles.table, seed=cfg.seed)
            check_crop(cfg.vae_crop, res, ldm.vae)
            configure_scheduler(ldm, cfg)  # saved with the base, so that base/ is what the UNet learns
            ldm.vae.to(acc.device)
            sf = train_autoencoder(acc, ldm.vae, tiles, cfg)
            log.info("autoencoder trained; latent scaling factor %.4f", sf)
            finetune_decoder(acc, ldm.vae, tiles, cfg)
            ldm.vae.cpu()
            if acc.is_main_process:
                save_ldm(ldm, base)
            acc.wait_for_everyone()
        return ldm, tiles, str(base)
    try:
        ldm = load_ldm(cfg.model)
        configure_scheduler(ldm, cfg)
    except PathUpError:
        raise
    except Exception as err:  # noqa: BLE001 - hub/IO errors of diffusers and transformers
        raise PathUpError(f"cannot load --model {cfg.model}: {str(err).splitlines()[0]}") from None
    tiles = _tiles(cfg, cfg.resolution or ldm.resolution)
    check_prompts(ldm.tokenizer, tiles.table.prompts() + tiles.unique_prompts())
    ldm.prompts = tiles.table
    return ldm, tiles, cfg.model
