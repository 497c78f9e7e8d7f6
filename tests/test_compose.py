"""``pathup compose`` (issue 14): mixed-tissue images from a class map, with label masks."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from pathup.cli import main
from pathup.errors import PathUpError
from pathup.model import build_ldm, save_ldm
from pathup.prompts import PromptTable
from pathup.sample import PathUpPipeline, SampleConfig, generate_to_folder
from pathup.sample.compose_folder import compose_to_folder
from pathup.sample.config import ComposeConfig
from pathup.sample.geojson import geojson_regions
from pathup.sample.layout import Layout, random_layout, resize_labels
from pathup.sample.layout_files import read_label_image, read_region_json
from pathup.sample.regional import soft_masks

CLASSES = ["benign", "in situ carcinoma", "stroma"]
OPTIONS = dict(size="96x80", steps=3, latent_patch=6, latent_overlap=3, guidance=2.0, seed=3)
RED, BLUE = (228, 26, 28), (55, 126, 184)


@pytest.fixture(scope="module")
def pipe():
    ldm = build_ldm("micro", PromptTable(CLASSES), seed=0)
    return PathUpPipeline(ldm, model_name="micro-test", progress=False)


def _split(left="benign", right="in situ carcinoma", h=4, w=4):
    lab = np.zeros((h, w), np.int32)
    lab[:, w // 2:] = 1
    return Layout(lab, [left, right], [RED, BLUE], [CLASSES.index(left), CLASSES.index(right)], "split")


def _rasterise(features, width, height):
    """Polygons back to a class-index grid (pixel centres, holes subtracted); -1 where none."""
    from matplotlib.path import Path as MPath

    yy, xx = np.mgrid[0:height, 0:width]
    pts = np.stack([xx.ravel() + 0.5, yy.ravel() + 0.5], 1)
    out = np.full((height, width), -1)
    for f in features:
        rings = f["geometry"]["coordinates"]
        inside = MPath(rings[0]).contains_points(pts)
        for hole in rings[1:]:
            inside &= ~MPath(hole).contains_points(pts)
        inside = inside.reshape(height, width)
        assert (out[inside] == -1).all(), "polygons overlap"
        out[inside] = f["properties"]["pathup_id"]
    return out


# ------------------------------------------------------------------------------------------ method
def test_one_class_layout_equals_generate(pipe, tmp_path):
    """A one-class layout gives exactly what ``pathup generate`` gives for that class and seed."""
    lay = Layout(np.zeros((3, 5), np.int32), ["in situ carcinoma"], [RED], [1], "one")
    comp = pipe.compose(lay, output_type="np", **OPTIONS)
    gen = pipe(class_name="in situ carcinoma", output_type="np", **OPTIONS)
    diff = np.abs(comp.images[0].astype(int) - gen.images[0].astype(int)).max()
    assert diff == 0
    assert np.array_equal(np.asarray(comp.overviews[0]), np.asarray(gen.overviews[0]))
    lat = pipe.compose(lay, output_type="latent", **OPTIONS).images[0]
    ref = pipe.upscale(gen.overviews[0], "in situ carcinoma", output_type="latent",
                       **{k: v for k, v in OPTIONS.items()})
    assert (lat - ref).abs().max().item() == 0.0  # bit-equal latents
    assert comp.unet[0]["ratio"] == 1.0 and comp.unet[0]["patches_by_classes"] == {"1": 9}
    assert (comp.masks[0] == 1).all() and comp.masks[0].shape == (80, 96)
    # And through the folder writers: the same pixels as generate_to_folder's file.
    gen_out = generate_to_folder(pipe, "in situ carcinoma", tmp_path / "gen", SampleConfig(**OPTIONS), progress=False)
    res = compose_to_folder(pipe, tmp_path / "comp", ComposeConfig(**OPTIONS), layout=lay, progress=False)
    assert np.array_equal(np.asarray(Image.open(res.written[0])), np.asarray(Image.open(gen_out.written[0])))


class _PromptStub(torch.nn.Module):
    """A UNet stand-in whose prediction is a constant chosen by the prompt embedding (0 for others)."""

    def __init__(self, unet, table):
        super().__init__()
        self.config = unet.config
        self.table = table  # list of (embedding (L, D), value)
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self):
        return self.anchor.device

    @property
    def dtype(self):
        return self.anchor.dtype

    def forward(self, x, t, encoder_hidden_states, return_dict=True, **kwargs):
        values = []
        for emb in encoder_hidden_states:
            v = [val for e, val in self.table if torch.equal(e, emb)]
            values.append(v[0] if v else 0.0)
        out = torch.tensor(values, dtype=x.dtype)[:, None, None, None] * torch.ones_like(x)
        return (out,)


def test_two_class_split_moves_each_half_toward_its_class():
    ldm = build_ldm("micro", PromptTable(CLASSES), seed=0)
    table = []
    for cls, value in (("benign", 1.0), ("in situ carcinoma", -1.0)):
        for level in ("overview", "patch"):
            with torch.no_grad():
                table.append((ldm.encode_prompts([f"{cls}, {level}"])[0], value))
    ldm.unet = _PromptStub(ldm.unet, table)
    stub = PathUpPipeline(ldm, progress=False)
    opts = dict(OPTIONS, size="128x64", latent_patch=4, latent_overlap=2, feather=2)
    z = stub.compose(_split(), output_type="latent", **opts).images[0]  # (1, 4, 8, 16)
    left, right = z[..., :, :6].mean().item(), z[..., :, 10:].mean().item()
    # eps > 0 (benign) pulls the predicted clean latent down, eps < 0 pushes it up.
    assert left < -0.5 and right > 0.5, (left, right)
    # Each half is near what a one-class layout of its class gives there.
    for cls, idx, value in (("benign", 0, left), ("in situ carcinoma", 1, right)):
        lay = Layout(np.zeros((2, 2), np.int32), [cls], [RED], [CLASSES.index(cls)], cls)
        ldm_one = stub.compose(lay, output_type="latent", **opts).images[0]
        pure = ldm_one[..., :, :6].mean().item() if idx == 0 else ldm_one[..., :, 10:].mean().item()
        assert abs(value - pure) < 0.25 * abs(pure), (cls, value, pure)


def test_patch_batch_does_not_change_the_image(pipe):
    lay = _split(h=5, w=7)
    runs = [pipe.compose(lay, output_type="latent", **dict(OPTIONS, patch_batch=b, feather=2)).images[0]
            for b in ("1", "3", "100")]
    for z in runs[1:]:
        assert (z - runs[0]).abs().max().item() <= 1e-5


def test_unet_evaluations_scale_with_classes_under_each_patch(pipe):
    # 96x80 px -> 12x10 latents; 4-position patches with overlap 2: 5x4 = 20 patches.
    lab = np.zeros((10, 12), np.int32)
    lab[:, 6:] = 1
    lay = Layout(lab, ["benign", "stroma"], [RED, BLUE], [0, 2], "split")
    out = pipe.compose(lay, output_type="latent", **dict(OPTIONS, latent_patch=4, latent_overlap=2, feather=0))
    unet = out.unet[0]
    by = unet["patches_by_classes"]
    assert by == {"1": 16, "2": 4}  # only the column of patches over the border (columns 4-7) sees both
    # Per step: 1 + 1 evaluations for a one-class patch, 1 + 2 for a two-class one; generate: 2 per patch.
    assert unet["upscale_ratio"] == pytest.approx((16 * 2 + 4 * 3) / (20 * 2))


def test_soft_masks_sum_to_one_and_are_exact_inside_regions():
    lab = np.zeros((10, 20), np.int64)
    lab[:, 10:] = 1
    m = soft_masks(lab, 2, 4)
    assert torch.allclose(m.sum(0), torch.ones(10, 20))
    assert (m[0, :, :7] == 1).all() and (m[1, :, :7] == 0).all() and (m[1, :, 13:] == 1).all()
    row = m[0, 0]
    assert ((row[6:14] > 0) & (row[6:14] < 1)).sum() >= 4 and torch.all(row[:-1] >= row[1:])
    assert torch.equal(soft_masks(lab, 2, 0)[1], torch.as_tensor(lab, dtype=torch.float32))


# ------------------------------------------------------------------------------------------ layouts and files
def _write_colour_layout(path, grid):
    rgb = np.zeros((*grid.shape, 3), np.uint8)
    rgb[grid == 0], rgb[grid == 1] = RED, BLUE
    Image.fromarray(rgb, "RGB").save(path)


def test_mask_equals_resized_layout_and_files(pipe, tmp_path):
    grid = np.zeros((4, 6), np.int32)
    grid[1:3, 2:5] = 1
    grid[3, 0] = 1
    _write_colour_layout(tmp_path / "map.png", grid)
    (tmp_path / "legend.yaml").write_text(yaml.safe_dump({"stroma": "#e41a1c", "benign": [55, 126, 184]}))
    cfg = ComposeConfig(**dict(OPTIONS, size="96x64"))
    res = compose_to_folder(pipe, tmp_path / "out", cfg, layout=tmp_path / "map.png",
                            legend=tmp_path / "legend.yaml", progress=False)
    out = tmp_path / "out"
    assert res.written == [out / "map_s3.png"]
    ids = np.where(grid == 0, CLASSES.index("stroma"), CLASSES.index("benign"))
    want = np.kron(ids, np.ones((16, 16), np.int64))  # 6x4 -> 96x64: 16x16 blocks
    mask = np.asarray(Image.open(out / "map_s3_mask.png"))
    assert mask.shape == (64, 96) and np.array_equal(mask, want)
    assert np.array_equal(resize_labels(ids, 96, 64), want)
    meta = json.loads((out / "map_s3.json").read_text())
    assert meta["legend"] == {"stroma": {"id": 2, "colour": list(RED)}, "benign": {"id": 0, "colour": list(BLUE)}}
    assert meta["prompts"]["benign"] == {"overview": "benign, overview", "patch": "benign, patch"}
    assert meta["seed"] == 3 and meta["options"]["patch_size"] == 6 and meta["options"]["feather"] == -1
    assert meta["unet_evaluations"]["upscale_ratio"] > 1.0
    for name in ("map_s3_mask_colour.png", "map_s3_overlay.png", "overview/map_s3.png", "compose_config.yaml"):
        assert (out / name).is_file(), name
    colour = np.asarray(Image.open(out / "map_s3_mask_colour.png"))
    assert tuple(colour[0, 0]) == RED and tuple(colour[20, 40]) == BLUE
    gj = json.loads((out / "map_s3.geojson").read_text())
    assert gj["type"] == "FeatureCollection"
    props = gj["features"][0]["properties"]
    assert props["objectType"] == "annotation" and set(props["classification"]) == {"name", "color"}
    assert np.array_equal(_rasterise(gj["features"], 96, 64), want)
    # Rerun: skipped; other settings without --overwrite: a one-line error.
    again = compose_to_folder(pipe, out, cfg, layout=tmp_path / "map.png", legend=tmp_path / "legend.yaml",
                              progress=False)
    assert again.written == [] and again.skipped == [out / "map_s3.png"]
    # patch_batch never changes the image, so it does not stop a resume (generate's rule too).
    again = compose_to_folder(pipe, out, ComposeConfig(**dict(OPTIONS, size="96x64", patch_batch="1")),
                              layout=tmp_path / "map.png", legend=tmp_path / "legend.yaml", progress=False)
    assert again.written == [] and again.skipped == [out / "map_s3.png"]
    with pytest.raises(PathUpError, match="another model, layout or settings"):
        compose_to_folder(pipe, out, ComposeConfig(**dict(OPTIONS, size="96x64", steps=4)),
                          layout=tmp_path / "map.png", legend=tmp_path / "legend.yaml", progress=False)


@pytest.mark.parametrize("size", [(96, 64), (37, 53), (5, 3)])
def test_geojson_round_trip(size):
    lay = random_layout(CLASSES, 3, (200, 150), seed=4, shape="blob", region_size=40)
    width, height = size
    mask = np.asarray(lay.ids)[resize_labels(lay.labels, width, height)]
    gj = geojson_regions(lay, width, height)
    assert np.array_equal(_rasterise(gj["features"], width, height), mask)
    assert all(f["geometry"]["type"] == "Polygon" for f in gj["features"])
    ring = gj["features"][0]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1]


def test_random_and_json_layouts(tmp_path):
    a = random_layout(CLASSES, 2, (512, 256), seed=1, shape="voronoi", region_size=64)
    b = random_layout(CLASSES, 2, (512, 256), seed=1, shape="voronoi", region_size=64)
    assert np.array_equal(a.labels, b.labels) and a.classes == b.classes and len(a.classes) == 2
    assert a.labels.shape == (256, 512)
    blob = random_layout(CLASSES, 3, (300, 300), seed=2, shape="blob", region_size=100)
    assert len(blob.classes) == 3
    spec = {"background": "stroma", "regions": [{"class": "benign", "rect": [0, 0, 0.5, 1]},
                                                 {"class": "in situ carcinoma",
                                                  "polygon": [[0.5, 0.5], [1, 0.5], [1, 1], [0.5, 1]]}]}
    (tmp_path / "l.json").write_text(json.dumps(spec))
    lay = read_region_json(tmp_path / "l.json", (40, 20), model_classes=CLASSES)
    ids = np.asarray(lay.ids)[resize_labels(lay.labels, 40, 20)]
    assert (ids[:, :20] == 0).all() and (ids[:10, 20:] == 2).all() and (ids[10:, 20:] == 1).all()


def test_id_layout_without_legend_uses_model_class_indices(tmp_path):
    Image.fromarray(np.array([[0, 2], [2, 1]], np.uint8), "L").save(tmp_path / "ids.png")
    lay = read_label_image(tmp_path / "ids.png", model_classes=CLASSES)
    assert np.array_equal(np.asarray(lay.ids)[lay.labels], [[0, 2], [2, 1]])


def test_bad_layouts_give_one_line_errors(tmp_path):
    grid = np.zeros((4, 4), np.int32)
    grid[:, 2:] = 1
    _write_colour_layout(tmp_path / "map.png", grid)
    Image.fromarray(np.array([[0, 5], [1, 1]], np.uint8), "L").save(tmp_path / "ids.png")
    (tmp_path / "partial.yaml").write_text("stroma: '#e41a1c'\n")
    (tmp_path / "alien.yaml").write_text("lymphoma: '#e41a1c'\nbenign: '#377eb8'\n")
    (tmp_path / "ids.yaml").write_text("benign: 0\nstroma: 1\n")
    (tmp_path / "dup.yaml").write_text("benign: '#e41a1c'\nstroma: '#e41a1c'\n")
    (tmp_path / "bad.yaml").write_text("benign: not-a-colour\n")
    (tmp_path / "empty.json").write_text('{"regions": []}')
    (tmp_path / "holes.json").write_text('{"regions": [{"class": "benign", "rect": [0, 0, 0.5, 0.5]}]}')
    (tmp_path / "outside.json").write_text('{"regions": [{"class": "benign", "rect": [0, 0, 1.5, 1]}]}')
    cases = [
        (lambda: read_label_image(tmp_path / "map.png", tmp_path / "partial.yaml", model_classes=CLASSES),
         r"colour #377eb8 \(55, 126, 184\) \(8 px\) is not in the legend"),
        (lambda: read_label_image(tmp_path / "ids.png", model_classes=CLASSES), "id 5 has no class"),
        (lambda: read_label_image(tmp_path / "map.png", tmp_path / "alien.yaml", model_classes=CLASSES),
         "class 'lymphoma' is not a class of the model; allowed: benign"),
        (lambda: read_label_image(tmp_path / "map.png", tmp_path / "ids.yaml", model_classes=CLASSES),
         "gives integer ids but .* is a colour image"),
        (lambda: read_label_image(tmp_path / "map.png", tmp_path / "dup.yaml", model_classes=CLASSES),
         "is given to more than one class"),
        (lambda: read_label_image(tmp_path / "map.png", tmp_path / "bad.yaml", model_classes=CLASSES),
         "is not a colour"),
        (lambda: read_label_image(tmp_path / "map.png", model_classes=CLASSES), "give a legend"),
        (lambda: read_label_image(tmp_path / "missing.png", model_classes=CLASSES), "layout not found"),
        (lambda: read_region_json(tmp_path / "empty.json", (10, 10), model_classes=CLASSES), "is empty"),
        (lambda: read_region_json(tmp_path / "holes.json", (10, 10), model_classes=CLASSES), "75.0% .* uncovered"),
        (lambda: read_region_json(tmp_path / "outside.json", (10, 10), model_classes=CLASSES), r"outside \[0, 1\]"),
        (lambda: random_layout(CLASSES, 4, (64, 64)), r"random_layout must be in \[1, 3\]"),
    ]
    for fn, pattern in cases:
        with pytest.raises(PathUpError, match=pattern) as err:
            fn()
        assert "\n" not in str(err.value), str(err.value)


# ------------------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    ldm = build_ldm("micro", PromptTable(CLASSES), seed=0)
    return str(save_ldm(ldm, tmp_path_factory.mktemp("m") / "model"))


FAST = ["--steps", "2", "--latent-patch", "6", "--latent-overlap", "3", "--guidance", "2", "--size", "80x64"]


def test_cli_random_layout_num_and_process_share(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compose", model_dir, "--random-layout", "2", "--region-size", "40", "--num", "2",
                 "--out", str(out), *FAST]) == 0
    assert "wrote 2 image(s)" in capsys.readouterr().out
    metas = [json.loads((out / f"random_s{s}.json").read_text()) for s in (0, 1)]
    assert metas[0]["layout"] != metas[1]["layout"]  # each seed draws its own layout
    for s in (0, 1):
        assert np.asarray(Image.open(out / f"random_s{s}_mask.png")).shape == (64, 80)
    # Rerun with the same options: both skipped.
    assert main(["compose", model_dir, "--random-layout", "2", "--region-size", "40", "--num", "2",
                 "--out", str(out), *FAST]) == 0
    assert "wrote 0 image(s)" in capsys.readouterr().out
    # Process 1 of 2 makes only seed 1 (as generate shares --num).
    pipe = PathUpPipeline.from_pretrained(model_dir, device="cpu", progress=False)
    cfg = ComposeConfig(steps=2, latent_patch=6, latent_overlap=3, guidance=2.0, size="80x64", random_layout=2,
                        region_size=40, num=3)
    res = compose_to_folder(pipe, tmp_path / "share", cfg, process_index=1, num_processes=2, progress=False)
    assert [p.name for p in res.written] == ["random_s1.png"]
    assert not (tmp_path / "share" / "compose_config.yaml").exists()
    # Bad invocations: one line, exit 2.
    assert main(["compose", model_dir, "--out", str(out), *FAST]) == 2
    assert main(["compose", model_dir, "--layout", str(tmp_path / "none.png"), "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert "give either --layout FILE or --random-layout K" in err and "file not found" in err


def test_compose_options_are_checked_once_per_call(model_dir, tmp_path, validate_calls):
    """``pathup compose`` checks its options once (``pathup.sample.config.validate``), before the model loads
    (it checked them twice: in the CLI and again in ``compose_to_folder``); ``compose_to_folder`` called
    alone checks them once too, and both write the same image."""
    calls = validate_calls
    assert main(["compose", "--model", model_dir, "--random-layout", "2", "--region-size", "40",
                 "--out", str(tmp_path / "cli"), *FAST]) == 0
    assert calls == ["ComposeConfig"]
    calls.clear()
    pipe = PathUpPipeline.from_pretrained(model_dir, device="cpu", progress=False)
    cfg = ComposeConfig(steps=2, latent_patch=6, latent_overlap=3, guidance=2.0, size="80x64", random_layout=2,
                        region_size=40)
    res = compose_to_folder(pipe, tmp_path / "api", cfg, progress=False)
    assert calls == ["ComposeConfig"] and [p.name for p in res.written] == ["random_s0.png"]
    api, cli = res.written[0], tmp_path / "cli" / "random_s0.png"
    assert np.array_equal(np.asarray(Image.open(api)), np.asarray(Image.open(cli)))


def test_cli_help_lists_compose_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["compose", "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--layout", "--legend", "--random-layout", "--feather", "--region-size", "--patch-batch"):
        assert opt in text
