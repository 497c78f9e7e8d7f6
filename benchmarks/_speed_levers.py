"""Issue 19, levers 2 and 4: DeepCache per patch (``cache_interval``) and token merging (``token_merging``).

``measure_levers(pipe, image, class_name, ...)`` upscales one reference with every setting in ``settings``
in one process and returns, per setting, the wall time of the tracking stage (steps 2-5 of Algorithm 1:
noising and ``track_patches``; encode and decode are not timed), the UNet evaluations (full and cached),
the share of the tracking time spent in UNet calls, and the largest absolute pixel difference of the
decoded image from the first setting (the reference: everything off). ``cached_cost`` times one full and
one cached evaluation of the same batch of patches: the cost of a cached evaluation relative to a full one.

A short module another benchmark can call; run alone::

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/_speed_levers.py --model /path/to/model \\
        --class 01_TUMOR --size 512 --steps 50 --guidance 7.5 --device cpu
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch

DEFAULT_SETTINGS = ({"cache_interval": 1, "token_merging": 0.0}, {"cache_interval": 2, "token_merging": 0.0},
                    {"cache_interval": 3, "token_merging": 0.0}, {"cache_interval": 5, "token_merging": 0.0},
                    {"cache_interval": 1, "token_merging": 0.3}, {"cache_interval": 1, "token_merging": 0.5},
                    {"cache_interval": 3, "token_merging": 0.5})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_levers(pipe: Any, image: Any, class_name: str, *, size: int = 512, steps: int = 50,
                   guidance: float = 7.5, strength: float = 0.8, scheduler: str = "ddim", latent_patch: int = 16,
                   latent_overlap: int = 8, patch_batch: int | None = None, seed: int = 0,
                   settings: tuple[dict[str, Any], ...] = DEFAULT_SETTINGS, rounds: int = 2) -> list[dict[str, Any]]:
    """One row per setting (see the module docstring); the first setting is the reference. Every setting
    runs ``rounds`` times, interleaved, and its fastest run counts."""
    from PIL import Image

    from pathup.sample.overview import text_embeddings, to_pil
    from pathup.sample.tome import token_merging
    from pathup.sample.tracking import guided_denoiser, tracked_img2img
    from pathup.sample.vae_tiling import decode_tiled, encode_tiled

    ldm, device = pipe.ldm, pipe._execution_device
    f = ldm.vae_scale_factor
    pixels = np.asarray(to_pil(image).resize((size, size), Image.BICUBIC))
    tile, tile_overlap = pipe.vae_tiles()
    x0 = encode_tiled(ldm.encode_images, pixels, tile=tile, overlap=tile_overlap, factor=f,
                      latent_channels=int(ldm.vae.config.latent_channels), device=device, progress=False)
    cond, uncond = text_embeddings(ldm, pipe.prompts_for(class_name)["patch"], "")
    warm = guided_denoiser(ldm.unet, cond, uncond, guidance)  # warm-up: allocator, kernels, first-call costs
    tracked_img2img(warm, x0, pipe.fresh_scheduler(scheduler), steps=2, strength=0.5, patch=latent_patch,
                    overlap=latent_overlap, patch_batch=patch_batch, generator=torch.Generator().manual_seed(seed))
    runs: dict[int, dict[str, Any]] = {}
    for _ in range(rounds):  # interleaved rounds, the fastest kept: shared cores slow single runs unevenly
        for k, setting in enumerate(settings):
            den = guided_denoiser(ldm.unet, cond, uncond, guidance, cache_interval=setting["cache_interval"])
            unet_s = [0.0]
            inner = den._unet

            def timed(*args: Any, _inner: Any = inner, _acc: list = unet_s, **kwargs: Any) -> torch.Tensor:
                _sync(device)
                start = time.perf_counter()
                out = _inner(*args, **kwargs)
                _sync(device)
                _acc[0] += time.perf_counter() - start
                return out

            den._unet = timed
            _sync(device)
            start = time.perf_counter()
            with token_merging(ldm.unet, setting["token_merging"]):
                z = tracked_img2img(den, x0, pipe.fresh_scheduler(scheduler), steps=steps, strength=strength,
                                    generator=torch.Generator().manual_seed(seed), patch=latent_patch,
                                    overlap=latent_overlap, patch_batch=patch_batch)
            _sync(device)
            seconds = time.perf_counter() - start
            if k not in runs or seconds < runs[k]["seconds"]:
                runs[k] = {"seconds": seconds, "unet_s": unet_s[0], "z": z, "full": den.evaluations,
                           "cached": den.cached_evaluations}
    rows = []
    ref = runs[0]
    ref_img = decode_tiled(ldm.decode_latents, ref["z"], tile=tile, overlap=tile_overlap, factor=f,
                           progress=False).astype(np.int16)  # (H, W, 3)
    for k, setting in enumerate(settings):
        run = runs[k]
        img = decode_tiled(ldm.decode_latents, run["z"], tile=tile, overlap=tile_overlap, factor=f,
                           progress=False).astype(np.int16)
        rows.append({**setting, "tracking_s": round(run["seconds"], 2),
                     "time_ratio": round(run["seconds"] / ref["seconds"], 3),
                     "full_evaluations": run["full"], "cached_evaluations": run["cached"],
                     "full_share": round(run["full"] / (ref["full"] + ref["cached"]), 3),
                     "unet_share_of_time": round(run["unet_s"] / run["seconds"], 3),
                     "max_abs_pixel_diff": int(np.abs(img - ref_img).max()),
                     "mean_abs_pixel_diff": round(float(np.abs(img - ref_img).mean()), 3)})
    return rows


def cached_cost(unet: torch.nn.Module, *, batch: int = 98, hw: int = 16, repeats: int = 5,
                cross_dim: tuple[int, int] | None = None) -> dict[str, float]:
    """Seconds of one full and one cached (DeepCache) evaluation of ``batch`` patches of ``hw`` x ``hw``
    latents, and their ratio (the best of ``repeats``)."""
    from pathup.sample.deepcache import DeepCache

    device, dtype = unet.device, unet.dtype
    c = int(unet.config.in_channels)
    length, dim = cross_dim or (77, int(unet.config.cross_attention_dim))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, c, hw, hw, generator=g).to(device, dtype)
    emb = torch.randn(batch, length, dim, generator=g).to(device, dtype)
    t = torch.tensor(500, device=device)
    cache = DeepCache(unet, 2)
    keys = list(range(batch))
    best = {"full_s": float("inf"), "cached_s": float("inf")}
    with torch.no_grad():
        for _ in range(repeats):
            for name, call in (("full_s", cache.full), ("cached_s", cache.cached)):
                _sync(device)
                start = time.perf_counter()
                call(x, t, emb, keys)
                _sync(device)
                best[name] = min(best[name], time.perf_counter() - start)
    return {**{k: round(v, 4) for k, v in best.items()}, "ratio": round(best["cached_s"] / best["full_s"], 3)}


def main() -> None:
    from pathup.sample.pipeline import PathUpPipeline

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--class", dest="class_name", required=True)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--latent-patch", type=int, default=16)
    p.add_argument("--latent-overlap", type=int, default=8)
    p.add_argument("--patch-batch", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    pipe = PathUpPipeline.from_pretrained(args.model, device=args.device, dtype=args.dtype, progress=False)
    overview = pipe.overview(args.class_name, seed=0, steps=args.steps, guidance=args.guidance)
    info = {"model": args.model, "size": args.size, "steps": args.steps, "guidance": args.guidance,
            "latent_patch": args.latent_patch, "latent_overlap": args.latent_overlap,
            "torch_threads": torch.get_num_threads(), "device": str(pipe._execution_device)}
    print(json.dumps(info))
    from pathup.sample.overview import text_embeddings

    cond, _ = text_embeddings(pipe.ldm, pipe.prompts_for(args.class_name)["patch"], "")  # (1, L, D)
    print(json.dumps({"cached_cost": cached_cost(pipe.ldm.unet, hw=args.latent_patch,
                                                 cross_dim=tuple(cond.shape[1:]))}))
    for row in measure_levers(pipe, overview, args.class_name, size=args.size, steps=args.steps,
                              guidance=args.guidance, latent_patch=args.latent_patch,
                              latent_overlap=args.latent_overlap, patch_batch=args.patch_batch,
                              rounds=args.rounds):
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
