"""Patch-wise timestep tracking (Algorithm 1) against diffusers' img2img pipeline and invariances."""

import dataclasses

import pytest
import torch

from pathup.model import build_ldm
from pathup.model.ldm import make_scheduler
from pathup.model.registry import MODEL_SIZES
from pathup.sample.tracking import guided_denoiser, img2img_timesteps, tracked_img2img
from pathup.errors import PathUpError
from tensor_util import close

GUIDANCE = 3.0

# diffusers' img2img pipeline takes an ``image`` of 4 channels as latents (a hard-coded check): the reference
# tests compare with it on the tiny architecture with Stable Diffusion's 4 latent channels
C = 4
TINY4 = dataclasses.replace(MODEL_SIZES["tiny"], vae={**MODEL_SIZES["tiny"].vae, "latent_channels": C},
                            unet={**MODEL_SIZES["tiny"].unet, "in_channels": C, "out_channels": C})


@pytest.fixture(scope="module")
def tiny():
    ldm = build_ldm(TINY4, seed=0)
    with torch.no_grad():
        cond = ldm.encode_prompts(["ductal carcinoma, patch"])
        uncond = ldm.encode_prompts([""])
    return ldm, cond, uncond


def _img2img_pipe(ldm, scheduler):
    from diffusers import StableDiffusionImg2ImgPipeline

    pipe = StableDiffusionImg2ImgPipeline(vae=ldm.vae, text_encoder=ldm.text_encoder, tokenizer=ldm.tokenizer,
                                          unet=ldm.unet, scheduler=scheduler, safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _diffusers_img2img(ldm, cond, uncond, name, x0, seed, steps, strength):
    pipe = _img2img_pipe(ldm, make_scheduler(name))
    with torch.no_grad():
        return pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, image=x0, strength=strength,
                    num_inference_steps=steps, guidance_scale=GUIDANCE,
                    generator=torch.Generator().manual_seed(seed), output_type="latent").images


@pytest.mark.parametrize("name", ["ddim", "dpm++", "euler", "ddpm", "unipc", "dpm++-karras"])
def test_one_patch_equals_diffusers_img2img(tiny, name):
    ldm, cond, uncond = tiny
    x0 = torch.randn(1, C, 14, 11, generator=torch.Generator().manual_seed(5))
    ref = _diffusers_img2img(ldm, cond, uncond, name, x0, seed=3, steps=6, strength=0.7)
    ours = tracked_img2img(guided_denoiser(ldm.unet, cond, uncond, GUIDANCE), x0, make_scheduler(name),
                           steps=6, strength=0.7, generator=torch.Generator().manual_seed(3),
                           patch=64, overlap=32)
    assert ours.shape == ref.shape
    # The only difference: sum(w x) / sum(w) with one patch rounds at the last bit.
    assert close(ours, ref)
    assert (ours - x0).abs().max() > 0.1  # it did denoise


@pytest.mark.parametrize("name", ["dpm++", "unipc", "dpm++-karras"])
def test_multistep_non_overlapping_patches_equal_independent_img2img(tiny, name):
    """With o = 0 each patch evolves alone: both halves must equal diffusers' img2img on that half.

    This fails if the patches shared one multistep scheduler state (DPM-Solver++ and UniPC keep a history;
    UniPC's corrector also keeps the last sample).
    """
    ldm, cond, uncond = tiny
    x0 = torch.randn(1, C, 12, 24, generator=torch.Generator().manual_seed(1))
    halves = [x0[..., :12], x0[..., 12:]]
    refs = [_diffusers_img2img(ldm, cond, uncond, name, h, seed=10 + k, steps=8, strength=0.8)
            for k, h in enumerate(halves)]
    noise = torch.cat([torch.randn(1, C, 12, 12, generator=torch.Generator().manual_seed(10 + k))
                       for k in range(2)], dim=-1)
    den = guided_denoiser(ldm.unet, cond, uncond, GUIDANCE)
    for mode, batch in [("per-patch", 1), ("per-patch", 2), ("per-chunk", 2), ("per-canvas", 2)]:
        ours = tracked_img2img(den, x0, make_scheduler(name), steps=8, strength=0.8, noise=noise,
                               patch=12, overlap=0, patch_batch=batch, step_mode=mode)
        ref = torch.cat(refs, dim=-1)
        assert close(ours, ref), (mode, batch)


def _per_sample(denoiser):
    """The same denoiser, run one sample at a time (exactly batch-invariant)."""
    return lambda x, t: torch.cat([denoiser(x[i:i + 1], t) for i in range(x.shape[0])])


