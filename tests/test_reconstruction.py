"""What an autoencoder keeps of real tiles: the reconstruction metrics against hand-computed values and
scikit-image, batch invariance, ``pathup evaluate --reconstruction``, and the autoencoder report and
validation that ``pathup train`` writes (best EMA weights saved as the model, ``--max-steps auto``)."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pathup.errors import PathUpError
from pathup.metrics.reconstruction import border_ratio, per_image, reconstruct, strip, summarise


def _tiles(n=3, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(40, 215, (n, size, size, 3)).astype(np.uint8)


def test_psnr_ssim_ciede_against_hand_computed_values():
    real = _tiles()
    off = (real.astype(int) + 10).astype(np.uint8)  # every value 10 higher: MSE 100
    vals = per_image(real, off)
    assert np.allclose(vals["psnr"], 20 * math.log10(255 / 10), atol=1e-9)
    same = per_image(real, real)
    assert np.all(np.isinf(same["psnr"])) and np.allclose(same["ssim"], 1) and np.allclose(same["ciede2000"], 0)
    # a uniform grey shift: CIEDE2000 equals scikit-image's on the Lab values of the two greys
    from skimage.color import deltaE_ciede2000, rgb2lab

    a = np.full((1, 20, 20, 3), 120, np.uint8)
    b = np.full((1, 20, 20, 3), 130, np.uint8)
    ref = deltaE_ciede2000(rgb2lab(a[0, :1, :1]), rgb2lab(b[0, :1, :1]))[0, 0]
    assert per_image(a, b)["ciede2000"][0] == pytest.approx(ref, rel=1e-9)
    # greys differ only in lightness: CIEDE2000 is then the S_L-weighted lightness difference (Sharma et al. 2005)
    la, lb = rgb2lab(a[0, :1, :1])[0, 0, 0], rgb2lab(b[0, :1, :1])[0, 0, 0]
    lbar = (la + lb) / 2
    s_l = 1 + 0.015 * (lbar - 50) ** 2 / math.sqrt(20 + (lbar - 50) ** 2)
    assert ref == pytest.approx(abs(lb - la) / s_l, abs=1e-3)


def test_border_ratio_by_hand():
    real = np.full((2, 20, 20, 3), 100, np.uint8)
    recon = real.copy()
    recon[0] += 4  # uniform error: ratio 1
    recon[1] += 1
    recon[1, :3] += 1  # error 2 in the top 3 rows (inside a 3 px border), 1 elsewhere
    r = border_ratio(real, recon, border=3)
    assert r[0] == pytest.approx(1.0)
    n_border = 20 * 20 - 14 * 14
    top = 3 * 20
    assert r[1] == pytest.approx((2 * top + (n_border - top)) / n_border)
    with pytest.raises(PathUpError, match="border must be"):
        border_ratio(real, recon, border=10)
    with pytest.raises(PathUpError, match="one shape"):
        per_image(real, recon[:1])


def test_summarise_per_class_and_strip():
    real = _tiles(4)
    recon = np.clip(real.astype(int) + np.array([0, 5, 10, 20])[:, None, None, None], 0, 255).astype(np.uint8)
    res = summarise(real, recon, ["a", "a", "b", "b"], border=4)
    assert res["images"] == 4 and set(res["per_class"]) == {"a", "b"}
    assert math.isfinite(res["psnr"])  # the exact copy (infinite PSNR) is left out of the mean
    assert res["per_class"]["b"]["psnr"] < res["per_class"]["a"]["psnr"]
    assert strip(real, recon, 2).shape == (64, 64, 3)


def _tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                         norm_num_groups=4, sample_size=32).eval()


def test_reconstruction_does_not_depend_on_the_batch_size():
    vae = _tiny_vae()
    imgs = _tiles(5)
    one = reconstruct(vae, imgs, batch_size=1)
    many = reconstruct(vae, imgs, batch_size=5)
    assert one.shape == imgs.shape and one.dtype == np.uint8
    diff = np.abs(one.astype(int) - many.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01  # float summation order only (rounding to uint8)


@pytest.fixture(scope="module")
def heldout(tmp_path_factory, sample_breakhis):
    """The test-suite's BreakHis dataset (micro size, 64 px) with one patient per class held out as 'test'."""
    from test_train import make_dataset

    root = make_dataset(tmp_path_factory.mktemp("rec") / "ds", sample_breakhis, ["fibroadenoma", "ductal_carcinoma"])
    rows = list(csv.DictReader(open(root / "manifest.csv")))
    last = {r["class"]: r["patient"] for r in rows}
    for r in rows:
        r["split"] = "test" if r["patient"] == last[r["class"]] else "train"
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def test_evaluate_reconstruction_cli(tmp_path, heldout, capsys):
    from pathup.cli import main

    vae_dir = tmp_path / "vae"
    _tiny_vae().save_pretrained(vae_dir)
    out = tmp_path / "rec.json"
    assert main(["evaluate", "--reconstruction", "--model", str(vae_dir), "--data", str(heldout), "--features",
                 "random-cnn", "--out", str(out), "--no-progress"]) == 0
    res = json.loads(out.read_text())
    assert res["images"] > 0 and res["tile_px"] == 64 and res["downsampling"] == 2
    assert set(res["consistency"]) == {"random-cnn", "color-stats"}
    assert out.with_suffix(".png").is_file() and "PSNR" in out.with_suffix(".md").read_text()
    # one-line errors: no model, a folder that is not a model, a split the dataset does not have
    assert main(["evaluate", "--reconstruction", "--data", str(heldout), "--out", str(out)]) == 2
    assert "--model is required" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", "--reconstruction", "--model", str(tmp_path / "empty"), "--data", str(heldout), "--out",
                 str(out)]) == 2
    assert "neither a diffusers model folder" in capsys.readouterr().err
    assert main(["evaluate", "--reconstruction", "--model", str(vae_dir), "--data", str(heldout), "--split", "val",
                 "--out", str(out), "--features", "random-cnn"]) == 2
    assert "no such split" in capsys.readouterr().err


