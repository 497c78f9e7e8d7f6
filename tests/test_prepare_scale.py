"""Physical scale in ``pathup prepare``: ``target_mpp`` cuts the same field of view from slides scanned at
two magnifications; the manifest and dataset.json record the tiles' microns per pixel."""

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from pathup.cli import main
from pathup.data.manifest import dataset_mpp, read_dataset_info, read_manifest
from pathup.data.prepare import prepare
from pathup.data.slides import ImageReader, SlideReader, open_reader
from pathup.errors import PathUpError
from pathup.io import load_rgb

from test_prepare import _cfg, _class_folders


def _tissue_field(side, seed=0):
    """A smooth pink/purple field (so that resampling is near-lossless), ``side x side`` pixels."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (side // 32, side // 32, 3), dtype=np.uint8), "RGB")
    noise = np.asarray(coarse.resize((side, side), Image.BICUBIC), dtype=np.float64)
    base = np.array([190.0, 110.0, 170.0]) + (noise - 128) * 0.3
    return np.clip(base, 0, 255).astype(np.uint8)


def _write_slide(path, level0, mpp, *, resolution=True):
    """A generic tiled pyramidal TIFF (levels in successive IFDs, each a 2x box reduction) with TIFF
    resolution tags in px/cm (from which tiffslide reads the MPP, as for an OME/SVS-like slide)."""
    levels = [level0]
    img = Image.fromarray(level0, "RGB")
    while max(img.size) > 128:
        img = img.reduce(2)
        levels.append(np.asarray(img))
    h0 = level0.shape[0]
    with tifffile.TiffWriter(path) as tw:
        for i, lv in enumerate(levels):
            kw = {}
            if resolution:
                ppcm = 1e4 / (mpp * h0 / lv.shape[0])
                kw = {"resolution": (ppcm, ppcm), "resolutionunit": "CENTIMETER"}
            tw.write(lv, tile=(64, 64), photometric="rgb", subfiletype=0 if i == 0 else 1, metadata=None, **kw)
    return path


@pytest.fixture()
def two_magnifications(tmp_path):
    """The same 256 x 256 um field scanned at 0.25 um/px (1024 px, "40x") and 0.5 um/px (512 px, "20x")."""
    hi = _tissue_field(1024, seed=3)
    lo = np.asarray(Image.fromarray(hi, "RGB").reduce(2))
    a = _write_slide(tmp_path / "field40x.tif", hi, 0.25)
    b = _write_slide(tmp_path / "field20x.tif", lo, 0.5)
    classes = tmp_path / "slides.csv"
    classes.write_text("slide,class,patient\nfield40x,T,p1\nfield20x,T,p2\n")
    return a, b, classes


def test_the_readers_share_one_interface(tmp_path, two_magnifications):
    a, _, _ = two_magnifications
    with open_reader(a, "slide") as s:
        assert isinstance(s, SlideReader) and s.dimensions == (1024, 1024) and s.mpp == pytest.approx(0.25)
        assert s.level_dimensions[:3] == [(1024, 1024), (512, 512), (256, 256)]
        assert s.level_downsamples[:3] == pytest.approx([1, 2, 4])
        assert s.thumbnail(4).size == (256, 256)
        assert s.read(0, 0, 256, 256, 128, 128).size == (128, 128)
    with open_reader(a, "slide", mpp=0.3) as s:
        assert s.mpp == 0.3  # mpp given replaces the slide's own
    png = tmp_path / "roi.png"
    Image.fromarray(_tissue_field(64)).save(png)
    with open_reader(png, "image") as r:
        assert isinstance(r, ImageReader) and r.dimensions == (64, 64) and r.mpp is None
        assert r.level_dimensions == [(64, 64)] and r.level_downsamples == [1.0]
        assert np.array_equal(np.asarray(r.read(8, 4, 16, 10)), np.asarray(load_rgb(png))[4:14, 8:24])
        assert r.thumbnail(2).size == (32, 32)
    assert open_reader(png, "image", mpp=0.5).mpp == 0.5


def test_prepare_cuts_the_same_field_of_view_from_two_magnifications(tmp_path, two_magnifications):
    a, b, classes = two_magnifications
    kw = dict(layout="wsi", slide_classes=str(classes), patch_px=128, patch_overlap=16, overview_px=256,
              overview_overlap=0, tile_px=128, min_tissue=0.0, target_mpp=0.5, val_fraction=0.0, test_fraction=0.0)
    prepare(_cfg(tmp_path / "ds40", [a], **kw), progress=False)
    prepare(_cfg(tmp_path / "ds20", [b], **kw), progress=False)
    rows = {m: read_manifest(tmp_path / f"ds{m}") for m in (40, 20)}
    src_mpp = {40: 0.25, 20: 0.5}

    def fov(m):  # level -> sorted (x, y, width, height) in microns
        out = {}
        for r in rows[m]:
            box = tuple(round(int(r[k]) * src_mpp[m], 6) for k in ("x", "y", "width", "height"))
            out.setdefault(r["level"], []).append(box)
        return {lv: sorted(v) for lv, v in out.items()}

    assert fov(40) == fov(20)
    # 256 um field: patch regions 128 px at 0.5 um/px = 64 um, overlap 8 um -> starts 0, 56, 112, 168, 192 um
    assert sorted({x for x, _, _, _ in fov(40)["patch"]}) == [0, 56, 112, 168, 192]
    assert len(fov(40)["patch"]) == 25 and len(fov(40)["overview"]) == 4
    assert {r["width"] for r in rows[40] if r["level"] == "patch"} == {"256"}  # 64 um at 0.25 um/px
    assert {r["width"] for r in rows[20] if r["level"] == "patch"} == {"128"}
    for m in (40, 20):
        # the tile's scale: patch 64 um / 128 px = 0.5 um/px; overview 128 um / 128 px = 1.0 um/px
        assert {(r["level"], float(r["mpp"])) for r in rows[m]} == {("patch", 0.5), ("overview", 1.0)}
        info = read_dataset_info(tmp_path / f"ds{m}")
        assert info["mpp"] == {"patch": 0.5, "overview": 1.0} and "mpp_note" not in info
        assert info["options"]["target_mpp"] == 0.5
    by_pos = {(r["level"], int(r["x"]) * 0.25, int(r["y"]) * 0.25): r["path"] for r in rows[40]}
    for r in rows[20]:
        other = by_pos[(r["level"], int(r["x"]) * 0.5, int(r["y"]) * 0.5)]
        t20 = np.asarray(load_rgb(tmp_path / "ds20" / r["path"]), dtype=int)
        t40 = np.asarray(load_rgb(tmp_path / "ds40" / other), dtype=int)
        assert t20.shape == t40.shape == (128, 128, 3)
        assert np.abs(t20 - t40).max() <= 2


def test_without_target_mpp_regions_stay_level0_pixels_and_record_the_scale(tmp_path, two_magnifications):
    a, b, classes = two_magnifications
    kw = dict(layout="wsi", slide_classes=str(classes), patch_px=128, patch_overlap=0, overview_px=256,
              overview_overlap=0, tile_px=64, min_tissue=0.0, val_fraction=0.0, test_fraction=0.0)
    prepare(_cfg(tmp_path / "one", [a], **kw), progress=False)
    rows = read_manifest(tmp_path / "one")
    assert {r["width"] for r in rows if r["level"] == "patch"} == {"128"}  # level-0 pixels, as before
    assert len([r for r in rows if r["level"] == "patch"]) == 64
    # 128 px x 0.25 um/px / 64 px = 0.5 um/px; overview 256 x 0.25 / 64 = 1.0
    assert {(r["level"], float(r["mpp"])) for r in rows} == {("patch", 0.5), ("overview", 1.0)}
    assert read_dataset_info(tmp_path / "one")["mpp"] == {"patch": 0.5, "overview": 1.0}
    # both slides: the same pixel regions are different fields of view; the scale is then not one number
    prepare(_cfg(tmp_path / "both", [a, b], **kw), progress=False)
    info = read_dataset_info(tmp_path / "both")
    assert info["mpp"] == {"patch": None, "overview": None} and "differ" in info["mpp_note"]
    assert {float(r["mpp"]) for r in read_manifest(tmp_path / "both") if r["level"] == "patch"} == {0.5, 1.0}


def test_image_folders_take_mpp_and_target_mpp_needs_a_scale(tmp_path, capsys):
    root = _class_folders(tmp_path / "imgs", n_per_class=1, size=(200, 160))
    with pytest.raises(PathUpError) as e:
        prepare(_cfg(tmp_path / "no", [root], target_mpp=0.5), progress=False)
    assert "\n" not in str(e.value) and "img0.png" in str(e.value) and "--mpp" in str(e.value)
    rc = main(["prepare", str(root), "--out", str(tmp_path / "cli"), "--target-mpp", "0.5", "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "img0.png" in err and "--mpp" in err
    # --mpp 0.25 and --target-mpp 0.5: a patch of 32 px at 0.5 um/px is 64 px of the image
    prepare(_cfg(tmp_path / "ok", [root], levels=["patch"], patch_px=32, patch_overlap=0, tile_px=32,
                 mpp=0.25, target_mpp=0.5, min_tissue=0.0), progress=False)
    rows = read_manifest(tmp_path / "ok")
    assert {r["width"] for r in rows} == {"64"} and {float(r["mpp"]) for r in rows} == {0.5}
    assert len(rows) == 2 * 4 * 3  # 200 x 160 px: x starts 0, 64, 128, 136; y starts 0, 64, 96
    info = read_dataset_info(tmp_path / "ok")
    assert info["mpp"] == {"patch": 0.5} and dataset_mpp(info) == {"patch": 0.5}
    # no scale known, no target: the manifest's mpp is empty and dataset.json says why
    prepare(_cfg(tmp_path / "plain", [root], levels=["patch"]), progress=False)
    info = read_dataset_info(tmp_path / "plain")
    assert info["mpp"] == {"patch": None} and "unknown" in info["mpp_note"]
    assert {r["mpp"] for r in read_manifest(tmp_path / "plain")} == {""}


def test_a_slide_without_a_scale_under_target_mpp_is_one_line_naming_it(tmp_path):
    path = _write_slide(tmp_path / "noscale.tif", _tissue_field(256), 0.5, resolution=False)
    classes = tmp_path / "c.csv"
    classes.write_text("slide,class\nnoscale,T\n")
    kw = dict(layout="wsi", slide_classes=str(classes), levels=["patch"], patch_px=64, patch_overlap=0, tile_px=64)
    with pytest.raises(PathUpError) as e:
        prepare(_cfg(tmp_path / "ds", [path], target_mpp=0.5, **kw), progress=False)
    assert "\n" not in str(e.value) and "noscale.tif" in str(e.value) and "--mpp" in str(e.value)
    prepare(_cfg(tmp_path / "ds2", [path], target_mpp=0.5, mpp=0.25, **kw), progress=False)
    assert {r["width"] for r in read_manifest(tmp_path / "ds2")} == {"128"}


def test_older_datasets_without_scale_fields_are_still_read(tmp_path):
    root = _class_folders(tmp_path / "imgs", n_per_class=1)
    prepare(_cfg(tmp_path / "ds", [root]), progress=False)
    info_file = tmp_path / "ds" / "dataset.json"
    info = json.loads(info_file.read_text())
    del info["mpp"], info["mpp_note"]
    info_file.write_text(json.dumps(info))
    assert dataset_mpp(read_dataset_info(tmp_path / "ds")) == {"patch": None, "overview": None}


def test_the_shipped_svs_at_its_own_scale(tmp_path, sample_wsi):
    classes = tmp_path / "slides.csv"
    classes.write_text(f"slide,class\n{sample_wsi.name},IC\n")
    prepare(_cfg(tmp_path / "ds", [sample_wsi], slide_classes=str(classes), levels=["overview"], overview_px=256,
                 overview_overlap=0, tile_px=64, target_mpp=4.0), progress=False)
    rows = read_manifest(tmp_path / "ds")
    # 0.499 um/px (Aperio MPP): 256 px at 4 um/px = 1024 um = round(2052.1) = 2052 level-0 px
    assert rows and {r["width"] for r in rows} == {"2052"} and read_dataset_info(tmp_path / "ds")["mpp"] == {
        "overview": 16.0}


def test_state_written_with_the_older_option_names_still_resumes(tmp_path):
    root = _class_folders(tmp_path / "imgs", n_per_class=1)
    s = prepare(_cfg(tmp_path / "ds", [root]), progress=False)
    meta = tmp_path / "ds" / ".prepare" / "state.json"
    state = json.loads(meta.read_text())
    old = {"patch_px": "patch_size", "overview_px": "overview_size", "tile_px": "tile_size"}
    state["options"] = {old.get(k, k): v for k, v in state["options"].items()}
    assert "patch_size" in state["options"] and "target_mpp" not in state["options"]
    meta.write_text(json.dumps(state))
    again = prepare(_cfg(tmp_path / "ds", [root]), progress=False)
    assert again.n_resumed == s.n_sources and again.tiles == s.tiles
    assert "patch_px" in json.loads(meta.read_text())["options"]
