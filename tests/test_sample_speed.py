"""Issue 19: the new solvers against diffusers' text-to-image, guidance in a limited interval of noise levels
(Kynkaanniemi et al. 2024) and the cost accounting of every image (UNet evaluations, seconds per stage)."""

import dataclasses
import re
import json

import numpy as np
import pytest
import torch

from pathup.cli import main
from pathup.errors import OptionError, PathUpError
from pathup.model import build_ldm, save_ldm
from pathup.model.ldm import make_scheduler
from pathup.model.registry import MODEL_SIZES
from pathup.prompts import PromptTable
from pathup.sample import PathUpPipeline, SampleConfig
from pathup.sample.config import validate
from pathup.sample.grid import patch_grid
from pathup.sample.tracking import guided_denoiser, img2img_timesteps, tracked_img2img, tracked_text2img
from tensor_util import close

GUIDANCE = 3.0
C = 4  # Stable Diffusion's latent channels: diffusers' pipelines take 4-channel latents as they are
TINY4 = dataclasses.replace(MODEL_SIZES["tiny"], vae={**MODEL_SIZES["tiny"].vae, "latent_channels": C},
                            unet={**MODEL_SIZES["tiny"].unet, "in_channels": C, "out_channels": C})


@pytest.fixture(scope="module")
def tiny():
    ldm = build_ldm(TINY4, PromptTable(["benign", "ductal carcinoma"]), seed=0)
    with torch.no_grad():
        cond = ldm.encode_prompts(["ductal carcinoma, patch"])
        uncond = ldm.encode_prompts([""])
    return ldm, cond, uncond


def _sd_pipe(ldm, scheduler):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=ldm.vae, text_encoder=ldm.text_encoder, tokenizer=ldm.tokenizer,
                                   unet=ldm.unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ------------------------------------------------------------------------------------------ solvers
@pytest.mark.parametrize("name", ["ddim", "dpm++-karras", "unipc", "euler"])
def test_one_patch_text2img_equals_diffusers(tiny, name):
    """The own loop with one patch covering the canvas is diffusers' StableDiffusionPipeline."""
    ldm, cond, uncond = tiny
    n = int(ldm.unet.config.sample_size)
    with torch.no_grad():
        ref = _sd_pipe(ldm, make_scheduler(name))(
            prompt_embeds=cond, negative_prompt_embeds=uncond, height=n * ldm.vae_scale_factor,
            width=n * ldm.vae_scale_factor, num_inference_steps=5, guidance_scale=GUIDANCE,
            generator=torch.Generator().manual_seed(2), output_type="latent").images
    ours = tracked_text2img(guided_denoiser(ldm.unet, cond, uncond, GUIDANCE), (1, C, n, n), make_scheduler(name),
                            steps=5, generator=torch.Generator().manual_seed(2), patch=n, overlap=0)
    assert ours.shape == ref.shape and close(ours, ref)


def test_new_schedulers_are_what_their_names_say():
    from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler

    k = make_scheduler("dpm++-karras", {"beta_schedule": "scaled_linear", "use_karras_sigmas": False,
                                        "solver_order": 3})
    assert isinstance(k, DPMSolverMultistepScheduler)
    assert k.config.use_karras_sigmas and k.config.solver_order == 2 and k.config.algorithm_type == "dpmsolver++"
    assert isinstance(make_scheduler("unipc"), UniPCMultistepScheduler)
    assert not make_scheduler("dpm++").config.use_karras_sigmas
    with pytest.raises(PathUpError, match="unknown scheduler 'heun'.*unipc"):
        make_scheduler("heun")


@pytest.mark.parametrize("name", ["unipc", "dpm++-karras"])
def test_zero_terminal_snr_models(name):
    """PathUp's own models are v-prediction with a zero-terminal-SNR schedule: the new solvers run it (finite
    through tracking, from noise and in img2img); pndm, which diffusers cannot run so, is refused in one line."""
    zsnr = dict(make_scheduler("ddim").config, rescale_betas_zero_snr=True, prediction_type="v_prediction",
                timestep_spacing="trailing")
    with pytest.raises(PathUpError, match=re.escape("'pndm' does not support this model's zero-terminal-SNR")) as err:
        make_scheduler("pndm", zsnr)
    assert "\n" not in str(err.value) and "unipc" in str(err.value)
    x0 = torch.randn(1, C, 12, 12, generator=torch.Generator().manual_seed(0))
    for strength in (1.0, 0.8):
        out = tracked_img2img(lambda x, t: 0.1 * x, x0, make_scheduler(name, zsnr), steps=6, strength=strength,
                              generator=torch.Generator().manual_seed(0), patch=8, overlap=4)
        assert torch.isfinite(out).all()


