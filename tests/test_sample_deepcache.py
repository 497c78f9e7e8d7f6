"""DeepCache per patch (issue 19): schedule, the shallow branch, batch invariance, reset, compose; ToMe."""

import dataclasses

import pytest
import torch

from pathup.errors import OptionError, PathUpError
from pathup.model import build_ldm
from pathup.model.ldm import make_scheduler
from pathup.model.registry import MODEL_SIZES
from pathup.sample.deepcache import DeepCache, shallow_unet
from pathup.sample.denoisers import RegionDenoiser
from pathup.sample.tracking import guided_denoiser, tracked_img2img
from tensor_util import close

C = 4
TINY4 = dataclasses.replace(MODEL_SIZES["tiny"], vae={**MODEL_SIZES["tiny"].vae, "latent_channels": C},
                            unet={**MODEL_SIZES["tiny"].unet, "in_channels": C, "out_channels": C})


KW = dict(steps=10, strength=0.8, patch=12, overlap=6)  # 8 steps; a 16 x 22 canvas: 2 x 3 = 6 patches


@pytest.fixture(scope="module", params=["micro", "tiny4"])
def model(request):
    ldm = build_ldm("micro" if request.param == "micro" else TINY4, seed=0)
    with torch.no_grad():
        conds = [ldm.encode_prompts(["ductal carcinoma, patch"]), ldm.encode_prompts(["benign, patch"])]
        uncond = ldm.encode_prompts([""])
    return ldm, conds, uncond


def _x0(seed=2):
    return torch.randn(1, C, 16, 22, generator=torch.Generator().manual_seed(seed))


def _run(den, x0=None, batch=None, mode="per-patch", seed=0, name="ddim"):
    return tracked_img2img(den, _x0() if x0 is None else x0, make_scheduler(name),
                           generator=torch.Generator().manual_seed(seed), patch_batch=batch, step_mode=mode, **KW)


def _plain_cfg(unet, cond, uncond, g):
    """Classifier-free guidance written out: the UNet batch of diffusers' pipelines, no cache."""
    def den(x, t):
        b = x.shape[0]
        out = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond.expand(b, -1, -1),
                                                                          cond.expand(b, -1, -1)]),
                   return_dict=False)[0].float()
        e_u, e_c = out[:b], out[b:]
        return e_u + g * (e_c - e_u)
    return den


def test_interval_one_is_todays_path_bit_for_bit(model):
    ldm, conds, uncond = model
    den = guided_denoiser(ldm.unet, conds[0], uncond, 3.0, cache_interval=1)
    with torch.no_grad():
        ref = _run(_plain_cfg(ldm.unet, conds[0], uncond, 3.0), batch=4)
    assert torch.equal(_run(den, batch=4), ref)
    assert den.cached_evaluations == 0 and den.evaluations == 2 * 6 * 8


def test_cached_evaluation_at_the_same_input_reproduces_the_full_one(model):
    """Deep features stored from the very same (x, t) must give the full UNet's output through the
    shallow branch: the branch is exactly the UNet's own operations around the cached tensor."""
    ldm, conds, _ = model
    cache = DeepCache(ldm.unet, 2)
    x = torch.randn(3, C, 12, 10, generator=torch.Generator().manual_seed(0))
    emb = torch.cat([conds[0], conds[1], conds[0]])
    t = torch.tensor(601)
    with torch.no_grad():
        full = cache.full(x, t, emb, ["a", "b", "c"])
        again = cache.cached(x, t, emb, ["a", "b", "c"])
        swapped = cache.cached(x[[1, 0]], t, emb[[1, 0]], ["b", "a"])  # rows read by key, not position
        other_x = cache.cached(-x, t, emb, ["a", "b", "c"])
    assert close(again, full)
    assert close(swapped, full[[1, 0]])
    assert (other_x - full).abs().max() > 1e-3  # the shallow branch recomputes the skips from x
    # The stored feature is the input of the last up block's second-to-last layer, without its skip.
    skip = ldm.unet.down_blocks[0].resnets[0].out_channels
    assert cache.features["a"].shape[0] == ldm.unet.up_blocks[-1].resnets[-2].in_channels - skip
    with pytest.raises(PathUpError, match="no cached deep features"):
        cache.cached(x[:1], t, emb[:1], ["z"])


