"""Seam score on real images (seamless vs pasted tiles) and the offline / local feature extractors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pathup.errors import PathUpError
from pathup.io import list_images, load_rgb
from pathup.metrics.features import make_extractor
from pathup.metrics.seam import grid_from_sidecar, grid_lines, patch_starts, seam_score


@pytest.fixture(scope="module")
def real_images(sample_breakhis):
    return [np.asarray(load_rgb(p)) for p in list_images(sample_breakhis)[::3]]  # 8 images, 460 x 700


def _pasted_tiles(img, tile, rng):
    """Rebuild ``img`` from tiles cut at random places: content jumps at every tile border."""
    h, w = img.shape[:2]
    out = np.empty_like(img)
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            th, tw = min(tile, h - y), min(tile, w - x)
            sy, sx = rng.integers(0, h - th + 1), rng.integers(0, w - tw + 1)
            out[y:y + th, x:x + tw] = img[sy:sy + th, sx:sx + tw]
    return out


def test_patch_grid_matches_spec_tiling():
    # SPEC section 5 step 3 in pixels: latent 64 / overlap 32 / VAE 8 -> patch 512, stride 256.
    assert grid_from_sidecar({"patch_size": 64, "overlap": 32, "vae_scale_factor": 8}) == (512, 256, 8)
    assert grid_from_sidecar({"seed": 1, "options": {"patch_size": 64, "overlap": 16}}) == (512, 384, 8)
    assert patch_starts(2048, 512, 256) == [0, 256, 512, 768, 1024, 1280, 1536]
    assert patch_starts(1000, 512, 256) == [0, 256, 488]  # the last patch aligned to the border
    assert patch_starts(400, 512, 256) == [0]
    assert grid_lines(1000, 512, 256) == [256, 488, 512, 768]
    # The sampler pads 1001 px to 126 latents (1008 px) and aligns the last patch there: start 62 -> 496 px.
    assert grid_lines(1001, 512, 256, factor=8) == [256, 496, 512, 768]
    # Same rule as the sampler's own latent grid.
    from pathup.sample.grid import axis_starts

    assert [s * 8 for s in axis_starts(126, 64, 32)] == [x * 8 for x in patch_starts(126, 64, 32)]
    with pytest.raises(PathUpError, match="patch_size"):
        grid_from_sidecar({"size": 3})


def test_seam_score_near_one_on_real_images_and_high_on_pasted_tiles(real_images):
    rng = np.random.default_rng(0)
    for img in real_images:
        seamless = seam_score(img, 100, 100)
        pasted = seam_score(_pasted_tiles(img, 100, rng), 100, 100)
        assert abs(seamless - 1.0) < 0.15, seamless
        assert pasted > 1.5, pasted
        assert pasted > seamless + 0.4


def test_seam_score_sees_exposure_steps_and_only_on_their_grid(real_images):
    img = real_images[0][:460, :460].astype(np.float64)
    stepped = img.copy()
    stepped[:, 230:] *= 0.85  # visible exposure steps along x = 230 and y = 230 (the grid of patch 230)
    stepped[230:, :] *= 0.85
    assert seam_score(stepped, 230, 230) > 1.5
    assert abs(seam_score(stepped, 150, 150) - 1.0) < 0.2  # a grid whose lines miss x, y = 230: no seam


def test_seam_score_undefined_without_interior_lines():
    assert np.isnan(seam_score(np.random.default_rng(0).random((64, 64, 3)), 64, 64))


def _batch(n=4, size=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("name,dim", [("random-cnn", 768), ("color-stats", 152)])
def test_offline_extractors_are_deterministic(name, dim):
    x = _batch()
    a, b = make_extractor(name), make_extractor(name)
    fa = a(x)
    assert fa.shape == (4, dim) and fa.dtype == torch.float32 and a.dim == dim
    torch.testing.assert_close(fa, b(x))
    torch.testing.assert_close(a(x[:1]), fa[:1], rtol=1e-4, atol=1e-5)  # batch size does not matter
    assert not a.comparable


def test_torchscript_extractor_and_bad_specs(tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    path = tmp_path / "enc.pt"
    torch.jit.script(net).save(str(path))
    ext = make_extractor(str(path), input_size=64)
    x = _batch(size=64)
    assert ext.dim == 5
    torch.testing.assert_close(ext(x), net(x.float() / 255.0))
    assert ext.cache_id != make_extractor(str(path), input_size=32).cache_id
    with pytest.raises(PathUpError, match="unknown extractor; allowed"):
        make_extractor("vgg-nope")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(PathUpError, match="not a TorchScript"):
        make_extractor(str(tmp_path / "junk.pt"))
    with pytest.raises(PathUpError, match="file not found"):
        make_extractor("inception", weights=tmp_path / "missing.pth")
    with pytest.raises(PathUpError, match="not FID Inception weights"):
        make_extractor("inception", weights=tmp_path / "junk.pt")


def test_timm_extractor_with_local_weights(tmp_path):
    import timm

    net = timm.create_model("test_resnet", pretrained=False, num_classes=0).eval()
    torch.save(net.state_dict(), tmp_path / "w.pth")
    ext = make_extractor("timm:test_resnet", weights=tmp_path / "w.pth")
    x = _batch(n=2, size=160)
    ref = net((x.float() / 255.0 - 0.5) / 0.5)  # test_resnet: 160 px input, mean = std = 0.5
    torch.testing.assert_close(ext(x), ref, rtol=1e-4, atol=1e-4)
    with pytest.raises(PathUpError, match="unknown timm model"):
        make_extractor("timm:no_such_model_xyz")
