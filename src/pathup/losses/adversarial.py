"""The adversarial term of the latent-diffusion autoencoder recipe (Esser et al., "Taming Transformers", 2021;
Rombach et al. 2022, Sec. 3 and Appendix G): a patch discriminator judges small fields of an image as real or
decoded, and the decoder is pushed to fool it. An L1 alone is minimised by the average of the textures a
latent could stand for, a blur; the discriminator penalises the blur itself, so the decoder paints nuclei,
chromatin and fibres again.

Pieces, each a plain function or module of tensors:

* ``PatchDiscriminator``: the pix2pix / taming ``NLayerDiscriminator`` (4 x 4 convolutions, LeakyReLU 0.2),
  with GroupNorm in place of BatchNorm so that its verdict on one image does not depend on the batch;
* ``hinge_d_loss``: the discriminator's hinge loss, ``mean(relu(1 - D(x))) + mean(relu(1 + D(x_hat)))`` / 2;
* ``generator_loss``: ``-mean(D(x_hat))``;
* ``adaptive_weight``: taming's balance ``||grad L_rec|| / (||grad L_adv|| + 1e-4)`` on the decoder's last
  layer, clamped to [0, 1e4], so that the adversarial term moves the decoder as much as the L1 does whatever
  the two losses' scales.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class PatchDiscriminator(nn.Module):
    """A PatchGAN: ``layers`` stride-2 4 x 4 convolutions from ``channels`` (doubling, at most 8x), one stride-1
    and a 1-channel output, each cell judging a field of ``receptive_field(layers)`` pixels.

    Args:
        in_channels: image channels.
        channels: width of the first layer.
        layers: stride-2 layers after the first (taming's ``n_layers``; 3 sees 70-px fields, 2 sees 34 px).
    """

    def __init__(self, in_channels: int = 3, channels: int = 32, layers: int = 3) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        mods: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, 2, 1), nn.LeakyReLU(0.2)]
        ch = channels
        for i in range(1, layers + 1):
            out = channels * min(2 ** i, 8)
            stride = 2 if i < layers else 1
            mods += [nn.Conv2d(ch, out, 4, stride, 1, bias=False), nn.GroupNorm(min(8, out), out), nn.LeakyReLU(0.2)]
            ch = out
        mods.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.net = nn.Sequential(*mods)
        for m in self.modules():  # pix2pix's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)  # (B, 1, h, w): one logit per field


def receptive_field(layers: int) -> int:
    """Pixels one output cell of ``PatchDiscriminator(layers=layers)`` sees (70 for 3 layers, as pix2pix)."""
    strides = [2] * layers + [1, 1]  # the first conv and layers-1 more at stride 2, then two at stride 1
    rf = 1
    for s in reversed(strides):
        rf = rf * s + (4 - s)
    return rf


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """The discriminator's hinge loss (taming ``hinge_d_loss``)."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """The decoder's adversarial loss: raise the discriminator's logits on its images."""
    return -logits_fake.mean()


def adaptive_weight(rec_loss: torch.Tensor, adv_loss: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float = 1e4) -> torch.Tensor:
    """``||d rec / d W|| / (||d adv / d W|| + 1e-4)`` on ``last_layer`` (the decoder's output convolution's
    weight), clamped to [0, max_weight] and detached (taming ``calculate_adaptive_weight``)."""
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adv_loss, last_layer, retain_graph=True)[0]
    return (g_rec.norm() / (g_adv.norm() + 1e-4)).clamp(0.0, max_weight).detach()
