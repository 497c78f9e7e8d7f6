"""Worker processes for ``pathup prepare``: run per-source jobs in a pool that stops at once on Ctrl+C or an
error, and whose workers exit by themselves when the parent dies (even by SIGKILL).

``run_jobs(fn, jobs, workers, desc, progress)`` yields ``fn(*job)`` for every job as the jobs finish.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any, Callable, Iterator

from pathup.errors import PathUpError


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _proc_start_time(pid: int) -> str | None:
    """The start time of process ``pid`` (Linux /proc), "" when there is no /proc, None when it is gone
    or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        if not os.path.isdir("/proc/self"):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return None
            except PermissionError:
                pass
            return ""
        return None
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _watch_parent(pid: int, started: str | None, interval: float = 0.5) -> None:
    while True:
        time.sleep(interval)
        if _proc_start_time(pid) != started:  # gone, a zombie, or its pid reused
            os._exit(1)


def _worker_init(parent_pid: int, parent_started: str | None) -> None:
    """Runs in each worker: Ctrl+C is the parent's to handle (it stops the workers), and a worker exits by
    itself when the parent dies, even by SIGKILL (a forkserver worker's own parent is the forkserver, which
    lives as long as its workers, so the parent's pid is watched)."""
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_parent, args=(parent_pid, parent_started), daemon=True,
                     name="pathup-parent-watch").start()


def run_jobs(fn: Callable[..., dict], jobs: list[tuple], workers: int, desc: str, progress: bool) -> Iterator[dict]:
    """``fn(*job)`` for every job, in worker processes when ``workers > 1``; yields results as they finish.

    On any exception (Ctrl+C included) the workers are stopped at once; a worker whose parent died exits.
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc=desc, unit="src", disable=not progress or not jobs, dynamic_ncols=True)
    try:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                yield fn(*job)
                bar.update()
            return
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        ctx = mp.get_context("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn")
        me = os.getpid()
        ex = ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx, initializer=_worker_init,
                                 initargs=(me, _proc_start_time(me)))
        try:
            futures = [ex.submit(fn, *job) for job in jobs]
            for fut in as_completed(futures):
                try:
                    res = fut.result()
                except BrokenProcessPool:
                    raise PathUpError(f"a worker process died while preparing ({desc}), perhaps out of memory; "
                                      f"rerun with --workers 1 to resume") from None
                yield res
                bar.update()
        except BaseException:
            _stop_workers(ex)
            raise
        finally:
            ex.shutdown(wait=True, cancel_futures=True)
    finally:
        bar.close()


def _stop_workers(ex: Any) -> None:
    """Terminate the pool's worker processes now (they would finish their current source first)."""
    for proc in list((getattr(ex, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            proc.terminate()
    for proc in list((getattr(ex, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            proc.join(5)
