"""``pathup prepare`` end to end: layouts, image modes, tissue filter, cap, splits, resume, WSI, bad input."""

import csv
import shutil

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from pathup.cli import main
from pathup.config import from_dict, load_yaml
from pathup.data.dataset import TileDataset
from pathup.data.manifest import MANIFEST_COLUMNS, read_dataset_info, read_manifest
from pathup.data.prepare import PrepareConfig, prepare
from pathup.errors import PathUpError
from pathup.io import load_rgb


def _cfg(out, sources, **kw):
    base = dict(out=str(out), sources=[str(s) for s in sources], patch_px=64, patch_overlap=8,
                overview_px=128, overview_overlap=16, tile_px=32, workers=1)
    base.update(kw)
    return PrepareConfig(**base)


def _tissue(w, h, seed=0):
    rng = np.random.default_rng(seed)
    base = np.array([200, 120, 180]) + rng.integers(-40, 40, (h, w, 3))
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")


def _class_folders(root, n_per_class=3, classes=("alpha", "beta"), size=(150, 100)):
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            _tissue(*size, seed=ci * 10 + i).save(root / c / f"img{i}.png")
    return root


def _subset_csv(tmp_path, sample_breakhis, n=2, split=False):
    rows = list(csv.DictReader((sample_breakhis / "MANIFEST.csv").open()))
    by_class = {}
    for r in rows:
        by_class.setdefault(r["class"], []).append(r)
    path = tmp_path / "subset.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "class", "patient", "slide"] + (["split"] if split else []))
        for c, rs in sorted(by_class.items()):
            for j, r in enumerate(rs[:n]):
                w.writerow([str(sample_breakhis / r["path"]), c, r["patient"], r["slide"]]
                           + ([("train", "test")[j % 2]] if split else []))
    return path


def test_sample_folder_layout_end_to_end(tmp_path, sample_breakhis):
    out = tmp_path / "ds"
    summary = prepare(_cfg(out, [sample_breakhis], patch_px=230, patch_overlap=0, overview_px=460,
                           overview_overlap=0, tile_px=32, val_fraction=0.3, test_fraction=0.3), progress=False)
    rows = read_manifest(out)
    assert set(MANIFEST_COLUMNS) <= set(rows[0])
    info = read_dataset_info(out)
    assert info["classes"] == ["ductal_carcinoma", "fibroadenoma", "mucinous_carcinoma", "papillary_carcinoma"]
    assert info["levels"] == ["patch", "overview"] and info["tile_size"] == 32
    assert from_dict(PrepareConfig, load_yaml(out / "config.yaml")).patch_px == 230
    # without overlap the starts are 0, s, 2s, ... below L - s, then L - s (e.g. 700 at 230: 0,230,460,470)
    starts = lambda length, s: sorted(set(range(0, max(1, length - s), s)) | {max(0, length - s)})  # noqa: E731
    per_source = {}
    for r in rows:
        per_source.setdefault((r["source"], r["level"]), set()).add((int(r["x"]), int(r["y"])))
    n_grid = 0
    for img in sorted(sample_breakhis.glob("*/*.jpg")):
        W, H = Image.open(img).size
        for level, s in (("patch", 230), ("overview", 460)):
            grid = {(x, y) for x in starts(W, s) for y in starts(H, s)}
            assert per_source.get((str(img), level), set()) <= grid
            n_grid += len(grid)
    assert n_grid >= 24 * (8 + 2)
    assert {src for src, _ in per_source} <= {str(p) for p in sample_breakhis.glob("*/*.jpg")}
    assert len(rows) + sum(summary.dropped_background.values()) == n_grid
    assert summary.n_tiles == len(rows)
    # patients parsed from BreakHis names agree with the shipped MANIFEST.csv
    truth = {r["path"].split("/")[-1]: r["patient"] for r in csv.DictReader((sample_breakhis / "MANIFEST.csv").open())}
    sides = {}
    for r in rows:
        assert r["patient"] == truth[r["source"].split("/")[-1]]
        sides.setdefault(r["patient"], set()).add(r["split"])
    assert all(len(s) == 1 for s in sides.values())
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    assert rows[0]["prompt"] == f"{rows[0]['class'].replace('_', ' ')}, patch"
    # the dataset yields tiles in [-1, 1] with the right class id
    ds = TileDataset(out, split=None, level="overview")
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert -1.0 <= float(item["image"].min()) and float(item["image"].max()) <= 1.0
    assert ds.classes[item["class_id"]] == item["class_name"] and item["level"] == "overview"
    table = summary.table()
    assert "ductal_carcinoma" in table and "background tiles dropped" in table


