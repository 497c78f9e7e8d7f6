"""Bad input and failures around ``pathup prepare``: decompression bombs, tiny images, option types, empty classes, CSV
conflicts, output permissions, unwritable outputs, truncated slides, interrupts and killed workers."""

from __future__ import annotations

import errno
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pathup.cli import main
from pathup.data.prepare import PrepareConfig, prepare
from pathup.errors import PathUpError
from test_prepare import _cfg, _class_folders, _tissue  # noqa: F401 - shared helpers


def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


def _bomb_png(path: Path, width: int, height: int) -> Path:
    """A ~100-byte PNG whose header claims ``width x height`` RGB pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


# ------------------------------------------------------------------------------ 1. decompression bombs
def test_bomb_is_refused_from_the_header_in_one_line(tmp_path):
    from pathup.io import image_size, load_rgb

    bomb = _bomb_png(tmp_path / "bomb.png", 20000, 20000)
    t0 = time.perf_counter()
    with pytest.raises(PathUpError) as e:
        load_rgb(bomb)
    msg = _one_line(e)
    assert time.perf_counter() - t0 < 2.0
    assert "bomb.png" in msg and "20000x20000" in msg and "PATHUP_MAX_IMAGE_PIXELS" in msg
    with pytest.raises(PathUpError, match="huge.png"):
        image_size(_bomb_png(tmp_path / "huge.png", 100000, 100000))


def test_open_image_limit_option_and_environment(tmp_path, monkeypatch):
    from pathup.io import DEFAULT_MAX_IMAGE_PIXELS, open_image

    assert DEFAULT_MAX_IMAGE_PIXELS >= 8192 * 8192
    img = tmp_path / "a.png"
    _tissue(120, 100).save(img)
    assert open_image(img).size == (120, 100)
    with pytest.raises(PathUpError) as e:
        open_image(img, max_pixels=10_000, option="--max-image-pixels")
    assert "a.png" in _one_line(e) and "120x100" in str(e.value) and "--max-image-pixels" in str(e.value)
    monkeypatch.setenv("PATHUP_MAX_IMAGE_PIXELS", "10000")
    with pytest.raises(PathUpError, match="120x100"):
        open_image(img)
    tif = tmp_path / "b.tif"
    import tifffile

    tifffile.imwrite(tif, np.zeros((100, 120, 3), np.uint8))
    with pytest.raises(PathUpError, match="b.tif is 120x100"):
        open_image(tif)
    monkeypatch.setenv("PATHUP_MAX_IMAGE_PIXELS", "2000000000")  # above PIL's own limit: raised, not off
    assert open_image(img).size == (120, 100)
    assert Image.MAX_IMAGE_PIXELS is not None


def test_prepare_keeps_a_pixel_limit_with_an_option_to_raise_it(tmp_path, monkeypatch):
    root = _class_folders(tmp_path / "imgs", n_per_class=2)
    monkeypatch.setenv("PATHUP_MAX_IMAGE_PIXELS", "10000")  # every 150x100 image is now "too large"
    big = _tissue(300, 200)
    big.save(root / "alpha" / "big.png")
    s = prepare(_cfg(tmp_path / "ds", [root], max_image_pixels=40_000), progress=False)
    assert [Path(b.path).name for b in s.bad_files] == ["big.png"]
    assert "--max-image-pixels" in str(s.bad_files[0]) and "300x200" in str(s.bad_files[0])
    s = prepare(_cfg(tmp_path / "ds2", [root], max_image_pixels=100_000), progress=False)
    assert not s.bad_files and Image.MAX_IMAGE_PIXELS is not None
    with pytest.raises(PathUpError, match="--max-image-pixels"):
        prepare(_cfg(tmp_path / "ds3", [root], max_image_pixels=0), progress=False)


def test_cli_bombs_give_one_line_errors(tmp_path, capsys):
    bomb_dir = tmp_path / "real" / "alpha"
    bomb_dir.mkdir(parents=True)
    bomb = _bomb_png(bomb_dir / "bomb.png", 20000, 20000)
    synth = tmp_path / "synth" / "alpha"
    synth.mkdir(parents=True)
    _tissue(80, 80).save(synth / "alpha_s0.png")
    rc = main(["study", "create", "--real", str(tmp_path / "real"), "--synthetic", str(tmp_path / "synth"),
               "--per-class", "1", "--size", "64", "--out", str(tmp_path / "st" / "study.db")])
    err = capsys.readouterr().err
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and not ln.startswith("re-encoding")]
    assert rc == 2 and len(lines) == 1 and "bomb.png" in lines[0] and "Traceback" not in err
    rc = main(["upscale", str(bomb), "--model", str(tmp_path / "nomodel"), "--class", "alpha",
               "--out", str(tmp_path / "up")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "bomb.png" in err


# ------------------------------------------------------------------------------ 10. umask
@pytest.mark.parametrize("mask, fmode, dmode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_atomic_writes_honour_the_umask(tmp_path, mask, fmode, dmode):
    from pathup.io import atomic_dir, atomic_write_bytes, atomic_write_text

    old = os.umask(mask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        atomic_write_bytes(tmp_path / "b.bin", b"x")
        with atomic_dir(tmp_path / "d") as d:
            (d / "f").write_text("y")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == fmode
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == fmode
    assert (tmp_path / "d").stat().st_mode & 0o777 == dmode


def test_prepare_outputs_are_readable_by_others_under_umask_022(tmp_path):
    root = _class_folders(tmp_path / "imgs", n_per_class=1)
    old = os.umask(0o022)
    try:
        prepare(_cfg(tmp_path / "ds", [root]), progress=False)
    finally:
        os.umask(old)
    out = tmp_path / "ds"
    tiles = list((out / "tiles").rglob("*.png"))
    assert tiles
    for p in [*tiles, out / "manifest.csv", out / "dataset.json", out / "config.yaml"]:
        assert p.stat().st_mode & 0o777 == 0o644, p


# ------------------------------------------------------------------------------ 7. tiny images, option types
def test_images_too_small_for_a_tile_are_bad_files(tmp_path):
    root = _class_folders(tmp_path / "imgs", n_per_class=2)
    _tissue(1, 1).save(root / "alpha" / "dot.png")
    _tissue(3, 1000).save(root / "beta" / "sliver.png")
    s = prepare(_cfg(tmp_path / "ds", [root]), progress=False)
    bad = {Path(b.path).name: str(b) for b in s.bad_files}
    assert set(bad) == {"dot.png", "sliver.png"}
    assert "1x1" in bad["dot.png"] and "3x1000" in bad["sliver.png"] and "too small" in bad["sliver.png"]
    sources = {Path(r["source"]).name for r in __import__("csv").DictReader((tmp_path / "ds" / "manifest.csv").open())}
    assert not {"dot.png", "sliver.png"} & sources
    with pytest.raises(PathUpError, match="dot.png"):
        prepare(_cfg(tmp_path / "ds2", [root], strict=True), progress=False)


def test_tile_size_has_a_documented_bound(tmp_path, capsys):
    root = _class_folders(tmp_path / "imgs", n_per_class=1)
    rc = main(["prepare", str(root), "--out", str(tmp_path / "ds"), "--tile-size", "100000"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--tile-px" in err and "4096" in err
    assert not (tmp_path / "ds" / ".prepare").exists()
    assert "4096" in __import__("pathup.cli", fromlist=["build_parser"]).build_parser()._subparsers._group_actions[0] \
        .choices["prepare"].format_help()


def test_yaml_bool_is_not_a_number(tmp_path, capsys):
    from pathup.config import from_dict

    with pytest.raises(PathUpError, match="patch_px.*int.*True"):
        from_dict(PrepareConfig, {"out": "x", "patch_size": True})
    with pytest.raises(PathUpError, match="min_tissue.*float"):
        from_dict(PrepareConfig, {"out": "x", "min_tissue": False})
    assert from_dict(PrepareConfig, {"out": "x", "patch_size": 256, "min_tissue": 0}).min_tissue == 0.0
    cfg = tmp_path / "run.yaml"
    cfg.write_text("patch_size: true\n")
    rc = main(["prepare", str(tmp_path), "--out", str(tmp_path / "ds"), "--config", str(cfg)])
    err = capsys.readouterr().err
    assert rc == 2 and "patch_px" in err and err.count("\n") == 1


# ------------------------------------------------------------------------------ 8. empty classes (prepare)
def test_prepare_warns_about_classes_without_train_tiles(tmp_path, caplog):
    root = _class_folders(tmp_path / "imgs", n_per_class=2)
    m = tmp_path / "m.csv"
    m.write_text("path,class,split\n"
                 f"{root}/alpha/img0.png,alpha,train\n{root}/alpha/img1.png,alpha,test\n"
                 f"{root}/beta/img0.png,beta,test\n{root}/beta/img1.png,beta,val\n")
    with caplog.at_level("WARNING"):
        prepare(_cfg(tmp_path / "ds", [m]), progress=False)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("'beta'" in w and "train" in w for w in warned), warned
    assert not any("'alpha'" in w for w in warned)


def test_prepare_warns_about_all_background_classes(tmp_path, caplog):
    root = _class_folders(tmp_path / "imgs", n_per_class=1)
    (root / "glass").mkdir()
    Image.new("RGB", (150, 100), (250, 250, 250)).save(root / "glass" / "white.png")
    with caplog.at_level("WARNING"):
        prepare(_cfg(tmp_path / "ds", [root]), progress=False)
    assert any("'glass'" in r.getMessage() and "no tiles" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------------------------------ 9. one file, two classes
def test_csv_file_under_two_classes_names_both(tmp_path, caplog):
    root = _class_folders(tmp_path / "imgs", n_per_class=1)
    m = tmp_path / "m.csv"
    m.write_text(f"path,class\n{root}/alpha/img0.png,alpha\n{root}/beta/img0.png,beta\n"
                 f"{root}/alpha/img0.png,beta\n")
    with caplog.at_level("WARNING"):
        prepare(_cfg(tmp_path / "ds", [m]), progress=False)
    msgs = [r.getMessage() for r in caplog.records if "img0.png" in r.getMessage()]
    assert any("'alpha'" in w and "'beta'" in w and "alpha/img0.png" in w for w in msgs), msgs


# ------------------------------------------------------------------------------ 11. unwritable output, slides
def test_prepare_unwritable_out_is_one_line(tmp_path, capsys):
    root = _class_folders(tmp_path / "imgs", n_per_class=1)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(PathUpError) as e:
        prepare(_cfg(blocker / "ds", [root]), progress=False)
    assert str(blocker / "ds") in _one_line(e)
    rc = main(["prepare", str(root), "--out", str(blocker / "ds")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and str(blocker / "ds") in err


def test_prepare_write_failure_stops_with_one_line_naming_the_folder(tmp_path, monkeypatch):
    import pathup.data.prepare as prep

    root = _class_folders(tmp_path / "imgs", n_per_class=1)
    real_save = Image.Image.save

    def full_disk(self, fp, *a, **kw):
        if ".tmp" in str(fp):
            Path(fp).write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(fp))
        return real_save(self, fp, *a, **kw)

    monkeypatch.setattr(Image.Image, "save", full_disk)
    with pytest.raises(PathUpError) as e:
        prep.prepare(_cfg(tmp_path / "ds", [root]), progress=False)
    assert "No space left on device" in _one_line(e) and str(tmp_path / "ds") in str(e.value)
    assert not list((tmp_path / "ds").rglob(".*.tmp*"))


def test_truncated_slide_says_why(tmp_path, sample_wsi):
    from pathup.data.slides import SlideReader

    data = Path(sample_wsi).read_bytes()
    cut = tmp_path / "cut.svs"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(PathUpError) as e:
        SlideReader(cut)
    msg = _one_line(e)
    assert "cut.svs" in msg and "truncated" in msg and "IndexError: index 0" not in msg.split("(")[0]
    classes = tmp_path / "c.csv"
    classes.write_text("slide,class\ncut,IC\n")
    with pytest.raises(PathUpError, match="truncated"):
        prepare(_cfg(tmp_path / "ds", [cut], slide_classes=str(classes), strict=True), progress=False)


# ------------------------------------------------------------------------------ 12. interrupts, killed workers
def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(d))
    found, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_sigkill_of_prepare_leaves_no_worker_processes(tmp_path):
    code = textwrap.dedent("""
        import time
        from pathup.data.workers import run_jobs as _run
        print("started", flush=True)
        for _ in _run(time.sleep, [(120,), (120,), (120,)], 2, "scan", False):
            pass
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    kids: list[int] = []
    try:
        assert proc.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # forkserver, resource tracker and 2 workers
            kids = _descendants(proc.pid)
            if len(kids) >= 4:
                break
            time.sleep(0.2)
        time.sleep(1.0)
        kids = _descendants(proc.pid)
        assert len(kids) >= 3, kids
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_alive(k) for k in kids):
            time.sleep(0.2)
        assert not [k for k in kids if _alive(k)]
    finally:
        for k in kids:
            if _alive(k):
                os.kill(k, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()


def test_interrupt_leaves_no_temporary_tiles_and_restart_cleans_stale_ones(tmp_path, monkeypatch):
    import pathup.data.prepare as prep

    root = _class_folders(tmp_path / "imgs", n_per_class=2)
    out = tmp_path / "ds"
    real_save = Image.Image.save
    calls = {"n": 0}

    def interrupted(self, fp, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            Path(fp).write_bytes(b"half a tile")
            raise KeyboardInterrupt
        return real_save(self, fp, *a, **kw)

    monkeypatch.setattr(Image.Image, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(_cfg(out, [root]), progress=False)
    monkeypatch.setattr(Image.Image, "save", real_save)
    assert not list(out.rglob(".*.tmp*"))
    # A killed run (no clean-up possible) leaves one: the next run removes it and completes.
    stale = out / "tiles" / "patch" / "alpha" / ".img0-1234_0_0.png.abc123.tmp.png"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_bytes(b"half a tile")
    s = prep.prepare(_cfg(out, [root]), progress=False)
    assert s.n_tiles > 0 and not stale.exists() and not list(out.rglob(".*.tmp*"))


# ------------------------------------------------------------------------------ 8. empty classes (train)
def _train_dataset(root: Path, tiles: dict[str, list[str]], classes: list[str]) -> Path:
    """A minimal prepared dataset: ``tiles`` maps class -> the splits of its (patch) tiles."""
    import csv
    import json

    (root / "tiles").mkdir(parents=True)
    rows = []
    for c, splits in tiles.items():
        for i, split in enumerate(splits):
            p = f"tiles/{c}_{i}.png"
            _tissue(32, 32, seed=i).save(root / p)
            rows.append({"path": p, "class": c, "level": "patch", "prompt": f"{c}, patch", "source": p,
                         "patient": "", "slide": "", "split": split, "x": 0, "y": 0, "width": 32, "height": 32})
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (root / "dataset.json").write_text(json.dumps({"classes": classes, "levels": ["patch", "overview"],
                                                   "descriptions": {}, "tile_size": 32}))
    return root


def test_train_tiles_refuse_a_class_without_train_tiles(tmp_path):
    from pathup.train.data import TrainTiles

    root = _train_dataset(tmp_path / "ds", {"alpha": ["train", "train"], "beta": ["test"]}, ["alpha", "beta", "gamma"])
    with pytest.raises(PathUpError) as e:
        TrainTiles(root, "train", [], True, 32)
    msg = _one_line(e)
    assert "'beta'" in msg and "'gamma'" in msg and "'alpha'" not in msg and "dataset.json" in msg
    tiles = TrainTiles(root, "train", [], True, 32, allow_empty_classes=True)
    assert len(tiles) == 2 and tiles.empty_classes == ["beta", "gamma"]
    ok = _train_dataset(tmp_path / "ok", {"alpha": ["train"], "beta": ["train", "val"]}, ["alpha", "beta"])
    assert len(TrainTiles(ok, "train", [], True, 32)) == 2


# ------------------------------------------------------------------------------ 11. checkpoint disk full
class _FakeAccelerator:
    is_main_process = True

    def __init__(self, fail: OSError | None) -> None:
        self.fail = fail

    def wait_for_everyone(self) -> None:
        pass

    def save_state(self, path: str) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "model.safetensors").write_bytes(b"x" * 100)
        if self.fail is not None:
            raise self.fail


def test_checkpoint_disk_full_is_one_line_and_leaves_no_temp_folder(tmp_path):
    from pathup.train import checkpoint as ck

    run = tmp_path / "run"
    good = ck.save_checkpoint(_FakeAccelerator(None), run, 1, {"step": 1}, keep=3)
    with pytest.raises(PathUpError) as e:
        ck.save_checkpoint(_FakeAccelerator(OSError(errno.ENOSPC, "No space left on device")), run, 2,
                           {"step": 2}, keep=3)
    msg = _one_line(e)
    assert "disk full" in msg and "checkpoint-00000002" in msg
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [good.name]
    with pytest.raises(PathUpError, match="cannot write checkpoint.*Permission denied"):
        ck.save_checkpoint(_FakeAccelerator(PermissionError(errno.EACCES, "Permission denied")), run, 3,
                           {"step": 3}, keep=3)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(_FakeAccelerator(KeyboardInterrupt()), run, 4, {"step": 4}, keep=3)  # type: ignore[arg-type]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [good.name]
    assert ck.newest_checkpoint(run) == good


# ------------------------------------------------------------------------------ 11. CLI: OSError, Ctrl+C
def test_cli_os_errors_are_one_line_naming_the_path(monkeypatch, capsys):
    import pathup.cli.generate as gen

    def unwritable(args):
        raise PermissionError(errno.EACCES, "Permission denied", "/read-only/gen/x.png")

    monkeypatch.setattr(gen, "run", unwritable)
    rc = main(["generate", "some-run", "--class", "a", "--out", "/read-only/gen"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "/read-only/gen/x.png" in err and "Permission denied" in err


def test_cli_ctrl_c_anywhere_exits_130_without_traceback(monkeypatch, capsys):
    import pathup.cli as cli
    import pathup.cli.prepare as prep_cli

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(prep_cli, "run", interrupted)
    assert main(["prepare", "x", "--out", "y"]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and "interrupted" in err
    monkeypatch.setattr(cli, "build_parser", interrupted)  # while the stages' modules are imported
    assert cli.main(["prepare", "--help"]) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1


def test_cli_sigint_during_start_up_in_a_real_process(tmp_path):
    # SIGINT arrives while the stage modules are being imported: exit 130, one line, no traceback.
    code = textwrap.dedent("""
        import os, signal, sys
        signal.signal(signal.SIGINT, signal.default_int_handler)
        import pathup.cli as cli
        real = cli.importlib.import_module
        def slow_import(name, *a):
            if name.startswith("pathup.cli."):
                os.kill(os.getpid(), signal.SIGINT)
            return real(name, *a)
        cli.importlib.import_module = slow_import
        sys.argv = ["pathup", "prepare", "--help"]
        sys.exit(cli.main())
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