def test_schedule_full_every_nth_step_and_counts(model):
    ldm, conds, uncond = model
    for n, full_steps in [(2, 4), (3, 3), (8, 1), (100, 1)]:  # of 8 steps: 0,2,4,6 / 0,3,6 / 0 / 0
        den = guided_denoiser(ldm.unet, conds[0], uncond, 3.0, cache_interval=n)
        out = _run(den)
        assert den.evaluations == 2 * 6 * full_steps, n
        assert den.cached_evaluations == 2 * 6 * (8 - full_steps), n
        assert torch.isfinite(out).all()
    den = guided_denoiser(ldm.unet, conds[0], uncond, 3.0, cache_interval=2)
    assert not torch.equal(_run(den), _run(guided_denoiser(ldm.unet, conds[0], uncond, 3.0)))


@pytest.mark.parametrize("guidance", [3.0, 1.0])
def test_batch_invariance_with_caching(model, guidance):
    ldm, conds, uncond = model
    den = guided_denoiser(ldm.unet, conds[0], uncond, guidance, cache_interval=3)
    base = _run(den)
    for batch, mode in [(1, "per-patch"), (4, "per-patch"), (4, "per-chunk"), (4, "per-canvas")]:
        assert close(_run(den, batch=batch, mode=mode), base), (batch, mode)
    # A multistep solver keeps its own history per patch; the cache keeps its own features per patch.
    base = _run(den, name="dpm++")
    assert close(_run(den, batch=4, name="dpm++"), base)


def test_caching_with_a_guidance_interval_that_begins_between_full_steps(model):
    """Guidance switching on at a cached step: the unconditional rows have no stored features yet, so they
    (and only they) run the whole UNet there; the result still does not depend on the patch batch."""
    from pathup.sample.denoisers import noise_levels

    ldm, conds, uncond = model
    alphas = make_scheduler("ddim").alphas_cumprod
    sched = make_scheduler("ddim")
    sched.set_timesteps(KW["steps"])
    sig = noise_levels(alphas)  # the denoiser's own table of sigma_t
    ts = sched.timesteps[-8:]  # the 8 upscale steps (strength 0.8 of 10)
    lo, hi = float(sig[int(ts[-1])]), float(sig[int(ts[4])])  # guided at steps 4, 5, 6 (4 is a cached step)
    outs, dens = [], []
    for batch in (1, 4, None):
        den = guided_denoiser(ldm.unet, conds[0], uncond, 3.0, cache_interval=3, guidance_interval=(lo, hi),
                              alphas_cumprod=alphas)
        outs.append(_run(den, batch=batch))
        dens.append(den)
    for other in outs[1:]:
        assert close(other, outs[0])
    # steps 0..7, full at 0, 3, 6; guided at 4, 5, 6: conditional rows 6 patches x (3 full + 5 cached);
    # unconditional rows: full at 4 (nothing stored yet) and 6 (a full step), cached at 5 (stored at 4)
    assert dens[0].evaluations == 6 * (3 + 2) and dens[0].cached_evaluations == 6 * (5 + 1)


def test_cache_is_reset_between_runs(model):
    ldm, conds, uncond = model
    den = guided_denoiser(ldm.unet, conds[0], uncond, 3.0, cache_interval=3)
    first = _run(den, x0=_x0(1), seed=1)
    second = _run(den, x0=_x0(7), seed=7)
    fresh = _run(guided_denoiser(ldm.unet, conds[0], uncond, 3.0, cache_interval=3), x0=_x0(7), seed=7)
    assert torch.equal(second, fresh) and not torch.equal(first, second)
    # Called directly, without track_patches: a timestep above the last one starts a new run.
    cache = DeepCache(ldm.unet, 3)
    assert [cache.is_full(t) for t in (900, 900, 800, 700, 600, 900, 800)] == \
        [True, True, False, False, True, True, False]
    assert cache.step == 1


def test_compose_two_prompts_with_caching(model):
    """Several prompts per patch (MultiDiffusion's region rule): one cache entry per (patch, prompt)."""
    ldm, conds, uncond = model
    masks = torch.zeros(2, 16, 22)
    masks[0, :, :11] = 1.0
    masks[1] = 1.0 - masks[0]
    masks[:, :, 8:14] = 0.5  # a soft border: the middle patches see both prompts

    def make(n, g=3.0):
        return RegionDenoiser(ldm.unet, conds, uncond, g, masks, cache_interval=n)

    for g in (3.0, 1.0):
        plain, cached = make(1, g), make(2, g)
        ref, out = _run(plain), _run(cached)
        assert cached.evaluations + cached.cached_evaluations == plain.evaluations
        assert cached.evaluations == plain.evaluations // 2
        assert (out - ref).abs().max() > 0  # caching is an approximation
        for batch in (1, 4):
            assert close(_run(make(2, g), batch=batch), out), (g, batch)
    keys = set(cached.cache.features)
    assert {c for _, c in keys} == {0, 1}  # guidance 1: conditional rows only, both prompts present


