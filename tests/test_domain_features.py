"""Texture-aware features: the domain encoder (train, save, load, extract), the foundation presets (on tiny
stand-ins saved here), and class-consistency with several feature sets side by side."""

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from pathup.errors import PathUpError

TINY_WIDTH = 8  # encoder width of the tests (the default is larger)
BLUR_SIGMA = 3.0  # px, on the 128 px held-out tiles


def _write_manifest(src: Path, dst: Path, keep) -> Path:
    """A copy of dataset ``src`` (tiles linked, not copied) with only the manifest rows ``keep`` accepts."""
    dst.mkdir(parents=True)
    (dst / "tiles").symlink_to(src / "tiles")
    shutil.copy(src / "dataset.json", dst / "dataset.json")
    with open(src / "manifest.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if keep(r)]
        fields = reader.fieldnames
    with open(dst / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return dst


@pytest.fixture(scope="module")
def kather(tmp_path_factory):
    """The shipped Kather sample prepared (split by patient), a tiny encoder trained on its training tiles for a
    few seconds, and its held-out overview tiles as two 'generated' sets: sharp copies and Gaussian-blurred ones."""
    from PIL import ImageFilter

    from pathup.experiments.demo.stages import prepare_sample
    from pathup.metrics.domain import train_encoder
    from pathup.metrics.encoder_config import EncoderConfig

    root = tmp_path_factory.mktemp("kather_enc")
    prepare_sample("kather", root / "ds", progress=False)
    enc = train_encoder(EncoderConfig(data=root / "ds", out=root / "enc", width=TINY_WIDTH, epochs=3,
                                      progress=False, device="cpu"))
    rows = [r for r in csv.DictReader(open(root / "ds" / "manifest.csv"))
            if r["split"] == "test" and r["level"] == "overview"]
    from PIL import Image

    for r in rows:
        img = Image.open(root / "ds" / r["path"]).convert("RGB")
        for name, im in (("sharp", img), ("blur", img.filter(ImageFilter.GaussianBlur(BLUR_SIGMA)))):
            dst = root / name / r["class"] / Path(r["path"]).name
            dst.parent.mkdir(parents=True, exist_ok=True)
            im.save(dst)
    return root, enc


def _images(root: Path, n: int = 6) -> torch.Tensor:
    from pathup.metrics.consistency import load_rgb

    paths = sorted((root / "sharp").rglob("*.png"))[:: max(1, 80 // n)][:n]
    return torch.from_numpy(load_rgb(paths, 128)).permute(0, 3, 1, 2)  # (N, 3, 128, 128) uint8


# ------------------------------------------------------------------------------------ the texture test
def test_domain_encoder_sees_blur_that_colour_stats_do_not(kather):
    """Blurred copies keep their mean colour. With colour statistics, the classifier keeps their classes as
    if nothing happened; with the texture-aware encoder, it loses some, and the Frechet distance to the real
    tiles grows by a clear margin."""
    from pathup.metrics import consistency as cc
    from pathup.metrics.features import make_extractor
    from pathup.metrics.fid import feature_statistics, frechet_distance

    root, enc = kather
    meta = json.loads((enc / "encoder.json").read_text())
    assert meta["heldout"]["split"] == "test" and meta["heldout"]["accuracy"] > 3 / 8  # > 3 x chance
    assert set(meta["heldout"]["per_level"]) == {"patch", "overview"}
    res = cc.measure(root / "ds", [root / "sharp", root / "blur"], features=["color-stats", str(enc)], size=128)
    sharp, blur = str(root / "sharp"), str(root / "blur")
    # the blurred set's per-class mean colour is the sharp set's
    assert cc.colour_correlation(res["sets"][sharp]["colour"], res["sets"][blur]["colour"]) > 0.999
    acc = {spec: {k: v["generated"]["accuracy"] for k, v in fr["sets"].items()}
           for spec, fr in res["by_features"].items()}
    for spec in acc:  # the sharp copies are the held-out real tiles: the ceiling
        assert acc[spec][sharp] == pytest.approx(res["by_features"][spec]["sets"][sharp]["real_heldout"]["accuracy"])
    drop_colour = acc["color-stats"][sharp] - acc["color-stats"][blur]
    drop_texture = acc[str(enc)][sharp] - acc[str(enc)][blur]
    assert abs(drop_colour) <= 0.05 and drop_texture > drop_colour + 0.03, acc
    # the legacy single-feature keys hold the first feature set's results
    assert res["features"] == "color-stats" and res["sets"][sharp]["generated"]["accuracy"] == acc["color-stats"][sharp]
    md = cc.markdown(res)
    assert "| color-stats | " in md and f"| {enc.name} | " in md
    # Frechet distance to the real 'train' overview tiles, in the encoder's space
    paths, _, splits = cc.labelled_real(root / "ds", "overview")
    ext = make_extractor(str(enc))
    ref = feature_statistics(cc.extract(cc.load_rgb([p for p, s in zip(paths, splits) if s == "train"], 128), ext))
    fd = {name: frechet_distance(*ref, *feature_statistics(cc.extract(cc.load_rgb(sorted((root / name).rglob(
        "*.png")), 128), ext))) for name in ("sharp", "blur")}
    assert fd["blur"] > 1.5 * fd["sharp"], fd


# ------------------------------------------------------------------------------------- reference tests
def test_extractor_batch_size_invariant_and_round_trip(kather, tmp_path):
    from pathup.metrics.domain import DomainEncoderExtractor, load_encoder, save_encoder
    from pathup.metrics.features import make_extractor

    root, enc = kather
    ext = make_extractor(str(enc))
    assert isinstance(ext, DomainEncoderExtractor) and ext.dim == 128 and not ext.comparable
    x = _images(root)
    batch = ext(x)  # (N, 128)
    single = torch.cat([ext(x[i:i + 1]) for i in range(len(x))])
    assert batch.shape == (len(x), ext.dim)
    assert torch.allclose(batch, single, atol=1e-5, rtol=0)
    # other input sizes are resized inside
    assert ext(torch.nn.functional.interpolate(x.float(), size=96).round().to(torch.uint8)).shape == batch.shape
    # save / load round trip: identical features; cache_id follows the weights
    net, meta = load_encoder(enc)
    save_encoder(net, {k: v for k, v in meta.items() if not k.startswith("_") and k != "weights"}, tmp_path / "copy")
    ext2 = make_extractor(str(tmp_path / "copy"))
    assert torch.equal(ext2(x), batch)
    assert ext2.cache_id.split(":")[-1] == ext.cache_id.split(":")[-1]
    with torch.no_grad():
        net.embedding[0].bias.add_(1.0)
    save_encoder(net, {k: v for k, v in meta.items() if not k.startswith("_") and k != "weights"}, tmp_path / "copy")
    assert make_extractor(str(tmp_path / "copy")).cache_id != ext2.cache_id


def test_training_is_deterministic(kather, tmp_path):
    from pathup.metrics.domain import train_encoder
    from pathup.metrics.encoder_config import EncoderConfig

    root, _ = kather
    cfg = EncoderConfig(data=root / "ds", out=tmp_path / "a", width=4, epochs=1, levels=["overview"], size=32,
                        batch_size=32, progress=False, device="cpu")
    a = json.loads((train_encoder(cfg) / "encoder.json").read_text())
    b = json.loads((train_encoder(dataclasses.replace(cfg, out=tmp_path / "b")) / "encoder.json").read_text())
    assert a["weights"]["sha256"] == b["weights"]["sha256"]
    assert a["data"]["levels"] == ["overview"] and a["data"]["tiles"] == {"train": 256, "heldout": 80}


@pytest.mark.parametrize("damage,match", [
    (lambda d: (d / "encoder.json").write_text('{"format": "pathup-domain-'), "not valid JSON"),
    (lambda d: (d / "encoder.json").write_text('[1, 2]'), "not a pathup domain encoder"),
    (lambda d: _edit_json(d, format_version=99), "format_version 99"),
    (lambda d: _edit_json(d, arch={"width": 8, "embed_dim": 128}), "arch.num_classes"),
    (lambda d: _edit_json(d, input={"size": 128, "mean": [0.5, 0.5], "std": [1, 1, 1]}), "input.mean"),
    (lambda d: (d / "encoder.safetensors").write_bytes((d / "encoder.safetensors").read_bytes()[:100]), "sha256"),
    (lambda d: (d / "encoder.safetensors").unlink(), "cannot read the encoder weights"),
    (lambda d: _wrong_shapes(d), "do not match the architecture"),
    (lambda d: _garbage_weights(d), "not a safetensors file"),
])
def test_damaged_encoder_is_a_one_line_error(kather, tmp_path, damage, match):
    from pathup.metrics.features import make_extractor

    enc = tmp_path / "enc"
    shutil.copytree(kather[1], enc)
    damage(enc)
    with pytest.raises(PathUpError, match=match) as err:
        make_extractor(str(enc))
    assert "\n" not in str(err.value) and str(enc) in str(err.value)


def _edit_json(d: Path, **changes) -> None:
    meta = json.loads((d / "encoder.json").read_text())
    meta.update(changes)
    (d / "encoder.json").write_text(json.dumps(meta))


def _rehash(d: Path) -> None:
    import hashlib

    meta = json.loads((d / "encoder.json").read_text())
    meta["weights"]["sha256"] = hashlib.sha256((d / "encoder.safetensors").read_bytes()).hexdigest()
    (d / "encoder.json").write_text(json.dumps(meta))


def _wrong_shapes(d: Path) -> None:
    from safetensors.torch import save_file

    from pathup.metrics.domain import DomainCNN

    save_file(DomainCNN(TINY_WIDTH * 2, 8).state_dict(), str(d / "encoder.safetensors"))
    _rehash(d)


def _garbage_weights(d: Path) -> None:
    (d / "encoder.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{notjson")
    _rehash(d)


def test_make_extractor_refuses_a_folder_without_encoder_json(tmp_path):
    from pathup.metrics.features import make_extractor

    with pytest.raises(PathUpError, match="without encoder.json"):
        make_extractor(str(tmp_path))


def test_cli_features_train_and_its_errors(kather, tmp_path, capsys):
    from pathup.cli import main

    root, _ = kather
    out = tmp_path / "enc"
    assert main(["features", "train", "--data", str(root / "ds"), "--out", str(out), "--width", "4", "--epochs", "1",
                 "--size", "32", "--levels", "overview", "--no-progress"]) == 0
    assert (out / "encoder.json").is_file() and (out / "encoder.safetensors").is_file() and "held-out" in \
        capsys.readouterr().out
    no_held = _write_manifest(root / "ds", tmp_path / "noheld", lambda r: r["split"] == "train")
    empty_class = _write_manifest(root / "ds", tmp_path / "empty",
                                  lambda r: r["class"] != "02_STROMA" or r["split"] == "test")
    for argv, msg in [
        (["--data", str(tmp_path / "missing")], "not a prepared dataset"),
        (["--data", str(no_held)], "--heldout"),
        (["--data", str(empty_class)], "02_STROMA have no 'train' tiles"),
        (["--data", str(root / "ds"), "--levels", "nope"], "--levels"),
        (["--data", str(root / "ds"), "--heldout", "val"], "--heldout val"),
        (["--data", str(root / "ds"), "--epochs", "0"], "--epochs"),
    ]:
        assert main(["features", "train", "--out", str(tmp_path / "x"), "--no-progress", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and "\n" not in err, err
    # --heldout none trains without one
    assert main(["features", "train", "--data", str(no_held), "--out", str(tmp_path / "y"), "--heldout", "none",
                 "--width", "4", "--epochs", "1", "--size", "32", "--levels", "overview", "--no-progress"]) == 0
    assert json.loads((tmp_path / "y" / "encoder.json").read_text())["heldout"] is None


def test_evaluate_reports_colour_and_texture_side_by_side(kather, tmp_path):
    from pathup.metrics.evaluate import EvaluateConfig, evaluate

    root, enc = kather
    res = evaluate(EvaluateConfig(data=str(root / "ds"), fake=str(root / "blur"), out=str(tmp_path / "m.json"),
                                  features=str(enc), repeats=1, overview_size=128, cache=False, progress=False,
                                  kid_subsets=5, kid_subset_size=20))
    cc = res["class_consistency"]
    assert cc["feature_sets"] == [str(enc), "color-stats"] and res["features"]["dim"] == 128
    md = (tmp_path / "m.md").read_text()
    assert f"| {enc.name} | generated |" in md and "| color-stats | generated |" in md
    saved = json.loads((tmp_path / "m.json").read_text())["class_consistency"]
    assert set(saved["by_features"]) == {str(enc), "color-stats"}
    # --consistency-features chooses them (and their order)
    from pathup.metrics.evaluate import consistency_specs

    cfg = EvaluateConfig(data="d", fake="f", features="inception", consistency_features=["color-stats", str(enc)])
    assert consistency_specs(cfg) == ["color-stats", str(enc)]
    assert consistency_specs(dataclasses.replace(cfg, consistency_features=[])) == ["inception", "color-stats"]
    assert consistency_specs(dataclasses.replace(cfg, features="color-stats", consistency_features=[])) == \
        ["color-stats"]


# --------------------------------------------------------------------------------- foundation presets
TINY_VIT = dict(embed_dim=32, depth=1, num_heads=2)


def _tiny_preset(monkeypatch, name):
    from pathup.metrics import foundation

    preset = foundation.PRESETS[name]
    tiny = dataclasses.replace(preset, kwargs={**preset.kwargs, **TINY_VIT})
    monkeypatch.setitem(foundation.PRESETS, name, tiny)
    return tiny


def _timm_stand_in(preset):
    import timm
    from timm.layers import SwiGLUPacked

    layers = {"swiglu_packed": SwiGLUPacked, "silu": torch.nn.SiLU}
    kwargs = {k: layers.get(v, v) if isinstance(v, str) else v for k, v in preset.kwargs.items()}
    torch.manual_seed(0)
    return timm.create_model(preset.architecture, pretrained=False, **kwargs).eval()


def _expected(net, images, preset, pool):
    x = torch.nn.functional.interpolate(images.float() / 255, size=(224, 224), mode="bicubic", antialias=True,
                                        align_corners=False).clamp(0, 1)
    x = (x - torch.tensor(preset.mean).view(1, 3, 1, 1)) / torch.tensor(preset.std).view(1, 3, 1, 1)
    with torch.no_grad():
        if pool == "cls":
            return net(pixel_values=x).last_hidden_state[:, 0]
        out = net(x)
        return torch.cat([out[:, 0], out[:, net.num_prefix_tokens:].mean(1)], -1) if pool == "cls+mean" else out


@pytest.mark.parametrize("name,layout", [("uni2-h", "folder-config-bin"), ("virchow2", "file"),
                                         ("h-optimus-0", "folder")])
def test_timm_presets_load_local_weights(monkeypatch, tmp_path, name, layout):
    from safetensors.torch import save_file

    from pathup.metrics.features import make_extractor

    preset = _tiny_preset(monkeypatch, name)
    net = _timm_stand_in(preset)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    if layout == "file":
        weights = tmp_path / "model.safetensors"
        save_file(state, str(weights))
    else:
        weights = tmp_path / "repo"
        weights.mkdir()
        if layout == "folder-config-bin":  # timm's hub layout: config.json + pytorch_model.bin
            args = {k: v for k, v in preset.kwargs.items() if k not in ("mlp_layer", "act_layer")}
            (weights / "config.json").write_text(json.dumps({"architecture": preset.architecture, "model_args": args,
                                                             "pretrained_cfg": {"mean": list(preset.mean),
                                                                                "std": list(preset.std)}}))
            torch.save(state, weights / "pytorch_model.bin")
        else:
            save_file(state, str(weights / "model.safetensors"))
    ext = make_extractor(name, str(weights))
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    feats = ext(images)
    expected = _expected(net, images, preset, preset.pool)
    assert feats.shape == (2, ext.dim) and ext.dim == (64 if preset.pool == "cls+mean" else 32)
    assert torch.allclose(feats, expected, atol=1e-5)
    assert name in ext.cache_id


def test_phikon_v2_preset_loads_a_saved_transformers_model(monkeypatch, tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    from pathup.metrics import foundation
    from pathup.metrics.features import make_extractor

    torch.manual_seed(0)
    net = Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                   patch_size=16, image_size=224)).eval()
    net.save_pretrained(tmp_path / "phikon")
    images = torch.randint(0, 256, (2, 3, 48, 48), dtype=torch.uint8)
    ext = make_extractor("phikon-v2", str(tmp_path / "phikon"))
    expected = _expected(net, images, foundation.PRESETS["phikon-v2"], "cls")
    assert ext.dim == 32 and torch.allclose(ext(images), expected, atol=1e-5)
    # without --features-weights: the local Hugging Face cache (a snapshot laid out as the hub writes it)
    import huggingface_hub.constants as hfc

    cache = tmp_path / "hub"
    snap = cache / "models--owkin--phikon-v2" / "snapshots" / "abc123"
    shutil.copytree(tmp_path / "phikon", snap)
    (cache / "models--owkin--phikon-v2" / "refs").mkdir()
    (cache / "models--owkin--phikon-v2" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(cache))
    assert torch.allclose(make_extractor("phikon-v2")(images), expected, atol=1e-5)


@pytest.mark.parametrize("name", ["uni2-h", "virchow2", "h-optimus-0", "phikon-v2"])
def test_preset_without_weights_is_a_one_line_error(monkeypatch, tmp_path, name):
    import huggingface_hub.constants as hfc

    from pathup.metrics.features import make_extractor
    from pathup.metrics.foundation import PRESETS

    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PathUpError, match="not in the local Hugging Face cache") as err:
        make_extractor(name)
    assert PRESETS[name].repo in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(PathUpError, match="not found"):
        make_extractor(name, str(tmp_path / "nothing"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"junk")
    with pytest.raises(PathUpError, match="weights|folder") as err:
        make_extractor(name, str(bad))
    assert "\n" not in str(err.value)


def test_preset_refuses_pickled_objects(monkeypatch, tmp_path):
    """Weights files are read with weights_only=True: a pickle carrying code is refused, not run."""
    from pathup.metrics.features import make_extractor

    _tiny_preset(monkeypatch, "h-optimus-0")
    evil = tmp_path / "evil.pt"
    torch.save({"x": _Boom()}, evil)
    with pytest.raises(PathUpError, match="cannot read weights"):
        make_extractor("h-optimus-0", str(evil))


class _Boom:
    def __reduce__(self):
        return (print, ("unpickled!",))
