"""Unit tests of the downstream pieces: ABMIL maths, synthetic allocation, tiling, augmentation, splits."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from pathup.errors import PathUpError


# --- ABMIL --------------------------------------------------------------------------------------

def _abmil(seed: int = 0, dim: int = 12, classes: int = 3):
    from pathup.downstream.abmil import GatedAttentionMIL

    torch.manual_seed(seed)
    return GatedAttentionMIL(dim, classes, hidden=10, attention=6, dropout=0.0).eval()


def test_abmil_attention_matches_ilse_eq9_by_hand():
    """Eq. 9 and Eq. 7 of Ilse et al. recomputed in numpy from the layer weights."""
    m = _abmil()
    x = torch.randn(1, 7, 12)
    logits, a = m(x)
    p = {k: v.detach().double().numpy() for k, v in m.state_dict().items()}
    xn = x[0].double().numpy()
    h = np.maximum(xn @ p["embed.0.weight"].T + p["embed.0.bias"], 0)  # (K, M)
    gate = np.tanh(h @ p["attention_v.weight"].T + p["attention_v.bias"]) * \
        (1 / (1 + np.exp(-(h @ p["attention_u.weight"].T + p["attention_u.bias"]))))
    s = gate @ p["attention_w.weight"][0] + p["attention_w.bias"][0]  # (K,)
    ref_a = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
    ref_logits = (ref_a @ h) @ p["classifier.weight"].T + p["classifier.bias"]
    np.testing.assert_allclose(a[0].detach().numpy(), ref_a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits[0].detach().numpy(), ref_logits, rtol=1e-4, atol=1e-5)


def test_abmil_attention_sums_to_one_and_ignores_padding():
    from pathup.downstream.abmil import pad_bags

    m = _abmil(1)
    bags = [torch.randn(k, 12) for k in (3, 9, 1, 5)]
    x, mask = pad_bags(bags)
    logits, a = m(x, mask)
    torch.testing.assert_close(a.sum(dim=1), torch.ones(4))
    assert torch.all(a[~mask] == 0)
    for i, b in enumerate(bags):  # each padded bag scores as if alone
        alone, a_alone = m(b[None])
        torch.testing.assert_close(logits[i], alone[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a[i, :len(b)], a_alone[0], rtol=1e-5, atol=1e-6)


def test_abmil_is_permutation_invariant():
    m = _abmil(2)
    x = torch.randn(2, 11, 12)
    perm = torch.randperm(11)
    logits, a = m(x)
    logits_p, a_p = m(x[:, perm])
    torch.testing.assert_close(logits, logits_p, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a[:, perm], a_p, rtol=1e-5, atol=1e-6)


# --- synthetic selection ------------------------------------------------------------------------

def test_allocate_synthetic_water_fills_rare_classes_first():
    from pathup.downstream.synthetic import allocate_synthetic

    # levels 10, 2, 5: class 1 is filled to 5, then 1 and 2 alternate (ties to the earlier class).
    assert allocate_synthetic([10, 2, 5], [5, 5, 5], 6, "rare") == [0, 5, 1]
    assert allocate_synthetic([10, 2, 5], [5, 5, 5], 15, "rare") == [5, 5, 5]
    assert allocate_synthetic([10, 2, 5], [5, 5, 5], None, "rare") == [5, 5, 5]
    assert allocate_synthetic([10, 2, 5], [5, 1, 5], 7, "uniform") == [3, 1, 3]
    assert allocate_synthetic([1, 1], [4, 4], 0, "rare") == [0, 0]
    with pytest.raises(PathUpError, match="allowed: rare, uniform"):
        allocate_synthetic([1], [1], 1, "many")


def _png(path, size=(40, 30), color=(200, 100, 150)):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_scan_synthetic_names_extra_and_missing_classes(tmp_path):
    from pathup.downstream.synthetic import scan_synthetic

    for cls in ("a", "b", "zz"):
        _png(tmp_path / cls / f"{cls}_s0.png")
    with pytest.raises(PathUpError) as err:
        scan_synthetic(tmp_path, ["a", "b", "c"])
    msg = str(err.value)
    assert "extra: zz" in msg and "missing: c" in msg and "\n" not in msg


def test_scan_synthetic_layout_and_sidecar_check(tmp_path):
    from pathup.downstream.synthetic import scan_synthetic

    for cls in ("a", "b"):
        for s in (0, 1):
            _png(tmp_path / cls / f"{cls}_s{s}.png")
            (tmp_path / cls / f"{cls}_s{s}.json").write_text(json.dumps({"class": cls, "seed": s}))
        _png(tmp_path / cls / "overview" / f"{cls}_s0.png")
    found = scan_synthetic(tmp_path, ["a", "b"])
    assert [p.name for p in found["a"]] == ["a_s0.png", "a_s1.png"]  # overviews ignored
    assert len(scan_synthetic(tmp_path, ["a", "b"], overviews=True)["b"]) == 3
    (tmp_path / "b" / "b_s1.json").write_text(json.dumps({"class": "a"}))
    with pytest.raises(PathUpError, match="sidecar says class 'a'"):
        scan_synthetic(tmp_path, ["a", "b"])


def test_grid_boxes_cover_the_image_with_border_aligned_last_tiles():
    from pathup.downstream.synthetic import grid_boxes

    boxes = grid_boxes(350, 230, 96, 16)
    xs = sorted({b[0] for b in boxes})
    ys = sorted({b[1] for b in boxes})
    assert xs == [0, 80, 160, 240, 254] and ys == [0, 80, 134]
    cover = np.zeros((230, 350), bool)
    for x, y, w, h in boxes:
        assert (w, h) == (96, 96)
        cover[y:y + h, x:x + w] = True
    assert cover.all()
    assert grid_boxes(50, 300, 96, 0) == [(0, 0, 50, 96), (0, 96, 50, 96), (0, 192, 50, 96), (0, 204, 50, 96)]
    with pytest.raises(PathUpError):
        grid_boxes(100, 100, 32, 32)


# --- 'Rand.' augmentation ----------------------------------------------------------------------

def test_random_augment_geometry_is_a_dihedral_transform_and_reproducible():
    from pathup.downstream.arms import Jitter, random_augment

    x = torch.rand(6, 3, 8, 8)
    out = random_augment(x, torch.Generator().manual_seed(3), Jitter(0, 0, 0, 0))
    for xi, oi in zip(x, out):
        candidates = [torch.rot90(f, k, dims=(-2, -1)) for f in (xi, xi.flip(-1)) for k in range(4)]
        assert any(torch.equal(oi, c) for c in candidates)
    j = Jitter(0.3, 0.3, 0.3, 0.1)
    a = random_augment(x, torch.Generator().manual_seed(5), j)
    b = random_augment(x, torch.Generator().manual_seed(5), j)
    assert torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    assert not torch.allclose(a, random_augment(x, torch.Generator().manual_seed(6), j))
    with pytest.raises(PathUpError, match="jitter_hue"):
        Jitter(hue=0.7)


# --- splits --------------------------------------------------------------------------------------

def _write_dataset(root, rows, classes):
    root.mkdir(parents=True, exist_ok=True)
    cols = ["path", "class", "level", "prompt", "source", "patient", "slide", "split", "x", "y", "width", "height"]
    with (root / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in cols})
    (root / "dataset.json").write_text(json.dumps({"classes": classes, "levels": ["patch", "overview"]}))


def test_assign_patient_splits_never_shares_a_patient():
    from pathup.downstream.data import assign_patient_splits, patient_of

    rows = [{"path": f"{c}{p}_{i}.png", "class": c, "patient": f"{c}{p}", "level": "patch", "split": ""}
            for c in "abc" for p in range(5) for i in range(3)]
    out = assign_patient_splits(rows, {"test": 0.2, "val": 0.2}, seed=1)
    sets = {s: {patient_of(r) for r in rs} for s, rs in out.items()}
    assert not (sets["train"] & sets["test"]) and not (sets["train"] & sets["val"]) and not (sets["val"] & sets["test"])
    assert sum(len(v) for v in out.values()) == len(rows)
    for c in "abc":  # stratified: one of the 5 patients of each class in test and in val
        assert sum(p.startswith(c) for p in sets["test"]) == 1 and sum(p.startswith(c) for p in sets["val"]) == 1


def test_load_real_rejects_a_patient_in_train_and_test(tmp_path):
    from pathup.downstream.data import load_real

    rows = [{"path": f"t{i}.png", "class": "ab"[(i % 6) // 3], "level": "patch", "patient": f"P{i % 6}",
             "split": ["train", "test", "val"][i % 3]} for i in range(12)]
    rows.append({"path": "leak.png", "class": "a", "level": "patch", "patient": "P0", "split": "test"})
    _write_dataset(tmp_path / "d", rows, ["a", "b"])
    with pytest.raises(PathUpError, match="P0.*more than one split"):
        load_real(tmp_path / "d")
    data = load_real(tmp_path / "d", resplit=True, val_fraction=0.34, test_fraction=0.34)
    assert not data.patients("train") & data.patients("test")
    assert len(data.patients("test")) == len(data.patients("val")) == len(data.patients("train")) == 2


def test_load_real_carves_validation_patients_from_train(tmp_path):
    from pathup.downstream.data import load_real

    rows = [{"path": f"{c}{p}.png", "class": c, "level": "patch", "patient": f"{c}{p}",
             "split": "test" if p == 0 else "train"} for c in "ab" for p in range(4)]
    _write_dataset(tmp_path / "d", rows, ["a", "b"])
    data = load_real(tmp_path / "d", val_fraction=0.3)
    assert data.patients("val") and not data.patients("val") & data.patients("train")
    assert data.patients("test") == {"a0", "b0"}


# --- scores ---------------------------------------------------------------------------------------

def test_f1_and_seed_statistics_against_hand_values():
    from pathup.downstream.metrics import confusion, f1_per_class, mean_std

    y = [0, 0, 1, 1, 2, 2]
    p = [0, 1, 1, 1, 0, 0]
    # class 0: tp 1, fp 2, fn 1 -> 2/(2+3) = 0.4; class 1: tp 2, fp 1, fn 0 -> 0.8; class 2: 0; class 3 absent: 0
    np.testing.assert_allclose(f1_per_class(y, p, 4), [0.4, 0.8, 0.0, 0.0])
    assert confusion(y, p, 3).tolist() == [[1, 1, 0], [0, 2, 0], [2, 0, 0]]
    m, s = mean_std(np.array([[0.5, 1.0], [0.7, 0.0]]))
    np.testing.assert_allclose(m, [0.6, 0.5])
    np.testing.assert_allclose(s, [np.sqrt(0.02), np.sqrt(0.5)])


def test_timm_weights_load_from_a_file(tmp_path):
    """Pretrained weights by path: the backbone matches the saved one, the new head is re-sized."""
    import timm
    from safetensors.torch import save_file

    from pathup.downstream.backbones import create_timm_model

    torch.manual_seed(0)
    src = timm.create_model("test_vit", pretrained=False, num_classes=1000)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, tmp_path / "model.safetensors")
    got = create_timm_model("test_vit", str(tmp_path), option="--vit", num_classes=3)
    assert got.get_classifier().out_features == 3
    for k, v in src.state_dict().items():
        if not k.startswith("head."):
            torch.testing.assert_close(got.state_dict()[k], v)
    with pytest.raises(PathUpError, match="unknown timm model"):
        create_timm_model("vit_nonexistent_model", None, option="--vit")
    with pytest.raises(PathUpError, match="not a file or folder"):
        create_timm_model("test_vit", str(tmp_path / "nope.pth"), option="--vit")


def test_group_mean_averages_tile_probabilities_per_source():
    from pathup.downstream.train import group_mean

    probs = np.array([[0.2, 0.8], [0.6, 0.4], [0.9, 0.1]])
    names, labels, p = group_mean(["s1", "s2", "s1"], probs, [1, 0, 1])
    assert names == ["s1", "s2"] and labels.tolist() == [1, 0]
    np.testing.assert_allclose(p, [[0.55, 0.45], [0.6, 0.4]])


def test_patch_embedder_views_and_disk_cache(tmp_path):
    """View 0 is the plain patch through the frozen encoder; other views are augmented; the
    embeddings are cached on disk and reused without running the encoder again."""
    from PIL import Image

    from pathup.downstream.abmil import PatchEmbedder
    from pathup.downstream.data import Bag, Tile

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    tiles = [Tile(tmp_path / "big.png", (0, 0, 32, 32)), Tile(tmp_path / "big.png", (28, 8, 32, 32))]
    emb = PatchEmbedder("test_convnext", None, 32, torch.device("cpu"), batch_size=1, cache_dir=tmp_path / "c")
    emb.embed(tiles, views=2)
    bag = emb.bag_tensor(Bag("b", 0, "p", tiles), views=2)  # (K, V, D)
    assert bag.shape == (2, 2, emb.dim)
    crop = np.asarray(Image.open(tmp_path / "big.png").convert("RGB"), dtype=np.float32)[8:40, 28:60] / 255.0
    x = torch.from_numpy(crop).permute(2, 0, 1)[None]
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (emb.model.pretrained_cfg["mean"],
                                                             emb.model.pretrained_cfg["std"]))
    with torch.no_grad():
        ref = emb.model((x - mean) / std)[0]
    torch.testing.assert_close(bag[1, 0].float(), ref, rtol=1e-2, atol=1e-2)  # stored as float16
    assert not torch.allclose(bag[:, 0], bag[:, 1])
    again = PatchEmbedder("test_convnext", None, 32, torch.device("cpu"), cache_dir=tmp_path / "c")
    again.model = None  # any encoder call would fail: everything must come from the cache
    again.embed(tiles, views=2)
    torch.testing.assert_close(again.bag_tensor(Bag("b", 0, "p", tiles), views=2), bag)


def test_abmil_learns_a_key_instance_task_and_attends_to_key_instances():
    """The classic MIL setting: a bag is positive when it holds a few shifted 'key' instances."""
    from pathup.downstream.abmil import train_abmil
    from pathup.downstream.data import Bag
    from pathup.downstream.metrics import f1_per_class

    gen = torch.Generator().manual_seed(0)
    features, splits = {}, {"train": [], "val": [], "test": []}
    for split, n in (("train", 40), ("val", 12), ("test", 20)):
        for i in range(n):
            label = i % 2
            x = torch.randn(12, 1, 16, generator=gen)  # (K, V, D)
            if label:
                x[:3, 0, :4] += 3.0  # three key instances
            key = f"{split}{i}"
            features[key] = x
            splits[split].append(Bag(key, label, key))
    out = train_abmil(splits["train"], splits["val"], splits["test"], features, in_dim=16, n_classes=2, seed=0,
                      augment=False, hidden=32, attention=16, dropout=0.0, lr=5e-3, weight_decay=0.0,
                      batch_size=8, epochs=40, patience=10, device=torch.device("cpu"))
    assert f1_per_class(out.test.y_true, out.test.y_pred, 2).mean() >= 0.9
    assert 1 <= out.fit.best_epoch <= out.fit.epochs_run <= 40
    positives = [b for b in splits["test"] if b.label == 1]
    with torch.no_grad():
        _, a = out.model(torch.stack([features[b.key][:, 0] for b in positives]))  # (B, K)
    assert float(a[:, :3].sum(dim=1).mean()) > 0.5  # uniform attention would give 3 / 12


def test_vit_learns_colour_classes_from_image_files(tmp_path):
    """A tiny timm ViT trained through train_vit separates reddish from bluish tissue-like noise."""
    from PIL import Image

    from pathup.downstream.arms import Jitter
    from pathup.downstream.data import Item, Tile
    from pathup.downstream.metrics import f1_per_class
    from pathup.downstream.vit import VitData, train_vit

    rng = np.random.default_rng(0)
    items = {"train": [], "val": [], "test": []}
    for split, n in (("train", 16), ("val", 6), ("test", 8)):
        for i in range(n):
            label = i % 2
            base = np.array([200, 90, 140]) if label == 0 else np.array([110, 90, 210])
            arr = np.clip(base + rng.normal(0, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
            path = tmp_path / f"{split}{i}.png"
            Image.fromarray(arr).save(path)
            items[split].append(Item(Tile(path), label, f"{split}{i}", f"p{split}{i}"))
    data = VitData(items["train"] + items["val"] + items["test"], 16, cache_mb=64, num_workers=0)
    out = train_vit(data, items["train"], items["val"], items["test"], name="test_vit", n_classes=2, seed=0,
                    augment=True, jitter=Jitter(0.1, 0.1, 0.1, 0.0), img_size=16, patch_size=8, weights=None,
                    lr=3e-3, weight_decay=0.0, batch_size=8, epochs=25, patience=8, eval_unit="source",
                    device=torch.device("cpu"))
    assert f1_per_class(out.test.y_true, out.test.y_pred, 2).mean() == 1.0


def test_vit_batches_from_disk_equal_batches_from_memory(tmp_path):
    from PIL import Image

    from pathup.downstream.data import Item, Tile
    from pathup.downstream.vit import VitData

    rng = np.random.default_rng(1)
    items = []
    for i in range(7):
        Image.fromarray(rng.integers(0, 255, (30, 20, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        items.append(Item(Tile(tmp_path / f"{i}.png"), i % 3, str(i), str(i)))
    memory = VitData(items, 12, cache_mb=1, num_workers=0)
    disk = VitData(items, 12, cache_mb=0, num_workers=0)
    assert memory.images.memory is not None and disk.images.memory is None
    a = list(memory.batches(items, 3, torch.Generator().manual_seed(4)))
    b = list(disk.batches(items, 3, torch.Generator().manual_seed(4)))
    assert [len(x) for x, _ in a] == [3, 3, 1]
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    direct = np.array(Image.open(tmp_path / "0.png").resize((12, 12), Image.BICUBIC))
    assert torch.equal(memory.images[0], torch.from_numpy(direct).permute(2, 0, 1))


def test_patch_geometry_from_dataset_json_or_manifest(tmp_path):
    from pathup.downstream.data import load_real, patch_geometry

    rows = [{"path": f"{c}{p}_{x}.png", "class": c, "level": "patch", "patient": f"{c}{p}", "source": f"{c}{p}",
             "split": ["train", "val", "test"][p], "x": x, "y": 0, "width": 96, "height": 96}
            for c in "ab" for p in range(3) for x in (0, 80, 160, 174)]
    _write_dataset(tmp_path / "d", rows, ["a", "b"])
    assert patch_geometry(load_real(tmp_path / "d")) == (96, 16)
    info = json.loads((tmp_path / "d" / "dataset.json").read_text())
    info["level_regions"] = {"patch": {"size": 512, "overlap": 64}}
    (tmp_path / "d" / "dataset.json").write_text(json.dumps(info))
    assert patch_geometry(load_real(tmp_path / "d")) == (512, 64)


# --- resuming -----------------------------------------------------------------------------------

def test_finished_run_needs_the_same_signature_and_its_predictions(tmp_path):
    from pathup.downstream.run import finished_run
    from pathup.stages import Marker

    run = tmp_path / "vit_real_s0"
    record = {"classifier": "vit", "arm": "real", "seed": 0, "signature": "abc", "f1": [0.5, 1.0]}
    Marker(run / "run.json").write({"signature": "abc"}, **record)
    assert finished_run(run, "abc") is None  # no predictions.csv: not finished
    (run / "predictions.csv").write_text("unit,patient,true,pred\n")
    assert finished_run(run, "abc") == record  # the record as written, without the marker's fingerprint
    assert finished_run(run, "abd") is None  # other settings: run again
    assert json.loads((run / "run.json").read_text())["signature"] == "abc"
