"""Tokenizers for the from-scratch models, built locally (no download).

``build_prompt_tokenizer(prompts)`` is a byte-level BPE in CLIP's format whose merges spell every
word of the model's prompt table, so each word of a known prompt is one token and a 75-token context
fits any sensible prompt whole (a character-level tokenizer cut long prompts at 75 characters, and
prompts that differed only after that became identical). Any other text still tokenizes: CLIP's
256-symbol byte alphabet (each also with the end-of-word marker ``</w>``) is in the vocabulary, so
unknown words are spelled out symbol by symbol.

The result is a real ``transformers.CLIPTokenizer`` saved in the usual ``vocab.json`` /
``merges.txt`` files, so a model folder loads in diffusers like any Stable Diffusion checkpoint.

``check_prompts(tokenizer, prompts)`` refuses a prompt table in which two different prompts would
map to the same token ids (CLIP's tokenizer lowercases and collapses whitespace; every tokenizer
truncates at its context length).
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from pathup.errors import PathUpError

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


# CLIP's pre-tokenisation pattern (without the ftfy/html clean-up, which these prompts do not need).
_PAT = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+", re.IGNORECASE)


def _words(text: str) -> list[str]:
    """The pre-tokenised words of ``text`` as CLIP's tokenizer would see them (lowercased)."""
    return _PAT.findall(" ".join(text.lower().split()))


def _word_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """BPE merges that build each word left to right from its byte symbols (the last with ``</w>``)."""
    b2u = _bytes_to_unicode()
    merges: dict[tuple[str, str], None] = {}
    for w in words:
        syms = [b2u[b] for b in w.encode("utf-8")]
        if len(syms) < 2:
            continue
        syms[-1] = syms[-1] + "</w>"
        acc = syms[0]
        for s in syms[1:]:
            merges.setdefault((acc, s), None)
            acc = acc + s
    return list(merges)


def build_prompt_tokenizer(prompts: Sequence[str] = (), max_length: int = 77):
    """A ``CLIPTokenizer`` whose vocabulary has one token per word of ``prompts`` (plus the byte alphabet).

    With no prompts it is character-level (every word spelled out), as earlier PathUp models were.
    """
    from transformers import CLIPTokenizer

    words = sorted({w for p in prompts for w in _words(p)})
    merges = _word_merges(words)
    vocab = char_vocab()
    for a, b in merges:  # every intermediate and final token, so that any merge order stays in the vocabulary
        vocab.setdefault(a + b, len(vocab))
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = Path(tmp) / "vocab.json"
        merges_file = Path(tmp) / "merges.txt"
        vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        merges_file.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
        tok = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=max_length,
                            bos_token=BOS, eos_token=EOS, pad_token=EOS, unk_token=EOS)
    return tok


def build_char_tokenizer(max_length: int = 77):
    """A character-level ``CLIPTokenizer`` (vocabulary of 514: the byte alphabet, with and without ``</w>``)."""
    return build_prompt_tokenizer((), max_length)


def unspelled_words(tokenizer, prompts: Sequence[str]) -> dict[str, list[str]]:
    """``{prompt: [words]}`` of the words a word-level tokenizer (``build_prompt_tokenizer``) has no single
    token for; empty for a character-level tokenizer (every word is spelled out by design there)."""
    vocab = tokenizer.get_vocab()
    if len(vocab) <= len(char_vocab()):
        return {}
    b2u = _bytes_to_unicode()
    out: dict[str, list[str]] = {}
    for p in dict.fromkeys(prompts):
        missing = [w for w in _words(p) if "".join(b2u[b] for b in w.encode("utf-8")) + "</w>" not in vocab]
        if missing:
            out[p] = missing
    return out


def check_prompts(tokenizer, prompts: Sequence[str]) -> None:
    """Refuse prompts that the tokenizer would map to the same token ids (one line naming both).

    Two different prompts collide when they differ only in case or spacing (CLIP lowercases and
    collapses whitespace) or only after the tokenizer's context length.
    """
    seen: dict[tuple[int, ...], str] = {}
    limit = int(tokenizer.model_max_length)
    for p in dict.fromkeys(prompts):
        ids = tuple(tokenizer(p, truncation=True, max_length=limit).input_ids)
        if ids in seen:
            full = len(tokenizer(p, truncation=False).input_ids)
            why = (f"they differ only after the tokenizer's {limit - 2} tokens (this one has {full - 2}); "
                   "shorten the --descriptions") if full > limit else \
                "they differ only in case or spacing"
            raise PathUpError(f"prompts {seen[ids]!r} and {p!r} map to the same tokens: {why}")
        seen[ids] = p
