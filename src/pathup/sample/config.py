"""Options of ``pathup generate`` / ``upscale`` / ``compose`` and the Python API (one source of defaults).

``SampleConfig`` holds the generation options, ``ComposeConfig`` adds the layout's; ``validate`` checks
either. ``size`` is parsed once, here, into a typed ``Size(width, height)``; every later use takes that value.
Kept free of torch imports so that ``pathup --help`` stays fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Literal, NamedTuple, Optional

from pathup.config import accepts_aliases, option, resolve_aliases
from pathup.errors import OptionError, PathUpError

MAX_GUIDANCE = 100.0  # beyond this classifier-free guidance only saturates (and overflows in fp16/bf16)
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes 64-bit seeds
# The sampler and step count by measurement (benchmarks/bench_speed.py, README "How fast"): the cheapest point of
# the sweep that keeps class-consistency, Frechet distance and the seam score of DDIM 50 (the paper's setting).
DEFAULT_SCHEDULER = "unipc"
DEFAULT_STEPS = 10

# Stored names of renamed options: sidecars and generate_settings.json keep the spelling of the folders
# written before the rename, so an old folder resumes and readers of sidecars (the seam score) still work.
STORED_NAMES = {"latent_patch": "patch_size", "latent_overlap": "overlap"}


class Size(NamedTuple):
    """An output size in pixels, ``(width, height)``; ``str`` gives ``N`` (square) or ``WxH``."""

    width: int
    height: int

    def __str__(self) -> str:
        return str(self.width) if self.width == self.height else f"{self.width}x{self.height}"

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def wxh(self) -> str:
        """``WxH`` always (the form stored in fingerprints)."""
        return f"{self.width}x{self.height}"


@accepts_aliases
@dataclass
class SampleConfig:
    """Generation settings (PathUp section 3.2, Algorithm 1; the paper's defaults)."""

    steps: int = option(DEFAULT_STEPS, "inference steps of the full schedule (the paper: 50 with ddim)", min=1)
    guidance: float = option(7.5, "classifier-free guidance scale (0-100; <= 1: none)", min=0, max=MAX_GUIDANCE)
    scheduler: Literal["ddim", "dpm++", "dpm++-karras", "unipc", "euler", "pndm", "ddpm"] = option(
        DEFAULT_SCHEDULER, "sampler (unipc: UniPC multistep; dpm++-karras: DPM-Solver++ 2M on Karras sigmas; "
        "ddim: the paper's)")
    guidance_interval: Optional[tuple[float, float]] = option(
        None, "apply guidance only where the noise level sigma = sqrt((1 - alphabar_t) / alphabar_t) is in "
        "(LO, HI] (Kynkaanniemi et al. 2024); elsewhere one conditional UNet pass per patch; default: every step",
        metavar=("LO", "HI"), nargs=2, min=0)
    seed: int = option(0, "seed of the first image; image i uses seed + i", min=0, max=MAX_SEED)
    size: Size = option(Size(2048, 2048), "output size in pixels: N (square) or WxH", metavar="N|WxH")
    latent_patch: int = option(64, "latent patch size p (64 = 512 px)", min=1, aliases=("patch_size",))
    latent_overlap: int = option(32, "latent overlap o between patches", min=0, aliases=("overlap",))
    strength: float = option(0.8, "share of the schedule re-run when upscaling", min=0, min_exclusive=True, max=1)
    weight_map: Literal["pyramid", "uniform"] = option(
        "pyramid", "patch weights: Eq. 6 pyramid, or uniform (Table 4 ablation)")
    patch_batch: str = option("auto", "patches per UNet call: auto (from free memory) or N; never changes the image",
                              metavar="auto|N")
    step_mode: Literal["per-patch", "per-chunk", "per-canvas"] = option(
        "per-canvas", "scheduler steps on all patches at once, on each UNet chunk, or on one patch at a time as "
        "Algorithm 1 reads; each patch keeps its own state, so the image is the same (per-canvas spends the least "
        "time outside the UNet and holds a few copies of the latent canvas)")
    cache_interval: int = option(
        1, "DeepCache (Ma et al. 2024) in the upscale: the whole UNet every N-th step, the shallow branch with "
        "each patch's cached deep features between; 1: off", min=1, metavar="N")
    token_merging: float = option(
        0.0, "ToMe (tomesd) ratio of tokens merged in the UNet's finest self-attention during the upscale, in "
        "[0, 1); 0: off; needs pip install 'pathup[speed]'", min=0, max=1, max_exclusive=True, metavar="RATIO")
    vae_tile: int = option(0, "autoencoder tile in latent positions; 0: twice the UNet's sample size", min=0)
    vae_overlap: int = option(0, "autoencoder tile overlap; 0: a quarter tile", min=0)
    negative_prompt: str = option("", "unconditional prompt for guidance")
    num: int = option(1, "number of images (seeds seed .. seed+num-1)", min=1)
    format: Literal["png", "tiff"] = option("png", "image format; images from 8192 px on are always pyramidal TIFF")
    mpp: Optional[float] = option(None, "microns per pixel of the written image; default: from the model's "
                                  "pathup.json (overview MPP x overview width / --size width), none if unknown",
                                  min=0, min_exclusive=True)
    device: str = option("auto", "auto, cpu, cuda, cuda:N")
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = option("auto", "model precision; auto: bf16 on CUDA, fp32 on CPU")
    overwrite: bool = option(False, "replace the images of an output folder (or file) made with another model or "
                             "other settings; without it a rerun resumes only when the settings match")

    def __post_init__(self) -> None:
        self.size = as_size(self.size)  # the one place a size is parsed (``dataclasses.replace`` keeps it)


@accepts_aliases
@dataclass
class ComposeConfig(SampleConfig):
    """``pathup compose`` options: every generation option plus the layout's (``pathup.sample.compose``)."""

    random_layout: int = option(0, "instead of --layout: a seeded random partition into K classes of the model "
                                "(0: off)", metavar="K", min=0)
    layout_shape: Literal["voronoi", "blob"] = option("voronoi", "shape of random regions: voronoi cells or blobs")
    region_size: int = option(1024, "typical size of a random region in pixels", min=1)
    feather: int = option(-1, "width of the soft region borders in latent positions (8 px each); -1: a quarter "
                          "of the latent patch; 0: hard borders", min=-1)
    preview_size: int = option(2048, "long side of the colour and overlay previews in pixels; 0: full size", min=0)


def feather_width(cfg: ComposeConfig) -> int:
    """``cfg.feather``, with -1 resolved to a quarter of the latent patch."""
    return cfg.latent_patch // 4 if cfg.feather < 0 else cfg.feather


def parse_size(text: Any, name: str = "size") -> Size:
    """``"2048"`` -> Size(2048, 2048); ``"3000x2000"``, ``(3000, 2000)`` or ``[3000, 2000]`` -> Size(3000, 2000).

    Raises:
        OptionError: naming ``name``, for text that is not ``N`` or ``WxH`` or a size under 8x8.
    """
    if isinstance(text, (tuple, list)) and len(text) == 2 and all(isinstance(v, int) for v in text):
        w, h = text
    elif isinstance(text, int) and not isinstance(text, bool):
        w = h = text
    else:
        parts = str(text).lower().replace(" ", "").split("x")
        try:
            if isinstance(text, (bool, float, tuple, list)) or len(parts) not in (1, 2):
                raise ValueError
            w, h = (int(parts[0]),) * 2 if len(parts) == 1 else (int(parts[0]), int(parts[1]))
        except ValueError:
            raise OptionError(name, f"must be N or WxH in pixels (e.g. 2048 or 3000x2000), got {text!r}") from None
    if w < 8 or h < 8:
        raise OptionError(name, f"must be at least 8x8 pixels, got {w}x{h}")
    return Size(int(w), int(h))


def as_size(value: Any, name: str = "size") -> Size:
    """``value`` as it is when already a parsed ``Size`` (no second parse), else ``parse_size(value, name)``."""
    if isinstance(value, Size) and min(value) >= 8:
        return value
    return parse_size(value, name)


def stored_options(cfg: Any, **values: Any) -> dict[str, Any]:
    """``cfg``'s options as sidecars store them: older names of renamed options, ``size`` as text, tuples
    (``guidance_interval``) as lists (as JSON reads them back, so a stored folder compares equal)."""
    from dataclasses import asdict

    options = {STORED_NAMES.get(k, k): list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}
    options["size"] = str(cfg.size)
    options.update(values)
    return options


def config_from_options(cls: type, options: dict, exclude: set[str]):
    """A ``cls`` (a ``SampleConfig``) from Python API keyword options, refusing unknown ones.

    Older option names (``patch_size``, ``overlap``) are accepted; ``exclude`` names the fields the API does
    not take (folder and device options); ``size`` may be an int, ``"WxH"`` or a (width, height) tuple. The
    caller validates the result.
    """
    options = resolve_aliases(cls, options)
    names = set(cls.__dataclass_fields__) - exclude
    unknown = sorted(set(options) - names)
    if unknown:
        raise PathUpError(f"unknown option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    return cls(**options)


def parse_patch_batch(value: str | int | None) -> int | str:
    """``auto`` or a positive integer."""
    if value is None or value == "auto":
        return "auto"
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise OptionError("patch_batch", f"must be 'auto' or a positive integer, got {value!r}")
    return n


def validate(cfg: SampleConfig) -> SampleConfig:
    """Check every option before any work starts (one-line ``OptionError`` naming the option); returns ``cfg``.

    The per-field rules (finite floats, the ranges above) come from ``pathup.config.validate``; the checks
    that involve several options follow, and for a ``ComposeConfig`` the layout shape.
    """
    from pathup.config import validate as validate_fields

    validate_fields(cfg)
    cfg.size = as_size(cfg.size)  # parsed when the config was made; parsed here only if set since
    parse_patch_batch(cfg.patch_batch)
    if int(cfg.steps * cfg.strength) < 1:
        raise OptionError("strength", f"{cfg.strength} x steps {cfg.steps} re-runs no step; raise either")
    if not 0 <= cfg.latent_overlap < cfg.latent_patch:
        raise OptionError("latent_overlap", f"must be in [0, {cfg.latent_patch}) (below the latent patch), "
                                            f"got {cfg.latent_overlap}")
    if cfg.vae_tile and cfg.vae_overlap >= cfg.vae_tile:
        raise OptionError("vae_overlap", f"must be smaller than the autoencoder tile {cfg.vae_tile}, got {cfg.vae_overlap}")
    cfg.guidance_interval = parse_guidance_interval(cfg.guidance_interval)
    if isinstance(cfg, ComposeConfig) and cfg.layout_shape not in ("voronoi", "blob"):
        raise OptionError("layout_shape", f"must be voronoi or blob, got {cfg.layout_shape!r}")
    return cfg


def parse_guidance_interval(value: Any) -> tuple[float, float] | None:
    """``None`` (guidance at every step) or ``(lo, hi)``: finite floats with ``0 <= lo < hi`` (a large ``hi``
    such as 1e4 reaches the top of any schedule but a zero-terminal-SNR one).

    Raises:
        OptionError: naming ``guidance_interval``, for anything but two numbers in that order.
    """
    if value is None:
        return None
    try:
        if isinstance(value, (str, bytes)) or len(value) != 2 or any(isinstance(v, bool) for v in value):
            raise TypeError
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise OptionError("guidance_interval", f"must be two noise levels LO HI with 0 <= LO < HI, "
                                               f"got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo < hi):
        raise OptionError("guidance_interval", f"must be two finite noise levels LO HI with 0 <= LO < HI, "
                                               f"got {lo} {hi}")
    return lo, hi


def check_options(**values: object) -> None:
    """Check single option values (e.g. ``guidance=...``) by the rules of ``SampleConfig``'s fields.

    For the Python API calls that take options one by one (``PathUpPipeline.overview`` / ``upscale``).
    """
    from pathup.config import check_value

    meta = {f.name: f.metadata for f in fields(SampleConfig)}
    for name, value in values.items():
        check_value(name, value, meta[name])
