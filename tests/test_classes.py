"""Class learning (issue 11): the prompt tokenizer, the trained text encoder, the diffusers round trip of a
from-scratch model, and the class-consistency metric on real Kather tiles (near its ceiling for real images,
near chance with shuffled labels), with colour statistics checked by hand."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pathup.errors import PathUpError
from pathup.model.tokenizer import build_char_tokenizer, build_prompt_tokenizer, check_prompts

from test_train import FAST, make_dataset


# ------------------------------------------------------------------------------------------- tokenizer
def test_prompt_tokenizer_round_trip_one_token_per_word():
    prompts = ["ductal carcinoma in situ, overview", "01 TUMOR, patch", "腫瘍, patch", "a_b, patch"]
    tok = build_prompt_tokenizer(prompts)
    for p in prompts:
        ids = tok(p).input_ids
        assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == p.lower().replace(" ", "")
    toks = tok.convert_ids_to_tokens(tok("ductal carcinoma in situ, overview").input_ids)
    assert toks == ["<|startoftext|>", "ductal</w>", "carcinoma</w>", "in</w>", "situ</w>", ",</w>", "overview</w>",
                    "<|endoftext|>"]
    # unknown text still tokenizes (spelled out), and the character tokenizer is the no-prompt case
    assert len(tok("unseen words, patch").input_ids) > 5
    assert len(build_char_tokenizer()) == 514


def test_long_descriptions_no_longer_collide():
    # over 75 characters of shared text: the character-level tokenizer cut both at 75 tokens (same ids)
    base = "a long free-text description of the tissue with many words that goes on and on and on and on and on "
    prompts = [base + "alpha, patch", base + "beta, patch"]
    char = build_char_tokenizer()
    assert char(prompts[0], truncation=True).input_ids == char(prompts[1], truncation=True).input_ids
    tok = build_prompt_tokenizer(prompts)
    check_prompts(tok, prompts)  # fits whole: no error
    assert tok(prompts[0]).input_ids != tok(prompts[1]).input_ids


def test_collision_error_names_both_prompts():
    with pytest.raises(PathUpError, match="'Tumor, patch' and 'tumor,  patch'.*case or spacing"):
        check_prompts(build_prompt_tokenizer([]), ["Tumor, patch", "tumor,  patch"])
    long = ["x " * 80 + "one", "x " * 80 + "two"]
    with pytest.raises(PathUpError, match="differ only after the tokenizer's 75 tokens"):
        check_prompts(build_prompt_tokenizer(long), long)


def test_build_ldm_refuses_colliding_prompt_table():
    from pathup.model import build_ldm
    from pathup.prompts import PromptTable

    table = PromptTable(["A", "a"], ["patch"])
    with pytest.raises(PathUpError, match="map to the same tokens"):
        build_ldm("micro", table)


# ------------------------------------------------------------------------------------ training + diffusers
@pytest.fixture(scope="module")
def two_class(tmp_path_factory, sample_breakhis):
    return make_dataset(tmp_path_factory.mktemp("cls") / "two", sample_breakhis,
                        ["fibroadenoma", "ductal_carcinoma"])


def _te_state(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "text_encoder" / "model.safetensors"))


def test_text_encoder_trains_from_scratch_and_loads_in_diffusers(two_class, tmp_path):
    from diffusers import StableDiffusionPipeline

    from pathup.train import TrainConfig, train

    out = train(TrainConfig(dataset=two_class, out=tmp_path / "run", max_steps=3, lr=1e-3, **FAST))
    base, final = _te_state(tmp_path / "run" / "base"), _te_state(out)
    changed = [k for k in base if not torch.equal(base[k], final[k])]
    assert changed, "the text encoder did not train"
    assert any("token_embedding" in k for k in changed)
    cfg = json.loads((out / "unet" / "config.json").read_text())
    assert cfg["sample_size"] == 8

    pipe = StableDiffusionPipeline.from_pretrained(str(out), safety_checker=None)
    assert pipe.tokenizer.convert_ids_to_tokens(pipe.tokenizer("fibroadenoma, overview").input_ids)[1] == \
        "fibroadenoma</w>"
    g = torch.Generator().manual_seed(0)
    img = pipe("fibroadenoma, overview", num_inference_steps=2, height=64, width=64, generator=g,
               output_type="np").images
    assert img.shape == (1, 64, 64, 3) and np.isfinite(img).all()


def test_text_encoder_frozen_when_fine_tuning(two_class, tmp_path):
    from pathup.train import TrainConfig, train

    src = train(TrainConfig(dataset=two_class, out=tmp_path / "src", max_steps=1, **FAST))
    fast = {k: v for k, v in FAST.items() if k != "model"}
    out = train(TrainConfig(dataset=two_class, out=tmp_path / "ft", model=str(src), max_steps=2, lr=1e-3, **fast))
    a, b = _te_state(src), _te_state(out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and it can be switched on explicitly
    out2 = train(TrainConfig(dataset=two_class, out=tmp_path / "ft2", model=str(src), max_steps=2, lr=1e-3,
                             train_text_encoder=True, **fast))
    c = _te_state(out2)
    assert any(not torch.equal(a[k], c[k]) for k in a)


# -------------------------------------------------------------------------------- class-consistency
@pytest.fixture(scope="module")
def kather(tmp_path_factory):
    from pathup.experiments.demo.stages import prepare_sample

    root = tmp_path_factory.mktemp("kather")
    prepare_sample("kather", root / "ds", progress=False)
    rows = [r for r in __import__("csv").DictReader(open(root / "ds" / "manifest.csv"))
            if r["split"] == "test" and r["level"] == "overview"]
    rng = np.random.default_rng(0)
    shuffled = rng.permutation([r["class"] for r in rows])
    for r, s in zip(rows, shuffled):
        for name, cls in (("same", r["class"]), ("shuffled", s)):
            dst = root / name / cls / Path(r["path"]).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(root / "ds" / r["path"], dst)
    return root


def test_class_consistency_near_ceiling_and_near_chance(kather):
    from sklearn.metrics import accuracy_score

    from pathup.metrics import consistency as cc

    res = cc.measure(kather / "ds", [kather / "same", kather / "shuffled"], features="color-stats", size=128)
    assert res["heldout_split"] == "test" and res["real_tiles"] == {"train": 256, "heldout": 80}
    same, shuf = res["sets"][str(kather / "same")], res["sets"][str(kather / "shuffled")]
    chance = 1 / 8
    ceiling = same["real_heldout"]["accuracy"]
    assert ceiling > 3 * chance  # 8 visibly distinct classes, held-out slide
    assert same["generated"]["accuracy"] == pytest.approx(ceiling)  # the held-out real images themselves
    assert same["real_above_3x_chance"] == same["above_3x_chance"] == shuf["real_above_3x_chance"]
    assert same["real_above_3x_chance"] == [c for c, a in same["real_heldout"]["per_class"].items() if a > 3 * chance]
    assert shuf["generated"]["accuracy"] < 2 * chance
    assert same["colour_r"] > 0.9 and shuf["colour_r"] < 0.5

    # the accuracy equals sklearn's on the same classifier's predictions
    paths, classes, splits = cc.labelled_real(kather / "ds", "overview")
    imgs = cc.load_rgb(paths, 128)
    from pathup.metrics.features import make_extractor

    f = cc.extract(imgs, make_extractor("color-stats"))
    tr = [i for i, s in enumerate(splits) if s == "train"]
    clf = cc.fit_classifier(f[tr], [classes[i] for i in tr])
    fp, fc = cc.labelled_fake(kather / "shuffled")
    pred = clf.predict(cc.extract(cc.load_rgb(fp, 128), make_extractor("color-stats")))
    assert shuf["generated"]["accuracy"] == pytest.approx(accuracy_score(fc, pred))


def test_evaluate_reports_class_consistency(kather, tmp_path):
    from pathup.metrics.evaluate import EvaluateConfig, evaluate

    res = evaluate(EvaluateConfig(data=str(kather / "ds"), fake=str(kather / "same"), out=str(tmp_path / "m.json"),
                                  features="color-stats", repeats=1, overview_size=128, cache=False, progress=False))
    cc = res["class_consistency"]
    assert Path(cc["plot"]).is_file()
    md = (tmp_path / "m.md").read_text()
    assert "Class-consistency" in md and "real held-out" in md and "08_EMPTY (real)" in md
    # off on request; an explicit request that cannot be met is a one-line error
    res = evaluate(EvaluateConfig(data=str(kather / "ds"), fake=str(kather / "same"), out=str(tmp_path / "n.json"),
                                  features="color-stats", repeats=1, overview_size=128, cache=False, progress=False,
                                  class_consistency=False))
    assert "class_consistency" not in res
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in list((kather / "same").rglob("*.png"))[:8]:
        shutil.copy(p, flat / p.name)
    with pytest.raises(PathUpError, match="no class"):
        evaluate(EvaluateConfig(data=str(kather / "ds"), fake=str(flat), out=str(tmp_path / "o.json"),
                                features="color-stats", repeats=1, overview_size=128, cache=False, progress=False,
                                class_consistency=True))


def test_colour_stats_by_hand():
    from pathup.metrics.consistency import colour_correlation, colour_stats

    red = np.zeros((4, 4, 3), np.uint8)
    red[..., 0] = 255
    s = colour_stats(red)
    assert (s["R_mean"], s["G_mean"], s["B_mean"], s["R_std"]) == (255, 0, 0, 0)
    assert s["H_mean"] == pytest.approx(0) and s["S_mean"] == 255 and s["V_mean"] == 255 and s["H_std"] < 1e-3
    # hue is circular: half just below red (h = 0.99) and half just above (h = 0.01) average to red, not cyan
    from matplotlib.colors import hsv_to_rgb

    img = np.concatenate([hsv_to_rgb(np.full((2, 4, 3), [0.99, 1, 1])), hsv_to_rgb(np.full((2, 4, 3), [0.01, 1, 1]))])
    s = colour_stats((img * 255).round().astype(np.uint8))
    assert min(s["H_mean"], 255 - s["H_mean"]) < 1.0
    real = {"a": {"R_mean": 10, "G_mean": 20, "B_mean": 30}, "b": {"R_mean": 200, "G_mean": 100, "B_mean": 50}}
    fake = {k: {c: v * 0.5 + 3 for c, v in d.items()} for k, d in real.items()}
    assert colour_correlation(real, fake) == pytest.approx(1.0)


def test_min_snr_weights_match_diffusers_reference():
    from diffusers.training_utils import compute_snr

    from pathup.losses import denoising_loss, min_snr_weights
    from pathup.model.ldm import make_scheduler

    t = torch.tensor([0, 10, 250, 500, 999])
    for kind in ("epsilon", "v_prediction"):
        s = make_scheduler("ddim")
        s.register_to_config(prediction_type=kind)
        ref_snr = compute_snr(s, t)
        # diffusers' train_text_to_image.py: mse_loss_weights = min(snr, gamma) / snr (epsilon), / (snr + 1) (v)
        ref = torch.stack([ref_snr, 5.0 * torch.ones_like(t)], 1).min(1)[0] / (ref_snr + (kind == "v_prediction"))
        assert torch.allclose(min_snr_weights(s, t, 5.0), ref, rtol=1e-6)
    pred, target = torch.randn(5, 4, 2, 2), torch.randn(5, 4, 2, 2)
    w = torch.rand(5)
    by_hand = ((pred - target) ** 2).mean(dim=(1, 2, 3)) @ w / 5
    assert torch.allclose(denoising_loss(pred, target, w), by_hand)
    assert torch.allclose(denoising_loss(pred, target, torch.ones(5)), denoising_loss(pred, target))


def test_scheduler_change_of_a_defaulted_option_is_kept():
    # diffusers' from_config resets options listed in "_use_default_values" to their defaults; a schedule
    # rescaled to zero terminal SNR must stay rescaled (PathUp's from-scratch default)
    from pathup.model.ldm import make_scheduler

    base = make_scheduler("ddim")
    assert base.alphas_cumprod[-1] > 0
    cfg = dict(base.config, rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction")
    for name in ("ddim", "ddpm", "euler", "dpm++"):
        s = make_scheduler(name, cfg)
        assert s.config.prediction_type == "v_prediction"
        assert float(s.alphas_cumprod[-1]) < 1e-6, name  # Euler keeps 2**-24 to avoid an infinite sigma
    with pytest.raises(PathUpError, match="pndm.*zero-terminal-SNR"):
        make_scheduler("pndm", cfg)


def test_kather_sample_is_split_by_slide(kather):
    import csv

    rows = list(csv.DictReader(open(kather / "ds" / "manifest.csv")))
    classes = {r["class"] for r in rows}
    assert len(classes) == 8 and {r["split"] for r in rows} == {"train", "test"}
    for c in classes:
        assert {r["split"] for r in rows if r["class"] == c} == {"train", "test"}, c
    train_slides = {r["slide"] for r in rows if r["split"] == "train" and r["class"] != "08_EMPTY"}
    test_slides = {r["slide"] for r in rows if r["split"] == "test" and r["class"] != "08_EMPTY"}
    assert not train_slides & test_slides  # held out by slide; 08_EMPTY (one slide only) is split by tile
    empty = [r for r in rows if r["class"] == "08_EMPTY"]
    assert {r["slide"] for r in empty} == {"CRC-Prim-HE-06"}
    assert not {r["source"] for r in empty if r["split"] == "train"} & {r["source"] for r in empty if r["split"] == "test"}


def test_same_seed_distance_against_hand_values():
    from pathup.errors import PathUpError
    from pathup.metrics.consistency import same_seed_distance

    # A and B differ by 1 at every seed, seeds of one class differ by 10, C is B plus 4 at seed 0 only
    full = lambda v: np.full((2, 2, 3), v, np.uint8)  # noqa: E731
    imgs = {"A": {0: full(0), 1: full(10)}, "B": {0: full(1), 1: full(11)}, "C": {0: full(5), 1: full(11)}}
    res = same_seed_distance(imgs)
    assert res["seed_distance"] == pytest.approx((10 + 10 + 6) / 3)  # uint8 input is not wrapped around
    sd = res["seed_distance"]
    m = np.array(res["matrix"])
    assert m[0, 1] == pytest.approx(1 / sd) and m[1, 2] == pytest.approx(2 / sd) and m[0, 2] == pytest.approx(3 / sd)
    assert np.allclose(m, m.T) and np.all(np.diag(m) == 0)
    assert [p[:2] for p in res["closest"]] == [["A", "B"], ["B", "C"], ["A", "C"]]
    # a pair drawn identically has distance 0; another seed's worth of change is 1
    same = same_seed_distance({"A": imgs["A"], "B": imgs["A"]})
    assert same["closest"][0][2] == 0
    shifted = same_seed_distance({"A": {0: full(0), 1: full(10), 2: full(20)},
                                  "B": {0: full(10), 1: full(20), 2: full(30)}})
    assert shifted["closest"][0][2] == pytest.approx(1.0)
    # extra seeds of one class are ignored; fewer than two shared seeds is a clear error
    assert same_seed_distance({**imgs, "A": {**imgs["A"], 7: full(200)}})["matrix"] == res["matrix"]
    with pytest.raises(PathUpError, match="at least two seeds"):
        same_seed_distance({"A": {0: full(0), 1: full(1)}, "B": {0: full(0)}})


def test_image_seed_from_sidecar_then_file_name(tmp_path):
    from pathup.data.generated import image_seed

    (tmp_path / "TUMOR_s12.json").write_text(json.dumps({"seed": 7, "class": "TUMOR"}))
    assert image_seed(tmp_path / "TUMOR_s12.png") == 7  # the sidecar wins over the name
    assert image_seed(tmp_path / "STROMA_s12.png") == 12 and image_seed(tmp_path / "s3.png") == 3
    (tmp_path / "x_s4.json").write_text(json.dumps({"seed": True}))  # not an int: the name decides
    assert image_seed(tmp_path / "x_s4.png") == 4
    assert image_seed(tmp_path / "tile_0003.png") is None and image_seed(tmp_path / "pass12.png") is None


def test_evaluate_reports_same_seed_distance(kather, tmp_path):
    """A folder whose classes share seeds gets the same-seed distance of its images (the hand-checked function
    on the same pixels), in the JSON and the Markdown; a folder without seeds gets None."""
    from pathup.metrics import consistency as cc
    from pathup.metrics.evaluate import EvaluateConfig, evaluate

    paths, classes, splits = cc.labelled_real(kather / "ds", "overview")
    fake = tmp_path / "fake"
    want = {}
    for c in ("01_TUMOR", "02_STROMA", "05_DEBRIS"):
        held = [p for p, k, s in zip(paths, classes, splits) if k == c and s == "test"][:3]
        (fake / c).mkdir(parents=True)
        for seed, p in enumerate(held):
            shutil.copy(p, fake / c / f"s{seed}.png")
        want[c] = dict(enumerate(cc.load_rgb(held, 128)))
    (fake / "05_DEBRIS" / "s9.png").write_bytes((fake / "05_DEBRIS" / "s0.png").read_bytes())  # unshared seed
    res = evaluate(EvaluateConfig(data=str(kather / "ds"), fake=str(fake), out=str(tmp_path / "m.json"),
                                  features="color-stats", repeats=1, overview_size=128, cache=False, progress=False,
                                  k=2))
    got = res["class_consistency"]["sets"][str(fake)]["same_seed"]
    ref = cc.same_seed_distance(want)
    assert got["seeds"] == [0, 1, 2] and got["classes"] == sorted(want)
    assert np.allclose(got["matrix"], ref["matrix"]) and got["seed_distance"] == pytest.approx(ref["seed_distance"])
    md = (tmp_path / "m.md").read_text()
    assert "Same-seed distance" in md and f"{ref['closest'][0][0]}~{ref['closest'][0][1]}" in md
    assert json.loads((tmp_path / "m.json").read_text())["class_consistency"]["sets"][str(fake)]["same_seed"]
    # real tiles under their own names carry no seed
    res = cc.measure(kather / "ds", kather / "same", features="color-stats", size=128)
    assert res["sets"][str(kather / "same")]["same_seed"] is None


def test_same_seed_of_groups_by_class_and_seed():
    from pathup.metrics.consistency import same_seed_distance, same_seed_of

    full = lambda v: np.full((2, 2, 3), v, np.uint8)  # noqa: E731
    imgs = [full(0), full(10), full(1), full(11), full(99), full(50)]
    classes = ["A", "A", "B", "B", "B", "C"]
    seeds = [0, 1, 0, 1, None, 0]  # B's third image has no seed, C has one seed only: both left out
    got = same_seed_of(imgs, classes, seeds)
    assert got["classes"] == ["A", "B"]
    assert got["matrix"] == same_seed_distance({"A": {0: full(0), 1: full(10)}, "B": {0: full(1), 1: full(11)}})["matrix"]
    assert same_seed_of(imgs, classes, [None] * 6) is None
    assert same_seed_of([full(0)] * 4, ["A", "A", "B", "B"], [0, 1, 0, 1]) is None  # undefined: seeds identical
