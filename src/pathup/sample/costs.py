"""What an image cost: UNet evaluations and seconds per stage (overview, encode, tracking, decode).

``Costs`` is filled by ``PathUpPipeline.overview`` / ``upscale`` when given one, recorded in every
sidecar (``unet_evaluations`` and ``seconds``, each with a ``total``) and summed over a run for the line
``pathup generate`` prints at the end. UNet evaluations count batch items, as
``RegionDenoiser.evaluations`` does (a guided step of one patch is 2, an unguided one 1). Clocks are read
after ``torch.cuda.synchronize`` on CUDA, so a stage's seconds include its queued kernels.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

STAGES = ("overview", "encode", "tracking", "decode")


@dataclass
class Costs:
    """UNet evaluations and wall seconds by stage (a stage not run is absent)."""

    unet_evaluations: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    # shallow evaluations of --cache-interval (DeepCache: a fraction of a full one each), not in the totals
    cached_evaluations: dict[str, int] = field(default_factory=dict)

    def add(self, other: "Costs") -> "Costs":
        """Add ``other``'s numbers into this one (stage by stage); returns self."""
        for name, n in other.unet_evaluations.items():
            self.unet_evaluations[name] = self.unet_evaluations.get(name, 0) + int(n)
        for name, s in other.seconds.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + float(s)
        for name, n in other.cached_evaluations.items():
            self.cached_evaluations[name] = self.cached_evaluations.get(name, 0) + int(n)
        return self

    def copy(self) -> "Costs":
        return Costs(dict(self.unet_evaluations), dict(self.seconds), dict(self.cached_evaluations))

    @property
    def total_evaluations(self) -> int:
        return sum(self.unet_evaluations.values())

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    def to_dict(self) -> dict[str, Any]:
        """``{"unet_evaluations": {stage: n, "total": n}, "seconds": {stage: s, "total": s}}`` (sidecars)."""
        evals = {k: int(v) for k, v in _ordered(self.unet_evaluations)}
        secs = {k: round(float(v), 4) for k, v in _ordered(self.seconds)}
        out = {"unet_evaluations": {**evals, "total": self.total_evaluations},
               "seconds": {**secs, "total": round(self.total_seconds, 4)}}
        if self.cached_evaluations:
            out["unet_cached_evaluations"] = {k: int(v) for k, v in _ordered(self.cached_evaluations)}
        return out

    def summary(self) -> str:
        """One line: total UNet evaluations (by stage) and seconds by stage."""
        evals = ", ".join(f"{k} {v:,}" for k, v in _ordered(self.unet_evaluations))
        secs = ", ".join(f"{k} {v:.1f}" for k, v in _ordered(self.seconds))
        cached = sum(self.cached_evaluations.values())
        return (f"UNet evaluations {self.total_evaluations:,} ({evals or 'none'})"
                + (f" + {cached:,} cached (shallow, --cache-interval)" if cached else "")
                + f"; seconds {self.total_seconds:.1f} ({secs or 'none'})")


def _ordered(values: dict[str, Any]) -> list[tuple[str, Any]]:
    return sorted(values.items(), key=lambda kv: (STAGES.index(kv[0]) if kv[0] in STAGES else len(STAGES), kv[0]))


def synchronize(device: Any) -> None:
    """Wait for the device's queued kernels (CUDA only), so that a clock read after it is true."""
    import torch

    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.synchronize(device)


@contextmanager
def timed(costs: Costs | None, name: str, device: Any = None) -> Iterator[None]:
    """Add the wall seconds of the ``with`` block to ``costs.seconds[name]`` (nothing when ``costs`` is None)."""
    if costs is None:
        yield
        return
    synchronize(device)
    start = time.perf_counter()
    try:
        yield
    finally:
        synchronize(device)
        costs.seconds[name] = costs.seconds.get(name, 0.0) + time.perf_counter() - start


@contextmanager
def count_unet(unet: Any) -> Iterator[list[int]]:
    """Count the batch items of every forward call of ``unet`` inside the block: yields ``[n]``.

    For samplers that are not PathUp's own (diffusers' text-to-image pipeline): a forward pre-hook reads the
    sample's batch size, so the count is that of ``RegionDenoiser.evaluations`` for the same work.
    """
    counter = [0]

    def hook(module: Any, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs.get("sample")
        counter[0] += int(sample.shape[0])

    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield counter
    finally:
        handle.remove()
