"""Training-step speed of the UNet with and without the feature entropy loss (FEL).

One step = UNet forward on precomputed (random) latents and prompt embeddings, L_r (+ beta L_e from
the mid-block hook, pooled, normalised, against the memory bank), backward, gradient clipping, AdamW,
the memory-bank EMA update: the same library functions as ``pathup.train``, without data loading
and the VAE encoder (the "precomputed latents" setting).

CPU (default): the tiny model, reports steps/s and the FEL overhead:
    python benchmarks/bench_train.py
GPU: an SD-1.5-sized UNet (random weights), batch 4 and 16, bf16 autocast with fp32 master weights
(as Accelerate's --mixed-precision bf16), fused AdamW, optional torch.compile:
    python benchmarks/bench_train.py --device cuda --size sd15 --batch-sizes 4 16 --compile
A quick check that the GPU mode runs (on a CPU, tiny sizes):
    python benchmarks/bench_train.py --size tiny --batch-sizes 2 --steps 2 --warmup 1 --precision bf16
"""

from __future__ import annotations

import argparse
import time

import torch


def make_step(size: str, batch: int, device: torch.device, precision: str, fel: bool, compile_: bool,
              fused: bool, seed: int = 0):
    from diffusers import UNet2DConditionModel

    from pathup.losses import FeatureBank, MidBlockFeatures, denoising_loss, feature_vector
    from pathup.model.ldm import make_scheduler
    from pathup.model.registry import MODEL_SIZES

    torch.manual_seed(seed)
    cfg = MODEL_SIZES[size]
    unet = UNet2DConditionModel(**cfg.unet).to(device).train()
    sched = make_scheduler("ddim")
    s, c = cfg.unet["sample_size"], cfg.unet["cross_attention_dim"]
    latents = torch.randn(batch, 4, s, s, device=device)  # (B, 4, h, w), precomputed
    emb = torch.randn(batch, 77, c, device=device)  # (B, L, D), precomputed prompt embeddings
    ids = torch.randint(0, 14, (batch,), device=device)  # 7 classes x 2 levels as on BRACS
    cap = MidBlockFeatures(unet) if fel else None
    bank = FeatureBank(14, cfg.unet["block_out_channels"][-1]).to(device) if fel else None
    model = torch.compile(unet) if compile_ else unet
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-5, fused=fused)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def step() -> float:
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (batch,), device=device)
        noisy = sched.add_noise(latents, noise, t)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            pred = model(noisy, t, encoder_hidden_states=emb).sample
        loss = denoising_loss(pred, noise)
        if fel:
            z = feature_vector(cap.pop())  # (B, C)
            loss = loss + 0.1 * bank.loss(z, ids, 0.07)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if fel:
            bank.update(z.detach(), ids)
        return loss

    return step


def timeit(step, steps: int, warmup: int, device: torch.device) -> tuple[float, float]:
    """Seconds per step: (wall clock, CPU time of this process). On a shared CPU the CPU time is the
    fairer measure (other jobs stretch the wall clock); on a GPU the wall clock is the one to read."""
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", default=None, help="registry size (default: tiny on cpu, sd15 on cuda)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="alternate off/on runs this many times, keep the best")
    args = p.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    torch.set_num_threads(args.threads)
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    size = args.size or ("sd15" if gpu else "tiny")
    batches = args.batch_sizes or ([4, 16] if gpu else [8])
    steps = args.steps or (20 if gpu else 10)
    precision = args.precision or ("bf16" if gpu else "fp32")
    name = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; size {size}; precision {precision}; compile {args.compile}; fused AdamW {gpu}; "
          f"steps {steps} after {args.warmup} warm-up")
    clock = "wall" if gpu else "CPU-time"
    print(f"{'batch':>5} {'FEL':>4} {'ms/step':>9} {'steps/s':>8} {'samples/s':>10}   ({clock}; wall ms/step)")
    for b in batches:
        best, wall = {}, {}
        for _ in range(args.repeats):
            for fel in (False, True):
                step = make_step(size, b, device, precision, fel, args.compile, fused=gpu)
                w, c = timeit(step, steps, args.warmup, device)
                sec = w if gpu else c
                if sec < best.get(fel, float("inf")):
                    best[fel], wall[fel] = sec, w
                del step
                if gpu:
                    torch.cuda.empty_cache()
        for fel in (False, True):
            sec = best[fel]
            print(f"{b:>5} {'on' if fel else 'off':>4} {sec * 1e3:>9.1f} {1 / sec:>8.2f} {b / sec:>10.1f}"
                  f"   {wall[fel] * 1e3:.1f}")
        print(f"batch {b}: FEL overhead {100 * (best[True] / best[False] - 1):+.1f}% "
              f"(ratio with/without {best[True] / best[False]:.3f})")
        if gpu:
            print(f"batch {b}: peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
