"""A character-level CLIP tokenizer that is built locally (no download).

It uses CLIP's byte-level alphabet (256 symbols, each also with the end-of-word marker ``</w>``)
and no BPE merges, so every prompt is spelled out character by character. It is a real
``transformers.CLIPTokenizer`` saved in the usual ``vocab.json`` / ``merges.txt`` files, so the
model folder loads in diffusers like any Stable Diffusion checkpoint.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    # The reversible byte -> printable-unicode map used by GPT-2 and CLIP.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def char_vocab() -> dict[str, int]:
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}


def build_char_tokenizer(max_length: int = 77):
    """Return a ``CLIPTokenizer`` over the character vocabulary (vocab size 514)."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.json"
        merges_file = Path(tmp) / "merges.txt"
        vocab_file.write_text(json.dumps(char_vocab()))
        merges_file.write_text("#version: 0.2\n")
        tok = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=max_length,
                            bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS)
    return tok
