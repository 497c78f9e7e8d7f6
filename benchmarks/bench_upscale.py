"""Speed of patch-wise timestep tracking (issue 4): seconds per denoising step of a large image.

Measures, in one run and on one device:

* ``one-at-a-time``: every patch through the UNet alone (patch batch 1), as Algorithm 1 reads;
* ``batched``: all patches in one UNet call (x2 with guidance), one scheduler per patch;
* ``batched, per-chunk step``: the same, with one scheduler step per chunk (same result);
* ``raw UNet``: one bare UNet forward on the same batch (the floor for ``batched``);
* the share of a batched step spent outside the UNet forward: (batched - raw) / batched.

Optionally (``--memory``, CUDA) the peak GPU memory of a whole upscale (encode, one step, decode) at
2048 and at 8192 px next to the latent canvas sizes.

Examples::

    python benchmarks/bench_upscale.py --size tiny --device cpu --steps 2          # CPU, tiny model
    python benchmarks/bench_upscale.py --size sd15 --device cuda --dtype bf16 --steps 5 --memory --compile

The models have random weights (speed does not depend on them).
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_tracking(denoiser, x, scheduler, timesteps, *, repeats: int, **kw) -> float:
    """Seconds per step of ``track_patches`` over ``timesteps`` (after one warm-up step)."""
    from pathup.sample.tracking import track_patches

    device = x.device
    track_patches(denoiser, x, scheduler, timesteps[:1], **kw)  # warm-up
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        track_patches(denoiser, x, scheduler, timesteps, **kw)
        _sync(device)
        best = min(best, (time.perf_counter() - t0) / len(timesteps))
    return best


def time_unet(unet, batch: int, hw: tuple[int, int], emb: torch.Tensor, *, repeats: int, calls: int) -> float:
    """Seconds of one bare UNet forward on ``batch`` latent patches."""
    device = unet.device
    x = torch.randn(batch, unet.config.in_channels, *hw, device=device, dtype=unet.dtype)
    e = emb.expand(batch, -1, -1).contiguous()
    t = torch.tensor(500, device=device)
    with torch.no_grad():
        unet(x, t, encoder_hidden_states=e)
        _sync(device)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(calls):
                unet(x, t, encoder_hidden_states=e)
            _sync(device)
            best = min(best, (time.perf_counter() - t0) / calls)
    return best


def peak_memory(pipe, size: int, *, steps: int, patch_batch: int) -> int:
    """Peak CUDA memory (bytes) of one whole upscale to ``size`` px with one denoising step."""
    from PIL import Image

    device = pipe.ldm.device
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    ref = Image.new("RGB", (pipe.ldm.resolution, pipe.ldm.resolution), (200, 120, 180))
    pipe.upscale(ref, prompt="benchmark", size=size, steps=steps, strength=1.0 / steps, guidance=7.5,
                 patch_batch=patch_batch, output_type="np")
    _sync(device)
    return torch.cuda.max_memory_allocated(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="tiny", help="model size from the registry (tiny, tiny-f4, small, sd15)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--image-size", type=int, default=2048, help="output size in pixels (square)")
    ap.add_argument("--patch-size", type=int, default=64)
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2, help="denoising steps timed per mode")
    ap.add_argument("--repeats", type=int, default=1, help="timed repeats per mode (best is kept)")
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--scheduler", default="ddim")
    ap.add_argument("--skip-one-at-a-time", action="store_true", help="skip the slow patch-batch-1 mode")
    ap.add_argument("--compile", action="store_true", help="also time a torch.compile'd UNet")
    ap.add_argument("--memory", action="store_true", help="CUDA: peak memory at 2048 and 8192 px")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: leave torch's default)")
    ap.add_argument("--json", help="also write the numbers to this JSON file")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    from pathup.model import build_ldm
    from pathup.model.ldm import make_scheduler
    from pathup.sample.grid import patch_grid
    from pathup.sample.pipeline import DTYPES, PathUpPipeline
    from pathup.sample.tracking import guided_denoiser

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    ldm = build_ldm(args.size).to(device)
    if dtype != torch.float32:
        ldm.to(device, dtype)
    for m in ldm.modules().values():
        m.eval().requires_grad_(False)
    f = ldm.vae_scale_factor
    lat = args.image_size // f
    boxes = patch_grid(lat, lat, args.patch_size, args.overlap)
    n = len(boxes)
    ph, pw = boxes[0].height, boxes[0].width
    cfg = args.guidance > 1.0
    batch = n * (2 if cfg else 1)
    with torch.no_grad():
        cond = ldm.encode_prompts(["benchmark, patch"])
        uncond = ldm.encode_prompts([""])
    den = guided_denoiser(ldm.unet, cond, uncond, args.guidance)
    sched = make_scheduler(args.scheduler)
    sched.set_timesteps(50, device=device)
    timesteps = sched.timesteps[10:10 + args.steps]
    x = torch.randn(1, ldm.unet.config.in_channels, lat, lat, device=device)
    common = dict(patch=args.patch_size, overlap=args.overlap)
    hw = (ph, pw)

    class Results(dict):
        def __setitem__(self, key, value):
            super().__setitem__(key, value)
            print(f"{key:<40}  {value:.4f}" if isinstance(value, float) else f"{key:<40}  {value}", flush=True)

    res: dict[str, float | int | str] = Results()
    res.update({
        "model": args.size, "device": str(device), "dtype": args.dtype, "image_px": args.image_size,
        "patches": n, "unet_batch": batch, "steps_timed": len(timesteps),
        "threads": torch.get_num_threads() if device.type == "cpu" else 0})
    for k, v in list(res.items()):
        print(f"{k:<40}  {v}")
    if device.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name(device)
    res["raw_unet_s"] = time_unet(ldm.unet, batch, hw, cond, repeats=args.repeats, calls=max(1, args.steps))
    res["batched_s_per_step"] = time_tracking(den, x, sched, timesteps, repeats=args.repeats, patch_batch=n,
                                              step_mode="per-patch", **common)
    res["batched_chunk_step_s_per_step"] = time_tracking(den, x, sched, timesteps, repeats=args.repeats,
                                                         patch_batch=n, step_mode="per-chunk", **common)
    if not args.skip_one_at_a_time:
        res["one_at_a_time_s_per_step"] = time_tracking(den, x, sched, timesteps, repeats=args.repeats,
                                                        patch_batch=1, step_mode="per-patch", **common)
        res["speedup_batched_vs_one"] = res["one_at_a_time_s_per_step"] / res["batched_s_per_step"]
    for key in ("batched", "batched_chunk_step"):
        total = res[f"{key}_s_per_step"]
        res[f"{key}_outside_unet_share"] = max(0.0, (total - res["raw_unet_s"]) / total)
    if args.compile:
        ldm.unet = torch.compile(ldm.unet)
        den_c = guided_denoiser(ldm.unet, cond, uncond, args.guidance)
        res["compiled_raw_unet_s"] = time_unet(ldm.unet, batch, hw, cond, repeats=args.repeats,
                                               calls=max(1, args.steps))
        res["compiled_batched_chunk_step_s_per_step"] = time_tracking(
            den_c, x, sched, timesteps, repeats=args.repeats, patch_batch=n, step_mode="per-chunk", **common)
    if args.memory and device.type == "cuda":
        pipe = PathUpPipeline(ldm, progress=False)
        for px in (2048, 8192):
            res[f"peak_mem_{px}_GiB"] = peak_memory(pipe, px, steps=10, patch_batch=n) / 2**30
            res[f"canvas_{px}_MiB"] = 4 * 4 * (px // f) ** 2 / 2**20

    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
