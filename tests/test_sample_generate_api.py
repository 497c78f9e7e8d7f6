"""``pathup.sample.generate``: the folder-writing Python API that ``pathup generate``/``upscale`` wrap."""

import json

import numpy as np
import pytest
from PIL import Image

from pathup.errors import PathUpError
from pathup.model import build_ldm
from pathup.prompts import PromptTable
from pathup.sample import (GenerateResult, PathUpPipeline, SampleConfig, generate_to_folder, image_paths,
                           is_done, read_settings, seeds_for_process, upscale_to_file)

OPTIONS = dict(size="128", steps=3, latent_patch=8, latent_overlap=4, guidance=2.0)


@pytest.fixture(scope="module")
def pipe():
    ldm = build_ldm("tiny", PromptTable(["benign", "in situ carcinoma"]), seed=0)
    return PathUpPipeline(ldm, model_name="tiny-test", progress=False)


def test_generate_to_folder_layout_equals_pipeline_and_rerun_skips(pipe, tmp_path):
    out = tmp_path / "gen"
    cfg = SampleConfig(seed=3, num=2, **OPTIONS)
    result = generate_to_folder(pipe, "in situ carcinoma", out, cfg, progress=False)
    name = "in_situ_carcinoma-79b784ab"  # class_dirname: a safe name + a hash of the exact name (issue 12 item 3)
    cls = out / name
    expected = [cls / f"{name}_s{s}.png" for s in (3, 4)]
    assert isinstance(result, GenerateResult)
    assert result.written == expected and result.skipped == []
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        f"{name}/generate_config.yaml", f"{name}/generate_settings.json",
        f"{name}/{name}_s3.json", f"{name}/{name}_s3.png",
        f"{name}/{name}_s4.json", f"{name}/{name}_s4.png",
        f"{name}/overview/{name}_s3.json",
        f"{name}/overview/{name}_s3.png",
        f"{name}/overview/{name}_s4.json",
        f"{name}/overview/{name}_s4.png",
    ]
    assert json.loads((cls / "generate_settings.json").read_text())["class"] == "in situ carcinoma"
    for seed, path in zip((3, 4), expected):
        assert image_paths(out, "in situ carcinoma", seed, "png") == (
            path, cls / "overview" / f"{name}_s{seed}.png")
        assert is_done(path)
        meta = read_settings(path)
        with Image.open(path) as im:
            assert im.size == (128, 128) and json.loads(im.text["pathup"]) == meta
        assert meta["seed"] == seed and meta["model"] == "tiny-test" and meta["level"] == "upscaled"
        assert meta["prompt"] == "in situ carcinoma, patch"
        assert meta["overview"] == str(cls / "overview" / f"{name}_s{seed}.png")
        assert meta["options"]["steps"] == 3 and meta["options"]["seed"] == seed
        assert read_settings(cls / "overview" / path.name)["level"] == "overview"
        # The file holds exactly what the in-memory pipeline makes for this seed.
        ref = pipe(class_name="in situ carcinoma", seed=seed, output_type="np", **OPTIONS)
        assert np.array_equal(np.asarray(Image.open(path)), ref.images[0])
        assert np.array_equal(np.asarray(Image.open(cls / "overview" / path.name)), np.asarray(ref.overviews[0]))
    a, b = (np.asarray(Image.open(p)) for p in expected)
    assert not np.array_equal(a, b)

    # Rerun: both skipped, nothing rewritten; after deleting one sidecar only that image is redone.
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = generate_to_folder(pipe, "in situ carcinoma", out, cfg, progress=False)
    assert again.written == [] and again.skipped == expected
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == mtimes
    expected[1].with_suffix(".json").unlink()  # image without sidecar counts as not done
    assert not is_done(expected[1])
    third = generate_to_folder(pipe, "in situ carcinoma", out, cfg, progress=False)
    assert third.written == [expected[1]] and third.skipped == [expected[0]]
    assert expected[0].stat().st_mtime_ns == mtimes[expected[0]]
    assert np.array_equal(np.asarray(Image.open(expected[1])), b)  # reproducible by seed


def test_generate_to_folder_process_share_and_errors(pipe, tmp_path):
    out = tmp_path / "gen"
    cfg = SampleConfig(seed=0, num=3, **OPTIONS)
    assert seeds_for_process(0, 3, 1, 2) == [1]
    # Process 1 of 2 makes only seed 1 and leaves the config to process 0.
    result = generate_to_folder(pipe, "benign", out, cfg, process_index=1, num_processes=2, progress=False)
    assert result.written == [out / "benign" / "benign_s1.png"] and result.skipped == []
    assert sorted(p.name for p in (out / "benign").glob("*.png")) == ["benign_s1.png"]
    assert not (out / "benign" / "generate_config.yaml").exists()

    with pytest.raises(PathUpError, match="unknown class 'lymphoma'"):
        generate_to_folder(pipe, "lymphoma", tmp_path / "other", cfg, progress=False)
    with pytest.raises(PathUpError, match="steps must be at least 1"):
        generate_to_folder(pipe, "benign", tmp_path / "other", SampleConfig(steps=0), progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(PathUpError, match="exists and is not a folder"):
        generate_to_folder(pipe, "benign", tmp_path / "file", cfg, progress=False)
    assert not (tmp_path / "other").exists()


def test_upscale_to_file_equals_pipeline_upscale(pipe, tmp_path, sample_breakhis):
    from pathup.io import list_images, load_rgb

    src = list_images(sample_breakhis)[0]
    out = tmp_path / "up"
    cfg = SampleConfig(seed=2, **{**OPTIONS, "size": "96x64"})
    result = upscale_to_file(pipe, src, "benign", out, cfg)
    target = out / f"{src.stem}_benign_s2.png"
    assert result.written == [target] and result.skipped == []
    assert (out / "upscale_config.yaml").is_file()
    meta = read_settings(target)
    assert meta["overview_source"] == str(src.resolve()) and meta["overview"] == str(src)
    assert meta["prompt"] == "benign, patch" and meta["overview_prompt"] is None
    ref = pipe.upscale(load_rgb(src), "benign", output_type="np", seed=2, size=(96, 64), steps=3,
                       patch_size=8, overlap=4, guidance=2.0)
    assert np.array_equal(np.asarray(Image.open(target)), ref)
    mtime = target.stat().st_mtime_ns
    assert upscale_to_file(pipe, src, "benign", out, cfg).skipped == [target]
    assert target.stat().st_mtime_ns == mtime
    with pytest.raises(PathUpError, match="image not found"):
        upscale_to_file(pipe, tmp_path / "missing.png", "benign", out, cfg)