def test_patch_tiles_are_exact_crops_and_csv_split_kept(tmp_path, sample_breakhis):
    csv_path = _subset_csv(tmp_path, sample_breakhis, n=2, split=True)
    out = tmp_path / "ds"
    prepare(_cfg(out, [csv_path], levels=["patch"], patch_px=96, patch_overlap=0, tile_px=96,
                 min_tissue=0.0, max_per_class=0), progress=False)
    rows = read_manifest(out)
    given = {r["path"]: r["split"] for r in csv.DictReader(csv_path.open())}
    assert all(r["split"] == given[r["source"]] for r in rows)
    assert len(rows) == 8 * 8 * 5  # 700 x 460 at 96 px, no overlap: 8 x 5 tiles each, nothing dropped
    for r in rows[::37]:
        x, y = int(r["x"]), int(r["y"])
        ref = np.asarray(load_rgb(r["source"]).crop((x, y, x + 96, y + 96)))
        assert np.array_equal(np.asarray(load_rgb(out / r["path"])), ref)


def test_shipped_manifest_as_csv_source(tmp_path, sample_breakhis):
    manifest = sample_breakhis / "MANIFEST.csv"
    out = tmp_path / "ds"
    s = prepare(_cfg(out, [manifest], levels=["overview"], overview_px=460, overview_overlap=0, min_tissue=0.0,
                     split_by="slide", val_fraction=0.25, test_fraction=0.25), progress=False)
    listed = {str((sample_breakhis / r["path"]).resolve()): r for r in csv.DictReader(manifest.open())}
    rows = read_manifest(out)
    assert len(rows) == s.n_tiles == 24 * 2  # 700 x 460 (or 456) at 460 px: two overview tiles each
    assert {r["source"] for r in rows} == set(listed)
    sides = {}
    for r in rows:
        given = listed[r["source"]]
        assert (r["patient"], r["slide"], r["class"]) == (given["patient"], given["slide"], given["class"])
        sides.setdefault(r["slide"], set()).add(r["split"])
    assert all(len(v) == 1 for v in sides.values()) and len({r["split"] for r in rows}) == 3


def test_bracs_layout_keeps_split_and_class_order(tmp_path):
    root = tmp_path / "BRACS_RoI"
    for split in ("train", "val", "test"):
        for k, c in ((0, "N"), (5, "DCIS")):
            d = root / split / f"{k}_{c}"
            d.mkdir(parents=True)
            for i in range(2):
                _tissue(70, 90, seed=hash((split, c, i)) % 1000).save(d / f"BRACS_{100 + i}_{c}_{i}.png")
    out = tmp_path / "ds"
    summary = prepare(_cfg(out, [root]), progress=False)
    rows = read_manifest(out)
    assert read_dataset_info(out)["classes"] == ["N", "DCIS"]  # BRACS k order, not alphabetical
    assert all(f"/{r['split']}/" in r["source"] for r in rows)
    assert {r["slide"] for r in rows} == {"BRACS_100", "BRACS_101"}
    assert rows[0]["prompt"].startswith("normal breast tissue, ") or rows[0]["prompt"].startswith("ductal")
    assert all(summary.tiles.get((c, lv, s)) for c in ("N", "DCIS") for lv in ("patch", "overview")
               for s in ("train", "val", "test"))


def test_image_modes_become_rgb8(tmp_path):
    root = tmp_path / "modes"
    (root / "c").mkdir(parents=True)
    rgb = np.asarray(_tissue(80, 70))
    Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]), "RGBA").save(root / "c" / "rgba.png")
    Image.fromarray(rgb).convert("P").save(root / "c" / "palette.png")
    Image.fromarray(rgb[..., 0]).save(root / "c" / "gray.png")
    tifffile.imwrite(root / "c" / "deep.tif", (rgb.astype(np.uint16) * 257))  # 16-bit RGB TIFF
    out = tmp_path / "ds"
    prepare(_cfg(out, [root], levels=["patch"], patch_px=70, patch_overlap=0, tile_px=70, min_tissue=0.0),
            progress=False)
    rows = {r["source"].split("/")[-1]: r for r in read_manifest(out) if r["x"] == "0" and r["y"] == "0"}
    assert set(rows) == {"rgba.png", "palette.png", "gray.png", "deep.tif"}
    for name, r in rows.items():
        with Image.open(out / r["path"]) as im:
            assert im.mode == "RGB" and im.size == (70, 70)
    assert np.array_equal(np.asarray(load_rgb(out / rows["deep.tif"]["path"])), rgb[:, :70])  # 16 -> 8 bit
    assert np.array_equal(np.asarray(load_rgb(out / rows["rgba.png"]["path"])), rgb[:, :70])  # opaque alpha
    gray = np.asarray(load_rgb(out / rows["gray.png"]["path"]))
    assert np.array_equal(gray[..., 1], rgb[:, :70, 0]) and np.array_equal(gray[..., 0], gray[..., 2])


