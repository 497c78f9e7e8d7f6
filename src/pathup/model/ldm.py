"""The latent diffusion model: build from a named size, load a diffusers checkpoint, save one.

The saved folder is a regular Stable Diffusion checkpoint (``model_index.json`` naming ``vae``,
``unet``, ``text_encoder``, ``tokenizer``, ``scheduler``; each loads with diffusers'
``from_pretrained``), plus PathUp's own files:

* ``pathup.json``: the prompt table (classes x levels), the model size name and ``"mpp"``, the microns per
  pixel of the training tiles of each level (``{"patch": float|null, "overview": float|null}``, copied from
  the dataset's ``dataset.json``; null when unknown);
* ``fel_bank.safetensors``: the feature entropy loss's memory bank (one vector per prompt id).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pathup.errors import PathUpError
from pathup.model.registry import MODEL_SIZES, ModelSize
from pathup.prompts import LEVELS, PromptTable

log = logging.getLogger(__name__)

SCHEDULERS = ("ddim", "ddpm", "dpm++", "dpm++-karras", "euler", "pndm", "unipc")

# Settings a short name fixes whatever the model's scheduler config says (the rest, betas etc., is the model's).
SCHEDULER_SETTINGS: dict[str, dict[str, Any]] = {
    # DPM-Solver++ 2M with Karras et al. 2022's sigma spacing (Eq. 5, rho = 7).
    "dpm++-karras": {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
}

# Schedulers that refuse a zero-terminal-SNR schedule (``rescale_betas_zero_snr``), with the reason. The others
# run it; note that ``dpm++-karras`` then spaces its sigmas from the terminal sigma (about 4096 after diffusers'
# rescaling), so several of its first steps sit near pure noise (img2img's strength cuts most of them).
NO_ZERO_SNR = {
    "pndm": "diffusers' PNDM has no zero-terminal-SNR option",
}


def make_scheduler(name: str, config: dict[str, Any] | None = None):
    """A diffusers noise scheduler by short name, reusing ``config`` (betas etc.) when given.

    ``unipc`` is diffusers' ``UniPCMultistepScheduler`` (Zhao et al. 2023, UniPC, B(h) = expm1(h)), with
    its defaults (order 2 predictor-corrector); ``dpm++-karras`` is DPM-Solver++ 2M on Karras sigmas
    (``SCHEDULER_SETTINGS``). A zero-terminal-SNR model (``rescale_betas_zero_snr``) refuses the
    schedulers of ``NO_ZERO_SNR`` in one line.
    """
    from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,
                           EulerDiscreteScheduler, PNDMScheduler, UniPCMultistepScheduler)

    classes = {"ddim": DDIMScheduler, "ddpm": DDPMScheduler, "dpm++": DPMSolverMultistepScheduler,
               "dpm++-karras": DPMSolverMultistepScheduler, "euler": EulerDiscreteScheduler,
               "pndm": PNDMScheduler, "unipc": UniPCMultistepScheduler}
    if name not in classes:
        raise PathUpError(f"unknown scheduler {name!r}; allowed: {', '.join(SCHEDULERS)}")
    if name in NO_ZERO_SNR and config is not None and config.get("rescale_betas_zero_snr"):
        allowed = ", ".join(s for s in SCHEDULERS if s not in NO_ZERO_SNR)
        raise PathUpError(f"scheduler {name!r} does not support this model's zero-terminal-SNR noise schedule "
                          f"({NO_ZERO_SNR[name]}); allowed: {allowed}")
    if config is None:
        config = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                      beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
                      steps_offset=1, prediction_type="epsilon")
    # diffusers' private keys: "_use_default_values" lists the options that took their default when the config
    # was made, and from_config resets those to the default again, silently dropping a change made to them
    config = {k: v for k, v in dict(config).items() if not k.startswith("_")}
    return classes[name].from_config({**config, **SCHEDULER_SETTINGS.get(name, {})})


@dataclass
class LDM:
    """The components of a Stable-Diffusion-style model plus PathUp's prompt table and FEL bank."""

    vae: Any
    unet: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    prompts: PromptTable | None = None
    fel_bank: torch.Tensor | None = None  # (n_prompts, D), unit rows
    size: str | None = None  # registry name when built from scratch
    mpp: dict[str, float | None] | None = None  # microns per pixel of the training tiles, by level

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def resolution(self) -> int:
        """The training image size in pixels (UNet sample size x VAE factor)."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "LDM":
        for m in (self.vae, self.unet, self.text_encoder):
            m.to(device=device, dtype=dtype) if dtype is not None else m.to(device)
        return self

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"vae": self.vae, "unet": self.unet, "text_encoder": self.text_encoder}

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        return ids  # (B, L)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings for the UNet's cross-attention, (B, L, D)."""
        ids = self.tokenize(prompts).to(self.text_encoder.device)
        return self.text_encoder(ids)[0]

    def encode_images(self, images: torch.Tensor, *, sample: bool = False,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """Images in [-1, 1], (B, 3, H, W) -> scaled latents (B, 4, H/8, W/8)."""
        dist = self.vae.encode(images.to(self.vae.device, self.vae.dtype)).latent_dist
        z = dist.sample(generator) if sample else dist.mode()
        return z * self.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1]."""
        return self.vae.decode(latents.to(self.vae.device, self.vae.dtype) / self.scaling_factor).sample


def build_ldm(size: str | ModelSize = "tiny", prompts: PromptTable | None = None, *, seed: int = 0,
              scheduler: str = "ddim") -> LDM:
    """A randomly initialised model of a named size (``tiny``, ``small``, ``sd15``).

    The tokenizer has one token per word of ``prompts`` (see ``pathup.model.tokenizer``); a table in
    which two prompts would map to the same tokens is refused.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from pathup.model.tokenizer import build_prompt_tokenizer, check_prompts

    if isinstance(size, str):
        if size not in MODEL_SIZES:
            raise PathUpError(f"unknown model size {size!r}; allowed: {', '.join(MODEL_SIZES)} "
                              "or a path / hub id of a diffusers checkpoint")
        size = MODEL_SIZES[size]
    torch.manual_seed(seed)
    vae = AutoencoderKL(**size.vae)
    unet = UNet2DConditionModel(**size.unet)
    tokenizer = build_prompt_tokenizer(prompts.prompts() if prompts is not None else ())
    if prompts is not None:
        check_prompts(tokenizer, prompts.prompts())
    vocab = len(tokenizer)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **size.text))
    return LDM(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer,
               scheduler=make_scheduler(scheduler), prompts=prompts, size=size.name)


