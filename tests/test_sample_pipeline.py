"""``PathUpPipeline`` as a diffusers pipeline, typed sizes and option names, and the physical scale of
generated images (issue 13 items 4, 6 and 7)."""

import dataclasses
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pathup.cli import main
from pathup.errors import OptionError, PathUpError
from pathup.model import build_ldm, save_ldm
from pathup.prompts import PromptTable
from pathup.sample import PathUpPipeline, SampleConfig, Size, parse_size

UPSCALE = dict(size=(72, 56), seed=1, steps=2, latent_patch=6, latent_overlap=3, guidance=2.0, output_type="np")
FAST = ["--steps", "2", "--latent-patch", "8", "--latent-overlap", "4", "--guidance", "2"]


@pytest.fixture(scope="module")
def ldm():
    return build_ldm("tiny", PromptTable(["benign", "ductal carcinoma"]), seed=0)


@pytest.fixture(scope="module")
def pipe(ldm):
    return PathUpPipeline(ldm, model_name="tiny-test", progress=False)


@pytest.fixture(scope="module")
def overview():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), "RGB")


def _model_with_mpp(tmp_path, ldm, mpp):
    """A saved tiny model whose pathup.json holds ``mpp`` (None: the key removed, as in older models)."""
    folder = save_ldm(ldm, tmp_path / "model")
    meta = json.loads((folder / "pathup.json").read_text())
    meta.pop("mpp", None)
    if mpp is not None:
        meta["mpp"] = mpp
    (folder / "pathup.json").write_text(json.dumps(meta))
    return folder


# ------------------------------------------------------------------------------------------ diffusers
def test_is_a_diffusion_pipeline_with_registered_modules(pipe, ldm):
    from diffusers import DiffusionPipeline

    assert isinstance(pipe, DiffusionPipeline)
    assert sorted(pipe.components) == ["scheduler", "text_encoder", "tokenizer", "unet", "vae"]
    assert pipe.components["unet"] is ldm.unet and pipe.vae is ldm.vae and pipe.tokenizer is ldm.tokenizer
    assert tuple(pipe.config["unet"]) == ("diffusers", "UNet2DConditionModel")
    assert tuple(pipe.config["text_encoder"]) == ("transformers", "CLIPTextModel")
    assert pipe.model_cpu_offload_seq == "text_encoder->unet->vae"
    assert pipe.device == torch.device("cpu") and pipe.dtype == torch.float32


def test_built_from_components_gives_the_same_image(pipe, ldm, overview):
    """Diffusers' way (one keyword per module) and ``PathUpPipeline(ldm)`` are one pipeline."""
    same = PathUpPipeline(**pipe.components, progress=False)
    assert same.ldm.unet is ldm.unet
    a = pipe.upscale(overview, "benign", **UPSCALE)
    b = same.upscale(overview, prompt=pipe.prompts_for("benign")["patch"], **UPSCALE)
    assert a.shape == (56, 72, 3) and np.array_equal(a, b)


def test_older_keyword_names_give_the_same_image(pipe, overview):
    new = pipe.upscale(overview, "benign", **UPSCALE)
    old_kw = {k: v for k, v in UPSCALE.items() if k not in ("latent_patch", "latent_overlap")}
    old = pipe.upscale(overview, "benign", patch_size=6, overlap=3, **old_kw)
    assert np.array_equal(new, old)
    with pytest.raises(TypeError, match="patch_px"):
        pipe.upscale(overview, "benign", patch_px=6, **old_kw)


