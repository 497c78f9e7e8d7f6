"""Files from users and output folders: every image a user hands in goes through ``pathup.io``'s pixel limit
(experiment runner, settings reader), generate / upscale / compose check --out before loading a model,
``scan_synthetic`` finds ``class_dirname`` folders, and ``pathup.sample`` exports the compose API."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from pathup.cli import main
from pathup.errors import PathUpError


def _bomb_png(path: Path, width: int = 40000, height: int = 40000) -> Path:
    """A ~100-byte PNG whose header claims ``width x height`` RGB pixels (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.parent.mkdir(parents=True, exist_ok=True)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def _png(path: Path, size=(40, 30), color=(200, 100, 150)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


# --------------------------------------------------------------------------- pixel limit
def test_read_settings_refuses_a_bomb_in_one_line_and_reads_the_chunk_without_decoding(tmp_path):
    from pathup.sample.writers import read_settings, save_png, sidecar_path

    bomb = _bomb_png(tmp_path / "bomb.png")  # 1.6 G pixels: PIL itself would raise DecompressionBombError
    with pytest.raises(PathUpError) as err:
        read_settings(bomb)
    assert "bomb.png" in str(err.value) and "\n" not in str(err.value)
    # the settings chunk comes from the header: the truncated pixel data after it is never decoded
    good = save_png(Image.new("RGB", (32, 32), (10, 20, 30)), tmp_path / "img.png", {"seed": 3})
    sidecar_path(good).unlink()
    data = good.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: data.index(b"IDAT") + 12])
    assert read_settings(tmp_path / "cut.png") == {"seed": 3}
    sidecar_path(good).write_text("{not json")
    with pytest.raises(PathUpError, match="img.json: the settings are not valid JSON"):
        read_settings(good)


def test_runner_reads_overviews_through_the_pixel_limit(tmp_path):
    from pathup.experiments.config import ExperimentConfig
    from pathup.experiments.makers import Counts as _Counts, bicubic_images

    cfg = ExperimentConfig(data=str(tmp_path / "ds"), out=str(tmp_path / "exp"), seeds=1, images_per_class=1)
    _bomb_png(tmp_path / "exp" / "images" / "pathup" / "seed0" / "overview" / "a_0.png")
    with pytest.raises(PathUpError) as err:
        bicubic_images(cfg, ["a"], 128, _Counts())
    assert "a_0.png" in str(err.value) and "PATHUP_MAX_IMAGE_PIXELS" in str(err.value)
    # a good overview: the bicubic resize as before
    _png(tmp_path / "exp" / "images" / "pathup" / "seed0" / "overview" / "a_0.png", (64, 64))
    counts = _Counts()
    bicubic_images(cfg, ["a"], 128, counts)
    with Image.open(tmp_path / "exp" / "images" / "pathup" / "seed0" / "bicubic" / "a_0.png") as im:
        assert im.size == (128, 128) and counts.written == 1


# --------------------------------------------------------------------------- --out first
def _blocked(tmp_path: Path) -> Path:
    """An --out that no one (root included) can create: a folder below a plain file."""
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    return blocker / "out"


@pytest.mark.parametrize("command", ["generate", "upscale", "compose"])
def test_unwritable_out_fails_in_one_line_before_the_model_loads(tmp_path, capsys, command):
    image = _png(tmp_path / "ov.png", (64, 64))
    model = str(tmp_path / "no-such-model")  # loading it would fail with another message
    args = {"generate": ["generate", model, "--class", "a"],
            "upscale": ["upscale", str(image), "--model", model, "--class", "a"],
            "compose": ["compose", model, "--random-layout", "2"]}[command]
    for out, says in ((_blocked(tmp_path), "cannot write there"), (tmp_path / "file", "exists and is not a folder")):
        rc = main(args + ["--out", str(out)])
        err = capsys.readouterr().err
        assert rc != 0 and err.count("\n") == 1 and "Traceback" not in err, err
        assert f"--out {out}" in err and says in err and "no-such-model" not in err


# --------------------------------------------------------------------------- class folders
def _generated(root: Path, cls: str, seeds=(0, 1), with_settings: bool = True) -> Path:
    from pathup.sample.generate import GENERATE_SETTINGS, class_dirname

    name = class_dirname(cls)
    folder = root / name
    for s in seeds:
        _png(folder / f"{name}_s{s}.png")
        (folder / f"{name}_s{s}.json").write_text(json.dumps({"class": cls, "seed": s, "level": "upscaled"}))
        _png(folder / "overview" / f"{name}_s{s}.png")
        (folder / "overview" / f"{name}_s{s}.json").write_text(json.dumps({"class": cls, "level": "overview"}))
    if with_settings:
        (folder / GENERATE_SETTINGS).write_text(json.dumps({"class": cls}))
    return folder


