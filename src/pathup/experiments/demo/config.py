"""Options of ``pathup demo`` and how each shipped sample is tiled and credited."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from pathup.config import accepts_aliases, option

STAGES = ("prepare", "train", "generate", "evaluate", "report")


@accepts_aliases
@dataclass
class DemoConfig:
    """Options of ``pathup demo``; the defaults are sized for about 15 minutes on 2 CPU cores."""

    out: str = option("pathup-demo", "output folder", metavar="DIR")
    sample: Literal["kather", "breakhis"] = option(
        "kather", "shipped sample: kather (8 visibly distinct colorectal classes) or breakhis (4 breast classes)")
    classes: list[str] = option(help="classes of the shipped sample to use (default: all of them)",
                                default_factory=list, metavar="NAME")
    tile_px: int = option(128, "tile size in pixels (the tiny model's resolution)", aliases=("tile_size",))
    max_per_class: Optional[int] = option(None, "at most this many tiles per class, level and split (a quicker, "
                                                "rougher demo; default: all of the sample's)", min=1, metavar="N")
    vae_steps: int = option(300, "autoencoder training steps (the CPU budget; pathup train's default for tiny is 1000)",
                            min=0)
    vae_crop: int = option(96, "train the autoencoder on random crops of this size (the CPU budget: 400 steps on "
                               "96-px crops took 4.4 min and reached 23.3 dB on the held-out tiles, 250 on whole "
                               "128-px tiles 5.4 min and 22.1 dB; 0 = whole tiles, pathup train's default)",
                           metavar="PX", min=0)
    train_steps: int = option(900, "UNet training steps (the CPU budget; pathup train's default is --max-steps auto: "
                                    "until validation stops improving)", min=1)
    batch_size: int = option(8, "training batch size")
    encoder_epochs: Optional[int] = option(None, "epochs of the domain encoder that measures the demo (default: "
                                                 "'pathup features train''s)", min=1)
    fel_beta: float = option(0.1, "feature entropy loss weight (0 = off)")
    steps: int = option(20, "sampling steps")
    scheduler: Literal["ddim", "dpm++", "dpm++-karras", "unipc", "euler", "ddpm"] = option(
        "ddim", "sampler (the README's demo numbers are DDIM 20 steps; pathup generate's default differs)")
    guidance: float = option(3.0, "classifier-free guidance scale")
    compose_classes: int = option(3, "classes in the demo's composed mixed-tissue image (pathup compose; 0: none)",
                                  min=0)
    guidance_compare: list[float] = option(help="guidance scales shown side by side for one class in the report",
                                           default_factory=lambda: [1.0, 3.0, 7.5], metavar="G")
    overviews_per_class: int = option(6, "generated overviews per class (for metrics)")
    size: Optional[int] = option(None, "size of the large images in pixels (default: the sample's, SAMPLE_LARGE: a "
                                       "field at the patch level's scale, never a magnified overview)", min=8)
    latent_patch: Optional[int] = option(None, "latent patch size p of the tracking (default: the sample's)", min=1)
    latent_overlap: Optional[int] = option(None, "latent patch overlap o (default: half the patch)", min=0)
    strength: Optional[float] = option(None, "share of the schedule re-run (default: the sample's; 1 = from noise at "
                                             "the patch level's scale)", min=0, min_exclusive=True, max=1)
    features: str = option("auto", "feature extractor for the metrics (auto: the domain encoder the training run "
                                   "trained on the sample's tiles, texture-aware; class-consistency also with "
                                   "color-stats beside it; 'inception' needs its weights)")
    repeats: int = option(3, "metric repeats over seeds (mean +- std)")
    device: str = option("auto", "auto, cpu, cuda")
    seed: int = option(0, "seed of every stage")
    progress: bool = option(True, "show progress bars")
    overwrite: bool = option(False, "start again: remove the demo's earlier results in --out (dataset, training "
                                    "run, images, metrics) instead of continuing them")


# How each shipped sample is tiled (both are small images: a patch tile is a crop at full resolution,
# an overview tile the whole image or a large part of it, resized to the model's resolution).
SAMPLE_TILING = {
    # Kather 2016: 150 px tiles at 20x; empty glass (08_EMPTY) and fat (07_ADIPOSE) are classes, so no
    # tissue filter; the shipped MANIFEST.csv gives the split (held-out slide CRC-Prim-HE-05, and 10
    # 08_EMPTY tiles split by tile because that class comes from one slide only).
    "kather": dict(patch_px=128, overview_px=150, min_tissue=0.0),
    # BreakHis: 700x460 images at 100X; the last patient of each class is held out (split by patient).
    "breakhis": dict(patch_px=128, overview_px=460),
}

# The demo's large images, at an honest scale (the paper upscales from the overview's scale to the patch
# level's; pathup.sample.scale). Kather's tiles are single 150 px fields: its overview (150 px at 0.58 um/px)
# reaches the patch scale (0.495 um/px) at 150 px, so a larger field can only grow outward: strength 1, from
# noise, every latent patch of the tiles' own size following the patch prompt, at 0.495 um/px. BreakHis
# overviews (460 px fields written at 128 px) upscale back to their natural width, about 460 px.
SAMPLE_LARGE = {
    "kather": dict(size=384, strength=1.0, latent_patch=16),
    "breakhis": dict(size=464, strength=0.8, latent_patch=32),
}

SAMPLE_CREDIT = {
    "kather": "Kather 2016 colorectal cancer tiles (CC BY 4.0, Kather et al., Sci Rep 2016)",
    "breakhis": "BreakHis breast biopsy images (CC BY 4.0, Spanhol et al., IEEE TBME 2016)",
}


def large_settings(cfg: DemoConfig) -> dict:
    """``size``, ``strength``, ``latent_patch``, ``latent_overlap`` of the large images: the options, else the
    sample's (``SAMPLE_LARGE``; the overlap is half the patch)."""
    out = {k: getattr(cfg, k) if getattr(cfg, k) is not None else v for k, v in SAMPLE_LARGE[cfg.sample].items()}
    out["latent_overlap"] = cfg.latent_overlap if cfg.latent_overlap is not None else out["latent_patch"] // 2
    return out
