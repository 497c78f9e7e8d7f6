"""A shortened ``pathup demo`` runs end to end; its report links only files that exist; a rerun reuses stages."""

import re
from pathlib import Path

import pytest

from pathup.cli import main
from pathup.experiments.demo.report import check_links

QUICK = ["--classes", "04_LYMPHO", "07_ADIPOSE", "08_EMPTY", "--vae-steps", "2", "--train-steps", "3",
         "--batch-size", "2", "--steps", "3", "--size", "256", "--latent-patch", "16", "--latent-overlap", "8",
         "--overviews-per-class", "4", "--repeats", "1", "--device", "cpu", "--no-progress"]


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
