"""Resumable work: the one mechanism every stage uses to skip what it finished with the same settings.

A finished unit of work (a demo stage, a training arm, a downstream classifier run, a prepared dataset)
leaves a small JSON *marker* beside its outputs recording the fingerprint of the settings it was made
with. A rerun with the same settings reuses the outputs; with other settings it redoes the work, or
(``check_settings``) stops and names the options that differ. Markers are written atomically and last, so
an interrupted unit never looks finished.

* ``fingerprint(settings)``: a short stable hash of a JSON-able mapping.
* ``Marker(path)``: ``.matching(settings)`` -> the stored record or None; ``.write(settings, **record)``.
* ``check_settings(path, settings, ...)``: the "same options as before, or --overwrite" rule of a folder.
* ``JsonlLog(path)``: an append-only record per finished item (a crash cuts at most the last line).
* ``Stages(folder, names)``: runs named stages in order; a stage is reused when its marker matches and
  no earlier stage ran again.

Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from pathup.errors import PathUpError
from pathup.io import atomic_write_text, read_json


def fingerprint(settings: Any) -> str:
    """16 hex digits of the SHA-256 of ``settings`` as sorted JSON (paths and other objects as str)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Marker:
    """The record that one unit of work finished, with the fingerprint of its settings."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, Any] | None:
        return read_json(self.path)  # missing, cut short or not JSON: not finished

    def matching(self, settings: Any, *, requires: Iterable[str | Path] = ()) -> dict[str, Any] | None:
        """The stored record when it was written for these ``settings`` and every path in ``requires``
        exists; None otherwise (never written, other settings, unreadable, or outputs gone)."""
        record = self.read()
        if record is None or record.get("fingerprint") != fingerprint(settings):
            return None
        if not all(Path(p).exists() for p in requires):
            return None
        return record

    def write(self, settings: Any, **record: Any) -> dict[str, Any]:
        """Mark the work done for ``settings`` (atomic); ``record`` is stored beside the fingerprint."""
        data = {**record, "fingerprint": fingerprint(settings)}
        atomic_write_text(self.path, json.dumps(data, default=str, sort_keys=True) + "\n")
        return data


def changed_options(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The keys whose values differ between two option mappings, sorted."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def check_settings(path: str | Path, settings: dict[str, Any], *, overwrite: bool, folder: str | Path,
                   option: str = "overwrite") -> bool:
    """Compare the settings a folder was made with (JSON at ``path``) with ``settings``.

    Returns True when the folder was made with the same settings (resume) and False when it is new or
    ``overwrite`` is set and the settings differ (the caller starts over; ``path`` then holds the new
    settings). Otherwise raises PathUpError naming the folder and the options that differ
    (``settings["options"]`` when present, else the top-level keys).
    """
    path = Path(path)
    old = read_json(path)
    new = json.loads(json.dumps(settings, default=str))  # as it reads back from the file
    same = old == new
    if old is not None and not same and not overwrite:
        changed = changed_options(old.get("options", old), new.get("options", new))
        what = f"options {', '.join(changed)}" if changed else "sources"
        raise PathUpError(f"{folder} holds results made with other {what}; use another output folder or "
                          f"{option}")
    if not same:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(settings, sort_keys=True, default=str))
    return old is not None and same


class JsonlLog:
    """Append-only JSON lines keyed by ``"key"``: the finished items of a long stage."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def read(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by an interruption: that item is redone
                found[rec["key"]] = rec
        return found

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


class Stages:
    """Runs named stages in order, each reused when its marker matches its settings.

    A stage is redone when its settings changed or when an earlier stage ran again in this call (its
    inputs may have changed). Progress goes to stdout as ``[i/n] name ...``.
    """

    def __init__(self, folder: str | Path, names: Iterable[str]) -> None:
        self.dir = Path(folder)
        self.names = list(names)
        self.ran: list[str] = []

    def run(self, name: str, settings: dict[str, Any], fn: Callable[[], Any]) -> Any:
        i = self.names.index(name) + 1
        n = len(self.names)
        marker = Marker(self.dir / f"{name}.json")
        done = marker.matching(settings)
        if done is not None and not any(s in self.ran for s in self.names[:i - 1]):
            print(f"[{i}/{n}] {name}: done earlier, reused ({done.get('seconds', 0):.0f} s then)", flush=True)
            return done.get("result")
        print(f"[{i}/{n}] {name} ...", flush=True)
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
        marker.write(settings, seconds=seconds, result=result)
        self.ran.append(name)
        print(f"[{i}/{n}] {name}: {seconds:.0f} s", flush=True)
        return result
