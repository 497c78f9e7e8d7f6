"""Benchmark the evaluation metrics (SPEC.md section 6; issue 5).

CPU mode (default): IP/IR, FID and KID alone on random feature matrices, 10,000 x 2048 by default;
prints the time of each and the peak memory (tracemalloc for Python/numpy allocations, and the process's
peak RSS from ``resource``; torch CPU tensors are counted by RSS only).

    python benchmarks/bench_metrics.py                      # 10,000 x 2048 features, 2 threads
    python benchmarks/bench_metrics.py --n 2000 --dim 512   # quicker

GPU mode: full feature extraction (FID Inception, or --features) of N vs N images plus all four
metrics, on images written to a temporary folder (random crops of the bundled real sample images):

    python benchmarks/bench_metrics.py --device cuda --images 10000 [--features-weights PATH]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path


def _peak_rss_mib() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2 ** 20


def _status_mib(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def bench_cpu(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from pathup.metrics.fid import fid
    from pathup.metrics.kid import kid
    from pathup.metrics.prdc import precision_recall

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    real = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    fake = (rng.standard_normal((args.n, args.dim), dtype=np.float32) * 1.1 + 0.05).astype(np.float32)
    feat_mib = 2 * real.nbytes / 2 ** 20
    print(f"features: 2 x {args.n} x {args.dim} float32 ({feat_mib:.0f} MiB), threads={args.threads}, "
          f"chunk={args.chunk}")
    rss0 = _peak_rss_mib()
    for name, fn in (("precision/recall (k=3)", lambda: precision_recall(real, fake, 3, args.chunk)),
                     ("FID", lambda: fid(real, fake)),
                     (f"KID ({args.kid_subsets} x {min(1000, args.n)})",
                      lambda: kid(real, fake, subsets=args.kid_subsets)[:2])):
        base = _status_mib("VmRSS")
        reset = _reset_peak_rss()
        tracemalloc.start()
        t = time.perf_counter()
        value = fn()
        dt = time.perf_counter() - t
        _cur, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        hwm = _status_mib("VmHWM") if reset else None
        extra = f"RSS peak +{hwm - base:7.1f} MiB" if hwm is not None and base is not None else "RSS peak n/a"
        print(f"{name:28s} {dt:8.2f} s   {extra}   tracemalloc (numpy/python) peak {peak / 2 ** 20:7.1f} MiB"
              f"   value {value}")
    print(f"process peak RSS {_peak_rss_mib():.0f} MiB (after loading features: {rss0:.0f} MiB); "
          f"a full {args.n} x {args.n} float32 distance matrix would be {args.n ** 2 * 4 / 2 ** 20:.0f} MiB")


def bench_gpu(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    from pathup.io import list_images, load_rgb
    from pathup.metrics.evaluate import EvaluateConfig, evaluate
    from pathup.sample_data import breakhis_dir

    tmp = Path(tempfile.mkdtemp(prefix="pathup-bench-"))
    src = [np.asarray(load_rgb(p)) for p in list_images(breakhis_dir())]
    rng = np.random.default_rng(0)
    from PIL import Image

    t = time.perf_counter()
    for role in ("real", "fake"):
        (tmp / role).mkdir()
        for i in range(args.images):
            a = src[int(rng.integers(len(src)))]
            y, x = int(rng.integers(0, a.shape[0] - 256)), int(rng.integers(0, a.shape[1] - 256))
            crop = a[y:y + 256, x:x + 256]
            if role == "fake":
                crop = np.clip(crop.astype(np.int16) + rng.integers(-8, 9), 0, 255).astype(np.uint8)
            Image.fromarray(crop).save(tmp / role / f"{i:05d}.png", compress_level=1)
    print(f"wrote 2 x {args.images} images of 256 x 256 in {time.perf_counter() - t:.1f} s")
    cfg = EvaluateConfig(real=str(tmp / "real"), fake=str(tmp / "fake"), out=str(tmp / "metrics.json"),
                         features=args.features, features_weights=args.features_weights, overview_size=256,
                         repeats=1, num_samples=0, device=args.device, batch_size=args.batch_size,
                         num_workers=args.workers, cache=False)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    res = evaluate(cfg)
    dt = time.perf_counter() - t
    run = res["runs"][0]
    print(f"features + metrics, {args.images} vs {args.images} images on {args.device}: {dt:.1f} s "
          f"({2 * args.images / dt:.0f} img/s overall)")
    print(f"IP {run['precision']:.3f} IR {run['recall']:.3f} FID {run['fid']:.2f} KIDx1000 {run['kid_x1000']:.2f}")
    if torch.cuda.is_available():
        print(f"GPU peak memory {torch.cuda.max_memory_allocated() / 2 ** 20:.0f} MiB")
    print(f"process peak RSS {_peak_rss_mib():.0f} MiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu: metric functions only; cuda: full extraction")
    p.add_argument("--n", type=int, default=10_000, help="CPU mode: samples per set")
    p.add_argument("--dim", type=int, default=2048, help="CPU mode: feature dimension")
    p.add_argument("--chunk", type=int, default=2048, help="distance block size")
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=10_000, help="GPU mode: images per set")
    p.add_argument("--features", default="inception")
    p.add_argument("--features-weights", default=None)
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--workers", type=int, default=8)
    args = p.parse_args()
    if args.device == "cpu":
        bench_cpu(args)
    else:
        bench_gpu(args)


if __name__ == "__main__":
    main()
