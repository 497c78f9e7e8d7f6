"""Option checks (finite numbers and ranges in the config layer, for every stage), class folders and the
resume rules of ``pathup generate`` / ``upscale``, evaluating generated folders, and the seam score on
flat or partly flat images."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from typing import Optional

import numpy as np
import pytest

from pathup.cli import main
import pathup.config as config_layer
from pathup.config import config_from_args, from_dict
from pathup.errors import PathUpError
from test_metrics_seam_features import _pasted_tiles


# ---------------------------------------------------------------------------------- option checks
@dataclasses.dataclass
class _Ranged:
    rate: float = dataclasses.field(default=0.5, metadata={"min": 0, "max": 1, "max_exclusive": True})
    pos: float = dataclasses.field(default=1.0, metadata={"min": 0, "min_exclusive": True})
    n: int = dataclasses.field(default=2, metadata={"min": 2})
    free: float = 1.0
    opt: Optional[float] = dataclasses.field(default=None, metadata={"min": 0})
    rates: list[float] = dataclasses.field(default_factory=lambda: [0.1], metadata={"min": 0})


@pytest.mark.parametrize("data,message", [
    ({"free": "nan"}, "free must be a finite number, got nan"),
    ({"free": float("inf")}, "free must be a finite number, got inf"),
    ({"free": "-inf"}, "free must be a finite number, got -inf"),
    ({"rate": 1.0}, "rate must be in [0, 1), got 1.0"),
    ({"rate": -0.1}, "rate must be in [0, 1), got -0.1"),
    ({"pos": 0}, "pos must be > 0, got 0.0"),
    ({"n": 1}, "n must be at least 2, got 1"),
    ({"opt": -1}, "opt must be at least 0, got -1.0"),
    ({"rates": [0.1, "nan"]}, "rates must be a finite number, got nan"),
    ({"rates": [0.1, -2]}, "rates must be at least 0, got -2.0"),
])
def test_config_layer_rejects_non_finite_and_out_of_range_values(data, message):
    with pytest.raises(PathUpError) as err:
        from_dict(_Ranged, data)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_config_validate_is_callable_from_python_and_accepts_valid_values():
    config_layer.validate(_Ranged())
    config_layer.validate(_Ranged(opt=None, rate=0.0, pos=1e-9, n=2))
    assert from_dict(_Ranged, {"rate": "0.25", "opt": 3}).opt == 3.0
    with pytest.raises(PathUpError, match="free must be a finite number"):
        config_layer.validate(_Ranged(free=math.nan))
    with pytest.raises(PathUpError, match=r"pos must be > 0"):
        config_layer.validate(_Ranged(pos=-1.0))


def test_config_yaml_nan_is_refused_naming_the_option(tmp_path):
    import argparse

    y = tmp_path / "c.yaml"
    y.write_text("free: .nan\n")
    with pytest.raises(PathUpError, match="free must be a finite number"):
        config_from_args(_Ranged, argparse.Namespace(config=str(y)))


@pytest.mark.parametrize("command", ["generate", "upscale"])
@pytest.mark.parametrize("value,message", [
    ("nan", "guidance must be a finite number, got nan"),
    ("inf", "guidance must be a finite number, got inf"),
    ("-1", "guidance must be in [0, 100], got -1.0"),
    ("1e9", "guidance must be in [0, 100], got 1000000000.0"),
])
def test_generate_and_upscale_refuse_bad_guidance_before_any_work(tmp_path, capsys, command, value, message):
    out = tmp_path / "out"
    if command == "generate":
        argv = ["generate", str(tmp_path / "no-model"), "--class", "x", "--out", str(out)]
    else:
        argv = ["upscale", str(tmp_path / "no.png"), "--model", str(tmp_path / "no-model"), "--class", "x",
                "--out", str(out)]
    rc = main([*argv, "--guidance", value])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and message in err, err
    assert not out.exists()


@pytest.mark.parametrize("field_name,value,message", [
    ("strength", float("nan"), "strength must be a finite number"),
    ("strength", 0.0, "strength must be in (0, 1]"),
    ("guidance", float("inf"), "guidance must be a finite number"),
    ("seed", -1, "seed must be in [0, 9223372036854775807], got -1"),
])
def test_sample_config_python_api_is_validated(field_name, value, message):
    from pathup.sample.config import SampleConfig, validate as sample_validate

    with pytest.raises(PathUpError, match=message.replace("(", r"\(").replace("[", r"\[")):
        sample_validate(SampleConfig(**{field_name: value}))


def test_evaluate_config_ranges_on_cli_and_in_python(tmp_path, capsys):
    from pathup.metrics.evaluate import EvaluateConfig, evaluate

    rc = main(["evaluate", "--real", str(tmp_path), "--fake", str(tmp_path), "--kid-subset-size", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "--kid-subset-size must be at least 2, got 0" in err
    with pytest.raises(PathUpError, match="kid_subset_size must be at least 2"):
        evaluate(EvaluateConfig(data=str(tmp_path), fake=str(tmp_path), kid_subset_size=1))
    with pytest.raises(PathUpError, match="seam_band must be at least 0"):
        from_dict(EvaluateConfig, {"real": "r", "fake": "f", "seam_band": -1})


def test_kid_subset_size_error_names_the_option():
    from pathup.metrics.kid import kid

    rng = np.random.default_rng(0)
    with pytest.raises(PathUpError, match="subset_size must be at least 2, got 0"):
        kid(rng.random((11, 4)), rng.random((12, 4)), subsets=2, subset_size=0)


@pytest.mark.parametrize("option,value,message", [
    ("val_fraction", "nan", "val_fraction must be a finite number"),
    ("test_fraction", "1.5", "test_fraction must be in [0, 1), got 1.5"),
    ("tissue_threshold", "inf", "tissue_threshold must be a finite number"),
    ("min_tissue", "-0.5", "min_tissue must be in [0, 1], got -0.5"),
    ("max_per_class", "-3", "max_per_class must be at least 0, got -3"),
])
def test_prepare_config_ranges(tmp_path, option, value, message):
    from pathup.data.prepare import PrepareConfig

    with pytest.raises(PathUpError) as err:
        from_dict(PrepareConfig, {"out": str(tmp_path / "ds"), option: value})
    assert message in str(err.value)


def test_every_float_option_of_every_stage_must_be_finite():
    """The finite check is generic: the training options get it without metadata of their own."""
    from pathup.train.config import TrainConfig

    for name in ("max_grad_norm", "weight_decay", "vae_lr", "vae_kl_weight", "guidance"):
        with pytest.raises(PathUpError, match=f"{name} must be a finite number"):
            from_dict(TrainConfig, {name: "nan"})


@pytest.mark.parametrize("method", ["overview", "upscale"])
def test_pipeline_stage_calls_refuse_non_finite_guidance(method):
    from pathup.sample.pipeline import PathUpPipeline

    pipe = PathUpPipeline(object(), model_name="unused", progress=False)  # the check comes before the model
    call = getattr(pipe, method)
    args = (np.zeros((8, 8, 3), np.uint8),) if method == "upscale" else ()
    for bad in (float("nan"), float("inf")):
        with pytest.raises(PathUpError, match="guidance must be a finite number"):
            call(*args, prompt="x", guidance=bad)


# -------------------------------------------------------------------------------------- class folders
GEN = dict(size="64", steps=2, latent_patch=8, latent_overlap=4, guidance=2.0)
CLASSES = ["a b", "a_b", "腫瘍", "良性"]


@pytest.fixture(scope="module")
def pipes():
    from pathup.model import build_ldm
    from pathup.prompts import PromptTable
    from pathup.sample.pipeline import PathUpPipeline

    ldm = build_ldm("tiny", PromptTable(CLASSES), seed=0)
    return PathUpPipeline(ldm, model_name="model-one", progress=False), \
        PathUpPipeline(ldm, model_name="model-two", progress=False)


def test_class_folder_names_are_injective_and_readable():
    from pathup.sample.generate import class_dirname

    assert class_dirname("a_b") == "a_b" and class_dirname("DCIS") == "DCIS"
    names = [class_dirname(c) for c in CLASSES + ["a  b", "a/b", "..", "class"]]
    assert len(set(names)) == len(names)
    assert names[0].startswith("a_b-") and len(names[0]) == len("a_b-") + 8
    assert all(n and "/" not in n and not n.startswith(".") for n in names)
    # deterministic across processes and runs (a SHA-256, not Python's salted hash): the hand-computed name
    assert class_dirname("a b") == "a_b-c8687a08"
    code = "from pathup.sample.generate import class_dirname; print(class_dirname('a b'))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "random"})
    assert run.stdout.strip() == "a_b-c8687a08"


def test_generate_keeps_colliding_classes_apart_and_reads_them_back(pipes, tmp_path):
    from pathup.sample import SampleConfig
    from pathup.sample.generate import generate_to_folder, read_generated

    pipe = pipes[0]
    out = tmp_path / "gen"
    cfg = SampleConfig(num=1, **GEN)
    for cls in CLASSES:
        res = generate_to_folder(pipe, cls, out, cfg, progress=False)
        assert len(res.written) == 1 and res.skipped == [], cls  # nobody's images were taken for its own
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(folders) == 4
    found = read_generated(out)
    finals = {(g.class_name, g.level) for g in found}
    assert finals == {(c, lv) for c in CLASSES for lv in ("upscaled", "overview")}
    for g in found:
        sidecar = json.loads(g.path.with_suffix(".json").read_text())
        assert sidecar["class"] == g.class_name
        assert g.seed == sidecar["seed"] == cfg.seed  # every class from the same seed: same-seed distance works


# ----------------------------------------------------------------------------------- resume rules
def test_generate_rerun_with_other_settings_or_model_is_refused_unless_overwrite(pipes, tmp_path):
    from pathup.sample import SampleConfig
    from pathup.sample.generate import GENERATE_SETTINGS, class_folder, generate_to_folder, pending_seeds

    one, two = pipes
    out = tmp_path / "gen"
    cfg = SampleConfig(num=1, **GEN)
    first = generate_to_folder(one, "a_b", out, cfg, progress=False)
    folder = class_folder(out, "a_b")
    assert (folder / GENERATE_SETTINGS).is_file()
    # More images with the same settings: resumes (the first is kept).
    more = generate_to_folder(one, "a_b", out, SampleConfig(num=2, **GEN), progress=False)
    assert more.skipped == first.written and len(more.written) == 1
    # Another model, or another option that changes the images: one line naming the folder and setting.
    with pytest.raises(PathUpError) as err:
        generate_to_folder(two, "a_b", out, cfg, progress=False)
    msg = str(err.value)
    assert "\n" not in msg and str(folder) in msg and "model" in msg and "--overwrite" in msg
    with pytest.raises(PathUpError, match=r"--guidance.*2\.0.*3\.0"):
        generate_to_folder(one, "a_b", out, SampleConfig(num=1, **{**GEN, "guidance": 3.0}), progress=False)
    with pytest.raises(PathUpError, match="--guidance"):
        pending_seeds(out, "a_b", SampleConfig(num=1, **{**GEN, "guidance": 3.0}), model="model-one")
    # Options that never change an image (device, patch batch) do not count.
    same = generate_to_folder(one, "a_b", out, SampleConfig(num=1, patch_batch="3", device="cpu", **GEN),
                              progress=False)
    assert same.written == [] and same.skipped == first.written
    # A folder from before the settings file: its sidecars are compared instead.
    (folder / GENERATE_SETTINGS).unlink()
    with pytest.raises(PathUpError, match="--steps"):
        generate_to_folder(one, "a_b", out, SampleConfig(num=1, **{**GEN, "steps": 3}), progress=False)
    # --overwrite replaces the folder's images.
    new = SampleConfig(num=1, overwrite=True, **{**GEN, "guidance": 3.0})
    res = generate_to_folder(two, "a_b", out, new, progress=False)
    assert res.written == first.written and res.skipped == []
    meta = json.loads(first.written[0].with_suffix(".json").read_text())
    assert meta["model"] == "model-two" and meta["options"]["guidance"] == 3.0
    assert sorted(p.name for p in folder.glob("*.png")) == [first.written[0].name]  # the seed-1 image is gone
    again = generate_to_folder(two, "a_b", out, SampleConfig(num=1, **{**GEN, "guidance": 3.0}), progress=False)
    assert again.skipped == first.written


def test_upscale_rerun_with_other_settings_is_refused_unless_overwrite(pipes, tmp_path):
    from PIL import Image

    from pathup.sample import SampleConfig
    from pathup.sample.generate import upscale_to_file

    one, two = pipes
    src = tmp_path / "ov.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(src)
    out = tmp_path / "up"
    first = upscale_to_file(one, src, "a b", out, SampleConfig(**GEN))
    assert len(first.written) == 1
    assert upscale_to_file(one, src, "a b", out, SampleConfig(**GEN)).skipped == first.written
    with pytest.raises(PathUpError, match="--strength"):
        upscale_to_file(one, src, "a b", out, SampleConfig(**{**GEN, "strength": 0.5}))
    with pytest.raises(PathUpError, match="model"):
        upscale_to_file(two, src, "a b", out, SampleConfig(**GEN))
    res = upscale_to_file(one, src, "a b", out, SampleConfig(overwrite=True, **{**GEN, "strength": 0.5}))
    assert res.written == first.written
    assert json.loads(first.written[0].with_suffix(".json").read_text())["options"]["strength"] == 0.5


def test_generate_cli_rerun_with_other_model_or_settings(pipes, tmp_path, capsys):
    import shutil

    from pathup.model import save_ldm

    model = save_ldm(pipes[0].ldm, tmp_path / "m1")
    other = tmp_path / "m2"
    shutil.copytree(model, other)
    out = tmp_path / "gen"
    base = ["generate", str(model), "--class", "a b", "--out", str(out), "--steps", "2", "--patch-size", "8",
            "--overlap", "4", "--size", "64", "--guidance", "2"]
    assert main(base) == 0
    capsys.readouterr()
    assert main(base) == 0 and "nothing to do" in capsys.readouterr().out
    for argv, what in ((["--guidance", "4"], "--guidance"), (["--size", "72"], "--size")):
        rc = main([*base, *argv])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and what in err and "--overwrite" in err, err
    rc = main(["generate", str(other), *base[2:]])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "model" in err and str(out) in err
    assert main(["generate", str(other), *base[2:], "--overwrite"]) == 0
    assert "wrote 1" in capsys.readouterr().out
    from pathup.sample.generate import class_folder

    sidecars = [p for p in class_folder(out, "a b").glob("*.json") if p.name != "generate_settings.json"]
    assert [json.loads(p.read_text())["model"] for p in sidecars] == [str(other)]


# ------------------------------------------------------------------ generated folders in evaluate
def _img(path, rng, size=64):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


@pytest.fixture
def gen_layout(tmp_path):
    """A ``generate`` folder written by hand: 2 classes x 3 seeds, large images and their overviews."""
    from pathup.sample.generate import class_dirname

    rng = np.random.default_rng(0)
    out = tmp_path / "gen"
    for cls in ("a b", "c"):
        folder = out / class_dirname(cls)
        for s in range(3):
            name = f"{class_dirname(cls)}_s{s}"
            opts = {"patch_size": 4, "overlap": 0}
            _img(folder / f"{name}.png", rng, 96)
            (folder / f"{name}.json").write_text(json.dumps({"class": cls, "level": "upscaled", "options": opts}))
            _img(folder / "overview" / f"{name}.png", rng, 64)
            (folder / "overview" / f"{name}.json").write_text(json.dumps({"class": cls, "level": "overview",
                                                                          "options": opts}))
        (folder / "generate_config.yaml").write_text("steps: 2\n")
    real = tmp_path / "real"
    for i in range(6):
        _img(real / f"r{i}.png", rng, 96)
    return out, real


def _eval_cfg(tmp_path, real, fake, **kw):
    from pathup.metrics.evaluate import EvaluateConfig

    base = dict(data=str(real), fake=str(fake), out=str(tmp_path / "m" / "metrics.json"), features="color-stats",
                overview_size=32, crop_px=32, repeats=1, kid_subsets=2, cache=False, progress=False)
    base.update(kw)
    return EvaluateConfig(**base)


def test_evaluate_counts_only_the_generated_images_of_the_level(tmp_path, gen_layout):
    from pathup.metrics.evaluate import evaluate

    fake, real = gen_layout
    res = evaluate(_eval_cfg(tmp_path, real, fake, level="patch", seam=True))
    assert res["fake"]["n_images"] == 6
    assert all("overview" not in p for p in res["seam"]["per_image"])
    assert res["fake"]["classes"] == {"a b": 3, "c": 3}
    res = evaluate(_eval_cfg(tmp_path, real, fake, level="overview"))
    assert res["fake"]["n_images"] == 6 and res["fake"]["classes"] == {"a b": 3, "c": 3}
    # Without sidecars the layout (``<class>/overview/`` beside generate_config.yaml) still tells them apart.
    for p in fake.rglob("*.json"):
        p.unlink()
    res = evaluate(_eval_cfg(tmp_path, real, fake, level="patch"))
    assert res["fake"]["n_images"] == 6
    # A plain folder of images is read as before.
    assert evaluate(_eval_cfg(tmp_path, real, real, level="patch"))["fake"]["n_images"] == 6


# ----------------------------------------------------------------------- seam score on flat images
@pytest.fixture(scope="module")
def tissue(sample_breakhis):
    from pathup.io import list_images, load_rgb

    return [np.asarray(load_rgb(p)) for p in list_images(sample_breakhis)[::6]]  # 4 images, 460 x 700


def test_seam_score_of_a_flat_image_is_nan_with_a_warning():
    from pathup.metrics.seam import seam_score

    with pytest.warns(UserWarning, match="flat"):
        assert math.isnan(seam_score(np.full((256, 256, 3), 128, np.uint8), 64, 64))


def test_seam_score_of_an_invisible_step_on_a_near_flat_image_is_small():
    from pathup.metrics.seam import seam_score

    rng = np.random.default_rng(0)
    img = np.full((256, 256, 3), 200.0) + (rng.random((256, 256, 1)) < 0.01)  # sparse +1 grey-level specks
    img[:, 64:] += 1  # a +1 grey-level step on the grid lines x = 64 and y = 64
    img[64:, :] += 1
    score = seam_score(img.astype(np.uint8), 64, 64)
    assert 0.8 < score < 1.3, score


def test_seam_score_is_local_glass_columns_do_not_move_it(tissue):
    from pathup.metrics.seam import seam_score

    rng = np.random.default_rng(1)

    def glass(img):  # white glass in bands of columns around some grid lines (their borders off the grid)
        img = img.copy()
        for c in (100, 300, 500):
            img[:, c - 40:c + 40] = 250
        return img

    for img in tissue:
        seamless = seam_score(glass(img), 100, 100)
        assert abs(seamless - 1.0) < 0.1, seamless  # the global background gave 0.82-0.87 here
        pasted = seam_score(glass(_pasted_tiles(img, 100, rng)), 100, 100)
        assert pasted > 1.4 and pasted > seamless + 0.4, pasted


def test_seam_score_is_bounded_where_only_part_of_a_line_is_textured(tissue):
    """A line through glass and tissue: the glass half neither divides by ~0 nor drowns the tissue half."""
    from pathup.metrics.seam import seam_score

    for tile in tissue:
        img = tile[:400, :400].copy()
        img[:150] = 250  # the top is glass (its border off the grid)
        score = seam_score(img, 100, 100)
        assert abs(score - 1.0) < 0.15, score


def test_evaluate_with_seam_survives_a_flat_image_and_writes_the_metrics(tmp_path, tissue, caplog):
    from PIL import Image

    from pathup.metrics.evaluate import evaluate

    real, fake = tmp_path / "real", tmp_path / "fake"
    real.mkdir()
    fake.mkdir()
    for i, img in enumerate(tissue):
        Image.fromarray(img[:256, :256]).save(real / f"r{i}.png")
        Image.fromarray(img[:256, 256:512]).save(fake / f"f{i}.png")
    Image.fromarray(np.full((256, 256, 3), 240, np.uint8)).save(fake / "flat.png")
    Image.fromarray(tissue[0][200:456, 300:556]).save(real / "r9.png")
    cfg = _eval_cfg(tmp_path, real, fake, seam=True, seam_patch=64, seam_stride=64)
    with pytest.warns(UserWarning, match="flat"):
        res = evaluate(cfg)
    assert res["seam"]["fake"]["n"] == 4 and abs(res["seam"]["fake"]["mean"] - 1.0) < 0.2
    on_disk = json.loads((tmp_path / "m" / "metrics.json").read_text())  # valid JSON: no bare NaN
    assert on_disk["seam"]["per_image"][str(fake / "flat.png")] is None
    assert "fid" in on_disk["runs"][0]


def test_evaluate_writes_the_computed_metrics_when_the_seam_step_fails(tmp_path, gen_layout, monkeypatch):
    import pathup.metrics.seam as seam
    from pathup.metrics.evaluate import evaluate

    fake, real = gen_layout

    def boom(*args, **kwargs):
        raise PathUpError("seam step failed")

    monkeypatch.setattr(seam, "seam_score", boom)
    with pytest.raises(PathUpError, match="seam step failed.*other metrics were written to"):
        evaluate(_eval_cfg(tmp_path, real, fake, level="patch", seam=True))
    on_disk = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert on_disk["runs"][0]["fid"] >= 0 and "seam" not in on_disk
    # A missing sidecar (no patch grid) is found before any feature is computed.
    next(fake.glob("*/*.json")).unlink()
    (tmp_path / "m" / "metrics.json").unlink()
    with pytest.raises(PathUpError, match="no sidecar"):
        evaluate(_eval_cfg(tmp_path, real, fake, level="patch", seam=True))
    assert not (tmp_path / "m" / "metrics.json").exists()


@pytest.mark.parametrize("data,message", [
    ({"guidance": "nan"}, "guidance must be a finite number"),
    ({"guidance": "inf"}, "guidance must be a finite number"),
    ({"kid_subset_size": 0}, "kid_subset_size must be at least 2"),
    ({"upscale_factor": "nan"}, "upscale_factor must be a finite number"),
])
def test_experiment_config_ranges(data, message):
    from pathup.experiments.config import ExperimentConfig, validate as runner_validate

    with pytest.raises(PathUpError, match=message):
        from_dict(ExperimentConfig, {"data": "d", "out": "o", **data})
    cfg = ExperimentConfig(data="d", out="o")
    with pytest.raises(PathUpError, match=message):
        runner_validate(dataclasses.replace(cfg, **{k: float(v) if k != "kid_subset_size" else v
                                                    for k, v in data.items()}))
