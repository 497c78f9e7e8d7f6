"""Tiled autoencoder (blending, no seam) and the image writers (PNG settings, pyramidal TIFF)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pathup.errors import PathUpError
from pathup.sample.vae_tiling import decode_tiled, encode_tiled, from_uint8, to_uint8
from pathup.sample.writers import (choose_format, read_settings, save_image, save_png, save_tiff,
                                   sidecar_path)


@pytest.fixture(scope="module")
def vae():
    from diffusers import AutoencoderKL

    from pathup.model.registry import MODEL_SIZES

    torch.manual_seed(0)
    return AutoencoderKL(**MODEL_SIZES["tiny"].vae).eval()


def _decode(vae):
    return lambda z: vae.decode(z / vae.config.scaling_factor).sample


def _seam_ratio(diff: np.ndarray, axis: int) -> float:
    """Largest mean jump between neighbouring columns (axis=1) or rows (axis=0) over the median jump."""
    g = np.abs(np.diff(diff, axis=axis)).mean(axis=(1 - axis, 2))
    return float(g.max() / np.median(g))


def test_tiled_decode_agrees_with_whole_without_seam(vae):
    z = 0.5 * torch.randn(1, vae.config.latent_channels, 32, 32, generator=torch.Generator().manual_seed(0))
    dec = _decode(vae)
    whole = decode_tiled(dec, z, tile=64, overlap=8).astype(np.float64)  # one tile = whole decode
    with torch.no_grad():
        direct = to_uint8(dec(z))[0].numpy().astype(np.float64)
    assert np.array_equal(whole, direct)
    tiled = decode_tiled(dec, z, tile=16, overlap=8).astype(np.float64)  # 3 x 3 tiles
    assert tiled.shape == (256, 256, 3)
    d = tiled - whole
    # A random-weight autoencoder's GroupNorm and attention see the whole input, so tiles differ
    # from the whole decode; blending keeps the mean error to a few grey levels.
    assert np.abs(d).mean() < 8.0
    # No seam: the error changes as smoothly across tile edges as anywhere else ...
    assert _seam_ratio(d, 1) < 2.0 and _seam_ratio(d, 0) < 2.0
    # ... whereas butting tiles without blending leaves a step at the tile edge (column 128).
    hard = decode_tiled(dec, z, tile=16, overlap=0).astype(np.float64) - whole
    assert _seam_ratio(hard, 1) > 3.0
    g = np.abs(np.diff(hard, axis=1)).mean(axis=(0, 2))
    assert abs(int(g.argmax()) - 127) <= 4  # at the tile edge


def test_blending_is_exact_for_a_local_decoder():
    """With a pointwise 'decoder' every tile agrees with the whole; the blend must give it back."""
    conv = torch.nn.Conv2d(4, 3, 1)
    dec = lambda z: torch.tanh(conv(torch.nn.functional.interpolate(z, scale_factor=8, mode="nearest")))  # noqa: E731
    z = torch.randn(1, 4, 21, 30, generator=torch.Generator().manual_seed(1))
    whole = decode_tiled(dec, z, tile=64, overlap=8)
    tiled = decode_tiled(dec, z, tile=8, overlap=3)
    assert np.abs(whole.astype(int) - tiled.astype(int)).max() <= 1


def test_tiled_encode_agrees_with_whole(vae, sample_breakhis):
    from pathup.io import list_images, load_rgb

    img = np.asarray(load_rgb(list_images(sample_breakhis)[0]).resize((256, 192)))
    enc = lambda x: vae.encode(x).latent_dist.mode() * vae.config.scaling_factor  # noqa: E731
    whole = encode_tiled(enc, img, tile=64, overlap=8)
    with torch.no_grad():
        direct = enc(from_uint8(img))
    assert torch.allclose(whole, direct, atol=1e-6)
    tiled = encode_tiled(enc, img, tile=16, overlap=8)
    assert tiled.shape == (1, vae.config.latent_channels, 24, 32)
    assert (tiled - whole).abs().mean() < 0.5 * whole.abs().mean()
    with pytest.raises(PathUpError, match="multiple"):
        encode_tiled(enc, img[:190], tile=16, overlap=8)


def test_uint8_roundtrip():
    px = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(to_uint8(from_uint8(px))[0].numpy(), px)


def test_png_text_chunk_and_sidecar(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    settings = {"prompt": "ductal carcinoma, patch", "seed": 3, "model": "m", "options": {"steps": 2}}
    path = save_png(img, tmp_path / "a" / "x_s3.png", settings)
    with Image.open(path) as im:
        assert im.size == (60, 40) and np.array_equal(np.asarray(im), img)
        assert json.loads(im.text["pathup"]) == settings
    assert json.loads(sidecar_path(path).read_text()) == settings
    sidecar_path(path).unlink()
    assert read_settings(path) == settings  # falls back to the text chunk
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_pyramidal_tiff_opens_with_tiffslide(tmp_path):
    import tiffslide
    import tifffile

    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (300, 520, 3), dtype=np.uint8)
    path = save_tiff(img, tmp_path / "big.tiff", {"seed": 1}, tile=64)
    slide = tiffslide.TiffSlide(str(path))
    assert slide.level_count >= 3
    assert slide.level_dimensions[0] == (520, 300)
    assert slide.level_dimensions[1] == (260, 150)
    assert np.allclose(slide.level_downsamples[:3], [1, 2, 4])
    region = np.asarray(slide.read_region((100, 50), 0, (200, 120)).convert("RGB"))
    assert np.array_equal(region, img[50:170, 100:300])
    slide.close()
    with tifffile.TiffFile(path) as tf:
        page = tf.pages[0]
        assert page.is_tiled and page.tilewidth == 64
        assert json.loads(page.description) == {"seed": 1}
        assert len(tf.series[0].levels) == slide.level_count
    assert read_settings(path) == {"seed": 1}


def test_format_choice_and_bad_paths(tmp_path):
    assert choose_format("png", (2048, 2048)) == "png"
    assert choose_format("png", (8192, 1024)) == "tiff"
    assert choose_format("tiff", (64, 64)) == "tiff"
    with pytest.raises(PathUpError, match="png, tiff"):
        choose_format("jpeg", (64, 64))
    with pytest.raises(PathUpError, match=".png or .tiff"):
        save_image(np.zeros((8, 8, 3), np.uint8), tmp_path / "x.jpg")
    with pytest.raises(PathUpError, match="multiple of 16"):
        save_tiff(np.zeros((8, 8, 3), np.uint8), tmp_path / "x.tiff", tile=40)


def test_pyramidal_tiff_records_its_physical_scale_for_qupath(tmp_path):
    """Resolution tags (px/cm) on every level, OME-XML PhysicalSizeX/Y in um, and tiffslide's MPP."""
    import xml.etree.ElementTree as ET

    import tiffslide
    import tifffile

    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (300, 520, 3), dtype=np.uint8)
    path = save_tiff(img, tmp_path / "scaled.tiff", {"seed": 5}, tile=64, mpp=0.5)
    with tifffile.TiffFile(path) as tf:
        assert tf.is_ome
        levels = tf.series[0].levels
        assert len(levels) >= 4
        for lv in levels:
            page = lv.keyframe
            h, w = page.shape[:2]
            assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
            xr, yr = page.tags["XResolution"].value, page.tags["YResolution"].value
            # 0.5 um/px = 20000 px/cm at level 0; a level downsampled by d has 20000 / d px/cm
            assert xr[0] / xr[1] == pytest.approx(20000 * w / 520, rel=1e-6)
            assert yr[0] / yr[1] == pytest.approx(20000 * h / 300, rel=1e-6)
        assert [lv.keyframe.shape[:2] for lv in levels[:3]] == [(300, 520), (150, 260), (75, 130)]
        assert levels[1].keyframe.tags["XResolution"].value[0] / levels[1].keyframe.tags["XResolution"].value[1] \
            == pytest.approx(10000)
        ome = ET.fromstring(tf.pages[0].description)
        ns = {"ome": "http://www.openmicroscopy.org/Schemas/OME/2016-06"}
        pixels = ome.find(".//ome:Pixels", ns)
        assert float(pixels.get("PhysicalSizeX")) == 0.5 and float(pixels.get("PhysicalSizeY")) == 0.5
        assert pixels.get("PhysicalSizeXUnit") == "µm" and pixels.get("PhysicalSizeYUnit") == "µm"
        assert json.loads(ome.find(".//ome:Description", ns).text) == {"seed": 5}
        assert np.array_equal(tf.series[0].asarray(), img)
    slide = tiffslide.TiffSlide(str(path))
    assert float(slide.properties["tiffslide.mpp-x"]) == pytest.approx(0.5)
    assert float(slide.properties["tiffslide.mpp-y"]) == pytest.approx(0.5)
    assert slide.level_dimensions[:2] == ((520, 300), (260, 150))
    region = np.asarray(slide.read_region((100, 50), 0, (200, 120)).convert("RGB"))
    assert np.array_equal(region, img[50:170, 100:300])
    slide.close()
    assert read_settings(path) == {"seed": 5}
    with pytest.raises(PathUpError, match="mpp must be a positive"):
        save_tiff(img, tmp_path / "bad.tiff", tile=64, mpp=0)


def test_png_records_its_physical_scale(tmp_path):
    img = np.full((16, 24, 3), 200, np.uint8)
    path = save_png(img, tmp_path / "a.png", {"seed": 1}, mpp=0.25)
    with Image.open(path) as im:
        assert im.info["dpi"] == pytest.approx((101600, 101600), abs=0.01)  # 25400 / 0.25
        assert float(im.info["mpp"]) == 0.25
    raw = path.read_bytes()  # pHYs: 4e6 pixels per metre on both axes, unit 1 (metre)
    i = raw.index(b"pHYs")
    assert int.from_bytes(raw[i + 4:i + 8], "big") == 4_000_000
    assert int.from_bytes(raw[i + 8:i + 12], "big") == 4_000_000 and raw[i + 12] == 1
    path = save_image(img, tmp_path / "b.png", mpp=0.5)
    with Image.open(path) as im:
        assert im.info["dpi"] == pytest.approx((50800, 50800), abs=0.01)
    with Image.open(save_png(img, tmp_path / "c.png")) as im:
        assert "dpi" not in im.info and "mpp" not in im.info