def test_karras_sigmas_on_a_zero_snr_model_run_every_step_once(tiny):
    """Karras sigmas on a zero-terminal-SNR schedule repeat the first timestep at 25+ steps; diffusers'
    text-to-image then starts at the second position and steps past the end (IndexError). PathUp's loops start
    at index 0: every timestep is run once, the overview as the hand-written loop from index 0."""
    from pathup.sample.overview import generate_overview, repeats_first_timestep

    ldm, cond, uncond = tiny
    zsnr = dict(make_scheduler("ddim").config, rescale_betas_zero_snr=True, prediction_type="v_prediction",
                timestep_spacing="trailing")
    sched = make_scheduler("dpm++-karras", zsnr)
    probe = make_scheduler("dpm++-karras", zsnr)
    probe.set_timesteps(30)
    assert probe.timesteps[0] == probe.timesteps[1] and repeats_first_timestep(sched, 30)
    assert not repeats_first_timestep(sched, 10) and not repeats_first_timestep(make_scheduler("ddim", zsnr), 30)
    with pytest.raises(IndexError):  # the diffusers behaviour this guards against
        _sd_pipe(ldm, make_scheduler("dpm++-karras", zsnr))(
            prompt_embeds=cond, negative_prompt_embeds=uncond, height=16, width=16, num_inference_steps=30,
            guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(0), output_type="latent")
    n = int(ldm.unet.config.sample_size)
    calls = []

    def den(x, t):
        calls.append(int(t))
        return 0.1 * x

    out = tracked_text2img(den, (1, C, n, n), sched, steps=30, generator=torch.Generator().manual_seed(1),
                           patch=n, overlap=0)
    assert calls == probe.timesteps.tolist() and torch.isfinite(out).all()
    # the reference: diffusers' scheduler stepped by hand from index 0
    ref = make_scheduler("dpm++-karras", zsnr)
    ref.set_timesteps(30)
    ref.set_begin_index(0)
    x = torch.randn(1, C, n, n, generator=torch.Generator().manual_seed(1)) * ref.init_noise_sigma
    for t in ref.timesteps:
        x = ref.step(0.1 * ref.scale_model_input(x, t), t, x, return_dict=False)[0]
    assert close(out, x)
    img = generate_overview(ldm, "ductal carcinoma, overview", scheduler=sched, steps=30, guidance=GUIDANCE,
                            progress=False)
    assert img.shape == (1, 3, n * ldm.vae_scale_factor, n * ldm.vae_scale_factor) and torch.isfinite(img).all()


# ------------------------------------------------------------------------------------------ guidance interval
def _sigma(alphas, t):
    ab = float(alphas[int(t)])
    return ((1 - ab) / ab) ** 0.5


def _interval_reference(unet, cond, uncond, g, sched, x, interval, alphas):
    """Kynkaanniemi et al. 2024 written out: guided where lo < sigma_t <= hi, else the conditional output."""
    for t in sched.timesteps:
        xin = sched.scale_model_input(x, t)
        with torch.no_grad():
            e_c = unet(xin, t, encoder_hidden_states=cond).sample
            if interval[0] < _sigma(alphas, t) <= interval[1]:
                e_u = unet(xin, t, encoder_hidden_states=uncond).sample
                e_c = e_u + g * (e_c - e_u)
        x = sched.step(e_c, t, x, return_dict=False)[0]
    return x


@pytest.mark.parametrize("name", ["ddim", "unipc"])
def test_guidance_interval_follows_the_paper(tiny, name):
    ldm, cond, uncond = tiny
    sched = make_scheduler(name)
    alphas = sched.alphas_cumprod
    sched.set_timesteps(6)
    sigmas = [_sigma(alphas, t) for t in sched.timesteps]
    interval = (sigmas[4], sigmas[1])  # steps 1, 2, 3 guided (lo excluded, hi included)
    n = 8
    x = torch.randn(1, C, n, n, generator=torch.Generator().manual_seed(1)) * sched.init_noise_sigma
    want = _interval_reference(ldm.unet, cond, uncond, GUIDANCE, sched, x, interval, alphas)
    den = guided_denoiser(ldm.unet, cond, uncond, GUIDANCE, guidance_interval=interval, alphas_cumprod=alphas)
    got = tracked_text2img(den, (1, C, n, n), make_scheduler(name), steps=6,
                           generator=torch.Generator().manual_seed(1), patch=n, overlap=0)
    assert close(got, want)
    assert den.evaluations == 6 + 3  # one conditional pass per step, one more on the 3 guided steps
    # The whole schedule inside the interval is plain guidance; none of it is guidance scale 1.
    def run(interval=None, g=GUIDANCE):
        d = guided_denoiser(ldm.unet, cond, uncond, g, guidance_interval=interval, alphas_cumprod=alphas)
        return tracked_text2img(d, (1, C, n, n), make_scheduler(name), steps=6,
                                generator=torch.Generator().manual_seed(1), patch=n, overlap=0)
    assert torch.equal(run((0.0, 1e9)), run())
    assert torch.equal(run((1e6, 1e7)), run(g=1.0))


