"""``pathup generate`` / ``pathup upscale`` end to end on a tiny saved model, and the Python API."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from pathup.cli import main
from pathup.model import build_ldm, save_ldm
from pathup.prompts import PromptTable

FAST = ["--steps", "2", "--latent-patch", "8", "--latent-overlap", "4", "--guidance", "2"]


@pytest.fixture(scope="module")
def tiny_ldm():
    return build_ldm("tiny", PromptTable(["benign", "ductal_carcinoma"]), seed=0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_ldm):
    return str(save_ldm(tiny_ldm, tmp_path_factory.mktemp("m") / "model"))


def test_generate_end_to_end_and_rerun_skips(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", model_dir, "--class", "benign", "--out", str(out), "--size", "150x100",
                 "--num", "2", "--seed", "5", *FAST]) == 0
    cls = out / "benign"
    for seed in (5, 6):
        img = cls / f"benign_s{seed}.png"
        with Image.open(img) as im:
            assert im.size == (150, 100)
            text = json.loads(im.text["pathup"])
        meta = json.loads((cls / f"benign_s{seed}.json").read_text())
        assert meta == text
        assert meta["seed"] == seed and meta["prompt"] == "benign, patch" and meta["model"] == model_dir
        assert meta["overview_prompt"] == "benign, overview"
        assert meta["options"]["patch_size"] == 8 and meta["options"]["weight_map"] == "pyramid"
        with Image.open(cls / "overview" / f"benign_s{seed}.png") as ov:
            assert ov.size == (128, 128)  # the tiny model's training resolution
        assert (cls / "overview" / f"benign_s{seed}.json").is_file()
    assert (cls / "generate_config.yaml").is_file()
    a = np.asarray(Image.open(cls / "benign_s5.png"))
    b = np.asarray(Image.open(cls / "benign_s6.png"))
    assert not np.array_equal(a, b)
    capsys.readouterr()

    # Rerun: nothing is redone; after deleting one image only that one is made again, identically.
    mtime = (cls / "benign_s5.png").stat().st_mtime_ns
    assert main(["generate", model_dir, "--class", "benign", "--out", str(out), "--size", "150x100",
                 "--num", "2", "--seed", "5", *FAST]) == 0
    assert "nothing to do" in capsys.readouterr().out
    (cls / "benign_s6.png").unlink()
    assert main(["generate", model_dir, "--class", "benign", "--out", str(out), "--size", "150x100",
                 "--num", "2", "--seed", "5", *FAST]) == 0
    assert "skipped 1" in capsys.readouterr().out
    assert (cls / "benign_s5.png").stat().st_mtime_ns == mtime
    assert np.array_equal(np.asarray(Image.open(cls / "benign_s6.png")), b)  # reproducible by seed


def test_generate_tiff(model_dir, tmp_path):
    import tiffslide

    out = tmp_path / "out"
    assert main(["generate", model_dir, "--class", "ductal_carcinoma", "--out", str(out), "--size", "300x200",
                 "--format", "tiff", "--patch-batch", "7", *FAST]) == 0
    path = out / "ductal_carcinoma" / "ductal_carcinoma_s0.tiff"
    slide = tiffslide.TiffSlide(str(path))
    assert slide.level_dimensions[0] == (300, 200) and slide.level_count >= 2
    slide.close()
    assert json.loads(path.with_suffix(".json").read_text())["options"]["patch_batch"] == "7"


@pytest.mark.parametrize("argv,message", [
    (["--class", "lymphoma"], "unknown class 'lymphoma'; this model knows: benign, ductal_carcinoma"),
    (["--class", "benign", "--size", "12x"], "--size must be N or WxH"),
    (["--class", "benign", "--size", "0"], "--size must be at least 8x8"),
    (["--class", "benign", "--overlap", "8", "--patch-size", "8"], "--latent-overlap must be in [0, 8)"),
    (["--class", "benign", "--patch-batch", "0"], "--patch-batch must be 'auto' or a positive integer"),
    (["--class", "benign", "--strength", "0.1", "--steps", "2"], "re-runs no step"),
    (["--class", "benign", "--num", "0"], "--num must be at least 1"),
    (["--class", "benign", "--cache-interval", "0"], "--cache-interval must be at least 1, got 0"),
    (["--class", "benign", "--token-merging", "1"], "--token-merging must be in [0, 1), got 1.0"),
])
def test_generate_bad_inputs(model_dir, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    rc = main(["generate", model_dir, "--out", str(out), "--size", "64", *argv])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert rc == 2 and message in last
    assert last.startswith("pathup generate: error:") and "Traceback" not in err
    assert not list(out.rglob("*.png"))


def test_generate_missing_model(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "nope"), "--class", "x", "--out", str(tmp_path / "o")]) == 2
    assert "model not found" in capsys.readouterr().err


def test_options_are_checked_once_per_call(model_dir, tiny_ldm, tmp_path, validate_calls):
    """``pathup generate`` checks its options once (``pathup.sample.config.validate``), before the model loads
    (it checked them four times); ``generate_to_folder`` called alone checks them once too."""
    from pathup.sample import PathUpPipeline, SampleConfig, generate_to_folder

    calls = validate_calls
    assert main(["generate", "--model", model_dir, "--class", "benign", "--out", str(tmp_path / "cli"),
                 "--size", "64", "--num", "2", *FAST]) == 0
    assert calls == ["SampleConfig"]
    calls.clear()
    pipe = PathUpPipeline(tiny_ldm, model_name=model_dir, progress=False)
    cfg = SampleConfig(size="64", num=2, steps=2, latent_patch=8, latent_overlap=4, guidance=2.0)
    result = generate_to_folder(pipe, "benign", tmp_path / "api", cfg, progress=False)
    assert calls == ["SampleConfig"] and len(result.written) == 2
    # the same images either way
    for path in result.written:
        cli = tmp_path / "cli" / path.relative_to(tmp_path / "api")
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(cli)))


def test_seeds_are_shared_across_processes():
    from pathup.cli.generate import seeds_for_process

    parts = [seeds_for_process(5, 7, i, 3) for i in range(3)]
    assert parts == [[5, 8, 11], [6, 9], [7, 10]]
    assert sorted(sum(parts, [])) == list(range(5, 12))


def test_upscale_cli(model_dir, tmp_path, sample_breakhis, capsys):
    from pathup.io import list_images

    src = list_images(sample_breakhis)[0]
    out = tmp_path / "up"
    args = ["upscale", str(src), "--model", model_dir, "--class", "benign", "--out", str(out),
            "--size", "200x136", "--seed", "2", *FAST]
    assert main(args) == 0
    target = out / f"{src.stem}_benign_s2.png"
    with Image.open(target) as im:
        assert im.size == (200, 136)
    meta = json.loads(target.with_suffix(".json").read_text())
    assert meta["prompt"] == "benign, patch" and meta["overview_source"].endswith(src.name)
    assert (out / "upscale_config.yaml").is_file()
    capsys.readouterr()
    assert main(args) == 0 and "nothing to do" in capsys.readouterr().out
    assert main(["upscale", str(tmp_path / "missing.png"), "--model", model_dir, "--class", "benign"]) == 2
    assert "image not found" in capsys.readouterr().err


def test_upscale_options_are_checked_once_per_call(model_dir, tiny_ldm, tmp_path, sample_breakhis, validate_calls):
    """``pathup upscale`` checks its options once, before the model loads (it checked them twice: for the
    target's name and again in ``upscale_to_file``); ``upscale_to_file`` called alone checks them once too,
    and both write the same image."""
    from pathup.io import list_images
    from pathup.sample import PathUpPipeline, SampleConfig, upscale_to_file

    src = list_images(sample_breakhis)[0]
    calls = validate_calls
    assert main(["upscale", str(src), "--model", model_dir, "--class", "benign", "--out", str(tmp_path / "cli"),
                 "--size", "72x56", "--seed", "2", *FAST]) == 0
    assert calls == ["SampleConfig"]
    calls.clear()
    pipe = PathUpPipeline(tiny_ldm, model_name=model_dir, progress=False)
    cfg = SampleConfig(size="72x56", seed=2, steps=2, latent_patch=8, latent_overlap=4, guidance=2.0)
    result = upscale_to_file(pipe, src, "benign", tmp_path / "api", cfg)
    assert calls == ["SampleConfig"] and len(result.written) == 1
    api = result.written[0]
    cli = tmp_path / "cli" / api.name
    assert np.array_equal(np.asarray(Image.open(api)), np.asarray(Image.open(cli)))


def _count_size_parses(monkeypatch) -> list:
    """The text of every ``parse_size`` call from now on, in whichever module of pathup calls it."""
    import pathup.cli.generate  # noqa: F401 - every module that holds parse_size, imported before patching
    import pathup.cli.upscale  # noqa: F401
    import pathup.sample.config as config
    import pathup.sample.generate  # noqa: F401
    import pathup.sample.pipeline  # noqa: F401
    import pathup.sample.resume  # noqa: F401

    real, calls = config.parse_size, []

    def counting(text, name="size"):
        calls.append(text)
        return real(text, name)

    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("pathup") and getattr(module, "parse_size", None) is real:
            monkeypatch.setattr(module, "parse_size", counting)
    return calls


def test_a_size_is_parsed_once_along_generate_and_upscale(model_dir, tiny_ldm, tmp_path, sample_breakhis,
                                                            monkeypatch):
    """``size`` is parsed once, when the config is made (``SampleConfig.__post_init__``); from there the
    ``Size`` goes through every module as it is: ``generate_to_folder`` (checks, resume fingerprint, upscale,
    sidecars), ``pathup generate``, ``pathup upscale`` and ``upscale_to_file`` parse it no more."""
    from pathup.io import list_images
    from pathup.sample import PathUpPipeline, SampleConfig, generate_to_folder, upscale_to_file

    calls = _count_size_parses(monkeypatch)
    cfg = SampleConfig(size="64x48", steps=2, latent_patch=8, latent_overlap=4, guidance=2.0)
    assert calls == ["64x48"]
    pipe = PathUpPipeline(tiny_ldm, model_name=model_dir, progress=False)
    assert len(generate_to_folder(pipe, "benign", tmp_path / "api", cfg, progress=False).written) == 1
    assert calls == ["64x48"]
    src = list_images(sample_breakhis)[0]
    assert len(upscale_to_file(pipe, src, "benign", tmp_path / "up-api", cfg).written) == 1
    assert calls == ["64x48"]
    calls.clear()
    assert main(["generate", "--model", model_dir, "--class", "benign", "--out", str(tmp_path / "cli"),
                 "--size", "64x48", *FAST]) == 0
    assert calls == ["64x48"]
    calls.clear()
    assert main(["upscale", str(src), "--model", model_dir, "--class", "benign", "--out", str(tmp_path / "up"),
                 "--size", "72x56", *FAST]) == 0
    assert calls == ["72x56"]


def test_pipeline_api(tiny_ldm):
    from pathup.sample import PathUpPipeline

    pipe = PathUpPipeline(tiny_ldm, progress=False)
    kw = dict(size=(90, 70), steps=2, patch_size=8, overlap=4, guidance=2.0)
    out = pipe(class_name="benign", seed=1, **kw)
    assert out.images[0].size == (90, 70) and out.overviews[0].size == (128, 128)
    assert out.settings[0]["prompt"] == "benign, patch" and out.settings[0]["seed"] == 1
    again = pipe(class_name="benign", seed=1, patch_batch=3, **kw)  # same seed, other chunking
    diff = np.abs(np.asarray(out.images[0]).astype(int) - np.asarray(again.images[0]).astype(int))
    assert diff.max() <= 1  # only the UNet's batch-size rounding, at most one grey level
    other = pipe(class_name="benign", seed=2, **kw)
    assert np.abs(np.asarray(other.images[0]).astype(int) - np.asarray(out.images[0]).astype(int)).mean() > 1
    # A user's own overview: step 2 onward only; a plain model without a prompt table builds prompts.
    plain = PathUpPipeline(build_ldm("tiny", None, seed=0), progress=False)
    assert plain.prompts_for("DCIS")["patch"] == "ductal carcinoma in situ, patch"
    up = pipe.upscale(out.overviews[0], "ductal_carcinoma", output_type="np", seed=0, **kw)
    assert up.shape == (70, 90, 3) and up.dtype == np.uint8


@pytest.mark.slow
def test_generate_under_accelerate_launch(model_dir, tmp_path):
    """Two CPU processes share the seeds: together they write each image once."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "pathup", "generate", model_dir, "--class", "benign", "--out", str(out), "--size", "64",
           "--num", "3", "--device", "cpu", *FAST]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (out / "benign").glob("*.png")) == [f"benign_s{s}.png" for s in range(3)]