def _is_model_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file() or (path / "unet" / "config.json").is_file()


def load_ldm(path_or_id: str | Path, *, scheduler: str | None = None, device: str | torch.device = "cpu",
             dtype: torch.dtype | None = None) -> LDM:
    """Load a diffusers Stable-Diffusion-format checkpoint from a folder or a hub id.

    Also accepts a training run folder (``RUN/model``) or a size name from the registry. A local folder is
    checked first (``pathup.model.folder.check_model_folder``); weights load from safetensors files only;
    the prompt table of ``pathup.json`` must suit the tokenizer (``check_table``).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from pathup.model.folder import check_model_folder

    name = str(path_or_id)
    if name in MODEL_SIZES:
        return build_ldm(name, scheduler=scheduler or "ddim").to(device, dtype)
    path = Path(name)
    if path.is_dir() and not _is_model_folder(path) and _is_model_folder(path / "model"):
        path = path / "model"
    if path.exists() and not _is_model_folder(path):
        raise PathUpError(f"{path} is not a diffusers model folder (no model_index.json or unet/config.json)")
    if not path.exists() and (name.startswith((".", "/")) or name.count("/") != 1):
        raise PathUpError(f"model not found: {name} (give a model folder, a hub id like "
                          f"'org/name', or a size: {', '.join(MODEL_SIZES)})")
    meta = check_model_folder(path) if path.exists() else None
    src = str(path) if path.exists() else name
    kw: dict[str, Any] = {"use_safetensors": True, **({"torch_dtype": dtype} if dtype is not None else {})}
    try:
        vae = AutoencoderKL.from_pretrained(src, subfolder="vae", **kw)
        unet = UNet2DConditionModel.from_pretrained(src, subfolder="unet", **kw)
        text_encoder = CLIPTextModel.from_pretrained(src, subfolder="text_encoder", **kw)
        tokenizer = CLIPTokenizer.from_pretrained(src, subfolder="tokenizer")
        sched_cfg = _load_scheduler_config(src)
    except Exception as err:  # noqa: BLE001 - OSError, ValueError, SafetensorError of a damaged file...
        raise PathUpError(f"cannot load model {src}: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    sched = make_scheduler(scheduler or _scheduler_short_name(sched_cfg), sched_cfg)
    prompts, bank, size, mpp = None, None, None, None
    if meta is not None:
        prompts = PromptTable.from_dict(meta["prompts"]) if meta.get("prompts") else None
        size = meta.get("size")
        mpp = meta.get("mpp")
        if prompts is not None:
            check_table(tokenizer, prompts, size, path / "pathup.json")
    bank_file = path / "fel_bank.safetensors"
    if path.exists() and bank_file.is_file():
        from safetensors.torch import load_file

        bank = load_file(str(bank_file)).get("bank")
        if bank is None:
            raise PathUpError(f"{bank_file}: no 'bank' tensor (the feature entropy loss's memory bank)")
    ldm = LDM(vae=vae, unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=sched,
              prompts=prompts, fel_bank=bank, size=size, mpp=mpp)
    return ldm.to(device)


def check_table(tokenizer, table: PromptTable, size: str | None, where: Path) -> None:
    """The prompt table of a loaded model suits its tokenizer: no two prompts share tokens and, for a model
    built by PathUp with a word tokenizer (``size`` set), every word of every prompt is one token (a word the
    tokenizer spells letter by letter was never trained). One line naming ``where``."""
    from pathup.model.tokenizer import check_prompts, unspelled_words

    try:
        check_prompts(tokenizer, table.prompts())
    except PathUpError as err:
        raise PathUpError(f"{where}: {err}") from None
    bad = unspelled_words(tokenizer, table.prompts()) if size is not None else {}
    if bad:
        prompt, words = next(iter(bad.items()))
        raise PathUpError(f"{where}: this model's tokenizer has no token for {', '.join(map(repr, words))} of the "
                          f"prompt {prompt!r} (it was built for the prompts the model was trained on): the model "
                          "never learned it; use the classes and descriptions it was trained with")


def _load_scheduler_config(src: str) -> dict[str, Any]:
    from diffusers import DDIMScheduler

    return dict(DDIMScheduler.load_config(src, subfolder="scheduler"))


def _scheduler_short_name(cfg: dict[str, Any]) -> str:
    cls = str(cfg.get("_class_name", "DDIMScheduler"))
    if cls == "DPMSolverMultistepScheduler" and cfg.get("use_karras_sigmas"):
        return "dpm++-karras"
    return {"DDPMScheduler": "ddpm", "DPMSolverMultistepScheduler": "dpm++", "EulerDiscreteScheduler": "euler",
            "PNDMScheduler": "pndm", "UniPCMultistepScheduler": "unipc"}.get(cls, "ddim")


def save_ldm(ldm: LDM, path: str | Path) -> Path:
    """Save as a diffusers ``StableDiffusionPipeline`` folder (atomically) plus PathUp's metadata."""
    from diffusers import StableDiffusionPipeline

    from pathup.io import atomic_dir

    path = Path(path)
    with atomic_dir(path) as tmp:
        pipe = StableDiffusionPipeline(vae=ldm.vae, text_encoder=ldm.text_encoder, tokenizer=ldm.tokenizer,
                                       unet=ldm.unet, scheduler=ldm.scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
        try:
            pipe.save_pretrained(str(tmp), safe_serialization=True)
        except OSError as err:
            raise PathUpError(f"cannot write model {path}: {err.strerror or err}") from None
        except Exception as err:  # noqa: BLE001 - safetensors' SafetensorError for a full disk, for one
            from pathup.io import write_failure

            raise write_failure(err, path, path.parent, "model") from None
        meta = {"size": ldm.size, "prompts": ldm.prompts.to_dict() if ldm.prompts else None,
                "mpp": {level: (ldm.mpp or {}).get(level) for level in LEVELS}, "format": "pathup-ldm/1"}
        (tmp / "pathup.json").write_text(json.dumps(meta, indent=2))
        if ldm.fel_bank is not None:
            from safetensors.torch import save_file

            save_file({"bank": ldm.fel_bank.detach().float().cpu().contiguous()}, str(tmp / "fel_bank.safetensors"))
    return path
