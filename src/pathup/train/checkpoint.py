"""Checkpoints that survive a SIGKILL at any moment.

A checkpoint is written into ``RUN/checkpoints/.tmp-checkpoint-<step>`` (Accelerate's
``save_state``: models, optimizer, grad scaler, RNG states of every process, the registered EMA,
LR schedule and memory bank; plus ``trainer_state.json``) and then renamed to
``checkpoint-<step>``; a rename is atomic, so a folder with that name is always complete. Old
checkpoints are first renamed to ``.trash-...`` and then deleted, so a half-deleted one never
carries a checkpoint name. Leftover temporary folders of a killed run are removed on start.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from pathup.errors import PathUpError
from pathup.io import write_failure

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_dir(run: str | Path) -> Path:
    return Path(run) / "checkpoints"


def list_checkpoints(run: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as (step, folder), oldest first."""
    root = checkpoint_dir(run)
    found = []
    if root.is_dir():
        for p in root.iterdir():
            m = _NAME.match(p.name)
            if m and p.is_dir() and (p / STATE_FILE).is_file():
                found.append((int(m.group(1)), p))
    return sorted(found)


def newest_checkpoint(run: str | Path) -> Path | None:
    found = list_checkpoints(run)
    return found[-1][1] if found else None


def read_state(ckpt: str | Path) -> dict[str, Any]:
    path = Path(ckpt) / STATE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise PathUpError(f"cannot read checkpoint state {path}: {err}") from None


def clean_partial(run: str | Path) -> None:
    """Remove temporary and half-deleted folders left by a killed run."""
    root = checkpoint_dir(run)
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(accelerator, run: str | Path, step: int, state: dict[str, Any], keep: int) -> Path | None:
    """Write checkpoint ``step`` atomically on every process' behalf; prune to the last ``keep``.

    Every process must call this (each saves its RNG state); the main process renames and prunes.
    On any failure the temporary folder is removed; a full disk or another write error becomes a
    one-line PathUpError naming the folder (the previous checkpoints are untouched).
    """
    root = checkpoint_dir(run)
    final = root / f"checkpoint-{step:08d}"
    tmp = root / f".tmp-checkpoint-{step:08d}"
    try:
        if accelerator.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            if tmp.exists():
                shutil.rmtree(tmp)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
            if final.exists():  # the same step saved again (e.g. the end of a resumed run)
                trash = root / f".trash-{final.name}"
                os.replace(final, trash)
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(tmp, final)
    except BaseException as err:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            raise _write_error(err, final, root) from None
        if isinstance(err, Exception) and not isinstance(err, PathUpError):
            # torch.save's zip writer ("unexpected pos") and safetensors report a full disk as
            # RuntimeError / SafetensorError, not OSError
            raise write_failure(err, final, root, "checkpoint") from None
        raise
    if accelerator.is_main_process:
        for _, old in list_checkpoints(run)[:-max(1, keep)]:
            trash = root / f".trash-{old.name}"
            os.replace(old, trash)
            shutil.rmtree(trash, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _write_error(err: OSError, final: Path, root: Path) -> PathUpError:
    if err.errno == errno.ENOSPC or err.errno == getattr(errno, "EDQUOT", -1):
        free = ""
        try:
            free = f"; {shutil.disk_usage(root).free / 2**20:.0f} MiB free"
        except OSError:
            pass
        return PathUpError(f"disk full while writing checkpoint {final} ({err.strerror}{free}); free space or "
                           f"lower --keep-checkpoints, then resume with --resume (earlier checkpoints are intact)")
    where = err.filename or root
    return PathUpError(f"cannot write checkpoint {final}: {err.strerror or err} ({where})")