def test_guidance_interval_counts_and_batch_invariance(tiny):
    """Evaluations = patches x (steps + guided steps); the result does not depend on the patch batch."""
    ldm, cond, uncond = tiny
    x0 = torch.randn(1, C, 16, 22, generator=torch.Generator().manual_seed(2))
    sched = make_scheduler("dpm++-karras")
    alphas = sched.alphas_cumprod
    steps = img2img_timesteps(make_scheduler("dpm++-karras"), 8, 0.75)  # 6 steps
    sig = [_sigma(alphas, t) for t in steps]
    interval = (sig[3], 1e9)  # the first 3 steps guided
    n_patches = len(patch_grid(16, 22, 12, 6))
    assert n_patches == 6 and len(steps) == 6

    def run(batch, interval=interval, mode="per-patch"):
        den = guided_denoiser(ldm.unet, cond, uncond, GUIDANCE, guidance_interval=interval, alphas_cumprod=alphas)
        out = tracked_img2img(den, x0, make_scheduler("dpm++-karras"), steps=8, strength=0.75, patch=12, overlap=6,
                              generator=torch.Generator().manual_seed(0), patch_batch=batch, step_mode=mode)
        return out, den.evaluations

    full, evals = run(None)
    assert evals == n_patches * (6 + 3)
    assert run(None, None)[1] == n_patches * 6 * 2  # guidance on every step
    for batch, mode in [(1, "per-patch"), (4, "per-chunk"), (4, "per-canvas")]:
        out, e = run(batch, mode=mode)
        assert e == evals and close(out, full)  # float32 round-off scales with |x| (values reach ~15)


def test_guidance_interval_option_is_checked():
    cfg = validate(SampleConfig(guidance_interval=[0.3, 5]))
    assert cfg.guidance_interval == (0.3, 5.0)
    for bad in [(2.0, 1.0), (1.0, 1.0), (-1.0, 2.0), (1.0,), "1 2", (float("nan"), 1.0), (0.0, float("inf"))]:
        with pytest.raises(OptionError, match="guidance_interval") as err:
            validate(SampleConfig(guidance_interval=bad))
        assert "\n" not in str(err.value)
    with pytest.raises(PathUpError, match="alphas_cumprod"):
        guided_denoiser(torch.nn.Identity(), torch.zeros(1, 2, 3), None, 2.0, guidance_interval=(0, 1))


# ------------------------------------------------------------------------------------------ overview + costs
@pytest.fixture(scope="module")
def pipe(tiny):
    return PathUpPipeline(tiny[0], model_name="tiny4-test", progress=False)


def test_overview_own_loop_equals_diffusers(pipe):
    """With a guidance interval the overview runs PathUp's own loop; over the whole schedule it is diffusers'."""
    a = np.asarray(pipe.overview("benign", seed=3, steps=4, guidance=GUIDANCE), dtype=np.int16)
    b = np.asarray(pipe.overview("benign", seed=3, steps=4, guidance=GUIDANCE, guidance_interval=(0, 1e9)),
                   dtype=np.int16)
    assert np.abs(a - b).max() <= 1  # the same image up to the rounding of the last uint8 bit
    c = np.asarray(pipe.overview("benign", seed=3, steps=4, guidance=GUIDANCE, guidance_interval=(1e8, 1e9)),
                   dtype=np.int16)
    assert np.abs(a - c).max() > 2  # outside the interval: no guidance, another image


KW = dict(size=(96, 64), steps=4, strength=0.75, latent_patch=8, latent_overlap=4, guidance=GUIDANCE,
          output_type="np", seed=1, scheduler="ddim")


