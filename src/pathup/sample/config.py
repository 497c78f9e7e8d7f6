"""Options of ``pathup generate`` / ``pathup upscale`` and the Python API (one source of defaults).

Kept free of torch imports so that ``pathup --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pathup.errors import PathUpError

MAX_GUIDANCE = 100.0  # beyond this classifier-free guidance only saturates (and overflows in fp16/bf16)
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes 64-bit seeds


@dataclass
class SampleConfig:
    """Generation settings (SPEC.md section 5; paper defaults)."""

    steps: int = field(default=50, metadata={"help": "inference steps of the full schedule", "min": 1})
    guidance: float = field(default=7.5, metadata={"help": "classifier-free guidance scale (0-100; <= 1: none)",
                                                   "min": 0, "max": MAX_GUIDANCE})
    scheduler: Literal["ddim", "dpm++", "euler", "pndm", "ddpm"] = field(
        default="ddim", metadata={"help": "sampler"})
    seed: int = field(default=0, metadata={"help": "seed of the first image; image i uses seed + i",
                                           "min": 0, "max": MAX_SEED})
    size: str = field(default="2048", metadata={"help": "output size in pixels: N (square) or WxH",
                                                 "metavar": "N|WxH"})
    patch_size: int = field(default=64, metadata={"help": "latent patch size p (64 = 512 px)", "min": 1})
    overlap: int = field(default=32, metadata={"help": "latent overlap o between patches", "min": 0})
    strength: float = field(default=0.8, metadata={"help": "share of the schedule re-run when upscaling",
                                                   "min": 0, "min_exclusive": True, "max": 1})
    weight_map: Literal["pyramid", "uniform"] = field(
        default="pyramid", metadata={"help": "patch weights: Eq. 6 pyramid, or uniform (Table 4 ablation)"})
    patch_batch: str = field(default="auto", metadata={
        "help": "patches per UNet call: auto (from free memory) or N; never changes the image",
        "metavar": "auto|N"})
    step_mode: Literal["per-patch", "per-chunk"] = field(default="per-patch", metadata={
        "help": "one scheduler per patch (Algorithm 1) or per UNet chunk (same result for "
                "deterministic samplers, fewer kernel launches)"})
    vae_tile: int = field(default=0, metadata={
        "help": "autoencoder tile in latent positions; 0: twice the UNet's sample size", "min": 0})
    vae_overlap: int = field(default=0, metadata={"help": "autoencoder tile overlap; 0: a quarter tile",
                                                 "min": 0})
    negative_prompt: str = field(default="", metadata={"help": "unconditional prompt for guidance"})
    num: int = field(default=1, metadata={"help": "number of images (seeds seed .. seed+num-1)", "min": 1})
    format: Literal["png", "tiff"] = field(default="png", metadata={
        "help": "image format; images from 8192 px on are always pyramidal TIFF"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N"})
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = field(default="auto", metadata={
        "help": "model precision; auto: bf16 on CUDA, fp32 on CPU"})
    overwrite: bool = field(default=False, metadata={
        "help": "replace the images of an output folder (or file) made with another model or other settings; "
                "without it a rerun resumes only when the settings match"})


def parse_size(text: str | int | tuple[int, int]) -> tuple[int, int]:
    """``"2048"`` -> (2048, 2048); ``"3000x2000"`` -> (3000, 2000) as (width, height)."""
    if isinstance(text, tuple):
        w, h = text
    elif isinstance(text, int):
        w = h = text
    else:
        parts = str(text).lower().replace(" ", "").split("x")
        try:
            if len(parts) == 1:
                w = h = int(parts[0])
            elif len(parts) == 2:
                w, h = int(parts[0]), int(parts[1])
            else:
                raise ValueError
        except ValueError:
            raise PathUpError(f"--size must be N or WxH in pixels (e.g. 2048 or 3000x2000), got {text!r}") from None
    if w < 8 or h < 8:
        raise PathUpError(f"--size must be at least 8x8 pixels, got {w}x{h}")
    return int(w), int(h)


def config_from_options(cls: type, options: dict, exclude: set[str]):
    """A ``cls`` (a ``SampleConfig``) from Python API keyword options, refusing unknown ones.

    ``exclude`` names the fields the API does not take (folder and device options); ``size`` may be an int
    or a (width, height) tuple. The caller validates the result.
    """
    names = set(cls.__dataclass_fields__) - exclude
    unknown = sorted(set(options) - names)
    if unknown:
        raise PathUpError(f"unknown option(s) {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    if "size" in options and not isinstance(options["size"], str):
        w, h = parse_size(options["size"])
        options = {**options, "size": f"{w}x{h}"}
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
        raise PathUpError(f"--patch-batch must be 'auto' or a positive integer, got {value!r}")
    return n


def validate(cfg: SampleConfig) -> None:
    """Check every option before any work starts (one-line PathUpError naming the option).

    The per-field rules (finite floats, the ``min``/``max`` metadata above) come from
    ``pathup.config.validate``; the checks that involve several options follow.
    """
    from pathup.config import validate as validate_fields

    validate_fields(cfg)
    parse_size(cfg.size)
    parse_patch_batch(cfg.patch_batch)
    if int(cfg.steps * cfg.strength) < 1:
        raise PathUpError(f"--strength {cfg.strength} x --steps {cfg.steps} re-runs no step; raise either")
    if not 0 <= cfg.overlap < cfg.patch_size:
        raise PathUpError(f"--overlap must be in [0, patch size {cfg.patch_size}), got {cfg.overlap}")
    if cfg.vae_tile and cfg.vae_overlap >= cfg.vae_tile:
        raise PathUpError(f"--vae-overlap {cfg.vae_overlap} must be smaller than --vae-tile {cfg.vae_tile}")


def check_options(**values: object) -> None:
    """Check single option values (e.g. ``guidance=...``) by the rules of ``SampleConfig``'s fields.

    For the Python API calls that take options one by one (``PathUpPipeline.overview`` / ``upscale``).
    """
    from dataclasses import fields

    from pathup.config import check_value

    meta = {f.name: f.metadata for f in fields(SampleConfig)}
    for name, value in values.items():
        check_value(name, value, meta[name])
