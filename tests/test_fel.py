"""The feature entropy loss (Eq. 3, SPEC.md section 4) and the denoising target on hand-made inputs."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pathup.losses import (FeatureBank, MidBlockFeatures, ProjectionHead, denoising_target, feature_entropy_loss,
                           pool_features)


def _unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g), dim=1)


def test_fel_equals_hand_computed_cross_entropy():
    z, bank = _unit(5, 16, 0), _unit(4, 16, 1)
    ids = torch.tensor([0, 3, 1, 1, 2])
    tau = 0.07
    got = feature_entropy_loss(z, bank, ids, tau)
    # by hand, in float64: -mean_b log( exp(z_b.k_id/tau) / sum_i exp(z_b.k_i/tau) )
    zn, kn = z.double().numpy(), bank.double().numpy()
    total = 0.0
    for b in range(5):
        logits = [float(zn[b] @ kn[i]) / tau for i in range(4)]
        m = max(logits)
        lse = m + math.log(sum(math.exp(v - m) for v in logits))
        total += lse - logits[int(ids[b])]
    assert got.item() == pytest.approx(total / 5, rel=1e-5)
    ref = F.cross_entropy((z @ bank.t()) / tau, ids)
    assert torch.allclose(got, ref, atol=1e-6)


def test_own_anchor_gives_the_lowest_loss():
    bank = _unit(6, 32, 2)
    tau = 0.07
    for c in range(6):
        ids = torch.tensor([c])
        own = feature_entropy_loss(bank[c:c + 1], bank, ids, tau).item()
        others = [feature_entropy_loss(bank[j:j + 1], bank, ids, tau).item() for j in range(6) if j != c]
        rand = feature_entropy_loss(_unit(200, 32, 3), bank, ids.repeat(200), tau)
        per_sample = F.cross_entropy(_unit(200, 32, 3) @ bank.t() / tau, ids.repeat(200), reduction="none")
        assert own < min(others)
        assert own < per_sample.min().item()
        assert rand.item() > own
    # same prompt pulls together: moving z toward its anchor lowers the loss
    z = _unit(1, 32, 4)
    ids = torch.tensor([2])
    losses = [feature_entropy_loss(F.normalize(z + a * bank[2:3], dim=1), bank, ids, tau).item() for a in (0, 1, 3, 10)]
    assert losses == sorted(losses, reverse=True)


def test_bank_moves_by_ema_and_stays_unit_norm():
    bank = FeatureBank(4, 8, momentum=0.9, seed=0)
    before = bank.bank.clone()
    assert torch.allclose(before.norm(dim=1), torch.ones(4), atol=1e-6)
    z = _unit(3, 8, 5).requires_grad_(True)
    ids = torch.tensor([0, 0, 2])
    bank.update(z, ids)
    exp0 = F.normalize(0.9 * before[0] + 0.1 * (z[0] + z[1]).detach() / 2, dim=0)
    exp2 = F.normalize(0.9 * before[2] + 0.1 * z[2].detach(), dim=0)
    assert torch.allclose(bank.bank[0], exp0, atol=1e-6)
    assert torch.allclose(bank.bank[2], exp2, atol=1e-6)
    assert torch.equal(bank.bank[1], before[1]) and torch.equal(bank.bank[3], before[3])  # absent ids stay
    assert torch.allclose(bank.bank.norm(dim=1), torch.ones(4), atol=1e-6)
    assert not bank.bank.requires_grad and list(bank.parameters()) == []
    # repeated updates with the same feature converge to it
    for _ in range(300):
        bank.update(z[2:3], torch.tensor([2]))
    assert torch.allclose(bank.bank[2], z[2].detach(), atol=1e-4)
    # the state round-trips; a bank of another shape is refused with a clear error
    other = FeatureBank(4, 8, seed=9)
    other.load_state_dict(bank.state_dict())
    assert torch.equal(other.bank, bank.bank)
    from pathup.errors import PathUpError

    with pytest.raises(PathUpError, match="memory bank shape"):
        FeatureBank(5, 8).load_state_dict(bank.state_dict())


def test_fel_gradient_reaches_the_unet_through_the_mid_block():
    from pathup.model import build_ldm

    ldm = build_ldm("micro", seed=0)
    unet = ldm.unet
    cap = MidBlockFeatures(unet)
    assert cap.channels == unet.config.block_out_channels[-1]
    x = torch.randn(3, 4, 8, 8)
    emb = ldm.encode_prompts(["a, patch", "b, patch", "a, overview"]).detach()
    unet(x, torch.tensor([10, 500, 900]), encoder_hidden_states=emb)
    h = cap.pop()  # (3, C, 4, 4)
    assert h.shape == (3, cap.channels, 4, 4) and h.requires_grad
    with pytest.raises(RuntimeError):
        cap.pop()
    # the hook captured exactly the mid block's output
    z = F.normalize(pool_features(h), dim=1)
    assert torch.allclose(pool_features(h), h.mean(dim=(2, 3)))
    bank = FeatureBank(4, cap.channels)
    loss = bank.loss(z, torch.tensor([0, 2, 1]), 0.07)
    loss.backward()
    grad = lambda mods: sum(float(p.grad.abs().sum()) for m in mods for p in m.parameters() if p.grad is not None)  # noqa: E731
    assert grad([unet.mid_block]) > 0 and grad([unet.down_blocks]) > 0 and grad([unet.conv_in]) > 0
    # blocks after the mid block are not on L_e's path
    assert grad([unet.up_blocks, unet.conv_out]) == 0
    cap.remove()
    unet(x, torch.tensor([1, 2, 3]), encoder_hidden_states=emb)
    assert cap._out is None
    head = ProjectionHead(cap.channels, 16)
    assert head(torch.randn(2, cap.channels)).shape == (2, 16)


def test_fel_empty_batch_is_zero_with_graph():
    z = torch.zeros(0, 8, requires_grad=True)
    loss = feature_entropy_loss(z, _unit(3, 8, 0), torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0 and loss.requires_grad


def test_denoising_targets_match_the_forward_process():
    from pathup.model.ldm import make_scheduler

    sched = make_scheduler("ddim")
    x0, noise = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    t = torch.tensor([10, 700])
    assert torch.equal(denoising_target(sched, x0, noise, t), noise)
    cfg = dict(sched.config)
    cfg["prediction_type"] = "v_prediction"
    v_sched = make_scheduler("ddim", cfg)
    abar = v_sched.alphas_cumprod.double().numpy()[t.numpy()][:, None, None, None]
    v = np.sqrt(abar) * noise.double().numpy() - np.sqrt(1 - abar) * x0.double().numpy()
    assert np.allclose(denoising_target(v_sched, x0, noise, t).double().numpy(), v, atol=1e-5)
    cfg["prediction_type"] = "sample"
    assert torch.equal(denoising_target(make_scheduler("ddim", cfg), x0, noise, t), x0)