@pytest.mark.parametrize("name", ["ddim", "dpm++", "unipc"])
def test_patch_batch_invariance(tiny, name):
    ldm, cond, uncond = tiny
    x0 = torch.randn(1, C, 16, 22, generator=torch.Generator().manual_seed(2))
    den = guided_denoiser(ldm.unet, cond, uncond, 2.0)
    kw = dict(steps=5, strength=0.6, patch=12, overlap=6)  # 2 x 3 = 6 patches, 3 steps

    def run(d, batch, mode="per-patch"):
        return tracked_img2img(d, x0, make_scheduler(name), generator=torch.Generator().manual_seed(0),
                               patch_batch=batch, step_mode=mode, **kw)

    # The sampler itself adds no dependence on the chunk size: exact with a batch-invariant denoiser.
    exact = _per_sample(den)
    base = run(exact, None)
    assert torch.equal(run(exact, 4), base)
    assert torch.equal(run(exact, 4, "per-chunk"), base)
    assert torch.equal(run(exact, 4, "per-canvas"), base)
    # With the batched UNet (whose CPU kernels round differently per batch size): the 1e-5.
    full = run(den, None)
    for batch, mode in [(1, "per-patch"), (4, "per-patch"), (4, "per-chunk"), (4, "per-canvas")]:
        assert (run(den, batch, mode) - full).abs().max().item() <= 1e-5, (batch, mode)


def test_uniform_and_pyramid_differ(tiny):
    ldm, cond, uncond = tiny
    x0 = torch.randn(1, C, 16, 16, generator=torch.Generator().manual_seed(4))
    den = guided_denoiser(ldm.unet, cond, uncond, GUIDANCE)

    def run(wm, strength):
        return tracked_img2img(den, x0, make_scheduler("ddim"), steps=4, strength=strength, patch=8, overlap=4,
                               generator=torch.Generator().manual_seed(0), weight_map=wm)

    diff = (run("pyramid", 0.75) - run("uniform", 0.75)).abs()  # 3 steps
    assert diff.max() > 1e-2
    # After one step, positions covered by one patch only (the canvas corners) do not depend on the
    # weights; positions in overlaps do.
    one = (run("pyramid", 0.25) - run("uniform", 0.25)).abs()  # 1 step
    assert one[..., :4, :4].max() < 1e-6 and one[..., 4:12, 4:12].max() > 1e-3


def test_auto_patch_batch_on_cpu_and_balanced_chunks(tiny):
    from pathup.sample.tracking import auto_patch_batch, balanced_batch, resolve_patch_batch

    assert balanced_batch(49, 16) == 13  # 4 chunks of 13, 13, 13, 10 rather than 16, 16, 16, 1
    assert balanced_batch(49, 49) == 49 and balanced_batch(961, 49) == 49 and balanced_batch(5, 1) == 1
    assert auto_patch_batch(tiny[0].unet, 49, (64, 64), guidance=True) == 13
    assert resolve_patch_batch(None, 7) == 7 and resolve_patch_batch("3", 7) == 3
    with pytest.raises(PathUpError, match="patch_batch"):
        resolve_patch_batch(0, 7)


def test_img2img_timesteps_and_bad_values():
    sched = make_scheduler("ddim")
    ts = img2img_timesteps(sched, 10, 0.8)
    assert len(ts) == 8 and ts[0] < 1000 and torch.all(ts[:-1] > ts[1:])
    with pytest.raises(PathUpError, match="strength"):
        img2img_timesteps(make_scheduler("ddim"), 10, 0.0)
    with pytest.raises(PathUpError, match="re-runs no step"):
        img2img_timesteps(make_scheduler("ddim"), 2, 0.3)
    with pytest.raises(PathUpError, match="steps"):
        img2img_timesteps(make_scheduler("ddim"), 0, 0.5)


def _zero_denoiser(x, t):
    return torch.zeros_like(x)


@pytest.mark.parametrize("weight_map,mode", [("pyramid", "per-patch"), ("uniform", "per-patch"),
                                             ("pyramid", "per-chunk"), ("pyramid", "per-canvas")])
