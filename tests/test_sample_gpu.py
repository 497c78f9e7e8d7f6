"""GPU checks for patch-wise timestep tracking (opt-in: ``pytest -m gpu``)."""

import pytest
import torch

from tensor_util import close

pytestmark = pytest.mark.gpu

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
def test_batch_invariance_cuda_fp32():
    from pathup.model import build_ldm
    from pathup.model.ldm import make_scheduler
    from pathup.sample.tracking import guided_denoiser, tracked_img2img

    prev = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # true float32
    try:
        ldm = build_ldm("tiny", seed=0).to("cuda")
        with torch.no_grad():
            cond, uncond = ldm.encode_prompts(["a, patch"]), ldm.encode_prompts([""])
        den = guided_denoiser(ldm.unet, cond, uncond, 2.0)
        x0 = torch.randn(1, 4, 40, 52, generator=torch.Generator().manual_seed(0)).cuda()
        run = lambda b, m="per-patch": tracked_img2img(  # noqa: E731
            den, x0, make_scheduler("dpm++"), steps=5, strength=0.6, patch=16, overlap=8,
            generator=torch.Generator().manual_seed(0), patch_batch=b, step_mode=m)
        full = run(None)
        for b, m in [(1, "per-patch"), (7, "per-patch"), (7, "per-chunk"), (7, "per-canvas")]:
            assert close(run(b, m), full)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev


@needs_cuda
def test_peak_memory_grows_only_with_the_canvas():
    """8192 px peak <= 2048 px peak + the larger canvas's buffers (a few canvas copies)."""
    from PIL import Image

    from pathup.model import build_ldm
    from pathup.sample import PathUpPipeline

    ldm = build_ldm("tiny", seed=0).to("cuda")
    pipe = PathUpPipeline(ldm, progress=False)
    ref = Image.new("RGB", (128, 128), (200, 120, 180))
    peaks = {}
    for px in (2048, 8192):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        pipe.upscale(ref, prompt="a, patch", size=px, steps=10, strength=0.1, patch_batch="auto", output_type="np")
        peaks[px] = torch.cuda.max_memory_allocated()
    canvas = lambda px: 4 * 4 * (px // 8) ** 2  # noqa: E731 - float32 latent canvas bytes
    # Canvas, combination numerator, noise, x0 and per-patch states (4x overlap): at most 16 canvases.
    assert peaks[8192] <= peaks[2048] + 16 * (canvas(8192) - canvas(2048))