def test_tissue_filter_drops_blank_tiles(tmp_path):
    root = tmp_path / "half"
    (root / "c").mkdir(parents=True)
    a = np.asarray(_tissue(128, 64)).copy()
    a[:, 64:] = 250  # right half is white glass
    Image.fromarray(a).save(root / "c" / "half.png")
    out = tmp_path / "ds"
    s = prepare(_cfg(out, [root], levels=["patch"], patch_px=32, patch_overlap=0, tile_px=32), progress=False)
    xs = sorted({int(r["x"]) for r in read_manifest(out)})
    assert xs == [0, 32] and s.dropped_background == {"patch": 4}
    assert all(float(r["tissue"]) > 0.9 for r in read_manifest(out))
    s2 = prepare(_cfg(tmp_path / "all", [root], levels=["patch"], patch_px=32, patch_overlap=0, tile_px=32,
                      min_tissue=0.0), progress=False)
    assert s2.n_tiles == 8 and s2.dropped_background == {"patch": 0}


def test_cap_per_class_and_level_is_seeded(tmp_path):
    root = _class_folders(tmp_path / "imgs", n_per_class=2)
    sets = []
    for seed in (0, 0, 1):
        out = tmp_path / f"ds{len(sets)}"
        s = prepare(_cfg(out, [root], max_per_class=5, split_by="none", seed=seed), progress=False)
        # 150 x 100 images: 3 x 2 patch tiles (64/8) and 2 x 1 overview tiles (128/16) each
        assert s.tiles == {(c, lv, "train"): 5 if lv == "patch" else 4 for c in ("alpha", "beta")
                           for lv in ("patch", "overview")}
        assert s.capped == {"patch": 2 * (2 * 6 - 5), "overview": 0}
        sets.append({(r["source"], r["level"], r["x"], r["y"]) for r in read_manifest(out)})
    assert sets[0] == sets[1] and sets[0] != sets[2]


def test_resume_skips_finished_sources(tmp_path, monkeypatch):
    import pathup.data.prepare as prep

    root = _class_folders(tmp_path / "imgs", n_per_class=3)
    ref = tmp_path / "ref"
    prepare(_cfg(ref, [root]), progress=False)
    out = tmp_path / "ds"
    real, calls = prep.write_source, []

    def interrupted(item, *a):
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append(item.key)
        return real(item, *a)

    monkeypatch.setattr(prep, "write_source", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(_cfg(out, [root]), progress=False)
    assert not (out / "manifest.csv").exists()
    done_before = list(calls)
    calls.clear()
    monkeypatch.setattr(prep, "write_source", lambda item, *a: (calls.append(item.key), real(item, *a))[1])
    s = prepare(_cfg(out, [root]), progress=False)
    assert len(calls) == 2 and not set(calls) & set(done_before) and s.n_resumed == 4
    strip = lambda rows: [{k: v for k, v in r.items()} for r in rows]  # noqa: E731
    assert strip(read_manifest(out)) == strip(read_manifest(ref))
    # a finished dataset: everything is skipped, no tile is rewritten
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "tiles").rglob("*.png")}
    calls.clear()
    s = prepare(_cfg(out, [root]), progress=False)
    assert calls == [] and s.n_resumed == 6
    assert mtimes == {p: p.stat().st_mtime_ns for p in (out / "tiles").rglob("*.png")}
    # other options into the same folder: refused, unless --overwrite
    with pytest.raises(PathUpError, match="other options patch_px"):
        prepare(_cfg(out, [root], patch_px=48), progress=False)
    s = prepare(_cfg(out, [root], patch_px=48, overwrite=True), progress=False)
    assert s.n_resumed == 0 and all(r["width"] == "48" for r in read_manifest(out) if r["level"] == "patch")


