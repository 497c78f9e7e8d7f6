"""``evaluate(cfg)`` and ``pathup evaluate`` end to end on real sample images with an offline extractor."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image, ImageFilter

from pathup.cli import main
from pathup.errors import PathUpError
from pathup.io import list_images, load_rgb
from pathup.metrics.evaluate import EvaluateConfig, build_samples, evaluate


def _cfg(tmp_path, real, fake, **kw):
    base = dict(data=str(real), fake=str(fake), out=str(tmp_path / "out" / "metrics.json"), features="random-cnn",
                overview_size=96, repeats=2, kid_subsets=10, cache_dir=str(tmp_path / "cache"), progress=False)
    base.update(kw)
    return EvaluateConfig(**base)


@pytest.fixture(scope="module")
def real(sample_breakhis, tmp_path_factory):
    """The 24 real sample images at a third of their size (233 x 153 PNG), to keep the tests fast."""
    out = tmp_path_factory.mktemp("real")
    for p in list_images(sample_breakhis):
        (out / p.parent.name).mkdir(exist_ok=True)
        load_rgb(p).resize((233, 153), Image.BICUBIC).save(out / p.parent.name / f"{p.stem}.png")
    return out


@pytest.fixture(scope="module")
def blurred(real, tmp_path_factory):
    """The real images, strongly blurred and tinted: a clearly different 'synthetic' set."""
    out = tmp_path_factory.mktemp("blurred")
    for p in list_images(real):
        img = load_rgb(p).filter(ImageFilter.GaussianBlur(3))
        arr = np.asarray(img).astype(np.float32) * np.array([1.0, 0.8, 1.1])
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(out / f"{p.stem}.png")
    return out


def test_identical_sets_score_perfectly_and_files_are_written(tmp_path, real):
    res = evaluate(_cfg(tmp_path, real, real))
    s = res["summary"]
    assert s["precision"]["mean"] == 1.0 and s["recall"]["mean"] == 1.0
    assert abs(s["fid"]["mean"]) < 1e-3
    assert s["n_real"]["mean"] == 24 and len(res["runs"]) == 2
    out = tmp_path / "out"
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["runs"][0]["fid"] == pytest.approx(res["runs"][0]["fid"])
    md = (out / "metrics.md").read_text()
    assert "| IP | IR | FID | KID x1000 |" in md and "not comparable" in md
    assert "features: random-cnn" in (out / "metrics.config.yaml").read_text()


def test_different_sets_score_worse_and_cache_is_used(tmp_path, real, blurred):
    same = evaluate(_cfg(tmp_path, real, real, repeats=1))
    cfg = _cfg(tmp_path, real, blurred, repeats=1)
    diff = evaluate(cfg)
    assert diff["summary"]["fid"]["mean"] > 10 * max(same["summary"]["fid"]["mean"], 1e-3)
    assert diff["summary"]["kid_x1000"]["mean"] > same["summary"]["kid_x1000"]["mean"]
    assert diff["summary"]["precision"]["mean"] < 1.0
    cached = sorted((tmp_path / "cache").glob("*.npy"))
    assert len(cached) == 2  # one file set each: the sample images (shared by both runs) and the blurred ones
    again = evaluate(cfg)
    assert again["runs"][0]["fid"] == diff["runs"][0]["fid"]
    assert sorted((tmp_path / "cache").glob("*.npy")) == cached
    # A changed file changes the cache key.
    fake2 = tmp_path / "fake2"
    shutil.copytree(blurred, fake2)
    first = sorted(fake2.glob("*.png"))[0]
    Image.open(first).transpose(Image.FLIP_LEFT_RIGHT).save(first)
    evaluate(_cfg(tmp_path, real, fake2, repeats=1))
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3


def test_patch_level_crops_change_with_the_seed(tmp_path, real):
    paths = list_images(real)
    a = build_samples(paths, "patch", overview_size=512, crop_px=64, crops_per_image=3, num_samples=0, seed=0)
    b = build_samples(paths, "patch", overview_size=512, crop_px=64, crops_per_image=3, num_samples=0, seed=1)
    assert len(a) == 72 and all(s.box[2:] == (64, 64) for s in a)
    assert all(0 <= s.box[0] <= 233 - 64 and 0 <= s.box[1] <= 153 - 64 for s in a)
    assert [s.box for s in a] != [s.box for s in b]
    sub = build_samples(paths, "patch", overview_size=512, crop_px=64, crops_per_image=3, num_samples=20, seed=0)
    assert len(sub) == 20
    res = evaluate(_cfg(tmp_path, real, real, level="patch", crop_px=64,
                        crops_per_image=2, repeats=2))
    assert res["summary"]["n_fake"]["mean"] == 48
    assert res["runs"][0]["fid"] != res["runs"][1]["fid"] and res["summary"]["fid"]["std"] > 0
    with pytest.raises(PathUpError, match="smaller than --crop-px 512"):
        evaluate(_cfg(tmp_path, real, real, level="patch", crop_px=512))


def _prepared_dataset(root, src):
    """A small prepared dataset (manifest.csv + dataset.json) over copies of the sample images."""
    (root / "tiles").mkdir(parents=True)
    rows = []
    for i, p in enumerate(list_images(src)):
        load_rgb(p).crop((0, 0, 128, 128)).save(root / "tiles" / f"t{i}.png")
        rows.append({"path": f"tiles/t{i}.png", "class": p.parent.name, "level": "patch" if i % 2 else "overview",
                     "prompt": p.parent.name, "source": p.name, "patient": "", "slide": "",
                     "split": "test" if i < 16 else "train", "x": 0, "y": 0, "width": 128, "height": 128})
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (root / "dataset.json").write_text(json.dumps({"classes": sorted({r["class"] for r in rows})}))
    return root


def test_manifest_input_filters_split_and_level(tmp_path, real):
    ds = _prepared_dataset(tmp_path / "ds", real)
    res = evaluate(_cfg(tmp_path, ds, ds / "manifest.csv", level="overview", split="test", repeats=1))
    assert res["real"]["kind"] == "manifest" and res["real"]["n_images"] == 8  # even rows among the first 16
    assert res["summary"]["precision"]["mean"] == 1.0
    res = evaluate(_cfg(tmp_path, ds, real, level="overview", split="all", repeats=1))
    assert res["real"]["n_images"] == 12 and res["fake"]["kind"] == "folder"
    with pytest.raises(PathUpError, match="split 'dev'"):
        evaluate(_cfg(tmp_path, ds, ds, split="dev"))


def test_seam_from_sidecar_and_from_options(tmp_path, sample_breakhis, real):
    fake = tmp_path / "gen"
    fake.mkdir()
    for i, p in enumerate(list_images(sample_breakhis)[:5]):
        load_rgb(p).crop((0, 0, 448, 448)).save(fake / f"g{i}.png")
        (fake / f"g{i}.json").write_text(json.dumps({"patch_size": 14, "overlap": 0, "vae_scale_factor": 8}))
    res = evaluate(_cfg(tmp_path, real, fake, repeats=1, seam=True))
    assert abs(res["seam"]["fake"]["mean"] - 1.0) < 0.15 and res["seam"]["fake"]["n"] == 5
    res2 = evaluate(_cfg(tmp_path, real, fake, repeats=1, seam=True, seam_patch=112, seam_stride=112))
    assert res2["seam"]["fake"]["mean"] == pytest.approx(res["seam"]["fake"]["mean"])
    assert "seam" in (tmp_path / "out" / "metrics.md").read_text()
    (fake / "g0.json").unlink()
    with pytest.raises(PathUpError, match="no sidecar g0.json"):
        evaluate(_cfg(tmp_path, real, fake, repeats=1, seam=True))


def test_bad_input_gives_one_line_errors(tmp_path, real, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PathUpError, match="no images found"):
        evaluate(_cfg(tmp_path, real, empty))
    few = tmp_path / "few"
    few.mkdir()
    for p in list_images(real)[:3]:
        shutil.copy(p, few)
    with pytest.raises(PathUpError, match="needs at least 4 samples"):
        evaluate(_cfg(tmp_path, real, few))
    bad = tmp_path / "bad"
    shutil.copytree(few, bad)
    shutil.copy(list_images(real)[5], bad)
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")
    with pytest.raises(PathUpError, match="cannot read image .*broken.png"):
        evaluate(_cfg(tmp_path, real, bad, num_workers=1))
    out = tmp_path / "cli" / "m.json"
    out.parent.mkdir()
    out.write_text("keep me")
    rc = main(["evaluate", "--real", str(real), "--fake", str(empty), "--out", str(out),
               "--features", "random-cnn"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("pathup evaluate: error: --fake")
    assert out.read_text() == "keep me"  # nothing already written is lost


def test_cli_writes_metrics(tmp_path, real, blurred, capsys):
    out = tmp_path / "cli" / "metrics.json"
    rc = main(["evaluate", "--real", str(real), "--fake", str(blurred), "--out", str(out),
               "--features", "color-stats", "--repeats", "2", "--overview-size", "64", "--kid-subsets", "5",
               "--cache-dir", str(tmp_path / "c"), "--no-progress"])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["features"]["dim"] == 152 and len(res["runs"]) == 2
    assert "KID x1000" in capsys.readouterr().out


def test_data_and_crop_px_names_with_their_older_spellings(tmp_path, capsys):
    """``--data`` / ``crop_px`` are the names; ``--real`` / ``patch_size`` (and ``--patch-size``) still work."""
    import argparse

    from pathup.config import add_config_args, config_from_args, from_dict

    cfg = from_dict(EvaluateConfig, {"real": "r", "fake": "f", "patch_size": 64})
    assert (cfg.data, cfg.crop_px) == ("r", 64)
    parser = argparse.ArgumentParser()
    add_config_args(parser, EvaluateConfig)
    new = config_from_args(EvaluateConfig, parser.parse_args(["--data", "d", "--fake", "f", "--crop-px", "32"]))
    old = config_from_args(EvaluateConfig, parser.parse_args(["--real", "d", "--fake", "f", "--patch-size", "32"]))
    assert new == old and (new.data, new.crop_px) == ("d", 32)
    assert "--real" not in parser.format_help() and "--patch-size" not in parser.format_help()
    rc = main(["evaluate", "--data", str(tmp_path / "nope"), "--fake", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("pathup evaluate: error: --data: not found")
