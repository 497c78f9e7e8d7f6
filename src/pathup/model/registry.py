"""Named model sizes (one registry, as DiT's ``DiT_models`` and timm's ``@register_model``).

* ``micro``: the smallest working model (64 px images, 8x8 latents) for unit tests of the loop.
* ``tiny``: trains from scratch on a CPU in minutes (tests, the demo); 128 px images, 16x16 latents.
* ``tiny-f4`` (``pathup train``'s default): ``tiny`` with a factor-4 autoencoder (32x32x4 latents), one more
  UNet level and cross-attention down to 16x16: sharper reconstructions and, on average, more classes
  followed, for 1.8x tiny's CPU time per autoencoder step and 2.3x per UNet step (benchmarks/bench_sizes.py).
  Its autoencoder also fits colour in CIE Lab (``--vae-lab-weight`` 1 by default): red stroma stays red.
* ``small``: a from-scratch model for one GPU, 256 px images.
* ``sd15``: the Stable Diffusion 1.5 architecture with random weights (benchmarks). To fine-tune
  the real weights, pass a diffusers folder or hub id to ``--model`` instead of a size name.

All use the SD layout: KL autoencoder with factor 8 (``tiny-f4``: 4), a text-conditioned UNet, a CLIP text
encoder. The latent has 4 channels, except ``tiny``'s 16: measured on held-out Kather tiles, a tiny 4-channel
autoencoder blurs below nucleus scale (21 dB PSNR) where 16 channels keep more (24 dB at the same 600
steps; benchmarks/bench_classes.py and the closing note of the tissue issue); the UNet's cost hardly changes
(only its first and last convolutions see the channels). The tiny and small text encoders use a
character-level CLIP tokenizer built locally (no download).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ModelSize:
    name: str
    resolution: int  # training image size in pixels
    vae: dict[str, Any] = field(default_factory=dict)
    unet: dict[str, Any] = field(default_factory=dict)
    text: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)  # defaults of ``pathup train`` for this size


_VAE4 = dict(
    in_channels=3, out_channels=3, latent_channels=4,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
)

# the UNet blocks of Stable Diffusion 1.5 (small and sd15): cross-attention at the three finest resolutions
_SD_BLOCKS = dict(
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)

# the text encoder of tiny and tiny-f4
_TINY_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=77, projection_dim=64)

MODEL_SIZES: dict[str, ModelSize] = {
    "micro": ModelSize(
        name="micro", resolution=64,
        vae=dict(_VAE4, block_out_channels=(16, 16, 32, 32), layers_per_block=1, norm_num_groups=8,
                 sample_size=64),
        unet=dict(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8, norm_num_groups=16,
        ),
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  max_position_embeddings=77, projection_dim=32),
    ),
    "tiny": ModelSize(
        name="tiny", resolution=128,
        vae=dict(_VAE4, latent_channels=16, block_out_channels=(32, 32, 64, 64), layers_per_block=1,
                 norm_num_groups=16, sample_size=128),
        unet=dict(
            sample_size=16, in_channels=16, out_channels=16, layers_per_block=1,
            block_out_channels=(32, 64, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=64, attention_head_dim=8, norm_num_groups=32,
        ),
        text=_TINY_TEXT,
        # the autoencoder on whole tiles (no frame at the border), the UNet until validation stops improving
        # (--max-steps auto); benchmarks/bench_classes.py
        train=dict(vae_steps=1000),
    ),
    # tiny with a factor-4 autoencoder (32x32x4 latents for 128 px tiles): 26.3 dB / CIEDE2000 5.2 on held-out
    # Kather tiles with pathup train's defaults where tiny reaches 23.5 / 6.9 (README); the UNet gains one level
    # at 32x32 without attention, and its 16x16 level reads the prompt too (cross-attention at 16, 8 and 4 px):
    # without that, debris was drawn as stroma on the 1,200 Kather tiles (7/8 classes in two runs; with it 8/8,
    # 8/8 and 6/8 over three UNet seeds there, 8/8 on the shipped sample; README). Per step 1.81x tiny's autoencoder cost, 2.30x its UNet's and 1.58x its
    # sampling step's (1.41x / 1.33x without the 16x16 attention; benchmarks/bench_sizes.py, 2 threads).
    # vae_lab_weight 1: an L1 in CIE Lab beside the RGB one in the autoencoder stage (not the decoder stage:
    # there it either blurred the generated images or, its share balanced, gained nothing measurable; README);
    # on the 1,200 tiles 26.75 dB / CIEDE2000 4.80 after the decoder stage against 26.27 / 5.15 without, the
    # same time per step (benchmarks/bench_autoencoder.py; README). tiny measured no gain from it (25.38 / 4.92
    # vs 25.56 / 4.99).
    "tiny-f4": ModelSize(
        name="tiny-f4", resolution=128,
        vae=dict(_VAE4, block_out_channels=(32, 64, 64), down_block_types=("DownEncoderBlock2D",) * 3,
                 up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1, norm_num_groups=16,
                 sample_size=128),
        unet=dict(
            sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 32, 64, 64),
            down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 3,
            up_block_types=("CrossAttnUpBlock2D",) * 3 + ("UpBlock2D",),
            cross_attention_dim=64, attention_head_dim=8, norm_num_groups=32,
        ),
        text=_TINY_TEXT,
        train=dict(vae_steps=1000, vae_lab_weight=1.0),
    ),
    "small": ModelSize(
        name="small", resolution=256,
        vae=dict(_VAE4, block_out_channels=(64, 128, 256, 256), layers_per_block=2, norm_num_groups=32,
                 sample_size=256),
        unet=dict(
            sample_size=32, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(128, 256, 512, 512),
            **_SD_BLOCKS,
            cross_attention_dim=256, attention_head_dim=8,
        ),
        text=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                  max_position_embeddings=77, projection_dim=256),
    ),
    "sd15": ModelSize(
        name="sd15", resolution=512,
        vae=dict(_VAE4, block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
                 sample_size=512),
        unet=dict(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            **_SD_BLOCKS,
            cross_attention_dim=768, attention_head_dim=8,
        ),
        text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                  max_position_embeddings=77, projection_dim=768),
    ),
}