@pytest.mark.parametrize("interval", [None, "upper"])
def test_settings_count_unet_evaluations_and_time_stages(pipe, interval):
    sched = make_scheduler("ddim")
    sched.set_timesteps(4)
    alphas = sched.alphas_cumprod
    up = img2img_timesteps(make_scheduler("ddim"), 4, 0.75)  # 3 steps
    if interval == "upper":
        interval = (_sigma(alphas, up[1]), 1e9)  # overview: 2 of 4 steps guided; upscale: 1 of 3
        ov_guided, up_guided = 2, 1
    else:
        ov_guided, up_guided = 4, 3
    patches = len(patch_grid(8, 12, 8, 4))  # 96x64 px -> 12x8 latents
    out = pipe("benign", guidance_interval=interval, **KW)
    s = out.settings[0]
    assert s["unet_evaluations"] == {"overview": 4 + ov_guided, "tracking": patches * (3 + up_guided),
                                     "total": 4 + ov_guided + patches * (3 + up_guided)}
    assert set(s["seconds"]) == {"overview", "encode", "tracking", "decode", "total"}
    assert all(v >= 0 for v in s["seconds"].values())
    assert s["options"]["guidance_interval"] == (None if interval is None else list(interval))
    json.dumps(s)  # sidecar-ready


def test_generate_records_costs_and_prints_them(tiny, tmp_path, capsys):
    model = str(save_ldm(tiny[0], tmp_path / "model"))
    out = tmp_path / "out"
    argv = ["generate", "--model", model, "--class", "benign", "--out", str(out), "--size", "64", "--steps", "2",
            "--latent-patch", "8", "--latent-overlap", "4", "--guidance", "2", "--guidance-interval", "0", "1e4",
            "--scheduler", "unipc", "--num", "2"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    patches = len(patch_grid(8, 8, 8, 4))
    per_image = 2 * 2 + patches * int(2 * 0.8) * 2
    assert lines[-1].startswith(f"pathup generate: UNet evaluations {2 * per_image:,} (overview 8, tracking ")
    assert "seconds" in lines[-1] and "decode" in lines[-1]
    meta = json.loads((out / "benign" / "benign_s0.json").read_text())
    assert meta["unet_evaluations"]["total"] == per_image and meta["options"]["guidance_interval"] == [0, 1e4]
    ov = json.loads((out / "benign" / "overview" / "benign_s0.json").read_text())
    assert ov["unet_evaluations"] == {"overview": 4, "total": 4}
    # A rerun with the same options resumes (the interval compares equal as stored).
    assert main(argv) == 0
    assert "nothing to do" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(argv[:-7] + ["--guidance-interval", "1"])  # argparse: LO HI, two numbers
    assert main(argv[:-7] + ["--guidance-interval", "3", "1"]) == 2
    assert "--guidance-interval" in capsys.readouterr().err


def test_region_denoiser_embeddings_follow_each_batch_layout():
    """The prompt embeddings, built once per chunk layout and reused, are the right rows for every call:
    guided predictions by hand (``e = x * value of the row's embedding``) for patches under one prompt and
    for patches that straddle two masks, whatever the chunk and in any order of calls."""
    from pathup.sample.denoisers import RegionDenoiser

    class Fake(torch.nn.Module):
        dtype = torch.float32

        def forward(self, x, t, encoder_hidden_states=None, return_dict=False):
            return (x * encoder_hidden_states[:, 0, 0].view(-1, 1, 1, 1),)

    values, g = (2.0, 3.0), 4.0
    conds = [torch.full((1, 3, 2), v) for v in values]
    masks = torch.zeros(2, 8, 8)
    masks[0, :, :4] = 1.0
    masks[1, :, 4:] = 1.0
    boxes = patch_grid(8, 8, 4, 2)  # 3 x 3 patches; the middle column straddles both masks
    assert len(boxes) == 9
    x = torch.randn(9, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    want = torch.empty_like(x)
    for k, box in enumerate(boxes):
        m = masks[(slice(None), *box.slices)]  # (2, 4, 4)
        guided = [x[k] * (1.0 + g * (v - 1.0)) for v in values]  # e_u = x * 1, e_c = x * v
        want[k] = m[0] * guided[0] + m[1] * guided[1]
    den = RegionDenoiser(Fake(), conds, torch.ones(1, 3, 2), g, masks=masks)
    t = torch.tensor(10)
    for chunks in ([range(9)], [range(4), range(4, 9)], [range(9)], [range(5), range(5, 9)]):
        got = torch.cat([den(x[list(c)], t, [boxes[k] for k in c]) for c in chunks])
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)
    one = RegionDenoiser(Fake(), conds[1:], torch.ones(1, 3, 2), g)  # one prompt, no masks: the fast path
    for c in (range(9), range(3)):
        torch.testing.assert_close(one(x[list(c)], t), x[list(c)] * (1.0 + g * (values[1] - 1.0)),
                                   rtol=1e-6, atol=1e-5)
