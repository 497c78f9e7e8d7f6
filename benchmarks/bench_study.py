"""Benchmark the rater study server (issue 7): many raters sending ratings at once.

Builds a small study from the bundled BreakHis samples (the same folder serves as "real" and
"synthetic": only the throughput matters here), registers N raters, starts the app under uvicorn on
127.0.0.1 and lets every rater post R ratings from its own thread. Prints ratings per second, latency
percentiles, and checks that the database holds exactly one row per rater and image.

    python benchmarks/bench_study.py [--raters 50] [--ratings 16] [--size 256]
"""

from __future__ import annotations

import argparse
import logging
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--raters", type=int, default=50, help="raters posting at the same time")
    ap.add_argument("--ratings", type=int, default=16, help="ratings per rater (at most the study's image count)")
    ap.add_argument("--size", type=int, default=256, help="study image size (pixels)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import httpx
    import uvicorn

    from pathup.sample_data import breakhis_dir
    from pathup.study.app import create_app
    from pathup.study.create import create_study

    with tempfile.TemporaryDirectory() as tmp:
        db = create_study(breakhis_dir(), breakhis_dir(), 3, Path(tmp) / "study.db", seed=0, size=args.size)
        ids = [im.id for im in db.images()][: args.ratings]
        t0 = time.perf_counter()
        tokens = [db.add_rater(f"rater {i}") for i in range(args.raters)]
        t_add = time.perf_counter() - t0

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(create_app(db.path), log_level="warning", access_log=False))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.01)
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"

        latencies: list[float] = []
        failures: list[int] = []
        lock = threading.Lock()
        barrier = threading.Barrier(args.raters + 1)

        def work(i: int) -> None:
            with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {tokens[i]}"}, timeout=120) as c:
                barrier.wait()
                for j, image_id in enumerate(ids):
                    t = time.perf_counter()
                    r = c.post("/api/rating", json={"image_id": image_id, "score": (i + j) % 10 + 1})
                    with lock:
                        latencies.append(time.perf_counter() - t)
                        if r.status_code != 200:
                            failures.append(r.status_code)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(args.raters)]
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        server.should_exit = True
        thread.join(10)

        stored = len(db.all_ratings())
        n = len(latencies)
        q = statistics.quantiles(latencies, n=100)
        print(f"raters: {args.raters}, ratings each: {len(ids)}, images: {len(db.images())} ({args.size} px)")
        print(f"add-rater: {t_add / args.raters * 1000:.1f} ms per rater")
        print(f"ratings: {n} in {wall:.2f} s = {n / wall:.0f} ratings/s; failures: {len(failures)}")
        print(f"latency: p50 {q[49] * 1000:.1f} ms, p95 {q[94] * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
        print(f"stored rows: {stored} (expected {args.raters * len(ids)}): {'OK' if stored == args.raters * len(ids) else 'LOST'}")
        db.close()
    return 0 if not failures else 1


if __name__ == "__main__":
    raise SystemExit(main())
