"""Options of ``pathup demo`` and how each shipped sample is tiled and credited."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from pathup.config import accepts_aliases, option

STAGES = ("prepare", "train", "generate", "evaluate", "report")


@accepts_aliases
@dataclass
class DemoConfig:
    """Options of ``pathup demo``; the defaults finish in about 10 minutes on 2 CPU cores."""

    out: str = option("pathup-demo", "output folder", metavar="DIR")
    sample: Literal["kather", "breakhis"] = option(
        "kather", "shipped sample: kather (8 visibly distinct colorectal classes) or breakhis (4 breast classes)")
    classes: list[str] = option(help="classes of the shipped sample to use (default: all of them)",
                                default_factory=list, metavar="NAME")
    tile_px: int = option(128, "tile size in pixels (the tiny model's resolution)", aliases=("tile_size",))
    vae_steps: Optional[int] = option(None, "autoencoder training steps (default: pathup train's for the tiny "
                                            "model, 600)")
    train_steps: Optional[int] = option(None, "UNet training steps (default: pathup train's for the tiny model, "
                                              "1000)")
    batch_size: int = option(8, "training batch size")
    fel_beta: float = option(0.1, "feature entropy loss weight (0 = off)")
    steps: int = option(20, "sampling steps")
    guidance: float = option(3.0, "classifier-free guidance scale")
    compose_classes: int = option(3, "classes in the demo's composed mixed-tissue image (pathup compose; 0: none)",
                                  min=0)
    guidance_compare: list[float] = option(help="guidance scales shown side by side for one class in the report",
                                           default_factory=lambda: [1.0, 3.0, 7.5], metavar="G")
    overviews_per_class: int = option(6, "generated overviews per class (for metrics)")
    size: int = option(768, "size of the large images in pixels")
    latent_patch: int = option(32, "latent patch size p of the upscaler")
    latent_overlap: int = option(16, "latent patch overlap o")
    strength: float = option(0.8, "upscaling strength")
    features: str = option("random-cnn", "feature extractor for the metrics (offline by default; 'inception' "
                                         "needs its weights)")
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

SAMPLE_CREDIT = {
    "kather": "Kather 2016 colorectal cancer tiles (CC BY 4.0, Kather et al., Sci Rep 2016)",
    "breakhis": "BreakHis breast biopsy images (CC BY 4.0, Spanhol et al., IEEE TBME 2016)",
}