def test_diffusers_argument_names_give_the_same_images(pipe):
    """Code written for diffusers works: num_inference_steps, guidance_scale, height, width, generator and
    output_type "pt" mean what steps, guidance, size, seed and "np" mean."""
    grid = dict(latent_patch=6, latent_overlap=3)
    ours = pipe("benign", size=(48, 40), seed=5, steps=2, guidance=2.0, output_type="np", **grid)
    theirs = pipe("benign", width=48, height=40, generator=torch.Generator().manual_seed(5), num_inference_steps=2,
                  guidance_scale=2.0, output_type="np", **grid)
    assert ours.images[0].shape == (40, 48, 3) and np.array_equal(ours.images[0], theirs.images[0])
    def same(settings):  # the seconds of each stage are clock readings: everything else must match
        return [{k: v for k, v in s.items() if k != "seconds"} for s in settings]

    assert same(ours.settings) == same(theirs.settings)
    pt = pipe("benign", width=48, height=40, seed=5, steps=2, guidance_scale=2.0, output_type="pt", **grid).images[0]
    assert pt.shape == (3, 40, 48) and pt.dtype == torch.float32 and 0 <= pt.min() and pt.max() <= 1
    assert np.array_equal((pt * 255).round().to(torch.uint8).permute(1, 2, 0).numpy(), ours.images[0])
    # both spellings, equal: accepted; different: one line naming both
    assert np.array_equal(pipe("benign", size=(48, 40), width=48, seed=5, steps=2, num_inference_steps=2,
                               guidance=2.0, output_type="np", **grid).images[0], ours.images[0])
    for given, message in [(dict(steps=2, num_inference_steps=3), "steps=2 and num_inference_steps=3 differ"),
                           (dict(guidance=2.0, guidance_scale=3.0), "guidance=2.0 and guidance_scale=3.0 differ"),
                           (dict(seed=1, generator=torch.Generator().manual_seed(2)),
                            r"seed=1 and generator \(seed 2\) differ"),
                           (dict(size=(48, 40), height=48), "size=.* and height=48, width=None differ")]:
        with pytest.raises(PathUpError, match=message):
            pipe("benign", **given)
    with pytest.raises(PathUpError, match="allowed: pil, np, pt, latent"):
        pipe("benign", output_type="tensor")


def test_to_returns_the_pipeline_and_moves_its_modules(ldm):
    pipe = PathUpPipeline(build_ldm("tiny", PromptTable(["a"]), seed=0), progress=False)
    assert pipe.to("cpu", torch.float16) is pipe
    assert pipe.unet.dtype == torch.float16 and pipe.ldm.vae.dtype == torch.float16 and pipe.dtype == torch.float16
    pipe.to(torch.float32)
    assert pipe.text_encoder.dtype == torch.float32


def test_model_cpu_offload_is_accepted_and_changes_no_pixel(ldm, overview):
    """``enable_model_cpu_offload`` installs accelerate's hooks in the order text encoder -> UNet -> VAE; on
    this CPU-only machine the offload device is the CPU, so the image must equal the plain run's."""
    plain = PathUpPipeline(build_ldm("tiny", PromptTable(["benign"]), seed=0), progress=False)
    ref = plain.upscale(overview, "benign", **UPSCALE)
    pipe = PathUpPipeline(build_ldm("tiny", PromptTable(["benign"]), seed=0), progress=False)
    pipe.enable_model_cpu_offload(device="cpu")
    assert len(pipe._all_hooks) == 3 and pipe._offload_device == torch.device("cpu:0")
    assert all(hasattr(m, "_hf_hook") for m in (pipe.text_encoder, pipe.unet, pipe.vae))
    assert pipe._execution_device == torch.device("cpu:0")
    assert np.array_equal(pipe.upscale(overview, "benign", **UPSCALE), ref)
    pipe.remove_all_hooks()


def test_save_pretrained_round_trip_model_card_and_diffusers(pipe, overview, tmp_path):
    from diffusers import StableDiffusionPipeline

    pipe.ldm.mpp = {"patch": 0.5, "overview": 2.0}
    try:
        pipe.save_pretrained(tmp_path / "saved")
    finally:
        pipe.ldm.mpp = None
    folder = tmp_path / "saved"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    meta = json.loads((folder / "pathup.json").read_text())
    assert meta["prompts"]["classes"] == ["benign", "ductal carcinoma"] and meta["mpp"] == {"patch": 0.5, "overview": 2.0}
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: diffusers\n")
    for text in ("| benign | benign, patch | benign, overview |",
                 "| ductal carcinoma | ductal carcinoma, patch | ductal carcinoma, overview |",
                 'PathUpPipeline.from_pretrained("PATH_OR_HUB_ID")', "| overview | 2 |", "| patch | 0.5 |",
                 "128 x 128 pixels"):
        assert text in card, text
    loaded = PathUpPipeline.from_pretrained(folder, device="cpu", progress=False)
    assert loaded.mpp == {"patch": 0.5, "overview": 2.0} and loaded.model_name == str(folder)
    assert np.array_equal(loaded.upscale(overview, "benign", **UPSCALE), pipe.upscale(overview, "benign", **UPSCALE))
    sd = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    assert torch.equal(sd.unet.conv_in.weight, pipe.unet.conv_in.weight)


def test_from_pretrained_takes_torch_dtype_and_a_run_folder(ldm, tmp_path):
    save_ldm(ldm, tmp_path / "run" / "model")
    pipe = PathUpPipeline.from_pretrained(tmp_path / "run", device="cpu", torch_dtype=torch.float16, progress=False)
    assert pipe.unet.dtype == torch.float16 and pipe.mpp == {"patch": None, "overview": None}


