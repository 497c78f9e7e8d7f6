"""Feature extractors for the metrics: images (B, 3, H, W) uint8 -> features (B, D) float32.

Choose one by name with ``make_extractor(spec, weights=...)``:

* ``inception`` (default): the FID Inception-v3 of torch-fidelity (the TensorFlow FID weights ported to
  PyTorch; 2048-d pool features, images resized to 299 inside as the reference does). Its weights are
  downloaded on first use by torch-fidelity (``torch.hub`` cache); pass ``weights`` (``--features-weights``)
  to load a local copy of ``weights-inception-2015-12-05-6726825d.pth`` for offline use (read by PathUp with
  ``torch.load(weights_only=True)`` or safetensors, ``load_weights``: a pickle holding code is refused; timm
  reads its ``weights`` file the same way). These are the
  features of the literature: numbers are comparable with published FID/KID/IP/IR (given the same sample
  counts and image sizes).
* ``timm:NAME``: any timm model (e.g. ``timm:resnet50``, a pathology encoder published for timm); pooled
  pre-classifier features, with the model's own input size and normalisation. Pretrained weights come from
  the local Hugging Face cache (or are downloaded when online), or from ``weights`` (a state dict file).
* a path to a TorchScript file (``torch.jit.save``): called on float32 (B, 3, S, S) images in [0, 1],
  S = ``input_size`` (default 224); it must return (B, D) (or (B, D, 1, 1)) and normalise on its own. A
  TorchScript file is a program: use only files you trust.
* ``random-cnn``: OFFLINE, NO DOWNLOAD. A fixed convolutional network with seeded random (He-normal)
  weights: images resized to 128 x 128, five stride-2 3x3 conv + ReLU layers, features = per-channel mean
  and std of the last two layers (768-d). Random conv features are sensitive to colour and texture
  statistics, enough to tell similar from dissimilar image sets, but they are NOT Inception features:
  the numbers are not comparable with the literature or the paper. For tests, demos and offline smoke runs.
* ``color-stats``: OFFLINE, NO DOWNLOAD. Hand-crafted colour and texture statistics (RGB and optical-
  density histograms, gradient-magnitude histograms at three scales; 152-d). Same caveat as random-cnn.
  Blind to blur in practice: use it beside a texture-aware extractor, not alone.
* a domain encoder folder (``ENC`` with ``encoder.json``, written by ``pathup features train``): OFFLINE. The
  embedding of a small CNN trained on the dataset's own training tiles (``pathup.metrics.domain``);
  texture-aware, dataset-specific, not comparable with the literature.
* a foundation preset (``uni2-h``, ``virchow2``, ``h-optimus-0``, ``phikon-v2``): pathology encoders whose
  weights are on disk (``weights`` = their folder or file, or the local Hugging Face cache); gated,
  licences in ``pathup.metrics.foundation``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from pathup.errors import OptionError, PathUpError
from pathup.metrics._common import FeatureExtractor, file_id

EXTRACTOR_NAMES = ("inception", "random-cnn", "color-stats", "timm:NAME", "PATH.pt (TorchScript)",
                   "ENC (a 'pathup features train' folder)", "uni2-h", "virchow2", "h-optimus-0", "phikon-v2")
COLOUR_ONLY = ("color-stats",)  # extractors that see colour statistics and little texture
FID_INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                     "weights-inception-2015-12-05-6726825d.pth")


def load_weights(path: str | Path, option: str, what: str = "a weights file") -> dict[str, torch.Tensor]:
    """A state dict of tensors from a user's weights file, without running code from it.

    ``.safetensors`` files through safetensors; any other file through ``torch.load(weights_only=True)``,
    which refuses a pickle holding code or objects (one line naming ``--<option>``; ``what`` names what the
    file should be, for the message).
    """
    from pathup.io import plain_text, unpickling_refused

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - not a torch file, truncated, safetensors' SafetensorError...
        called = unpickling_refused(err)
        if called:
            raise OptionError(option, f"{path}: refused: a pickle that would call {called} (pathup loads weights "
                              "with torch.load(weights_only=True) or safetensors, never with code)") from None
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise OptionError(option, f"{path}: not {what} ({type(err).__name__}: {plain_text(first)})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise OptionError(option, f"{path}: not a state dict of tensors")
    return state


class InceptionExtractor(FeatureExtractor):
    """torch-fidelity's FID Inception-v3, 2048-d pool features (TF-compatible resize to 299 inside)."""

    comparable = True

    def __init__(self, weights: str | Path | None = None) -> None:
        super().__init__()
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError:
            raise PathUpError("the 'inception' extractor needs torch-fidelity: pip install 'pathup[metrics]'") from None
        if weights is not None and not Path(weights).is_file():
            raise OptionError("features_weights", f": file not found: {weights}")
        try:
            if weights is None:
                self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
            else:  # torch-fidelity would torch.load the file with weights_only=False: it gets checked tensors
                import tempfile

                state = load_weights(weights, "features_weights", "FID Inception weights")
                with tempfile.TemporaryDirectory() as tmp:
                    local = Path(tmp) / "inception.pth"
                    torch.save(state, local)
                    self.net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                                           feature_extractor_weights_path=str(local))
        except PathUpError:
            raise
        except Exception as err:  # noqa: BLE001 - download or unpickling failures
            if weights is None:
                raise PathUpError(f"could not download the FID Inception weights ({type(err).__name__}: {err}); "
                                  f"fetch {FID_INCEPTION_URL} elsewhere and pass --features-weights PATH, or use "
                                  "--features random-cnn for an offline (non-comparable) run") from None
            raise OptionError("features_weights", f"{weights}: not FID Inception weights ({err})") from None
        self.dim = 2048
        self.cache_id = "inception-v3-compat:" + (file_id(weights) if weights else "torch-fidelity-url")

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)[0].float()  # (B, 2048)