def test_ddpm_step_noise_std_is_right_where_patches_overlap(weight_map, mode):
    """Issue 12 item 14: a stochastic step's noise must keep its std where 1, 2 or 4 patches overlap.

    With a zero prediction on a zero canvas one DDPM step is pure noise ``sigma_t * z``. Before the fix
    every patch drew its own ``z`` and the weighted mean shrank it (about 0.40 / 0.56 of ``sigma_t``
    where four / two patches overlap).
    """
    from pathup.sample.grid import patch_grid
    from pathup.sample.tracking import track_patches

    x = torch.zeros(1, C, 48, 48)
    sched = make_scheduler("ddpm")
    ts = img2img_timesteps(sched, 10, 0.5)[:1]  # one step at t > 0
    kw = dict(patch=32, overlap=16, weight_map=weight_map, step_mode=mode, patch_batch=2)
    assert len(patch_grid(48, 48, 32, 16)) == 4
    out = track_patches(_zero_denoiser, x, sched, ts, generator=torch.Generator().manual_seed(0), **kw)
    ref = track_patches(_zero_denoiser, x, sched, ts, generator=torch.Generator().manual_seed(1),
                        patch=64, overlap=0)  # one patch: diffusers' own step, sigma_t * z
    sigma = ref.std().item()
    assert sigma > 0.05
    regions = {1: out[..., :16, :16], 2: out[..., :16, 16:32], 4: out[..., 16:32, 16:32]}
    for count, values in regions.items():
        ratio = values.std().item() / sigma
        assert abs(ratio - 1.0) < 0.08, (count, ratio)
    # Overlapping patches share their noise: the canvas noise is one draw, also across chunks.
    assert abs(out[..., 32:, 32:].std().item() / sigma - 1.0) < 0.08


def test_ddpm_noise_does_not_depend_on_patch_batch():
    from pathup.sample.tracking import track_patches

    x = torch.randn(1, C, 20, 28, generator=torch.Generator().manual_seed(3))
    sched = make_scheduler("ddpm")
    ts = img2img_timesteps(sched, 6, 0.7)

    def run(batch, mode="per-patch"):
        return track_patches(_zero_denoiser, x, sched, ts, generator=torch.Generator().manual_seed(0),
                             patch=12, overlap=4, patch_batch=batch, step_mode=mode)

    base = run(None)
    assert torch.equal(run(1), base) and torch.equal(run(4, "per-chunk"), base)
    assert torch.equal(run(4, "per-canvas"), base)


def test_pndm_strength_runs_img2img_steps_of_diffusers(tiny):
    """Issue 12 item 15: a from-scratch model's PNDM config has no ``skip_prk_steps``; strength 0.8 of
    50 steps must run 41 steps from t=801 (as diffusers' img2img with SD's PNDM config), not 49 from 931."""
    ldm, cond, uncond = tiny
    config = dict(ldm.scheduler.config)
    assert not config.get("skip_prk_steps", False)  # the from-scratch model's schedule, as saved
    ours = img2img_timesteps(make_scheduler("pndm", config), 50, 0.8)
    sd_pndm = make_scheduler("pndm", {**config, "skip_prk_steps": True})
    pipe = _img2img_pipe(ldm, sd_pndm)
    sd_pndm.set_timesteps(50)
    ref, _ = pipe.get_timesteps(50, 0.8, "cpu")
    assert len(ours) == len(ref) == 41 and int(ours[0]) == 801
    assert torch.equal(ours, ref)
    # And the whole one-patch run equals diffusers' img2img with that scheduler.
    x0 = torch.randn(1, C, 10, 12, generator=torch.Generator().manual_seed(5))
    pipe = _img2img_pipe(ldm, make_scheduler("pndm", {**config, "skip_prk_steps": True}))
    with torch.no_grad():
        want = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, image=x0, strength=0.8,
                    num_inference_steps=6, guidance_scale=GUIDANCE, generator=torch.Generator().manual_seed(3),
                    output_type="latent").images
    got = tracked_img2img(guided_denoiser(ldm.unet, cond, uncond, GUIDANCE), x0, make_scheduler("pndm", config),
                          steps=6, strength=0.8, generator=torch.Generator().manual_seed(3), patch=64, overlap=32)
    assert close(got, want)


def test_indexed_gather_and_scatter_equal_the_patch_loop():
    """per-canvas reads and adds all patches with one indexed op each: bit for bit the loop's result, also on a
    grid whose last stride is shorter (20 x 28 with patch 12, overlap 4)."""
    from pathup.sample.grid import patch_grid
    from pathup.sample.tracking import accumulate_patches, gather_patches, patch_index, scatter_patches

    x = torch.randn(1, 3, 20, 28, generator=torch.Generator().manual_seed(0))
    boxes = patch_grid(20, 28, 12, 4)
    assert len({b.left for b in boxes}) == 3 and len({b.top for b in boxes}) == 2
    index = patch_index(boxes, 28)
    got = gather_patches(x, index, len(boxes), 12, 12)
    assert torch.equal(got, torch.stack([x[0, :, b.slices[0], b.slices[1]] for b in boxes]))
    weight = torch.rand(12, 12, generator=torch.Generator().manual_seed(1))
    new = torch.randn(len(boxes), 3, 12, 12, generator=torch.Generator().manual_seed(2))
    loop, fast = torch.zeros_like(x), torch.zeros_like(x)
    accumulate_patches(loop, new, boxes, weight)
    scatter_patches(fast, new, index, weight)
    assert torch.equal(loop, fast)
