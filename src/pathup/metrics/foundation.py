"""Named presets for pathology foundation encoders whose weights are on disk (``--features NAME``).

Nothing is downloaded: the weights come from ``--features-weights`` (a folder holding the model's Hugging Face
files, or a bare weights file) or, without it, from the local Hugging Face cache (``huggingface-cli download
REPO`` on a machine with access). Weights are read with ``safetensors`` or ``torch.load(weights_only=True)``
only; no user file is unpickled. The architecture and pre-processing of each preset follow its model card:

* ``uni2-h``: MahmoodLab/UNI2-h (timm ViT-H/14, 8 registers, SwiGLU), 1536-d CLS token. Licence CC-BY-NC-ND
  4.0, gated (institutional e-mail), non-commercial research only. Chen et al., "Towards a general-purpose
  foundation model for computational pathology", Nature Medicine 2024.
* ``virchow2``: paige-ai/Virchow2 (timm ViT-H/14, 4 registers, SwiGLU), 2560-d: the CLS token and the mean
  of the patch tokens, as its model card does. Licence CC-BY-NC-ND 4.0, gated, non-commercial research
  only. Zimmermann et al., "Virchow2: Scaling Self-Supervised Mixed Magnification Models in Pathology",
  arXiv:2408.00738.
* ``h-optimus-0``: bioptimus/H-optimus-0 (timm ViT-g/14, 4 registers), 1536-d CLS token, its own stain
  normalisation (mean 0.707/0.579/0.704, std 0.212/0.230/0.178). Licence Apache-2.0, gated (accept the terms).
* ``phikon-v2``: owkin/phikon-v2 (transformers, DINOv2 ViT-L/16), 1024-d CLS token
  (``last_hidden_state[:, 0]``). Owkin non-commercial licence, not gated. Filiot et al., "Phikon-v2, A large
  and public feature extractor for biomarker prediction", arXiv:2409.09173.

The licences are the model cards' at the time of writing; read them before use. Every image is resized to
224 x 224 (bicubic, antialiased) and normalised with the card's mean and std; the cards expect tiles at about
0.5 um/px (20x). Numbers from these encoders are not comparable with the literature's Inception FID.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from pathup.errors import OptionError
from pathup.metrics._common import FeatureExtractor, file_id

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_SIZE = 224
WEIGHT_NAMES = ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors")  # in a model folder
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
# timm's layer classes are named in the table (so that it stays plain data) and resolved on use.
TIMM_LAYERS = {"swiglu_packed": ("timm.layers", "SwiGLUPacked"), "silu": ("torch.nn", "SiLU")}


@dataclass(frozen=True)
class Preset:
    """How to build one foundation encoder and read its features.

    Attributes:
        repo: the Hugging Face repository (looked for in the local cache when no weights are given).
        library: ``timm`` or ``transformers``.
        architecture: the timm architecture the weights fit (used with a bare weights file, or a folder
            whose ``config.json`` does not name one).
        kwargs: the model card's ``timm.create_model`` keyword arguments (layer classes by TIMM_LAYERS name).
        pool: ``model`` (the model's own pooled output, the CLS token here), ``cls+mean`` (CLS token and
            the mean of the patch tokens, registers left out) or ``cls`` (``last_hidden_state[:, 0]``).
        mean, std: input normalisation.
        licence: the model card's licence and access conditions.
    """

    repo: str
    library: Literal["timm", "transformers"]
    pool: Literal["model", "cls+mean", "cls"]
    licence: str
    architecture: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    size: int = INPUT_SIZE


PRESETS: dict[str, Preset] = {
    "uni2-h": Preset(
        repo="MahmoodLab/UNI2-h", library="timm", pool="model", architecture="vit_giant_patch14_224",
        kwargs=dict(img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5, embed_dim=1536,
                    mlp_ratio=2.66667 * 2, num_classes=0, no_embed_class=True, mlp_layer="swiglu_packed",
                    act_layer="silu", reg_tokens=8, dynamic_img_size=True),
        licence="CC-BY-NC-ND 4.0, gated (institutional e-mail; non-commercial research only)"),
    "virchow2": Preset(
        repo="paige-ai/Virchow2", library="timm", pool="cls+mean", architecture="vit_huge_patch14_224",
        kwargs=dict(img_size=224, init_values=1e-5, num_classes=0, mlp_ratio=5.3375, global_pool="",
                    dynamic_img_size=True, reg_tokens=4, no_embed_class=True, mlp_layer="swiglu_packed",
                    act_layer="silu"),
        licence="CC-BY-NC-ND 4.0, gated (accept the terms; non-commercial research only)"),
    "h-optimus-0": Preset(
        repo="bioptimus/H-optimus-0", library="timm", pool="model", architecture="vit_giant_patch14_reg4_dinov2",
        kwargs=dict(img_size=224, init_values=1e-5, dynamic_img_size=False, num_classes=0),
        mean=(0.707223, 0.578729, 0.703617), std=(0.211883, 0.230117, 0.177517),
        licence="Apache-2.0, gated (accept the terms)"),
    "phikon-v2": Preset(
        repo="owkin/phikon-v2", library="transformers", pool="cls",
        licence="Owkin non-commercial licence (not gated)"),
}


def _resolve_layers(kwargs: dict[str, Any]) -> dict[str, Any]:
    import importlib

    out = dict(kwargs)
    for key in ("mlp_layer", "act_layer"):
        if isinstance(out.get(key), str):
            module, attr = TIMM_LAYERS[out[key]]
            out[key] = getattr(importlib.import_module(module), attr)
    return out


def _cached_snapshot(name: str, preset: Preset) -> Path:
    """The repository's folder in the local Hugging Face cache, or a one-line error saying how to get it."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(preset.repo, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached (LocalEntryNotFoundError), or no huggingface_hub
        raise OptionError("features", f"{name}: no weights given and {preset.repo} is not in the local Hugging Face "
                          f"cache; its licence: {preset.licence}. Accept it on huggingface.co, run 'huggingface-cli "
                          f"download {preset.repo}' where you have access, then pass --features-weights FOLDER "
                          "(or copy the cache here)") from None