class TimmExtractor(FeatureExtractor):
    """A timm model's pooled pre-classifier features, with its own input size and normalisation."""

    def __init__(self, name: str, weights: str | Path | None = None) -> None:
        super().__init__()
        import timm

        if name not in timm.list_models(pretrained=False) and name not in timm.list_models(pretrained=True):
            raise OptionError("features", f"timm:{name}: unknown timm model (see timm.list_models())")
        try:
            if weights is not None:
                if not Path(weights).is_file():
                    raise OptionError("features_weights", f": file not found: {weights}")
                self.net = timm.create_model(name, pretrained=True, num_classes=0,
                                             pretrained_cfg_overlay={"file": str(weights)})
            else:
                self.net = timm.create_model(name, pretrained=True, num_classes=0)
        except PathUpError:
            raise
        except Exception as err:  # noqa: BLE001 - hub/offline/state-dict failures
            src = f"weights file {weights}" if weights else "the Hugging Face hub (offline or not cached?)"
            raise OptionError("features", f"timm:{name}: could not load pretrained weights from {src}: "
                              f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}; "
                              "pass --features-weights PATH") from None
        self.net.eval().requires_grad_(False)
        cfg = timm.data.resolve_model_data_config(self.net)
        self.input_size = int(cfg["input_size"][-1])
        self.interpolation = "bicubic" if cfg.get("interpolation") == "bicubic" else "bilinear"
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)
        self.dim = int(self.net.num_features)
        self.cache_id = f"timm:{name}:" + (file_id(weights) if weights else "pretrained")

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.mean.device, torch.float32) / 255.0  # (B, 3, H, W)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode=self.interpolation,
                              antialias=True, align_corners=False)
        x = (x - self.mean) / self.std
        return self.net(x).float().flatten(1)  # (B, D)


class TorchScriptExtractor(FeatureExtractor):
    """A TorchScript module called on float32 (B, 3, S, S) images in [0, 1]."""

    def __init__(self, path: str | Path, input_size: int = 224) -> None:
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise OptionError("features", f": TorchScript file not found: {path}")
        try:
            self.net = torch.jit.load(str(path), map_location="cpu")
        except Exception as err:  # noqa: BLE001
            raise OptionError("features", f"{path}: not a TorchScript file ({str(err).splitlines()[0]})") from None
        self.net.eval()
        self.input_size = int(input_size)
        self.register_buffer("_probe", torch.zeros(()), persistent=False)
        with torch.no_grad():
            out = self.net(torch.zeros(1, 3, self.input_size, self.input_size))
        if not isinstance(out, torch.Tensor) or out.numel() == 0:
            raise OptionError("features", f"{path}: the module must return a (B, D) tensor")
        self.dim = int(out.flatten(1).shape[1])
        self.cache_id = f"torchscript:{file_id(path)}:{self.input_size}"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self._probe.device, torch.float32) / 255.0  # (B, 3, H, W)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return self.net(x).float().flatten(1)  # (B, D)


