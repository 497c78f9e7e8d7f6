"""Checkpoints that survive a SIGKILL at any moment.

A checkpoint is written into ``RUN/checkpoints/.tmp-checkpoint-<step>`` (Accelerate's
``save_state``: models, optimizer, grad scaler, RNG states of every process; PathUp's own state of the
EMA, LR schedule and memory bank in ``custom_state.safetensors`` + ``custom_state.json``; plus
``trainer_state.json``) and then renamed to
``checkpoint-<step>``; a rename is atomic, so a folder with that name is always complete. Old
checkpoints are first renamed to ``.trash-...`` and then deleted, so a half-deleted one never
carries a checkpoint name. Leftover temporary folders of a killed run are removed on start. Files get
the mode the umask gives (safetensors writes 0600 otherwise).

Nothing in a checkpoint is unpickled with code: Accelerate's ``register_for_checkpointing`` would save
the EMA, schedule and bank as ``custom_checkpoint_<i>.pkl`` and load them with ``torch.load(weights_only=
False)``, which runs whatever a crafted file holds; PathUp saves them itself, tensors in safetensors and
the rest in JSON (``save_custom_state`` / ``load_checkpoint``). Accelerate's own files (optimizer, RNG
states) are loaded with ``weights_only=True``. A checkpoint of an older PathUp (``custom_checkpoint_*.pkl``)
is read with ``torch.load(weights_only=True)``, which refuses a pickle that would run code.
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
from pathup.io import honour_umask_tree, write_failure

STATE_FILE = "trainer_state.json"
CUSTOM_JSON = "custom_state.json"
CUSTOM_TENSORS = "custom_state.safetensors"
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


def save_checkpoint(accelerator, run: str | Path, step: int, state: dict[str, Any], keep: int,
                    custom: dict[str, Any] | None = None) -> Path | None:
    """Write checkpoint ``step`` atomically on every process' behalf; prune to the last ``keep``.

    ``custom``: objects with ``state_dict`` / ``load_state_dict`` saved beside Accelerate's state by name
    (``save_custom_state``; ``load_checkpoint`` reads them back).

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
            save_custom_state(tmp, custom or {})
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
            honour_umask_tree(tmp)
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


def _split(value: Any, key: str, tensors: dict[str, Any]) -> Any:
    """``value`` as JSON with every tensor replaced by ``{"__tensor__": key}`` (stored in ``tensors``)."""
    import torch

    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(value, dict):
        return {str(k): _split(v, f"{key}/{k}", tensors) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_split(v, f"{key}/{i}", tensors) for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot save {type(value).__name__} ({key}) in a checkpoint: only tensors and JSON values")


def _join(value: Any, tensors: dict[str, Any]) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__tensor__"}:
            return tensors[value["__tensor__"]]
        return {k: _join(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_join(v, tensors) for v in value]
    return value


def save_custom_state(folder: Path, objects: dict[str, Any]) -> None:
    """The ``state_dict()`` of each named object: tensors in ``custom_state.safetensors``, the rest in JSON."""
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    meta = {name: _split(obj.state_dict(), name, tensors) for name, obj in objects.items()}
    save_file(tensors, str(folder / CUSTOM_TENSORS))
    (folder / CUSTOM_JSON).write_text(json.dumps(meta))


def load_checkpoint(accelerator, ckpt: str | Path, objects: dict[str, Any]) -> None:
    """Load checkpoint ``ckpt``: Accelerate's state (models, optimizer, RNG states; ``weights_only=True``),
    then each named object's state (``read_custom_state``, read and checked before anything is loaded).

    Accelerate never sees a ``custom_checkpoint_*.pkl`` (it would load it with ``weights_only=False``):
    when the folder holds one, Accelerate reads a view of the folder without them.
    """
    ckpt = Path(ckpt)
    states = read_custom_state(ckpt, objects)
    pickles = set(ckpt.glob("custom_checkpoint_*.pkl"))
    if not pickles:
        accelerator.load_state(str(ckpt))
    else:
        view = ckpt.parent / f".tmp-view-{ckpt.name}-{accelerator.process_index}"
        shutil.rmtree(view, ignore_errors=True)
        view.mkdir()
        try:
            for p in ckpt.iterdir():
                if p not in pickles:
                    (view / p.name).symlink_to(p.resolve())
            accelerator.load_state(str(view))
        finally:
            shutil.rmtree(view, ignore_errors=True)
    for obj, state in zip(objects.values(), states):
        obj.load_state_dict(state)


def read_custom_state(ckpt: Path, objects: dict[str, Any]) -> list[Any]:
    """The state of each named object saved by ``save_custom_state`` (safetensors + JSON, no pickle).

    A checkpoint of an older PathUp holds ``custom_checkpoint_<i>.pkl`` files (Accelerate's, in the order
    of ``objects``) and no ``custom_state.json``: they are read with ``torch.load(weights_only=True)``, never
    with code. A file that is missing, corrupt or holds anything but tensors and plain values is a one-line
    PathUpError.
    """
    ckpt = Path(ckpt)
    meta_file = ckpt / CUSTOM_JSON
    if not meta_file.is_file() and any(ckpt.glob("custom_checkpoint_*.pkl")):
        states = [_load_legacy(ckpt / f"custom_checkpoint_{i}.pkl") for i in range(len(objects))]
    else:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            tensors = load_file(str(ckpt / CUSTOM_TENSORS))
            states = [_join(meta[name], tensors) for name in objects]
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
            raise PathUpError(f"cannot read the training state in {ckpt} ({CUSTOM_JSON}, {CUSTOM_TENSORS}): "
                              f"{type(err).__name__}: {err}") from None
    return states


def _load_legacy(path: Path) -> Any:
    import torch

    from pathup.io import plain_text, unpickling_refused

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - UnpicklingError, a truncated or missing file...
        called = unpickling_refused(err)
        why = (f"a pickle that would call {called}" if called else
               f"not tensor data ({plain_text(str(err).strip().splitlines()[0]) if str(err).strip() else ''})")
        raise PathUpError(f"refused checkpoint file {path}: {why} (read with torch.load(weights_only=True), "
                          "which never runs code)") from None