def test_training_reports_the_autoencoder_and_saves_the_best_validated_weights(tmp_path, heldout):
    from safetensors.torch import load_file

    from pathup.train import TrainConfig, train
    from test_train import FAST

    run = tmp_path / "run"
    model = train(TrainConfig(data=heldout, out=run, max_steps=6, val_every=2, val_per_class=2,
                              val_features="random-cnn", vae_eval_tiles=8, **FAST))
    ae = json.loads((run / "autoencoder.json").read_text())
    assert ae["images"] == 8 and ae["split"] == "test" and "random-cnn" in ae["consistency"]
    assert (run / "samples" / "autoencoder.png").is_file()
    recs = [json.loads(x) for x in (run / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [2, 4, 6]
    assert set(recs[0]["features"]) == {"random-cnn", "color-stats"}
    best = json.loads((run / "best" / "best.json").read_text())
    assert best["step"] == max(recs, key=lambda r: (r["score"], -r["step"]))["step"]
    kept = load_file(str(run / "best" / "weights.safetensors"))
    saved = load_file(str(model / "unet" / "diffusion_pytorch_model.safetensors"))
    kept = {k.removeprefix("unet."): v for k, v in kept.items() if k.startswith("unet.")}
    assert kept and all(torch.equal(saved[k].float(), v) for k, v in kept.items())
    # the saved model folder's autoencoder measures the same through evaluate --reconstruction (its vae/ subfolder)
    from pathup.metrics.judge import evaluate_reconstruction

    again, _ = evaluate_reconstruction(model, heldout, features=[], max_tiles=8)
    assert again["psnr"] == pytest.approx(ae["psnr"], abs=1e-6) and again["latent_channels"] == 4


def test_max_steps_auto_stops_when_validation_stops_improving(tmp_path, heldout, monkeypatch):
    from pathup.train import TrainConfig, train, validation
    from test_train import FAST

    scores = iter([0.5, 0.4, 0.3, 0.9, 0.9])  # best at the first validation, then two worse: stop at step 6
    monkeypatch.setattr(validation, "score_of", lambda result, spec: next(scores))
    run = tmp_path / "auto"
    cfg = TrainConfig(data=heldout, out=run, max_steps="auto", min_steps=0, patience=2, max_epochs=50, val_every=2,
                      val_per_class=1, val_features="random-cnn", vae_eval_tiles=0, **FAST)
    assert cfg.resolved().step_cap(120) == 3000
    train(cfg)
    recs = [json.loads(x) for x in (run / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [2, 4, 6]
    assert json.loads((run / "best" / "best.json").read_text())["step"] == 2
    assert (run / "checkpoints" / "checkpoint-00000006").is_dir()


def test_time_limit_validates_the_last_weights_and_stops(tmp_path, heldout, monkeypatch):
    from pathup.train import TrainConfig, train, trainer
    from test_train import FAST

    clock = iter(range(0, 10_000, 25))  # every read of the clock is 25 s later: 3 reads pass a 1-minute limit
    monkeypatch.setattr(trainer, "_clock", lambda: float(next(clock)))
    run = tmp_path / "timed"
    train(TrainConfig(data=heldout, out=run, max_steps=50, time_limit=1, val_every=2, val_per_class=1,
                      val_features="random-cnn", vae_eval_tiles=0, **FAST))
    recs = [json.loads(x) for x in (run / "validation.jsonl").read_text().splitlines()]
    # reads at 0 (start), 25 (step 1), 50 (2), 75 (3: over 60 s): step 3 is validated although 3 % 2 != 0
    assert [r["step"] for r in recs] == [2, 3]
    assert (run / "checkpoints" / "checkpoint-00000003").is_dir()
    assert (run / "model" / "model_index.json").is_file()


def test_max_steps_option_takes_a_number_or_auto(capsys):
    from pathup.config import from_dict
    from pathup.train import TrainConfig

    assert from_dict(TrainConfig, {"max_steps": "auto"}).max_steps == "auto"
    assert from_dict(TrainConfig, {"max_steps": "1500"}).max_steps == 1500
    with pytest.raises(PathUpError, match="allowed: an integer or 'auto'"):
        from_dict(TrainConfig, {"max_steps": "soon"})
    with pytest.raises(PathUpError, match="max_steps must be at least 1"):
        from_dict(TrainConfig, {"max_steps": 0})
    assert TrainConfig(data="d", out="o").resolved().max_steps == "auto"
    assert TrainConfig(data="d", out="o", model="some/folder").resolved().max_steps == 50000


def test_spectral_l1_against_numpy_and_in_the_autoencoder_loss():
    from pathup.losses import autoencoder_loss, spectral_l1

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 16, 12, generator=g), torch.rand(2, 3, 16, 12, generator=g)
    ref = np.abs(np.fft.rfft2(a.numpy() - b.numpy(), norm="ortho")).mean()  # linear: F(a) - F(b) = F(a - b)
    assert spectral_l1(a, b).item() == pytest.approx(float(ref), rel=1e-5)
    assert spectral_l1(a, a).item() == 0.0
    # a blur keeps the pixel mean (and much of the L1) but loses high frequencies: the spectral term sees it
    _assert_loss_term_adds(autoencoder_loss, "spectral_weight", 0.5, spectral_l1)


def _assert_loss_term_adds(autoencoder_loss, option: str, weight: float, term) -> None:
    """``autoencoder_loss(..., option=weight)`` is the plain loss + weight * term(recon, x), the rest unchanged."""
    vae = _tiny_vae()
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    plain, rec, kl = autoencoder_loss(vae, x, generator=torch.Generator().manual_seed(2))
    both, rec2, kl2 = autoencoder_loss(vae, x, **{option: weight}, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        recon = vae.decode(vae.encode(x).latent_dist.sample(torch.Generator().manual_seed(2))).sample
    assert rec2 == rec and kl2 == kl
    assert (both - plain).item() == pytest.approx(weight * term(recon, x).item(), rel=1e-4)


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_autoencoder_lr_schedule_warms_up_then_follows_its_curve(schedule):
    """The autoencoder's learning rate, step by step, against the schedule's formula written out here."""
    from pathup.train.autoencoder import lr_schedule
    from pathup.train.config import TrainConfig

    steps, warm, lr = 40, 5, 1e-3
    cfg = TrainConfig(data="d", out="o", vae_steps=steps, vae_lr=lr, vae_lr_schedule=schedule, vae_lr_warmup_steps=warm)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=lr)
    sched = lr_schedule(opt, cfg)
    seen = []
    for _ in range(steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()

    def expected(s):
        if s < warm:
            return lr * s / warm
        frac = (s - warm) / (steps - warm)
        return lr * {"cosine": 0.5 * (1 + math.cos(math.pi * frac)), "linear": 1 - frac, "constant": 1.0}[schedule]

    np.testing.assert_allclose(seen, [expected(s) for s in range(steps)], rtol=1e-9, atol=1e-15)
    if schedule != "constant":
        assert seen[-1] <= lr / (steps - warm) + 1e-15  # annealed to about 0 by the last step


def test_lab_l1_against_scikit_image_and_in_the_autoencoder_loss():
    from skimage.color import rgb2lab

    from pathup.losses import autoencoder_loss, lab_l1, rgb_to_lab

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 9, 7, generator=g) * 2 - 1, torch.rand(2, 3, 9, 7, generator=g) * 2 - 1
    a[0, :, 0, 0] = torch.tensor([-1.0, -1.0, -1.0])  # black and white, the ends of L
    a[0, :, 0, 1] = torch.tensor([1.0, 1.0, 1.0])
    lab = lambda t: rgb2lab(((t.double() + 1) / 2).permute(0, 2, 3, 1).numpy())  # noqa: E731
    np.testing.assert_allclose(rgb_to_lab(a).permute(0, 2, 3, 1).numpy(), lab(a), atol=2e-3)
    assert lab_l1(a, b).item() == pytest.approx(float(np.abs(lab(a) - lab(b)).mean() / 100), rel=1e-4)
    assert lab_l1(a, a).item() == 0.0
    a.requires_grad_(True)
    lab_l1(a, b).backward()
    assert torch.isfinite(a.grad).all()
    _assert_loss_term_adds(autoencoder_loss, "lab_weight", 2.0, lab_l1)


def test_grid_ratio_sees_a_latent_grid_and_not_noise():
    from pathup.metrics.reconstruction import grid_ratio

    rng = np.random.default_rng(0)
    noise = 128 + 20 * rng.standard_normal((16, 64, 64, 3))
    y, x = np.mgrid[:64, :64]
    checker = (6 * np.cos(2 * np.pi * x / 8) * np.cos(2 * np.pi * y / 8))[None, :, :, None]
    as8 = lambda a: a.clip(0, 255).astype(np.uint8)  # noqa: E731
    assert grid_ratio(as8(noise), 8) == pytest.approx(1.0, abs=0.25)  # white noise: flat rings
    assert grid_ratio(as8(noise + checker), 8) > 2  # 4 of the 63 grid frequencies carry the checker
    # the 8 px checker sits at (+-1/8, +-1/8) cycles/px: not among a 4 px grid's frequencies (multiples of 1/4)
    assert grid_ratio(as8(noise + checker), 4) == pytest.approx(1.0, abs=0.25)
    with pytest.raises(PathUpError, match="divide"):
        grid_ratio(as8(noise), 7)
    rep = summarise(as8(noise), as8(noise + checker), grid_period=8)
    assert rep["grid_ratio"]["reconstructed"] > 2 and rep["grid_ratio"]["real"] < 1.25 and rep["grid_ratio"]["period"] == 8
    assert "grid_ratio" not in summarise(as8(noise), as8(noise))


def test_grid_l1_charges_only_the_latent_grids_frequencies():
    """``grid_l1`` against numpy's FFT: the mean |difference| over the grid's bins; a checker on the grid costs,
    a wave off the grid and a colour shift cost nothing."""
    from pathup.losses import autoencoder_loss, grid_l1

    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1
    y, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    checker = 0.1 * torch.cos(2 * torch.pi * xx / 8) * torch.cos(2 * torch.pi * y / 8)
    off_grid = 0.1 * torch.cos(2 * torch.pi * 3 * xx / 32)  # 3 cycles per tile: not a multiple of 32 / 8 = 4
    assert grid_l1(x + off_grid + 0.2, x, 8).item() == pytest.approx(0.0, abs=1e-6)
    recon = x + checker + 0.05 * torch.rand(2, 3, 32, 32, generator=g)
    d = np.fft.rfft2(recon.double().numpy(), norm="ortho") - np.fft.rfft2(x.double().numpy(), norm="ortho")
    bins = [(fy, fx) for fy in range(0, 32, 4) for fx in range(0, 17, 4) if (fy, fx) != (0, 0)]  # 8 x 5 - 1
    want = np.mean([np.abs(d[:, :, fy, fx]) for fy, fx in bins])
    assert grid_l1(recon, x, 8).item() == pytest.approx(want, rel=1e-5)
    # by hand: 0.1 cos cos puts 0.1 * sqrt(32 * 32) / 4 = 0.8 on (+-4, +-4); the half spectrum keeps 2 of them
    assert grid_l1(x + checker, x, 8).item() == pytest.approx(2 * 0.8 / 39, rel=1e-5)
    with pytest.raises(ValueError, match="divide"):
        grid_l1(recon, x, 7)
    _assert_loss_term_adds(autoencoder_loss, "grid_weight", 2.0, lambda r, i: grid_l1(r, i, 2))  # two blocks: factor 2


def test_grid_power_vs_real_tells_a_painted_checker_from_a_blur():
    """A checker added on the grid keeps more than the real power there; a blur keeps less everywhere (and
    ``grid_ratio`` rises for both); an exact copy keeps 1."""
    from scipy.ndimage import uniform_filter

    from pathup.metrics.reconstruction import grid_power_vs_real, grid_ratio

    rng = np.random.default_rng(0)
    real = (128 + 30 * rng.standard_normal((8, 64, 64, 3))).clip(0, 255).astype(np.uint8)
    y, x = np.mgrid[:64, :64]
    checker = (10 * np.cos(2 * np.pi * x / 8) * np.cos(2 * np.pi * y / 8))[None, :, :, None]
    painted = (real + checker).clip(0, 255).astype(np.uint8)
    blurred = uniform_filter(real.astype(float), size=(1, 5, 5, 1)).astype(np.uint8)
    assert grid_power_vs_real(real, real, 8) == {"grid": pytest.approx(1.0), "elsewhere": pytest.approx(1.0)}
    p = grid_power_vs_real(real, painted, 8)
    assert p["grid"] > 3 and p["elsewhere"] == pytest.approx(1.0, abs=0.02)
    b = grid_power_vs_real(real, blurred, 8)
    assert b["grid"] < 0.1 and b["elsewhere"] < 0.01 and grid_ratio(blurred, 8) > 2
    assert summarise(real, blurred, grid_period=8)["grid_ratio"]["power_vs_real"] == pytest.approx(b)
    with pytest.raises(PathUpError, match="divide"):
        grid_power_vs_real(real, real, 7)


def test_noisy_latents_draw_one_uniform_std_per_image():
    """Each image's noise is N(0, s^2) with s ~ U(0, max_std): per-image stds against scipy's uniform (KS test),
    and E[s^2] = max_std^2 / 3 by hand."""
    from scipy.stats import kstest

    from pathup.train.autoencoder import noisy_latents

    z = torch.full((400, 4, 16, 16), 2.0)
    out = noisy_latents(z, 0.6, torch.Generator().manual_seed(0))
    std = (out - z).flatten(1).std(dim=1).numpy()
    assert kstest(std / 0.6, "uniform").pvalue > 0.01
    assert np.mean(std ** 2) == pytest.approx(0.6 ** 2 / 3, rel=0.1)
    again = noisy_latents(z, 0.6, torch.Generator().manual_seed(0))
    assert torch.equal(out, again) and torch.equal(noisy_latents(z, 0.0), z)


@pytest.mark.parametrize("adv_weight,grid_weight", [(0.0, 0.0), (0.5, 0.0), (0.5, 0.5)])
def test_decoder_stage_trains_the_decoder_alone(tmp_path, heldout, adv_weight, grid_weight):
    """The decoder stage changes the decoder only: encoder, latents and scaling factor stay bit-identical,
    with or without the patch discriminator; with it, the same seed gives the same decoder."""
    from accelerate import Accelerator

    from pathup.model import build_ldm
    from pathup.train import TrainConfig
    from pathup.train.autoencoder import finetune_decoder, train_autoencoder
    from pathup.train.base import _tiles
    from test_train import FAST

    cfg = TrainConfig(data=heldout, out=tmp_path / "run", **{**FAST, "vae_steps": 2, "vae_decoder_steps": 3},
                      vae_decoder_adv_weight=adv_weight, vae_decoder_grid_weight=grid_weight).resolved()
    tiles = _tiles(cfg, 64)
    vae = build_ldm("micro", tiles.table).vae
    acc = Accelerator(cpu=True)
    sf = train_autoencoder(acc, vae, tiles, cfg)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    x = torch.stack([tiles[i][0] for i in range(4)])
    with torch.no_grad():
        z0 = vae.encode(x).latent_dist.mode()
    finetune_decoder(acc, vae, tiles, cfg)
    after = vae.state_dict()
    frozen = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    trained = [k for k in before if k.startswith(("decoder.", "post_quant_conv."))]
    assert frozen and trained and len(frozen) + len(trained) == len(before)
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in trained)
    with torch.no_grad():
        assert torch.equal(vae.encode(x).latent_dist.mode(), z0)
    assert vae.config.scaling_factor == sf and not vae.training
    vae.load_state_dict(before)
    finetune_decoder(acc, vae, tiles, cfg)
    assert all(torch.equal(after[k], v) for k, v in vae.state_dict().items())  # seeded: discriminator included


def test_decoder_objective_adds_the_grid_term_and_keeps_the_adversarial_weight():
    """With ``grid_weight`` W the decoder stage's loss is L1 + W * grid_l1 at the autoencoder's factor (+ the
    adversarial term, whose adaptive weight is still taken against the L1 alone); same seed, same draw."""
    from pathup.losses import PatchDiscriminator, grid_l1
    from pathup.model import build_ldm
    from pathup.train.autoencoder import DecoderObjective

    vae = build_ldm("micro").vae
    torch.manual_seed(0)
    disc = PatchDiscriminator(layers=2)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def run(grid_weight, adv_weight=0.5):
        obj = DecoderObjective(vae, 0.4, 1.0, disc, adv_weight, grid_weight)
        return obj(x, torch.Generator().manual_seed(5))

    plain, with_grid = run(0.0), run(2.0)
    assert DecoderObjective(vae, 0.4, 1.0, grid_weight=2.0).period == 8  # micro: 4 blocks, factor 8
    recon = with_grid[3]
    assert torch.equal(recon, plain[3]) and torch.equal(with_grid[1], plain[1])  # same noise, same decoding
    assert with_grid[2].item() == pytest.approx(plain[2].item(), rel=1e-6)  # adversarial weight unchanged
    want = plain[0].item() + 2.0 * grid_l1(recon, x, 8).item()
    assert with_grid[0].item() == pytest.approx(want, rel=1e-5)
    no_disc = DecoderObjective(vae, 0.4, 1.0, grid_weight=2.0)(x, torch.Generator().manual_seed(5))
    assert no_disc[0].item() == pytest.approx(no_disc[1].item() + 2.0 * grid_l1(recon, x, 8).item(), rel=1e-5)


def test_decoder_objective_keeps_the_lab_term_of_the_autoencoder_stage():
    """With ``lab_weight`` W the decoder stage adds W * lab_l1 (the autoencoder stage's colour term, checked
    against scikit-image in ``test_lab_term``) to its L1 and grid terms, and takes taming's adaptive weight
    against the whole reconstruction loss (L1 + W * lab_l1; taming uses its ``nll_loss``), so the adversarial
    term keeps its share: checked by hand against the two gradients' norms on the decoder's output layer.
    ``finetune_decoder`` passes ``--vae-decoder-lab-weight`` (next test)."""
    from pathup.losses import PatchDiscriminator, grid_l1, lab_l1
    from pathup.losses.adversarial import generator_loss
    from pathup.model import build_ldm
    from pathup.train.autoencoder import DecoderObjective, noisy_latents

    vae = build_ldm("micro").vae
    torch.manual_seed(0)
    disc = PatchDiscriminator(layers=2)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1

    def run(lab_weight):
        return DecoderObjective(vae, 0.4, 1.0, disc, 0.5, 0.5, lab_weight)(x, torch.Generator().manual_seed(5))

    def by_hand(lab_weight):  # the same decoding (same generator draws), the loss and weight written out
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.sample(g)
        recon = vae.decode(noisy_latents(z, 0.4, g)).sample
        fit = (recon - x).abs().mean() + lab_weight * lab_l1(recon, x)
        adv = generator_loss(disc(recon))
        last = vae.decoder.conv_out.weight
        g_fit = torch.autograd.grad(fit, last, retain_graph=True)[0]
        g_adv = torch.autograd.grad(adv, last, retain_graph=True)[0]
        w = 0.5 * g_fit.norm() / (g_adv.norm() + 1e-4)
        grid = grid_l1(recon, x, 2 ** (len(vae.config.block_out_channels) - 1))  # one latent cell, in px
        return (fit + 0.5 * grid + w * adv).item(), w.item(), recon.detach()

    plain, with_lab = run(0.0), run(3.0)
    recon = with_lab[3]
    assert torch.equal(recon, plain[3])
    for lab_weight, got in ((0.0, plain), (3.0, with_lab)):
        loss, w, hand_recon = by_hand(lab_weight)
        assert torch.equal(hand_recon, got[3])
        assert got[2].item() == pytest.approx(w, rel=1e-5) and got[0].item() == pytest.approx(loss, rel=1e-5)
    assert with_lab[2].item() > plain[2].item()  # the colour term's gradient adds to the reconstruction's
    alone = DecoderObjective(vae, 0.4, 1.0, lab_weight=3.0)(x, torch.Generator().manual_seed(5))
    want = alone[1].item() + 3.0 * lab_l1(alone[3], x).item()
    assert alone[0].item() == pytest.approx(want, rel=1e-5) and lab_l1(recon, x).item() > 0


def test_decoder_stage_follows_its_own_lab_weight(tmp_path, heldout):
    """``--vae-decoder-lab-weight`` reaches the decoder stage and ``--vae-lab-weight`` does not: from the same
    autoencoder and seed, the decoder differs with the decoder's weight on and off (seeded, so the difference
    is the term's), and the autoencoder stage's weight leaves it as it is."""
    import dataclasses

    from accelerate import Accelerator

    from pathup.model import build_ldm
    from pathup.train import TrainConfig
    from pathup.train.autoencoder import finetune_decoder, train_autoencoder
    from pathup.train.base import _tiles
    from test_train import FAST

    cfg = TrainConfig(data=heldout, out=tmp_path / "run", **{**FAST, "vae_steps": 2, "vae_decoder_steps": 2},
                      vae_decoder_adv_weight=0.0).resolved()
    tiles = _tiles(cfg, 64)
    vae = build_ldm("micro", tiles.table).vae
    acc = Accelerator(cpu=True)
    train_autoencoder(acc, vae, tiles, cfg)
    start = {k: v.clone() for k, v in vae.state_dict().items()}
    decoders = []
    for weights in ((0.0, 0.0), (0.0, 1.0), (1.0, 0.0)):  # (autoencoder stage's, decoder stage's)
        vae.load_state_dict(start)
        finetune_decoder(acc, vae, tiles, dataclasses.replace(cfg, vae_lab_weight=weights[0],
                                                              vae_decoder_lab_weight=weights[1]))
        decoders.append({k: v.clone() for k, v in vae.state_dict().items() if k.startswith("decoder.")})
    assert all(torch.equal(decoders[0][k], decoders[2][k]) for k in decoders[0])  # seeded; stage 1's weight: none
    assert any(not torch.equal(decoders[0][k], decoders[1][k]) for k in decoders[0])


def test_a_crop_off_the_latent_grid_is_refused_before_the_autoencoder_trains(tmp_path, heldout):
    """A --vae-crop that is not whole latent cells would decode at another size (and put the grid term off the
    grid): refused, naming the option and a size that works, before anything is trained or written."""
    from accelerate import Accelerator

    from pathup.errors import OptionError
    from pathup.train import TrainConfig
    from pathup.train.base import load_model
    from test_train import FAST

    run = tmp_path / "run"
    cfg = TrainConfig(data=heldout, out=run, **{**FAST, "vae_crop": 36}).resolved()
    with pytest.raises(OptionError, match=r"^vae_crop 36 must be 0 \(whole tiles\) or a multiple of the "
                                          r"autoencoder's latent grid \(8 px\), e\.g\. 32$") as err:
        load_model(Accelerator(cpu=True), cfg, run)
    assert err.value.for_cli().startswith("--vae-crop 36 must be")
    assert not (run / "base").exists()
    ok = TrainConfig(data=heldout, out=tmp_path / "ok", **{**FAST, "vae_crop": 40, "vae_steps": 1,
                                                           "vae_decoder_steps": 1}).resolved()
    ldm, _, _ = load_model(Accelerator(cpu=True), ok, tmp_path / "ok")  # 40 = 5 cells: trains
    assert (tmp_path / "ok" / "base" / "model_index.json").is_file()


def test_decoder_stage_defaults_to_three_tenths_of_the_autoencoder_steps_with_a_34_px_discriminator():
    from pathup.losses.adversarial import receptive_field
    from pathup.train import TrainConfig

    cfg = TrainConfig(data="d", out="o", model="tiny").resolved()
    assert cfg.vae_decoder_steps == 300 and cfg.vae_decoder_adv_weight == 0.5 and cfg.vae_decoder_grid_weight == 0.5
    assert receptive_field(cfg.vae_disc_layers) == 34
    assert TrainConfig(data="d", out="o", model="tiny", vae_steps=4000).resolved().vae_decoder_steps == 1200
    assert TrainConfig(data="d", out="o", model="tiny", vae_decoder_steps=0).resolved().vae_decoder_steps == 0
    assert TrainConfig(data="d", out="o", model="org/sd-folder").resolved().vae_decoder_steps == 0


def test_the_lab_colour_term_is_on_for_tiny_f4_only_unless_set():
    from pathup.train import TrainConfig

    def weight(**kw):
        return TrainConfig(data="d", out="o", **kw).resolved().vae_lab_weight

    assert weight() == weight(model="tiny-f4") == 1.0  # pathup train's default size
    assert weight(model="tiny") == weight(model="micro") == weight(model="org/sd-folder") == 0.0
    assert weight(model="tiny", vae_lab_weight=2.0) == 2.0 and weight(model="tiny-f4", vae_lab_weight=0.0) == 0.0