class RandomCNNExtractor(FeatureExtractor):
    """OFFLINE extractor: a seeded random-weight CNN (see the module docstring; not comparable)."""

    WIDTHS = (3, 16, 32, 64, 128, 256)
    SIZE = 128

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.convs = torch.nn.ModuleList()
        for cin, cout in zip(self.WIDTHS[:-1], self.WIDTHS[1:]):
            conv = torch.nn.Conv2d(cin, cout, 3, stride=2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * math.sqrt(2.0 / (cin * 9)))
                conv.bias.zero_()
            self.convs.append(conv)
        self.requires_grad_(False)
        self.dim = 2 * (self.WIDTHS[-1] + self.WIDTHS[-2])
        self.cache_id = f"random-cnn:v2:seed{seed}"

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.convs[0].weight.device, torch.float32) / 127.5 - 1.0  # (B, 3, H, W) in [-1, 1]
        x = F.interpolate(x, size=(self.SIZE, self.SIZE), mode="bilinear", antialias=True, align_corners=False)
        feats = []
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))  # (B, C_i, H / 2^(i+1), W / 2^(i+1))
            if i >= len(self.convs) - 2:
                feats += [x.mean(dim=(2, 3)), x.std(dim=(2, 3))]  # (B, C_i) each
        return torch.cat(feats, dim=1)  # (B, 768)


class ColorStatsExtractor(FeatureExtractor):
    """OFFLINE extractor: colour and texture histograms (see the module docstring; not comparable)."""

    BINS = 16
    SIZE = 256

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_probe", torch.zeros(()), persistent=False)
        self.dim = 3 * self.BINS + 3 * self.BINS + 3 * self.BINS + 8
        self.cache_id = "color-stats:v1"

    @staticmethod
    def _hist(v: torch.Tensor, lo: float, hi: float, bins: int) -> torch.Tensor:
        """Hard-binned histogram per row of ``v`` (B, N) over [lo, hi] -> (B, bins), rows sum to 1."""
        idx = ((v - lo) / (hi - lo) * bins).long().clamp(0, bins - 1)  # (B, N)
        h = torch.zeros(v.shape[0], bins, device=v.device).scatter_add_(1, idx, torch.ones_like(v))
        return h / v.shape[1]

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self._probe.device, torch.float32)  # (B, 3, H, W) in [0, 255]
        x = F.interpolate(x, size=(self.SIZE, self.SIZE), mode="bilinear", antialias=True, align_corners=False)
        b = x.shape[0]
        feats = [self._hist(x[:, c].reshape(b, -1), 0.0, 256.0, self.BINS) for c in range(3)]
        od = -torch.log((x + 1.0) / 256.0)  # (B, 3, S, S) optical density (Beer-Lambert), H&E stain space
        feats += [self._hist(od[:, c].reshape(b, -1), 0.0, 2.0, self.BINS) for c in range(3)]
        gray = x.mean(1, keepdim=True) / 255.0  # (B, 1, S, S)
        for s in range(3):
            g = F.avg_pool2d(gray, 2 ** s) if s else gray
            gx = (g[..., :, 1:] - g[..., :, :-1])[..., :-1, :]
            gy = (g[..., 1:, :] - g[..., :-1, :])[..., :, :-1]
            mag = torch.sqrt(gx ** 2 + gy ** 2).reshape(b, -1)  # (B, N)
            feats.append(self._hist(mag, 0.0, 0.5, self.BINS))
        feats.append(torch.cat([x.mean(dim=(2, 3)) / 255.0, x.std(dim=(2, 3)) / 255.0,
                                od.mean(dim=(1, 2, 3))[:, None], gray.std(dim=(2, 3))], dim=1))  # (B, 8)
        return torch.cat(feats, dim=1)  # (B, 152)


def make_extractor(spec: str = "inception", weights: str | Path | None = None, input_size: int = 224,
                   device: str | torch.device = "cpu") -> FeatureExtractor:
    """Build the extractor named by ``spec`` (see the module docstring) on ``device``."""
    from pathup.metrics.domain import DomainEncoderExtractor, is_encoder_folder
    from pathup.metrics.foundation import PRESETS, FoundationExtractor

    spec = spec.strip()
    if is_encoder_folder(spec):
        ext: FeatureExtractor = DomainEncoderExtractor(spec, weights)
    elif spec in PRESETS:
        ext = FoundationExtractor(spec, weights)
    elif spec == "inception":
        ext = InceptionExtractor(weights)
    elif spec.startswith("timm:"):
        ext = TimmExtractor(spec[5:], weights)
    elif spec in ("random-cnn", "color-stats"):
        if weights is not None:
            raise OptionError("features", f"{spec} has fixed weights; --features-weights is not used with it")
        ext = RandomCNNExtractor() if spec == "random-cnn" else ColorStatsExtractor()
    elif Path(spec).is_dir():
        raise OptionError("features", f"{spec}: a folder without encoder.json (a domain encoder folder is written by "
                          "'pathup features train --data DATASET --out ENC')")
    elif spec.endswith((".pt", ".pth", ".ts", ".jit", ".torchscript")) or Path(spec).is_file():
        ext = TorchScriptExtractor(spec, input_size)
    else:
        raise OptionError("features", f"{spec!r}: unknown extractor; allowed: {', '.join(EXTRACTOR_NAMES)}")
    return ext.to(device).eval()
