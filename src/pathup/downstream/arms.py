"""The three training arms of paper Table 6.

* ``real``: the real training images only;
* ``rand``: the real images with standard random augmentation ('Rand.' in the paper): flips,
  90-degree rotations and colour jitter, drawn anew for every sample;
* ``synthetic``: the real images plus synthetic ones from ``pathup generate`` ('Ours').
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch

from pathup.errors import OptionError, PathUpError

ARM_LABELS = {"real": "", "rand": " + Rand.", "synthetic": " + PathUp"}

T = TypeVar("T")


@dataclass(frozen=True)
class Jitter:
    """Colour jitter ranges: factors drawn from ``[1 - b, 1 + b]`` etc.; hue shift from ``[-h, h]``."""

    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.05

    def __post_init__(self) -> None:
        for name in ("brightness", "contrast", "saturation"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise PathUpError(f"--jitter-{name} must be in [0, 1), got {v}")
        if not 0.0 <= self.hue <= 0.5:
            raise OptionError("jitter_hue", f"must be in [0, 0.5], got {self.hue}")


def _uniform(lo: float, hi: float, generator: torch.Generator) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def random_augment(x: torch.Tensor, generator: torch.Generator, jitter: Jitter = Jitter()) -> torch.Tensor:
    """Standard random augmentation of a batch of square images in [0, 1].

    Per image: a random element of the dihedral group (horizontal flip, then 0-3 quarter turns),
    then brightness, contrast, saturation and hue jitter (in that order).

    Args:
        x: images, (B, 3, H, W) float in [0, 1], H == W.
        generator: the random source (CPU), so that runs are reproducible.
        jitter: colour jitter ranges.

    Returns:
        Augmented images, (B, 3, H, W) float in [0, 1].
    """
    import torchvision.transforms.v2.functional as F

    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"random_augment needs square images, got {tuple(x.shape)}")
    out = []
    for img in x:  # (3, H, W)
        if float(torch.rand((), generator=generator)) < 0.5:
            img = img.flip(-1)
        k = int(torch.randint(0, 4, (), generator=generator))
        img = torch.rot90(img, k, dims=(-2, -1))
        if jitter.brightness:
            img = F.adjust_brightness(img, _uniform(1 - jitter.brightness, 1 + jitter.brightness, generator))
        if jitter.contrast:
            img = F.adjust_contrast(img, _uniform(1 - jitter.contrast, 1 + jitter.contrast, generator))
        if jitter.saturation:
            img = F.adjust_saturation(img, _uniform(1 - jitter.saturation, 1 + jitter.saturation, generator))
        if jitter.hue:
            img = F.adjust_hue(img, _uniform(-jitter.hue, jitter.hue, generator))
        out.append(img.clamp(0.0, 1.0))
    return torch.stack(out)  # (B, 3, H, W)


def uses_augmentation(arm: str) -> bool:
    return arm == "rand"


def training_set(arm: str, real: Sequence[T], synthetic: Sequence[T]) -> list[T]:
    """The training examples of an arm: the real ones, plus the synthetic ones for ``synthetic``."""
    if arm not in ARM_LABELS:
        raise PathUpError(f"unknown arm {arm!r}; allowed: {', '.join(ARM_LABELS)}")
    return list(real) + (list(synthetic) if arm == "synthetic" else [])