def _weights_file(folder: Path, name: str) -> Path:
    for fname in WEIGHT_NAMES:
        if (folder / fname).is_file():
            return folder / fname
    found = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if len(found) == 1:
        return found[0]
    raise OptionError("features_weights", f"{folder}: no single weights file for {name} (looked for "
                      f"{', '.join(WEIGHT_NAMES)} or one *{'/*'.join(WEIGHT_SUFFIXES)} file)")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a PyTorch file read with ``weights_only=True`` (no pickle code)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - damaged file, pickled objects refused by weights_only
        raise OptionError("features_weights", f"{path}: cannot read weights ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''})") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise OptionError("features_weights", f"{path}: not a state dict of tensors")
    return state


def _build_timm(name: str, preset: Preset, source: Path) -> tuple[torch.nn.Module, tuple, tuple, Path]:
    """A timm model with the preset's architecture and the weights of ``source`` (a folder or a file)."""
    import timm
    from timm.models.vision_transformer import checkpoint_filter_fn

    arch, kwargs, mean, std = preset.architecture, dict(preset.kwargs), preset.mean, preset.std
    if source.is_dir():
        cfg_file = source / "config.json"
        if cfg_file.is_file():  # the repository's own config (timm's hub layout) completes the preset
            try:
                hub = json.loads(cfg_file.read_text())
            except (OSError, ValueError) as err:
                raise OptionError("features_weights", f"{cfg_file}: not valid JSON ({err})") from None
            arch = hub.get("architecture", arch)
            kwargs.update(hub.get("model_args", {}))
            pcfg = hub.get("pretrained_cfg", {})
            mean, std = tuple(pcfg.get("mean", mean)), tuple(pcfg.get("std", std))
        weights = _weights_file(source, name)
    else:
        weights = source
    state = read_state_dict(weights)  # before building the model: a bad file fails at once
    try:
        net = timm.create_model(arch, pretrained=False, **_resolve_layers(kwargs))
    except Exception as err:  # noqa: BLE001 - unknown architecture or arguments
        raise OptionError("features", f"{name}: cannot build timm {arch} ({type(err).__name__}: {err})") from None
    try:
        state = checkpoint_filter_fn(state, net)
        net.load_state_dict(state, strict=True)
    except (RuntimeError, KeyError, ValueError) as err:
        first = str(err).replace("\n", " ")[:300]
        raise OptionError("features_weights", f"{weights}: not {name} weights ({first})") from None
    return net, mean, std, weights