# ------------------------------------------------------------------------------------------ sizes and names
def test_size_is_parsed_once_into_a_typed_value():
    cfg = SampleConfig(size="3000x2000")
    assert cfg.size == Size(3000, 2000) and cfg.size.width == 3000 and cfg.size.pixels == 6_000_000
    assert str(cfg.size) == "3000x2000" and cfg.size.wxh() == "3000x2000"
    assert SampleConfig().size == (2048, 2048) and str(SampleConfig().size) == "2048"
    assert SampleConfig(size=(90, 70)).size == Size(90, 70) and parse_size(64) == Size(64, 64)
    assert parse_size([96, 80]) == Size(96, 80)  # a YAML list, as save_config writes a size
    with pytest.raises(OptionError, match=r"^size must be N or WxH"):
        SampleConfig(size="12x")
    with pytest.raises(OptionError) as err:
        SampleConfig(size="4x100")
    assert err.value.for_cli() == "--size must be at least 8x8 pixels, got 4x100"


def test_older_option_names_in_yaml_and_keywords(tmp_path):
    from pathup.config import from_dict, load_yaml, save_config

    cfg = from_dict(SampleConfig, {"patch_size": 16, "overlap": 8, "size": "96x64"})
    assert (cfg.latent_patch, cfg.latent_overlap, cfg.size) == (16, 8, Size(96, 64))
    path = save_config(cfg, tmp_path / "c.yaml")
    again = from_dict(SampleConfig, load_yaml(path))
    assert again == cfg and yaml.safe_load(path.read_text())["latent_patch"] == 16
    with pytest.raises(PathUpError, match="same option"):
        from_dict(SampleConfig, {"patch_size": 16, "latent_patch": 16})


def test_sidecar_and_fingerprint_keep_the_stored_names(pipe, tmp_path):
    """Sidecars and generate_settings.json store ``patch_size`` / ``overlap`` and the size as before, so a
    folder written before the rename resumes, and one with other settings names the current option."""
    from pathup.sample.generate import generate_to_folder, pending_seeds
    from pathup.sample.resume import model_key

    cfg = SampleConfig(size="64", steps=2, latent_patch=8, latent_overlap=4, guidance=2.0, scheduler="ddim")
    settings = pipe.settings("benign", cfg, seed=0, prompts={})
    assert settings["options"]["patch_size"] == 8 and settings["options"]["overlap"] == 4
    assert settings["options"]["size"] == "64" and settings["size"] == [64, 64] and "latent_patch" not in settings["options"]
    # A class folder as the code before the rename wrote it (no mpp, older names, size as WxH).
    folder = tmp_path / "gen" / "benign"
    folder.mkdir(parents=True)
    old = {"class": "benign", "model": model_key("tiny-test"), "options": {
        "steps": 2, "guidance": 2.0, "scheduler": "ddim", "size": "64x64", "patch_size": 8, "overlap": 4,
        "strength": 0.8, "weight_map": "pyramid", "step_mode": "per-patch", "vae_tile": 0, "vae_overlap": 0,
        "negative_prompt": "", "format": "png"}}
    (folder / "generate_settings.json").write_text(json.dumps(old))
    assert pending_seeds(tmp_path / "gen", "benign", cfg, model="tiny-test") == ([0], [])
    other = SampleConfig(size="64", steps=2, latent_patch=6, latent_overlap=4, guidance=2.0, scheduler="ddim")
    with pytest.raises(PathUpError, match="--latent-patch 8 there, 6 now"):
        pending_seeds(tmp_path / "gen", "benign", other, model="tiny-test")
    result = generate_to_folder(pipe, "benign", tmp_path / "gen", cfg, progress=False)
    assert len(result.written) == 1
    stored = json.loads((folder / "generate_settings.json").read_text())
    # step_mode changes no image (per-chunk became the default): a per-patch folder resumes, and it is no
    # longer part of the stored settings, like patch_batch.
    assert "step_mode" not in stored["options"]
    assert {k: stored["options"][k] for k in old["options"] if k != "step_mode"} == \
        {k: v for k, v in old["options"].items() if k != "step_mode"}


