"""A shortened ``pathup demo`` runs end to end; its report links only files that exist; a rerun reuses stages."""

import re
from pathlib import Path

import pytest

from pathup.cli import main
from pathup.demo import check_links

QUICK = ["--classes", "ductal_carcinoma", "mucinous_carcinoma", "--vae-steps", "2", "--train-steps", "3",
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
    assert [p.parent.name for p in large] == ["ductal_carcinoma", "mucinous_carcinoma"]
    from PIL import Image

    assert Image.open(large[0]).size == (256, 256)
    assert "IP" in page and "seam score" in page.lower()


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
    assert "unknown nope" in err and "ductal_carcinoma" in err and "Traceback" not in err
