"""Train/val/test splits by patient or slide, never by tile (PathUp paper 4.1).

The unit that is split is a *group*: the patient (``split_by="patient"``), or the slide
(``split_by="slide"``); an image whose patient (or slide) is unknown is its own group. All images of a
group, and so all their tiles, get the same split.

A split given by the source (BRACS folders, a CSV ``split`` column, the slide-classes CSV) is kept.
Images without a given split in a group where some images have one follow the group's (most common)
given split, so a patient never lands on two sides. The other groups are assigned per class (by the
group's most common class), in a seeded random order, each to the split that is furthest below its
target share of that class's images (``1 - val - test``, ``val``, ``test``). With ``split_by="none"``
every image without a given split is ``train``.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from typing import Literal, Sequence

import numpy as np

from pathup.data.sources import SourceItem
from pathup.errors import PathUpError

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")
SplitBy = Literal["patient", "slide", "none"]


def stable_int(*parts: object) -> int:
    """A process-independent 32-bit integer from ``parts`` (Python's ``hash`` of str is salted)."""
    return int.from_bytes(hashlib.sha1("\x1f".join(map(str, parts)).encode()).digest()[:4], "little")


def group_key(item: SourceItem, split_by: SplitBy) -> str:
    """The group an item is split with: its patient or slide, or the item itself when that is unknown."""
    if split_by == "patient" and item.patient:
        return f"patient:{item.patient}"
    if split_by == "slide" and item.slide:
        return f"slide:{item.slide}"
    return f"item:{item.key}"


def assign_splits(items: Sequence[SourceItem], split_by: SplitBy = "patient", val_fraction: float = 0.1,
                  test_fraction: float = 0.1, seed: int = 0) -> list[str]:
    """One split name per item (see the module docstring); deterministic for a given ``seed``."""
    if split_by not in ("patient", "slide", "none"):
        raise PathUpError(f"split_by got {split_by!r}; allowed: patient, slide, none")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise PathUpError(f"val and test fractions must be >= 0 with a sum below 1, got "
                          f"val={val_fraction}, test={test_fraction}")
    splits = [it.split for it in items]
    if split_by == "none":
        return [s or "train" for s in splits]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        groups[group_key(it, split_by)].append(i)
    unknown = sum(1 for g in groups if g.startswith("item:"))
    if unknown:
        log.info("%d image(s) have no %s id; each is split as its own group", unknown, split_by)

    free: dict[str, list[str]] = defaultdict(list)  # class -> groups without a given split
    for g, idx in groups.items():
        given = Counter(splits[i] for i in idx if splits[i])
        if given:
            if len(given) > 1:
                log.warning("%s has images in given splits %s; kept as given", g, ", ".join(sorted(given)))
            main = sorted(given.items(), key=lambda kv: (-kv[1], SPLIT_NAMES.index(kv[0])))[0][0]
            for i in idx:
                splits[i] = splits[i] or main
        else:
            counts = Counter(items[i].class_name for i in idx)
            cls = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]
            free[cls].append(g)

    fractions = np.array([1.0 - val_fraction - test_fraction, val_fraction, test_fraction])
    for cls in sorted(free):
        names = sorted(free[cls])
        order = np.random.default_rng([seed, stable_int("split", cls)]).permutation(len(names))
        total = sum(len(groups[g]) for g in names)
        have = np.zeros(3)
        for j in order:
            g = names[j]
            s = int(np.argmax(fractions * total - have))  # furthest below target; ties -> train, val, test
            have[s] += len(groups[g])
            for i in groups[g]:
                splits[i] = SPLIT_NAMES[s]
    return splits
