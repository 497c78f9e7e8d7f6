"""A shortened ``pathup demo`` runs end to end; its report links only files that exist; a rerun reuses stages."""

import csv
import re
from collections import Counter

import pytest

from pathup.cli import main
from pathup.experiments.demo.report import check_links

QUICK = ["--classes", "04_LYMPHO", "07_ADIPOSE", "08_EMPTY", "--vae-steps", "2", "--train-steps", "3",
         "--batch-size", "2", "--steps", "3", "--size", "256", "--latent-patch", "16", "--latent-overlap", "8",
         "--overviews-per-class", "4", "--repeats", "1", "--device", "cpu", "--encoder-epochs", "1", "--no-progress",
         "--max-per-class", "16"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    assert main(["demo", "--out", str(out), *QUICK]) == 0
    return out


def test_demo_writes_a_report_whose_links_exist(demo_dir):
    page = (demo_dir / "report.html").read_text()
    targets = re.findall(r"(?:src|href)='([^'#:]+)'", page)
    assert len(targets) >= 8
    assert check_links(page, demo_dir) == []
    for name in ("dataset/manifest.csv", "run/model/model_index.json", "metrics/overview.json", "metrics/patch.json"):
        assert (demo_dir / name).is_file(), name
    with (demo_dir / "dataset" / "manifest.csv").open() as f:  # --max-per-class 16 caps each class, level and split
        groups = Counter((r["class"], r["level"], r["split"]) for r in csv.DictReader(f))
    assert max(groups.values()) == 16 and {c for c, _, _ in groups} == {"04_LYMPHO", "07_ADIPOSE", "08_EMPTY"}
    large = sorted((demo_dir / "generated" / "large").rglob("*.png"))
    assert [p.parent.name for p in large] == ["04_LYMPHO", "07_ADIPOSE", "08_EMPTY"]
    from PIL import Image

    assert Image.open(large[0]).size == (256, 256)
    assert "IP" in page and "seam score" in page.lower()
    # the class-learning sections: class-consistency beside its real ceiling, colour per class, guidance strip
    assert "Class-consistency beside its real ceiling" in page and "real, held out (ceiling)" in page
    assert "Colour per class" in page and "Guidance 1, 3, 7.5" in page
    assert (demo_dir / "report_files" / "guidance.png").is_file()
    assert "Kather 2016" in page
    assert "mixed-tissue image from a class map" in page
    assert sorted(p.name for p in (demo_dir / "generated" / "composed").glob("*_mask.png"))
    # the tissue sections: the autoencoder's strip and numbers, texture-aware beside colour-only features,
    # the validation curve, real patch tiles beside the large image
    assert "What the autoencoder keeps" in page and "report_files/validation.png" in page
    assert "run/samples/autoencoder.png" in page and "CIEDE2000" in page
    assert "texture-aware and colour-only features side by side" in page and "color-stats" in page
    assert "encoder" in page and "real_patches.png" in page
    # the demo's CPU budget: the autoencoder on 96-px crops (--vae-crop); pathup train's 34-px discriminator
    import yaml

    run_cfg = yaml.safe_load((demo_dir / "run" / "config.yaml").read_text())
    assert run_cfg["vae_crop"] == 96 and run_cfg["vae_decoder_adv_weight"] == 0.5 and run_cfg["vae_disc_layers"] == 2
    assert run_cfg["vae_decoder_grid_weight"] == 0.5


def test_demo_carries_the_physical_scale_from_the_sample_to_the_large_image(demo_dir):
    """Kather tiles are 0.495 um/px: a 150 px overview region written at 128 px is 0.495 * 150 / 128 um/px;
    the model records it. The large image is a field grown outward from noise at the patch level's scale
    (strength 1): 0.495 um/px, whatever its size, not a magnified overview."""
    import json

    from PIL import Image

    overview_mpp = 0.495 * 150 / 128
    info = json.loads((demo_dir / "dataset" / "dataset.json").read_text())
    assert info["mpp"]["overview"] == pytest.approx(overview_mpp, rel=1e-6)
    assert info["mpp"]["patch"] == pytest.approx(0.495, rel=1e-6)  # 128 px regions written at 128 px
    model = json.loads((demo_dir / "run" / "model" / "pathup.json").read_text())
    assert model["mpp"]["overview"] == pytest.approx(overview_mpp, rel=1e-6)
    large = sorted((demo_dir / "generated" / "large").rglob("*.png"))[0]
    side = json.loads(large.with_suffix(".json").read_text())
    assert side["mpp"] == pytest.approx(0.495, rel=1e-6) and side["options"]["strength"] == 1.0
    with Image.open(large) as im:
        assert im.info["dpi"][0] == pytest.approx(25400 / side["mpp"], rel=1e-4)
    overview = sorted((demo_dir / "generated" / "overviews").rglob("*.png"))[0]
    assert json.loads(overview.with_suffix(".json").read_text())["mpp"] == pytest.approx(overview_mpp, rel=1e-6)
    page = (demo_dir / "report.html").read_text()
    assert f"Physical scale: {side['mpp']:.3g} &micro;m/px" in page or f"Physical scale: {side['mpp']:.3g} µm/px" in page


def test_demo_breakhis_sample_and_no_progress(tmp_path, capfd):
    quick = [a for a in QUICK if a not in ("04_LYMPHO", "07_ADIPOSE", "08_EMPTY")]
    quick[quick.index("--classes") + 1:quick.index("--classes") + 1] = ["ductal_carcinoma", "mucinous_carcinoma"]
    assert main(["demo", "--out", str(tmp_path / "b"), "--sample", "breakhis", *quick]) == 0
    err = capfd.readouterr().err
    assert "\r" not in err  # --no-progress governs every bar, the training ones too
    page = (tmp_path / "b" / "report.html").read_text()
    assert "BreakHis" in page and "ductal_carcinoma" in page


def test_demo_rerun_reuses_finished_stages(demo_dir, capsys):
    assert main(["demo", "--out", str(demo_dir), *QUICK]) == 0
    out = capsys.readouterr().out
    for stage in ("prepare", "train", "generate", "evaluate"):
        assert f"{stage}: done earlier, reused" in out


def test_check_links_finds_missing_files(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    assert check_links("<img src='a.png'><a href='b.json'>", tmp_path) == ["b.json"]


def test_demo_rejects_unknown_class(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "d"), "--classes", "nope", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unknown nope" in err and "08_EMPTY" in err and "Traceback" not in err


def test_tile_px_keeps_its_older_name():
    from pathup.config import from_dict
    from pathup.experiments.demo.config import DemoConfig

    assert from_dict(DemoConfig, {"tile_size": 96}).tile_px == 96
    import argparse

    from pathup.config import add_config_args, config_from_args

    parser = argparse.ArgumentParser()
    add_config_args(parser, DemoConfig)
    assert config_from_args(DemoConfig, parser.parse_args(["--tile-size", "64"])).tile_px == 64
    assert "--tile-px" in parser.format_help() and "--tile-size" not in parser.format_help()


def test_report_template_escapes_text_and_formats_metrics():
    from pathup.experiments.demo.report import metrics_rows, render

    summary = {"precision": {"mean": 0.5, "std": 0.25}, "recall": {"mean": 1.0, "std": 0.0},
               "fid": {"mean": 12.3456, "std": 1.0}, "n_real": {"mean": 8.0}, "n_fake": {"mean": 6.0}}
    rows = metrics_rows({"overview": summary, "patch": summary})
    assert rows[0] == {"level": "overview", "precision": ("0.500", "0.250"), "recall": ("1.000", "0.000"),
                       "fid": ("12.35", "1.00"), "kid": None, "real": 8, "fake": 6}
    page = render({"credit": "c", "classes": ["<b>x</b>", "y"], "steps": 3, "dataset": "d&e", "overviews": "o.png",
                   "real_overviews": "r.png", "cc": None, "guidance": None,
                   "large": {"size": 64, "image": "l'.png", "overlay": "g.png", "cls": "a", "prompt": "p<",
                             "seed": 0, "overview": "ov.png"},
                   "composed": None, "loss": None, "samples": None, "extractor": "random-cnn", "metrics": rows,
                   "seam": {"pyramid": "1.000", "uniform": "1.500", "pyramid_image": "a.png", "uniform_image": "b.png"},
                   "settings": '{"a": "<x>"}', "autoencoder": None, "curve": None, "cc_side": None,
                   "overview_mpp": None, "real_patches": None})
    assert "&lt;b&gt;x&lt;/b&gt;, y" in page and "d&amp;e" in page and "<code>p&lt;</code>" in page
    assert "src='l&#39;.png'" in page  # a quote in a path cannot end the attribute
    assert "<td>0.500 &plusmn; 0.250</td>" in page and "<td>-</td>" in page  # KID absent
    assert "Class-consistency was not measured" in page and "Guidance 1 is" not in page
    assert "What the autoencoder keeps" not in page and "side by side" not in page
    assert '{&#34;a&#34;: &#34;&lt;x&gt;&#34;}' in page


def test_demo_rerun_continues_an_interrupted_training_and_overwrite_starts_again(tmp_path, monkeypatch):
    """Issue 20 item 17: a demo stopped during training (here after its autoencoder, before any checkpoint)
    continues on rerun; --overwrite starts again."""
    from pathup.train.trainer import Trainer

    out = tmp_path / "out"
    real_step = Trainer._train_step

    def stop_at_step_two(self, step, batches):
        if step == 1:
            raise KeyboardInterrupt
        return real_step(self, step, batches)

    monkeypatch.setattr(Trainer, "_train_step", stop_at_step_two)
    assert main(["demo", "--out", str(out), *QUICK]) == 130
    base = out / "run" / "base" / "model_index.json"
    assert base.is_file() and not (out / "run" / "model").exists()
    made = base.stat().st_mtime_ns
    monkeypatch.setattr(Trainer, "_train_step", real_step)

    def stop(*args, **kwargs):  # the stages after training are covered above: stop there to save time
        raise KeyboardInterrupt

    monkeypatch.setattr("pathup.experiments.demo.stages.generate_images", stop)
    assert main(["demo", "--out", str(out), *QUICK]) == 130
    assert base.stat().st_mtime_ns == made  # the autoencoder was kept: the training continued
    assert (out / "run" / "model" / "model_index.json").is_file() and (out / ".stages" / "train.json").is_file()
    (out / "notes.txt").write_text("mine")
    monkeypatch.setattr(Trainer, "_train_step", stop_at_step_two)
    assert main(["demo", "--out", str(out), "--overwrite", *QUICK]) == 130
    assert base.stat().st_mtime_ns != made and not (out / "run" / "model").exists()  # started again
    assert (out / "notes.txt").read_text() == "mine"