def test_options_checked():
    from pathup.sample.config import SampleConfig, validate

    with pytest.raises(OptionError, match=r"cache_interval must be at least 1, got 0"):
        validate(SampleConfig(cache_interval=0))
    with pytest.raises(OptionError, match=r"token_merging must be in \[0, 1\), got 1.0"):
        validate(SampleConfig(token_merging=1.0))
    with pytest.raises(OptionError, match="cache_interval"):
        DeepCache(torch.nn.Linear(1, 1), 0)
    with pytest.raises(PathUpError, match="UNet2DConditionModel"):
        DeepCache(torch.nn.Linear(1, 1), 2)


# ------------------------------------------------------------------------------ the pipeline
@pytest.fixture(scope="module")
def pipe():
    from pathup.prompts import PromptTable
    from pathup.sample.pipeline import PathUpPipeline

    return PathUpPipeline(build_ldm("micro", PromptTable(["benign", "ductal carcinoma"]), seed=0), progress=False)


def test_pipeline_options_and_sidecar(pipe):
    from PIL import Image

    ref = Image.new("RGB", (64, 64), (200, 120, 160))
    kw = dict(class_name="benign", size=96, steps=4, strength=0.5, latent_patch=8, latent_overlap=4,
              output_type="latent")
    base = pipe.upscale(ref, **kw)
    assert torch.equal(pipe.upscale(ref, cache_interval=1, token_merging=0.0, **kw), base)
    cached = pipe.upscale(ref, cache_interval=2, **kw)
    assert cached.shape == base.shape and not torch.equal(cached, base)
    out = pipe("benign", image=ref, size=96, steps=4, strength=0.5, latent_patch=8, latent_overlap=4,
               cache_interval=2, output_type="latent")
    assert torch.equal(out.images[0], cached)
    assert out.settings[0]["options"]["cache_interval"] == 2 and out.settings[0]["options"]["token_merging"] == 0.0
    with pytest.raises(OptionError, match="cache_interval"):
        pipe.upscale(ref, cache_interval=0, **kw)


def test_compose_counts_cached_evaluations(pipe):
    kw = dict(random_layout=2, size=96, steps=4, strength=0.5, latent_patch=8, latent_overlap=4,
              output_type="latent", seed=3)
    plain = pipe.compose(**kw).unet[0]
    cached = pipe.compose(cache_interval=2, **kw).unet[0]
    assert plain["upscale_cached"] == 0 and plain["overview"] == cached["overview"]
    assert cached["upscale"] + cached["upscale_cached"] == plain["upscale"] > cached["upscale"] > 0


# ------------------------------------------------------------------------------ token merging (tomesd)
def test_token_merging_changes_boundedly_and_unpatches(pipe):
    pytest.importorskip("tomesd")
    from PIL import Image

    unet = pipe.ldm.unet
    classes = [type(m) for m in unet.modules()]
    ref = Image.new("RGB", (64, 64), (200, 120, 160))
    kw = dict(class_name="benign", size=96, steps=4, strength=0.5, latent_patch=8, latent_overlap=4,
              output_type="latent")
    base = pipe.upscale(ref, **kw)
    merged = pipe.upscale(ref, token_merging=0.5, **kw)
    diff = (merged - base).abs().max().item()
    assert 0 < diff < 0.5 * base.abs().max().item()
    # Unpatched afterwards: the same classes, no hooks, no tomesd state, the same output bit for bit.
    assert [type(m) for m in unet.modules()] == classes and not unet._forward_pre_hooks
    assert not any("_tome_info" in vars(m) for m in unet.modules())
    assert torch.equal(pipe.upscale(ref, **kw), base)
    # Per-sample merging (use_rand=False): the patch batch does not change the result beyond rounding.
    assert close(pipe.upscale(ref, token_merging=0.5, patch_batch=1, **kw), merged)


def test_token_merging_without_tomesd_names_the_extra(pipe, monkeypatch):
    import sys

    from pathup.sample.tome import token_merging

    monkeypatch.setitem(sys.modules, "tomesd", None)  # import tomesd -> ImportError
    with pytest.raises(PathUpError, match=r"pip install 'pathup\[speed\]'"):
        with token_merging(pipe.ldm.unet, 0.3):
            pass
    with token_merging(pipe.ldm.unet, 0.0) as unet:  # 0: off, tomesd not needed
        assert unet is pipe.ldm.unet
