"""The registry's sizes agree with themselves: the UNet's sample size is the autoencoder's latent side, and
``pathup train --resolution`` rescales both by the autoencoder's own factor (4 for ``tiny-f4``, 8 for the rest)."""

from __future__ import annotations

import pytest
import torch

from pathup.errors import OptionError
from pathup.model.ldm import build_ldm
from pathup.model.registry import MODEL_SIZES
from pathup.train.base import sized

# hand values: factor 2 ** (number of autoencoder blocks - 1); the smallest allowed resolution is the factor
# times the UNet's own downsampling 2 ** (number of UNet blocks - 1)
FACTORS = {"micro": 8, "tiny": 8, "tiny-f4": 4, "small": 8, "sd15": 8}
MULTIPLES = {"micro": 16, "tiny": 32, "tiny-f4": 32, "small": 64, "sd15": 64}


def test_every_size_has_its_hand_factor():
    assert set(MODEL_SIZES) == set(FACTORS)
    for name, size in MODEL_SIZES.items():
        factor = 2 ** (len(size.vae["block_out_channels"]) - 1)
        assert factor == FACTORS[name], name
        assert size.unet["sample_size"] * factor == size.resolution, name
        assert size.unet["in_channels"] == size.unet["out_channels"] == size.vae["latent_channels"], name


@pytest.mark.parametrize("name", ["micro", "tiny", "tiny-f4"])
def test_the_unet_denoises_the_latent_the_autoencoder_makes(name):
    ldm = build_ldm(name).to("cpu")
    res = MODEL_SIZES[name].resolution
    with torch.no_grad():
        z = ldm.encode_images(torch.rand(2, 3, res, res) * 2 - 1)
        side = res // FACTORS[name]
        assert z.shape == (2, MODEL_SIZES[name].vae["latent_channels"], side, side)
        assert ldm.vae_scale_factor == FACTORS[name] and ldm.resolution == res
        text = ldm.encode_prompts(["", ""])
        out = ldm.unet(z, torch.tensor([10, 500]), encoder_hidden_states=text).sample
        assert out.shape == z.shape
        assert ldm.decode_latents(z).shape == (2, 3, res, res)


@pytest.mark.parametrize("name", ["tiny", "tiny-f4"])
def test_resolution_rescales_by_the_autoencoders_factor(name):
    size = sized(name, 256)
    assert size.resolution == 256 and size.vae["sample_size"] == 256
    assert size.unet["sample_size"] == 256 // FACTORS[name]
    assert sized(name, None) is MODEL_SIZES[name]
    bad = MULTIPLES[name] + FACTORS[name]  # a multiple of the factor, not of the whole model's downsampling
    with pytest.raises(OptionError, match=f"{bad} must be a positive multiple of {MULTIPLES[name]}"):
        sized(name, bad)


# hand values: the latent sides (at 128 px tiles; micro 64 px) where the UNet's cross-attention reads the prompt.
# tiny-f4 has it at 16x16 too: without it, debris was drawn as stroma on the 1,200 Kather tiles (README)
ATTENTION_SIDES = {"micro": {4}, "tiny": {8, 4}, "tiny-f4": {16, 8, 4}}


@pytest.mark.parametrize("name", sorted(ATTENTION_SIDES))
def test_cross_attention_sits_at_the_hand_resolutions(name):
    from diffusers.models.attention import BasicTransformerBlock

    ldm = build_ldm(name).to("cpu")
    sides = set()
    hooks = [m.register_forward_hook(lambda mod, args, out: sides.add(int(round(args[0].shape[1] ** 0.5))))
             for m in ldm.unet.modules() if isinstance(m, BasicTransformerBlock)]
    side = MODEL_SIZES[name].unet["sample_size"]
    with torch.no_grad():
        ldm.unet(torch.zeros(1, ldm.unet.config.in_channels, side, side), torch.tensor([10]),
                 encoder_hidden_states=ldm.encode_prompts([""]))
    for h in hooks:
        h.remove()
    assert sides == ATTENTION_SIDES[name]
