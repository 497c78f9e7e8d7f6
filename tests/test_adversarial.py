"""The adversarial term of the decoder stage (pathup.losses.adversarial) against hand-computed values."""

import pytest
import torch

from pathup.losses.adversarial import (PatchDiscriminator, adaptive_weight, generator_loss, hinge_d_loss,
                                       receptive_field)


@pytest.mark.parametrize("layers, field", [(1, 16), (2, 34), (3, 70)])
def test_receptive_field_by_formula_and_by_gradient(layers, field):
    """pix2pix's 70-px field for 3 layers; an output cell's gradient reaches exactly that many input pixels
    (GroupNorm, which spreads its statistics over the whole image, replaced by the identity)."""
    assert receptive_field(layers) == field
    d = PatchDiscriminator(layers=layers)
    for i, m in enumerate(d.net):
        if isinstance(m, torch.nn.GroupNorm):
            d.net[i] = torch.nn.Identity()
    x = torch.zeros(1, 3, 192, 192, requires_grad=True)
    y = d(x)  # (1, 1, h, w)
    y[0, 0, y.shape[2] // 2, y.shape[3] // 2].backward()
    rows = (x.grad[0].abs().sum(dim=(0, 2)) > 0).nonzero()[:, 0]
    cols = (x.grad[0].abs().sum(dim=(0, 1)) > 0).nonzero()[:, 0]
    assert int(rows.max() - rows.min() + 1) == field == int(cols.max() - cols.min() + 1)


def test_discriminator_verdict_does_not_depend_on_the_batch():
    d = PatchDiscriminator(layers=2).eval()
    x = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = d(x)
        alone = torch.cat([d(x[i:i + 1]) for i in range(4)])
    assert full.shape == (4, 1, 14, 14)
    assert torch.allclose(full, alone, atol=1e-6)


def test_hinge_and_generator_losses_by_hand():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - x): 0, 0.5, 2 -> mean 5/6
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + x): 0, 1, 2 -> mean 1
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5 * (5 / 6 + 1))
    assert generator_loss(fake).item() == pytest.approx(1 / 3)


def test_adaptive_weight_is_the_ratio_of_gradient_norms():
    """For y = W x: d mean|y - t| / dW and d (-mean(v . y)) / dW by hand; their norms' ratio, clamped."""
    torch.manual_seed(0)
    w = torch.randn(3, 5, requires_grad=True)
    x, t, v = torch.randn(5, 7), torch.randn(3, 7), torch.randn(3, 7)
    y = w @ x  # (3, 7)
    rec = (y - t).abs().mean()
    adv = -(v * y).mean()
    g_rec = (torch.sign(y - t) / y.numel()) @ x.T
    g_adv = (-v / y.numel()) @ x.T
    want = g_rec.norm() / (g_adv.norm() + 1e-4)
    got = adaptive_weight(rec, adv, w)
    assert got.item() == pytest.approx(want.item(), rel=1e-5) and not got.requires_grad
    assert adaptive_weight(rec, 1e-12 * adv, w, max_weight=3.0).item() == 3.0
    (rec + got * adv).backward()  # the graph is kept for the step's own backward
    assert w.grad is not None


def test_adversarial_options_are_checked():
    from pathup.errors import OptionError
    from pathup.train import TrainConfig
    from pathup.config import validate

    for bad in [dict(vae_decoder_adv_weight=-0.1), dict(vae_disc_layers=0), dict(vae_disc_layers=9)]:
        with pytest.raises(OptionError, match=next(iter(bad))):
            validate(TrainConfig(data="d", out="o", **bad))
