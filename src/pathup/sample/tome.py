"""Token merging in the UNet's self-attention (ToMe for Stable Diffusion, Bolya & Hoffman 2023), via ``tomesd``.

``token_merging(unet, ratio)`` patches the UNet's ``BasicTransformerBlock``s with ``tomesd.apply_patch`` for
the duration of a ``with`` block and removes the patch afterwards, so the model is left as it was (the
attributes tomesd adds to the blocks are deleted too). Settings: ``use_rand=False`` (the destination tokens
are the top-left token of every 2 x 2 cell, not a random one: the merge depends on each sample alone, so
the result does not depend on the batch or on a random state), self-attention only (tomesd's
recommendation), at the finest resolution of the UNet that has attention: ``max_downsample`` is the
downsampling factor of the first down block with attention (1 for Stable Diffusion: tomesd's default;
2 for the ``micro`` / ``tiny`` models, whose full-resolution blocks have no attention, so a ratio would
otherwise merge nothing).

``tomesd`` is an optional dependency: ``pip install 'pathup[speed]'``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from pathup.errors import OptionError, PathUpError

ADDED = ("_tome_info", "use_ada_layer_norm", "use_ada_layer_norm_zero")  # attributes apply_patch sets


def finest_attention_downsample(unet: torch.nn.Module) -> int:
    """Downsampling factor of the first down block with attention layers (2 ** its index)."""
    for i, block in enumerate(getattr(unet, "down_blocks", [])):
        if getattr(block, "attentions", None):
            return 2 ** i
    return 1


@contextlib.contextmanager
def token_merging(unet: torch.nn.Module, ratio: float) -> Iterator[torch.nn.Module]:
    """Merge ``ratio`` of the tokens in the UNet's finest self-attention while inside the block (0: off).

    Raises:
        OptionError: ``ratio`` outside [0, 1).
        PathUpError: one line naming the extra to install when ``tomesd`` is missing.
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
        raise OptionError("token_merging", f"must be in [0, 1) (0: off), got {ratio!r}")
    if ratio == 0:
        yield unet
        return
    try:
        import tomesd
    except ImportError:
        raise PathUpError("token_merging > 0 needs the tomesd package: pip install 'pathup[speed]'") from None
    before = {name: {a for a in ADDED if a in vars(m)} for name, m in unet.named_modules()}
    tomesd.apply_patch(unet, ratio=float(ratio), max_downsample=finest_attention_downsample(unet),
                       use_rand=False, merge_attn=True, merge_crossattn=False, merge_mlp=False)
    try:
        yield unet
    finally:
        tomesd.remove_patch(unet)
        for name, module in unet.named_modules():
            for attr in set(ADDED) - before.get(name, set()):
                if attr in vars(module):
                    delattr(module, attr)
