"""The image sets of ``evaluate``: resolving REAL (``data``) and FAKE, the samples of one seed (whole images
resized for the overview level, random crops for the patch level; PathUp paper section 4.3) and their
features, cached per file set.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pathup.errors import OptionError, PathUpError
from pathup.io import image_size

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class ImageSet:
    """A resolved set of image files; ``kind`` is ``folder`` or ``manifest``; ``classes``: images per class
    where the files name their class (manifest rows, ``pathup generate`` sidecars), else empty."""

    source: str
    kind: str
    paths: tuple[Path, ...]
    classes: tuple[tuple[str, int], ...] = ()


def resolve_images(spec: str | Path, level: str, split: str, role: str) -> ImageSet:
    """The image files of REAL or FAKE: a folder, a prepared dataset folder, or a manifest CSV."""
    from pathup.data.manifest import SPLITS, read_manifest

    path = Path(spec)
    if not path.exists():
        raise PathUpError(f"--{role}: not found: {path}")
    if path.is_file() and path.suffix.lower() == ".csv" or (path / "manifest.csv").is_file():
        root = path if path.is_dir() else path.parent
        if split not in (*SPLITS, "all"):
            raise OptionError("split", f"{split!r}: allowed: {', '.join(SPLITS)}, all")
        rows = [r for r in read_manifest(path) if (split == "all" or r["split"] == split) and r["level"] == level]
        if not rows:
            raise PathUpError(f"--{role} {path}: no tiles with split={split} and level={level} in the manifest")
        paths = tuple(root / r["path"] for r in rows)
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise PathUpError(f"--{role} {path}: {len(missing)} listed file(s) missing, e.g. {missing[0]}")
        return ImageSet(str(path), "manifest", paths, _class_counts(r["class"] for r in rows))
    if path.is_file():
        raise PathUpError(f"--{role} {path}: expected a folder of images or a manifest .csv")
    images = _generated_of_level(path, level, role)
    if not images:
        raise PathUpError(f"--{role} {path}: no images found (looked for .png .jpg .jpeg .tif .tiff .bmp .webp, "
                          "recursively)")
    return ImageSet(str(path), "folder", tuple(g.path for g in images),
                    _class_counts(g.class_name for g in images if g.class_name is not None))


def _class_counts(names: Any) -> tuple[tuple[str, int], ...]:
    from collections import Counter

    return tuple(sorted(Counter(names).items()))


def _generated_of_level(path: Path, level: str, role: str) -> list[Any]:
    """The images of a folder; in a ``pathup generate`` folder only the final images of ``level``:
    the large images (sidecar level ``upscaled``) for ``patch``, the overviews for ``overview``."""
    from pathup.data.generated import read_generated

    images = read_generated(path)
    wanted = "overview" if level == "overview" else "upscaled"
    if not any(g.level for g in images):
        return images  # a plain folder of images
    keep = [g for g in images if g.level in (None, wanted)]
    if not keep:  # e.g. only upscaled images and --level overview: use what there is, resized
        log.warning("--%s %s: no generated images of level %s; using the %d %s image(s)", role, path, wanted,
                    len(images), "/".join(sorted({g.level for g in images if g.level})))
        return images
    return keep


@dataclass(frozen=True)
class Sample:
    """One image sample: a file, an optional crop box (x, y, w, h) and the output size."""

    path: Path
    box: tuple[int, int, int, int] | None
    size: int


def build_samples(paths: Sequence[Path], level: str, *, overview_size: int, crop_px: int,
                  crops_per_image: int, num_samples: int, seed: int) -> list[Sample]:
    """The samples of one set for one seed (the paper's overview and patch levels, section 4.3; see the
    module docstring)."""
    rng = np.random.default_rng(seed)
    samples: list[Sample] = []
    if level == "overview":
        samples = [Sample(p, None, overview_size) for p in paths]
    elif level == "patch":
        for p in paths:
            w, h = image_size(p)
            if w < crop_px or h < crop_px:
                raise PathUpError(f"{p}: {w}x{h} is smaller than --crop-px {crop_px} "
                                  "(use a smaller --crop-px or --level overview)")
            if (w, h) == (crop_px, crop_px):
                samples.append(Sample(p, None, crop_px))
                continue
            for _ in range(crops_per_image):
                x = int(rng.integers(0, w - crop_px + 1))
                y = int(rng.integers(0, h - crop_px + 1))
                samples.append(Sample(p, (x, y, crop_px, crop_px), crop_px))
    else:
        raise OptionError("level", f"{level!r}: allowed: overview, patch")
    if num_samples and len(samples) > num_samples:
        keep = np.sort(rng.choice(len(samples), num_samples, replace=False))
        samples = [samples[i] for i in keep]
    return samples


def load_sample(s: Sample) -> np.ndarray:
    """The sample's pixels, (S, S, 3) uint8."""
    from PIL import Image

    from pathup.io import load_rgb

    img = load_rgb(s.path)
    if s.box is not None:
        x, y, w, h = s.box
        img = img.crop((x, y, x + w, y + h))
    elif img.size != (s.size, s.size):
        w, h = img.size
        if w != h:  # resize the short side, centre-crop the long one
            scale = s.size / min(w, h)
            nw, nh = max(s.size, round(w * scale)), max(s.size, round(h * scale))
            img = img.resize((nw, nh), Image.BICUBIC)
            left, top = (nw - s.size) // 2, (nh - s.size) // 2
            img = img.crop((left, top, left + s.size, top + s.size))
        else:
            img = img.resize((s.size, s.size), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


class _SampleDataset:
    def __init__(self, samples: Sequence[Sample]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        import torch

        return torch.from_numpy(load_sample(self.samples[i]).copy()).permute(2, 0, 1)  # (3, S, S) uint8


# --------------------------------------------------------------------------------------------- features
def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pathup" / "features"


def samples_key(samples: Sequence[Sample], extractor_id: str) -> str:
    """Cache key of a sample list: hash of the extractor id and each file's path, size, mtime and crop."""
    h = hashlib.sha256(extractor_id.encode())
    for s in samples:
        st = s.path.stat()
        h.update(f"\n{s.path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{s.box}|{s.size}".encode())
    return h.hexdigest()[:32]


def extract_features(samples: Sequence[Sample], extractor, *, batch_size: int = 32, num_workers: int = 0,
                     cache_dir: Path | None = None, desc: str = "features", progress: bool = True) -> np.ndarray:
    """Features (N, D) float32 of the samples, read from / written to ``cache_dir`` when given."""
    import torch
    from tqdm.auto import tqdm

    from pathup.io import atomic_path

    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"{samples_key(samples, extractor.cache_id)}.npy"
        if cache_file.is_file():
            feats = np.load(cache_file)
            if feats.shape == (len(samples), extractor.dim):
                log.debug("features from cache %s", cache_file)
                return feats
    loader = torch.utils.data.DataLoader(_SampleDataset(samples), batch_size=batch_size, shuffle=False,
                                         num_workers=num_workers)
    out = np.empty((len(samples), extractor.dim), dtype=np.float32)
    i = 0
    with tqdm(total=len(samples), desc=desc, unit="img", disable=not progress) as bar:
        try:
            for batch in loader:  # (B, 3, S, S) uint8
                f = extractor(batch.to(extractor.device))  # (B, D)
                out[i:i + len(batch)] = f.cpu().numpy()
                i += len(batch)
                bar.update(len(batch))
        except PathUpError as err:  # from a worker process the message carries its traceback: keep one line
            lines = [ln for ln in str(err).splitlines() if ln.strip()]
            last = next((ln.split(": ", 1)[1] for ln in reversed(lines) if "PathUpError: " in ln), lines[-1])
            raise PathUpError(last) from None
    if cache_file is not None:
        with atomic_path(cache_file) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, out)
    return out