def test_workers_do_not_change_the_result(tmp_path):
    root = _class_folders(tmp_path / "imgs", n_per_class=2)
    prepare(_cfg(tmp_path / "one", [root], workers=1), progress=False)
    prepare(_cfg(tmp_path / "two", [root], workers=2), progress=False)
    assert read_manifest(tmp_path / "one") == read_manifest(tmp_path / "two")
    for r in read_manifest(tmp_path / "one")[:3]:
        assert (tmp_path / "one" / r["path"]).read_bytes() == (tmp_path / "two" / r["path"]).read_bytes()


def test_wsi_source_on_the_shipped_svs(tmp_path, sample_wsi):
    import tiffslide

    classes = tmp_path / "slides.csv"
    classes.write_text(f"slide,class,patient\n{sample_wsi.name},IC,p1\n")
    out = tmp_path / "ds"
    s = prepare(_cfg(out, [sample_wsi], slide_classes=str(classes), patch_px=512, patch_overlap=0,
                     overview_px=1024, overview_overlap=0, tile_px=64), progress=False)
    rows = read_manifest(out)
    # 2220 x 2967: patch grid 5 x 6 = 30, overview grid 3 x 3 = 9 before the tissue filter
    assert len([r for r in rows if r["level"] == "patch"]) + s.dropped_background["patch"] == 30
    assert len([r for r in rows if r["level"] == "overview"]) + s.dropped_background["overview"] == 9
    assert {r["slide"] for r in rows} == {"cmu-1-small-region"} and {r["patient"] for r in rows} == {"p1"}
    r = next(r for r in rows if r["level"] == "patch")
    x, y = int(r["x"]), int(r["y"])
    slide = tiffslide.TiffSlide(str(sample_wsi))
    ref = slide.read_region((x, y), 0, (512, 512)).convert("RGB").resize((64, 64), Image.BOX)
    assert np.abs(np.asarray(load_rgb(out / r["path"]), dtype=int) - np.asarray(ref, dtype=int)).max() <= 1


def test_descriptions_go_into_prompts(tmp_path):
    root = _class_folders(tmp_path / "imgs", n_per_class=1)
    desc = tmp_path / "desc.yaml"
    desc.write_text("alpha: dense alpha lesion\n")
    out = tmp_path / "ds"
    prepare(_cfg(out, [root], descriptions=str(desc)), progress=False)
    prompts = {(r["class"], r["level"]): r["prompt"] for r in read_manifest(out)}
    assert prompts[("alpha", "overview")] == "dense alpha lesion, overview"
    assert prompts[("beta", "patch")] == "beta, patch"
    assert read_dataset_info(out)["descriptions"] == {"alpha": "dense alpha lesion"}
    desc.write_text("gamma: nope\n")
    with pytest.raises(PathUpError, match="unknown class.*gamma"):
        prepare(_cfg(tmp_path / "ds2", [root], descriptions=str(desc)), progress=False)


# --- bad input ------------------------------------------------------------------------------------


def _one_line(err):
    text = str(err.value)
    assert "\n" not in text
    return text


def test_missing_unknown_and_empty_sources(tmp_path):
    with pytest.raises(PathUpError) as e:
        prepare(_cfg(tmp_path / "o", [tmp_path / "nope"]), progress=False)
    assert "nope" in _one_line(e)
    with pytest.raises(PathUpError, match="allowed: auto, folders, bracs, csv, wsi"):
        from_dict(PrepareConfig, {"out": "x", "layout": "imagenet"})
    single = tmp_path / "one.png"
    _tissue(10, 10).save(single)
    with pytest.raises(PathUpError, match="cannot tell the layout of .*one.png"):
        prepare(_cfg(tmp_path / "o", [single]), progress=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PathUpError, match="cannot tell the layout"):
        prepare(_cfg(tmp_path / "o", [empty]), progress=False)
    root = _class_folders(tmp_path / "imgs", n_per_class=1)
    (root / "gamma").mkdir()
    with pytest.raises(PathUpError) as e:
        prepare(_cfg(tmp_path / "o", [root]), progress=False)
    assert "class folder" in _one_line(e) and "gamma" in str(e.value)
    with pytest.raises(PathUpError, match="not in the BRACS layout"):
        prepare(_cfg(tmp_path / "o", [root], layout="bracs"), progress=False)


