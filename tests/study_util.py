"""Helpers shared by the rater-study tests: a small real + synthetic study and a live uvicorn server."""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest
from PIL import Image, ImageFilter

from pathup.sample_data import breakhis_dir


def make_synthetic_dir(root: Path, per_class: int = 3) -> Path:
    """A folder in the layout of ``pathup generate`` (DIR/<class>/<class>_s<seed>.png + overview/),
    made from the real BreakHis samples (flipped, blurred, square) so that the tests need no model."""
    for cdir in sorted(p for p in breakhis_dir().iterdir() if p.is_dir()):
        out = root / cdir.name
        (out / "overview").mkdir(parents=True, exist_ok=True)
        for i, src in enumerate(sorted(cdir.glob("*.jpg"))[:per_class]):
            img = Image.open(src).convert("RGB").transpose(Image.FLIP_LEFT_RIGHT)
            img.filter(ImageFilter.GaussianBlur(1.0)).resize((300, 300)).save(out / f"{cdir.name}_s{i}.png")
        # Overview images must never be picked.
        Image.new("RGB", (64, 64), (255, 0, 0)).save(out / "overview" / f"{cdir.name}_s0.png")
    return root


def copy_study(db: Path, dest_dir: Path) -> Path:
    """Copy a study (db + <stem>_files/) to ``dest_dir``; returns the new db path."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    new = dest_dir / db.name
    shutil.copy2(db, new)
    for suffix in ("-wal", "-shm"):
        if db.with_name(db.name + suffix).exists():
            shutil.copy2(db.with_name(db.name + suffix), new.with_name(new.name + suffix))
    shutil.copytree(db.with_name(db.stem + "_files"), new.with_name(new.stem + "_files"))
    return new


@contextlib.contextmanager
def live_server(db_path: Path) -> Iterator[str]:
    """Run the study app under uvicorn in a thread, bound to 127.0.0.1 on a free port; yield its URL."""
    import uvicorn

    from pathup.study.app import create_app

    # proto=IPPROTO_TCP so that asyncio sets TCP_NODELAY on accepted connections (else 40 ms Nagle stalls)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(db_path), log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


# Fixtures shared by the study test modules (import them by name): a study of the shipped BreakHis images
# (2 per class) with synthetic look-alikes, a fresh copy per test, and an API client on it.
PER_CLASS = 2


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    return make_synthetic_dir(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def template_db(tmp_path_factory, synthetic_dir):
    from pathup.study.create import create_study

    out = tmp_path_factory.mktemp("template") / "study.db"
    create_study(breakhis_dir(), synthetic_dir, PER_CLASS, out, seed=3, size=128)
    return out


@pytest.fixture
def study(template_db, tmp_path):
    from pathup.study.db import StudyDB

    return StudyDB(copy_study(template_db, tmp_path / "s"))


@pytest.fixture
def client(study):
    from fastapi.testclient import TestClient

    from pathup.study.app import create_app

    with TestClient(create_app(study.path)) as c:
        yield c


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}
