"""End-to-end ``pathup downstream`` on a tiny prepared dataset made from the shipped BreakHis sample."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

SCALE = 2  # sources are the sample images at half size (350 x 230)
PATCH, OVERLAP = 128, 16


def _starts(n: int, size: int, stride: int) -> list[int]:
    s = list(range(0, n - size + 1, stride))
    return s if s[-1] == n - size else s + [n - size]


def build_dataset(sample: Path, root: Path) -> Path:
    """A prepared dataset following pathup.data.manifest: patch tiles (128 px, 16 px overlap) and
    one overview tile per source (the whole image, 64 px); split by patient: per class the first
    patient is test, the second train, the third (if any) val."""
    from PIL import Image

    from pathup.prompts import build_prompt

    with (sample / "MANIFEST.csv").open() as f:
        src_rows = list(csv.DictReader(f))
    classes = sorted({r["class"] for r in src_rows})
    patients = {c: sorted({r["patient"] for r in src_rows if r["class"] == c}) for c in classes}
    split_of = {p: ["test", "train", "val"][i] for c in classes for i, p in enumerate(patients[c])}
    rows = []
    for r in src_rows:
        img = Image.open(sample / r["path"]).convert("RGB")
        img = img.resize((img.width // SCALE, img.height // SCALE), Image.BICUBIC)
        stem = Path(r["path"]).stem
        common = {"class": r["class"], "source": r["path"], "patient": r["patient"], "slide": r["slide"],
                  "split": split_of[r["patient"]]}
        for y in _starts(img.height, PATCH, PATCH - OVERLAP):
            for x in _starts(img.width, PATCH, PATCH - OVERLAP):
                rel = f"tiles/patch/{r['class']}/{stem}_{x}_{y}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                img.crop((x, y, x + PATCH, y + PATCH)).save(root / rel)
                rows.append({"path": rel, "level": "patch", "prompt": build_prompt(r["class"], "patch"),
                             "x": x, "y": y, "width": PATCH, "height": PATCH, **common})
        rel = f"tiles/overview/{r['class']}/{stem}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        img.resize((64, 64), Image.BICUBIC).save(root / rel)
        rows.append({"path": rel, "level": "overview", "prompt": build_prompt(r["class"], "overview"),
                     "x": 0, "y": 0, "width": img.width, "height": img.height, **common})
    cols = ["path", "class", "level", "prompt", "source", "patient", "slide", "split", "x", "y", "width", "height"]
    with (root / "manifest.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    (root / "dataset.json").write_text(json.dumps({"classes": classes, "levels": ["patch", "overview"],
                                                   "descriptions": {}, "tile_size": {"patch": PATCH}}))
    return root


def build_synthetic(dataset: Path, out: Path, per_class: int = 2, classes: list[str] | None = None) -> Path:
    """A 'pathup generate'-style folder: DIR/<class>/<class>_s<seed>.png (192 px 'large images' cut
    and rotated from the class's training sources) + .json sidecars + an overview/ subfolder."""
    from PIL import Image

    with (dataset / "manifest.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "train" and r["level"] == "patch"]
    info = json.loads((dataset / "dataset.json").read_text())
    for cls in classes or info["classes"]:
        tiles = [r for r in rows if r["class"] == cls] or rows
        for s in range(per_class):
            canvas = Image.new("RGB", (192, 192))
            for j in range(4):
                tile = Image.open(dataset / tiles[(s * 4 + j) % len(tiles)]["path"]).resize((96, 96)).rotate(90 * s)
                canvas.paste(tile, ((j % 2) * 96, (j // 2) * 96))
            (out / cls / "overview").mkdir(parents=True, exist_ok=True)
            canvas.save(out / cls / f"{cls}_s{s}.png")
            (out / cls / f"{cls}_s{s}.json").write_text(json.dumps({"class": cls, "seed": s}))
            canvas.resize((64, 64)).save(out / cls / "overview" / f"{cls}_s{s}.png")
    return out


TINY = ["--vit", "test_vit", "--vit-img-size", "32", "--vit-patch-size", "8", "--vit-epochs", "3",
        "--vit-batch-size", "8", "--abmil-encoder", "test_convnext", "--abmil-img-size", "32", "--abmil-epochs", "4",
        "--abmil-hidden", "32", "--abmil-attention", "16", "--abmil-aug-views", "2", "--patience", "2",
        "--seeds", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, sample_breakhis):
    import torch

    from pathup.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is faster and immune to a busy machine
    base = tmp_path_factory.mktemp("downstream")
    data = build_dataset(sample_breakhis, base / "data")
    syn = build_synthetic(data, base / "synthetic")
    out = base / "out"
    rc = main(["downstream", "--data", str(data), "--synthetic", str(syn), "--out", str(out), *TINY])
    assert rc == 0
    yield data, syn, out
    torch.set_num_threads(threads)


def test_table_has_one_row_per_classifier_and_arm(experiment):
    data, _, out = experiment
    classes = json.loads((data / "dataset.json").read_text())["classes"]
    lines = [l for l in (out / "table.md").read_text().splitlines() if l.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["Method", *classes, "Mean"]
    body = lines[2:]
    assert len(body) == 6
    labels = [l.strip("|").split("|")[0].strip() for l in body]
    assert labels == [f"{c}{a}" for c in ("ViT (test_vit)", "ABMIL (test_convnext)")
                      for a in ("", " + Rand.", " + PathUp")]
    results = json.loads((out / "results.json").read_text())
    assert [(s["classifier"], s["arm"]) for s in results["summary"]] == \
        [(c, a) for c in ("vit", "abmil") for a in ("real", "rand", "synthetic")]
    for path in ["f1_bars.png", "config.yaml", "synthetic_selection.json"] + \
            [f"confusion/{c}_{a}.{e}" for c in ("vit", "abmil") for a in ("real", "rand", "synthetic")
             for e in ("png", "json")]:
        assert (out / path).is_file(), path
    assert (out / "f1_bars.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_f1_equals_sklearn_on_saved_predictions(experiment):
    from sklearn.metrics import confusion_matrix, f1_score

    from pathup.downstream.run import read_predictions

    data, _, out = experiment
    results = json.loads((out / "results.json").read_text())
    classes = results["classes"]
    labels = list(range(len(classes)))
    assert len(results["runs"]) == 12
    per_group: dict = {}
    for run in results["runs"]:
        y, p, _ = read_predictions(out / run["predictions"])
        ref = f1_score(y, p, labels=labels, average=None, zero_division=0)
        np.testing.assert_allclose(run["f1"], ref, atol=1e-12)
        assert run["mean_f1"] == pytest.approx(ref.mean())
        per_group.setdefault((run["classifier"], run["arm"]), []).append((ref, confusion_matrix(y, p, labels=labels)))
    rows = {l.strip("|").split("|")[0].strip(): l for l in (out / "table.md").read_text().splitlines()}
    for s in results["summary"]:
        refs = np.array([f for f, _ in per_group[(s["classifier"], s["arm"])]])  # (seeds, C)
        np.testing.assert_allclose(s["f1_mean"], refs.mean(0), atol=1e-12)
        np.testing.assert_allclose(s["f1_std"], refs.std(0, ddof=1), atol=1e-12)
        assert s["mean_f1_mean"] == pytest.approx(refs.mean(1).mean())
        assert s["mean_f1_std"] == pytest.approx(refs.mean(1).std(ddof=1))
        cells = [c.strip() for c in rows[s["label"]].strip("|").split("|")[1:]]
        expect = [f"{100 * m:.2f} ± {100 * d:.2f}" for m, d in zip(refs.mean(0), refs.std(0, ddof=1))]
        assert cells == expect + [f"{100 * refs.mean(1).mean():.2f} ± {100 * refs.mean(1).std(ddof=1):.2f}"]
        cm = json.loads((out / "confusion" / f"{s['classifier']}_{s['arm']}.json").read_text())
        assert cm["counts"] == sum(c for _, c in per_group[(s["classifier"], s["arm"])]).tolist()


def test_test_split_is_by_patient_and_arms_differ_as_specified(experiment):
    from pathup.downstream.run import read_predictions

    data, syn, out = experiment
    with (data / "manifest.csv").open() as f:
        rows = list(csv.DictReader(f))
    train_patients = {r["patient"] for r in rows if r["split"] in ("train", "val")}
    test_sources = {r["source"] for r in rows if r["split"] == "test"}
    results = json.loads((out / "results.json").read_text())
    for run in results["runs"]:
        _, _, patients = read_predictions(out / run["predictions"])
        assert patients and not set(patients) & train_patients
        with (out / run["predictions"]).open() as f:
            assert {r["unit"] for r in csv.DictReader(f)} == test_sources  # one score per test image
        expect_syn = 8 if run["arm"] == "synthetic" else 0  # 2 synthetic images x 4 classes
        assert run["n_train_synthetic"] == expect_syn
        assert 1 <= run["best_epoch"] <= run["epochs_run"]
    selection = json.loads((out / "synthetic_selection.json").read_text())
    assert all(Path(p).parent.name != "overview" for ps in selection["large"].values() for p in ps)


def test_rerun_reuses_finished_runs(experiment, capsys):
    from pathup.cli import main

    data, syn, out = experiment
    before = (out / "results.json").read_text()
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("predictions.csv")}
    assert main(["downstream", "--data", str(data), "--synthetic", str(syn), "--out", str(out), *TINY]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("predictions.csv")} == mtimes
    after = json.loads((out / "results.json").read_text())
    assert after["summary"] == json.loads(before)["summary"]
    assert "| ABMIL (test_convnext) + PathUp |" in capsys.readouterr().out


def test_mismatched_synthetic_classes_give_one_line_error(experiment, tmp_path, capsys):
    from pathup.cli import main

    data, _, _ = experiment
    classes = json.loads((data / "dataset.json").read_text())["classes"]
    bad = build_synthetic(data, tmp_path / "bad", per_class=1, classes=classes[1:] + ["lobular_carcinoma"])
    rc = main(["downstream", "--data", str(data), "--synthetic", str(bad), "--out", str(tmp_path / "o"), *TINY])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("pathup downstream: error: --synthetic") and "\n" not in err
    assert "extra: lobular_carcinoma" in err and f"missing: {classes[0]}" in err
    rc = main(["downstream", "--data", str(data), "--out", str(tmp_path / "o2"), *TINY])
    assert rc == 2 and "needs --synthetic" in capsys.readouterr().err


def test_vit_on_patch_level_cuts_synthetic_images_like_real_patches(experiment, tmp_path):
    import torch

    from pathup.cli import main

    data, syn, _ = experiment
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main(["downstream", "--data", str(data), "--synthetic", str(syn), "--out", str(tmp_path / "o"), *TINY,
                   "--classifiers", "vit", "--arms", "synthetic", "--vit-level", "patch", "--seeds", "1",
                   "--vit-epochs", "1", "--vit-eval-unit", "tile"])
    finally:
        torch.set_num_threads(threads)
    assert rc == 0
    run = json.loads((tmp_path / "o" / "results.json").read_text())["runs"][0]
    # 8 synthetic 192 px images, each cut into 2 x 2 patches of 128 px (16 px overlap, border-aligned)
    assert run["n_train_synthetic"] == 32
    with (data / "manifest.csv").open() as f:
        n_test_tiles = sum(r["split"] == "test" and r["level"] == "patch" for r in csv.DictReader(f))
    assert run["n_test"] == n_test_tiles