def test_csv_class_with_no_images(tmp_path):
    root = _class_folders(tmp_path / "imgs", n_per_class=1)
    m = tmp_path / "m.csv"
    m.write_text(f"path,class\n{root}/alpha/img0.png,alpha\nmissing/a.png,beta\nmissing/b.png,beta\n")
    with pytest.raises(PathUpError) as e:
        prepare(_cfg(tmp_path / "o", [m]), progress=False)
    assert "'beta' have no images" in _one_line(e) and "m.csv" in str(e.value)
    m.write_text("file,label\n")
    with pytest.raises(PathUpError, match="no rows"):
        prepare(_cfg(tmp_path / "o", [m]), progress=False)
    m.write_text("name,label\nx.png,a\n")
    with pytest.raises(PathUpError, match="no image path column"):
        prepare(_cfg(tmp_path / "o", [m]), progress=False)


def test_bad_files_are_skipped_and_counted_or_fatal_with_strict(tmp_path, sample_breakhis, caplog):
    root = _class_folders(tmp_path / "imgs", n_per_class=2)
    (root / "alpha" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    jpg = next(sample_breakhis.glob("fibroadenoma/*.jpg")).read_bytes()
    (root / "beta" / "truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    out = tmp_path / "ds"
    s = prepare(_cfg(out, [root]), progress=False)
    assert sorted(b.path.split("/")[-1] for b in s.bad_files) == ["corrupt.png", "truncated.jpg"]
    assert "bad files skipped: 2" in s.table()
    assert "truncated.jpg" in caplog.text and "corrupt.png" in caplog.text
    assert {r["source"].split("/")[-1] for r in read_manifest(out)} == {"img0.png", "img1.png"}
    assert len(read_dataset_info(out)["bad_files"]) == 2
    with pytest.raises(PathUpError) as e:
        prepare(_cfg(tmp_path / "strict", [root], strict=True), progress=False)
    assert "--strict" in _one_line(e) and ("corrupt.png" in str(e.value) or "truncated.jpg" in str(e.value))
    # a CSV row naming a missing file is a bad file too
    m = tmp_path / "m.csv"
    m.write_text(f"path,class\n{root}/alpha/img0.png,alpha\n{root}/beta/img0.png,beta\ngone.png,beta\n")
    s = prepare(_cfg(tmp_path / "csv", [m]), progress=False)
    assert [b.path.split("/")[-1] for b in s.bad_files] == ["gone.png"]
    with pytest.raises(PathUpError, match="gone.png"):
        prepare(_cfg(tmp_path / "csv2", [m], strict=True), progress=False)


def test_unreadable_slide(tmp_path, sample_wsi):
    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(sample_wsi, slides / "good.svs")
    (slides / "broken.svs").write_bytes(b"II*\x00garbage" * 10)
    classes = tmp_path / "c.csv"
    classes.write_text("slide,class\ngood,IC\nbroken,N\n")
    kw = dict(slide_classes=str(classes), levels=["overview"], overview_px=1024, overview_overlap=0, tile_px=32)
    s = prepare(_cfg(tmp_path / "ds", [slides], **kw), progress=False)
    assert [b.path.split("/")[-1] for b in s.bad_files] == ["broken.svs"] and s.n_tiles > 0
    with pytest.raises(PathUpError) as e:
        prepare(_cfg(tmp_path / "ds2", [slides], strict=True, **kw), progress=False)
    assert "broken.svs" in _one_line(e)
    with pytest.raises(PathUpError, match="--slide-classes"):
        prepare(_cfg(tmp_path / "ds3", [slides / "good.svs"]), progress=False)


def test_cli_prints_table_and_one_line_errors(tmp_path, capsys):
    root = _class_folders(tmp_path / "imgs", n_per_class=1)
    out = tmp_path / "ds"
    rc = main(["prepare", str(root), "--out", str(out), "--patch-size", "64", "--patch-overlap", "8",
               "--overview-size", "128", "--overview-overlap", "16", "--tile-size", "32", "--workers", "1"])
    captured = capsys.readouterr()
    assert rc == 0 and "alpha" in captured.out and "background tiles dropped" in captured.out
    assert load_yaml(out / "config.yaml")["sources"] == [str(root)]
    rc = main(["prepare", str(tmp_path / "missing"), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("pathup prepare: error:") and "missing" in err
    with pytest.raises(SystemExit) as e:
        main(["prepare", str(root), "--out", str(out), "--layout", "imagenet"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