def test_a_folder_of_the_old_default_names_every_setting_to_match(tmp_path):
    """A folder written with DDIM 50 (the default before UniPC 10) stops a default rerun with one line that
    names both options, so the next rerun can match them at once."""
    from pathup.sample.generate import pending_seeds
    from pathup.sample.resume import model_key, settings_fingerprint

    old_cfg = SampleConfig(size="64", steps=50, scheduler="ddim", latent_patch=8, latent_overlap=4)
    folder = tmp_path / "gen" / "benign"
    folder.mkdir(parents=True)
    (folder / "generate_settings.json").write_text(json.dumps(settings_fingerprint("benign", old_cfg, "m")))
    assert model_key("m") == "m"
    new = SampleConfig(size="64", latent_patch=8, latent_overlap=4)
    with pytest.raises(PathUpError) as err:
        pending_seeds(tmp_path / "gen", "benign", new, model="m")
    msg = str(err.value)
    assert "--steps 50 there, 10 now" in msg and '--scheduler "ddim" there, "unipc" now' in msg
    assert "\n" not in msg
    assert pending_seeds(tmp_path / "gen", "benign", dataclasses.replace(new, steps=50, scheduler="ddim"),
                         model="m") == ([0], [])


# ------------------------------------------------------------------------------------------ --model
def test_generate_takes_model_as_option_and_positional(ldm, tmp_path, capsys):
    model = str(save_ldm(ldm, tmp_path / "model"))
    base = ["--class", "benign", "--size", "64", *FAST]
    assert main(["generate", "--model", model, "--out", str(tmp_path / "a"), *base]) == 0
    assert main(["generate", model, "--out", str(tmp_path / "b"), *base]) == 0
    a = np.asarray(Image.open(tmp_path / "a" / "benign" / "benign_s0.png"))
    assert np.array_equal(a, np.asarray(Image.open(tmp_path / "b" / "benign" / "benign_s0.png")))
    capsys.readouterr()
    assert main(["generate", "--out", str(tmp_path / "c"), *base]) == 2
    assert "--model MODEL is required" in capsys.readouterr().err
    assert main(["generate", model, "--model", "tiny", "--out", str(tmp_path / "c"), *base]) == 2
    assert "give the model once" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_help_shows_the_new_names(capsys):
    for command in ("generate", "upscale", "compose"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert "--model MODEL" in out and "--latent-patch" in out and "--latent-overlap" in out and "--mpp" in out
        assert "--patch-size" not in out and "--overlap " not in out


# ------------------------------------------------------------------------------------------ physical scale
def test_output_mpp_rule():
    from pathup.sample.scale import model_mpp, output_mpp

    assert output_mpp({"patch": 0.5, "overview": 2.0}, 128, 512) == 0.5  # 2.0 x 128 / 512
    assert output_mpp({"patch": 0.5, "overview": 2.0}, 128, 100) == pytest.approx(2.56)
    assert output_mpp({"patch": 0.5, "overview": None}, 128, 512) is None
    assert output_mpp(None, 128, 512, override=0.25) == 0.25
    assert model_mpp(None) == {"patch": None, "overview": None}
    with pytest.raises(PathUpError, match="m/pathup.json: mpp overview: microns per pixel must be a positive number"):
        model_mpp({"overview": -1.0}, "m/pathup.json")
    # strength 1 starts from noise: the image is made at the patch level's scale, whatever its size
    assert output_mpp({"patch": 0.5, "overview": 2.0}, 128, 2048, strength=1.0) == 0.5
    assert output_mpp({"patch": None, "overview": 2.0}, 128, 2048, strength=1.0) is None


def test_upscaling_stops_at_the_patch_scale(caplog):
    """The paper upscales from the overview's scale to the patch level's: 128 px at 2.0 um/px reaches 0.5 um/px
    at 512 px (the natural width); a larger image is finer than anything the model learned: a warning."""
    from pathup.sample.scale import check_scale, natural_width

    mpp = {"patch": 0.5, "overview": 2.0}
    assert natural_width(mpp, 128) == 512
    assert natural_width({"patch": None, "overview": 2.0}, 128) is None
    # Kather's demo tiling: 150 px fields at 0.495 um/px written at 128 px; patch tiles are 128 px crops
    assert natural_width({"patch": 0.495, "overview": 0.495 * 150 / 128}, 128) == 150
    with caplog.at_level("WARNING"):
        assert check_scale(mpp, 128, 512, 0.5) and check_scale(mpp, 128, 530, 2.0 * 128 / 530)
        assert not caplog.records
        assert not check_scale(mpp, 128, 768, 2.0 * 128 / 768)
    assert "finer than the model's patch level (0.500 um/px)" in caplog.text and "at 512 px" in caplog.text
    assert check_scale({"patch": None, "overview": None}, 128, 4096, None)  # no scale known: nothing to say


def test_generate_and_upscale_write_the_models_scale(ldm, tmp_path):
    """Overview MPP 2.0 um/px at the tiny model's 128 px: a 64x48 image covers the same field, so 4.0 um/px;
    written to the sidecar and the PNG's pHYs (PIL: dpi = 25400 / mpp); --mpp overrides it."""
    model = str(_model_with_mpp(tmp_path, ldm, {"patch": 0.5, "overview": 2.0}))
    assert main(["generate", "--model", model, "--class", "benign", "--out", str(tmp_path / "g"),
                 "--size", "64x48", *FAST]) == 0
    image = tmp_path / "g" / "benign" / "benign_s0.png"
    meta = json.loads(image.with_suffix(".json").read_text())
    assert meta["mpp"] == pytest.approx(4.0)
    assert Image.open(image).info["dpi"][0] == pytest.approx(25400 / 4.0, rel=1e-3)
    ov = tmp_path / "g" / "benign" / "overview" / "benign_s0.png"
    assert json.loads(ov.with_suffix(".json").read_text())["mpp"] == pytest.approx(2.0)
    assert main(["upscale", str(ov), "--model", model, "--class", "benign", "--out", str(tmp_path / "u"),
                 "--size", "256", "--mpp", "0.3", *FAST]) == 0
    up = tmp_path / "u" / "benign_s0_benign_s0.png"
    assert json.loads(up.with_suffix(".json").read_text())["mpp"] == pytest.approx(0.3)
    assert Image.open(up).info["dpi"][0] == pytest.approx(25400 / 0.3, rel=1e-3)


def test_make_images_writes_the_scale_and_resumes_file_by_file(ldm, tmp_path):
    """The loop the experiments and the demo share: every file carries its scale (the experiments' images
    had none); with ``resume`` done files are skipped and a done overview is read back, same pixels."""
    from pathup.sample.generate import ImageJob, make_images

    pipe = PathUpPipeline.from_pretrained(str(_model_with_mpp(tmp_path, ldm, {"patch": 0.5, "overview": 2.0})),
                                          progress=False)
    cfg = SampleConfig(size="64x48", steps=2, latent_patch=8, latent_overlap=4, guidance=2.0)
    job = ImageJob("benign", 3, tmp_path / "ov.png", {"pyramid": tmp_path / "p.png", "uniform": tmp_path / "u.png"})
    made = make_images(pipe, cfg, [job], progress=False, extra={"vae_scale_factor": 8})
    assert made.written == [tmp_path / "ov.png", tmp_path / "p.png", tmp_path / "u.png"] and made.skipped == []
    for name, mpp, weight_map in [("ov", 2.0, "pyramid"), ("p", 4.0, "pyramid"), ("u", 4.0, "uniform")]:
        meta = json.loads((tmp_path / f"{name}.json").read_text())
        assert meta["mpp"] == pytest.approx(mpp) and meta["seed"] == 3 and meta["vae_scale_factor"] == 8
        assert meta["options"]["weight_map"] == weight_map
        assert Image.open(tmp_path / f"{name}.png").info["dpi"][0] == pytest.approx(25400 / mpp, rel=1e-3)
    before = np.asarray(Image.open(tmp_path / "u.png"))
    (tmp_path / "u.png").unlink()
    again = make_images(pipe, cfg, [job], resume=True, progress=False)
    assert again.written == [tmp_path / "u.png"] and again.skipped == [tmp_path / "ov.png", tmp_path / "p.png"]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "u.png")), before)


def test_compose_writes_the_scale_and_an_older_model_none(ldm, tmp_path):
    model = str(_model_with_mpp(tmp_path, ldm, {"patch": None, "overview": 1.0}))
    assert main(["compose", "--model", model, "--random-layout", "2", "--out", str(tmp_path / "c"),
                 "--size", "80x64", *FAST]) == 0
    image = tmp_path / "c" / "random_s0.png"
    assert json.loads(image.with_suffix(".json").read_text())["mpp"] == pytest.approx(1.0 * 128 / 80)
    older = str(_model_with_mpp(tmp_path / "old", ldm, None))
    assert main(["generate", "--model", older, "--class", "benign", "--out", str(tmp_path / "o"),
                 "--size", "64", *FAST]) == 0
    meta = json.loads((tmp_path / "o" / "benign" / "benign_s0.json").read_text())
    assert "mpp" not in meta and "dpi" not in Image.open(tmp_path / "o" / "benign" / "benign_s0.png").info