def test_scan_synthetic_finds_generate_folders_of_unsafe_class_names(tmp_path):
    from pathup.downstream.synthetic import scan_synthetic
    from pathup.sample.generate import class_dirname

    classes = ["ductal carcinoma", "a_b", "a b"]  # "a b" and "a_b" would share a safe_name folder
    for cls in classes:
        _generated(tmp_path, cls)
    assert class_dirname("ductal carcinoma") != "ductal_carcinoma"
    found = scan_synthetic(tmp_path, classes)
    for cls in classes:
        assert [p.parent.name for p in found[cls]] == [class_dirname(cls)] * 2, cls
        assert all(json.loads(p.with_suffix(".json").read_text())["class"] == cls for p in found[cls])
    assert len(scan_synthetic(tmp_path, classes, overviews=True)["a b"]) == 4


def test_scan_synthetic_folder_is_found_by_its_settings_and_old_safe_name_folders_still_work(tmp_path):
    from pathup.downstream.synthetic import scan_synthetic

    # a renamed folder: its generate_settings.json says which class it holds
    folder = _generated(tmp_path / "renamed", "a b")
    folder.rename(tmp_path / "renamed" / "my a b images")
    assert len(scan_synthetic(tmp_path / "renamed", ["a b"])["a b"]) == 2
    # a folder from before class_dirname (safe_name, no settings file) is still read
    old = tmp_path / "old"
    _png(old / "a_b" / "a_b_s0.png")
    (old / "a_b" / "a_b_s0.json").write_text(json.dumps({"class": "a b"}))
    assert [p.name for p in scan_synthetic(old, ["a b"])["a b"]] == ["a_b_s0.png"]
    # a missing class names the folder it looked for
    _generated(tmp_path / "one", "a b")
    with pytest.raises(PathUpError) as err:
        scan_synthetic(tmp_path / "one", ["a b", "c d"])
    assert "missing: c d (folder c_d-" in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------- lazy exports
def test_sample_package_exports_the_compose_api_lazily():
    import subprocess
    import sys

    import pathup.sample as sample
    from pathup.sample.compose_folder import compose_to_folder
    from pathup.sample.config import ComposeConfig
    from pathup.sample.generate import class_dirname, read_generated
    from pathup.sample.layout import Layout, random_layout
    from pathup.sample.layout_files import load_layout

    assert sample.ComposeConfig is ComposeConfig and sample.compose_to_folder is compose_to_folder
    assert sample.Layout is Layout and sample.load_layout is load_layout and sample.random_layout is random_layout
    assert sample.class_dirname is class_dirname and sample.read_generated is read_generated
    assert {"ComposeConfig", "compose_to_folder", "Layout", "PathUpPipeline"} <= set(sample.__all__)
    code = "import sys, pathup.sample; pathup.sample.ComposeConfig; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_study_create_matches_generate_folders_of_unsafe_class_names_to_real_classes(tmp_path):
    from pathup.study.create import create_study

    for cls in ("ductal carcinoma", "a_b"):
        for i in range(2):
            _png(tmp_path / "real" / cls / f"r{i}.png", (80, 80), (50 + 40 * i, 90, 120))
        _generated(tmp_path / "synth", cls)
    db = create_study(tmp_path / "real", tmp_path / "synth", 1, tmp_path / "study" / "s.db", size=64)
    try:
        with db.connect() as con:
            rows = con.execute("SELECT class, COUNT(*) FROM images GROUP BY class").fetchall()
    finally:
        db.close()
    assert sorted(rows) == [("a_b", 2), ("ductal carcinoma", 2)]


@pytest.mark.parametrize("command", ["generate", "upscale", "compose"])
def test_size_over_the_documented_bound_is_one_line_before_any_work(tmp_path, capsys, command):
    """Issue 12 item 11: ``--size 100000x100000`` grew past 14 GB in under a minute; now a bound of
    32768x32768 pixels (MAX_OUTPUT_PIXELS) is checked with the other options."""
    from pathup.sample.generate import MAX_OUTPUT_PIXELS

    image = _png(tmp_path / "ov.png", (64, 64))
    model = str(tmp_path / "no-such-model")
    args = {"generate": ["generate", model, "--class", "a"],
            "upscale": ["upscale", str(image), "--model", model, "--class", "a"],
            "compose": ["compose", model, "--random-layout", "2"]}[command]
    rc = main(args + ["--out", str(tmp_path / "out"), "--size", "100000x100000"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--size 100000x100000" in err and "32768x32768" in err, err
    assert not (tmp_path / "out").exists() and MAX_OUTPUT_PIXELS == 32768 ** 2