def _build_transformers(name: str, preset: Preset, source: Path) -> tuple[torch.nn.Module, tuple, tuple, Path]:
    """A transformers ``AutoModel`` from a ``save_pretrained`` folder (no remote code)."""
    from transformers import AutoModel

    if not source.is_dir() or not (source / "config.json").is_file():
        raise OptionError("features_weights", f"{source}: {name} needs the model's folder (config.json and its "
                          "weights, as save_pretrained or the Hugging Face cache writes it)")
    _weights_file(source, name)  # a clear error before transformers' own
    try:
        net = AutoModel.from_pretrained(str(source), local_files_only=True, trust_remote_code=False)
    except Exception as err:  # noqa: BLE001
        raise OptionError("features_weights", f"{source}: cannot load {name} ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''})") from None
    mean, std = preset.mean, preset.std
    proc = source / "preprocessor_config.json"
    if proc.is_file():
        try:
            p = json.loads(proc.read_text())
            mean, std = tuple(p.get("image_mean", mean)), tuple(p.get("image_std", std))
        except (OSError, ValueError):
            pass
    return net, mean, std, _weights_file(source, name)


class FoundationExtractor(FeatureExtractor):
    """A ``PRESETS`` encoder: (B, 3, H, W) uint8 -> (B, D) features (see the module docstring)."""

    def __init__(self, name: str, weights: str | Path | None = None) -> None:
        super().__init__()
        if name not in PRESETS:
            raise OptionError("features", f"{name!r}: unknown preset; allowed: {', '.join(PRESETS)}")
        preset = PRESETS[name]
        if weights is not None:
            source = Path(weights)
            if not source.exists():
                raise OptionError("features_weights", f": not found: {source}")
        else:
            source = _cached_snapshot(name, preset)
        if preset.library == "transformers":
            net, mean, std, wfile = _build_transformers(name, preset, source)
            self.dim = int(net.config.hidden_size)
        else:
            if preset.library == "timm" and not source.is_dir() and source.suffix not in WEIGHT_SUFFIXES:
                raise OptionError("features_weights", f"{source}: expected a model folder or a "
                                  f"{'/'.join(WEIGHT_SUFFIXES)} weights file")
            net, mean, std, wfile = _build_timm(name, preset, source)
            self.dim = int(net.num_features) * (2 if preset.pool == "cls+mean" else 1)
        self.net = net.eval().requires_grad_(False)
        self.name, self.pool, self.size = name, preset.pool, preset.size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.cache_id = f"preset:{name}:{file_id(wfile)}"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.mean.device, torch.float32) / 255.0  # (B, 3, H, W) in [0, 1]
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", antialias=True, align_corners=False)
        x = (x.clamp(0.0, 1.0) - self.mean) / self.std  # (B, 3, S, S)
        if self.pool == "cls":
            return self.net(pixel_values=x).last_hidden_state[:, 0].float()  # (B, D)
        out = self.net(x)  # (B, D) pooled, or (B, T, D) tokens with global_pool=""
        if self.pool == "cls+mean":
            prefix = int(getattr(self.net, "num_prefix_tokens", 1))  # CLS + registers
            out = torch.cat([out[:, 0], out[:, prefix:].mean(1)], dim=-1)  # (B, 2 D)
        return out.float().flatten(1)  # (B, D)
