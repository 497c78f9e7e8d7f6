"""Issue 20 (hardening, round 3), outside training: no code runs from a crafted --features-weights (item 2),
user names are HTML-escaped in Markdown reports and kept off the terminal raw (3), non-UTF-8 option files
(7) and malformed result JSON (8) are one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from pathup.cli import main
from pathup.errors import PathUpError

HOSTILE = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>"]


class _Crafted:
    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ------------------------------------------------------------------------------ 2. --features-weights
def test_crafted_inception_weights_run_no_code(tmp_path):
    pytest.importorskip("torch_fidelity")
    from pathup.metrics.features import make_extractor

    marker = tmp_path / "PWNED"
    weights = tmp_path / "pt_inception-2015-12-05.pth"
    torch.save({"fc.weight": _Crafted(marker)}, weights)
    try:
        make_extractor("inception", weights)
    except PathUpError as err:
        msg = str(err)
    else:  # pragma: no cover - the crafted file loaded
        msg = ""
    assert not marker.exists()
    assert "features_weights" in msg and "refused" in msg and "\n" not in msg


def test_crafted_weights_through_evaluate_and_experiment_cli(tmp_path, sample_breakhis, capsys):
    pytest.importorskip("torch_fidelity")
    marker = tmp_path / "PWNED"
    weights = tmp_path / "w.pth"
    torch.save(_Crafted(marker), weights)
    assert main(["evaluate", "--real", str(sample_breakhis), "--fake", str(sample_breakhis), "--out",
                 str(tmp_path / "m.json"), "--features", "inception", "--features-weights", str(weights),
                 "--no-progress"]) == 2
    assert not marker.exists()
    line = _one_line_error(capsys)
    assert "--features-weights" in line and str(weights) in line and "refused" in line


def test_plain_weights_that_do_not_fit_are_one_line(tmp_path):
    pytest.importorskip("torch_fidelity")
    from safetensors.torch import save_file

    from pathup.metrics.features import make_extractor

    weights = tmp_path / "w.safetensors"
    save_file({"fc.weight": torch.zeros(2, 2)}, str(weights))
    with pytest.raises(PathUpError, match="not FID Inception weights"):
        make_extractor("inception", weights)
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(PathUpError, match="not FID Inception weights"):
        make_extractor("inception", tmp_path / "bad.safetensors")


# ------------------------------------------------------------------------------ 3. HTML in Markdown reports
def test_evaluate_markdown_escapes_html():
    from pathup.metrics.evaluate import metrics_markdown

    stat = {"mean": 1.0, "std": 0.0, "n": 1}
    result = {"level": "overview", "runs": [{}], "fake": {"source": HOSTILE[0]}, "real": {"source": HOSTILE[1]},
              "summary": {"n_real": stat, "n_fake": stat, "precision": stat, "recall": stat, "fid": stat,
                          "kid_x1000": stat},
              "features": {"comparable_with_literature": False, "extractor": "<b>x</b>.pt"}}
    md = metrics_markdown(result)
    assert "<" not in md and "&lt;script&gt;" in md and "&lt;img src=x onerror=alert(1)&gt;" in md


def test_markdown_table_cells_escape_html_and_control_characters():
    from pathup.metrics.report import markdown_table

    md = markdown_table(["class", "n"], [[HOSTILE[1], 1], ["evil\x1b[31mred|x", 2]])
    assert "<" not in md and ">" not in md.replace("\n", "") and "\x1b" not in md
    assert "evilred\\|x" in md


def test_experiment_report_escapes_condition_names(tmp_path):
    from pathup.experiments.tables import build_report

    runs = [{"seed": 0, "precision": 0.5, "recall": 0.5, "fid": 10.0, "kid_x1000": 1.0}]
    for name in HOSTILE[1:] + ["PathUp"]:
        d = tmp_path / "results" / "table2" / name
        d.mkdir(parents=True)
        (d / "overview.json").write_text(json.dumps({"level": "overview", "runs": runs}))
    md = build_report(tmp_path / "results", tmp_path / "out")["markdown"]
    assert "<img" not in md and "&lt;img src=x onerror=alert(1)&gt;" in md
    assert "<img" not in (tmp_path / "out" / "tables.md").read_text()


def test_study_report_escapes_class_and_rater_names():
    from pathup.study.report import ClassRow, Stat, StudyReport, format_report

    s = Stat.of([5.0, 6.0])
    rows = [ClassRow(HOSTILE[0], s, s)]
    rep = StudyReport(state="open", n_images=2, n_raters=1, n_ratings=2, classes=rows, overall=ClassRow("all", s, s),
                      raters=[], alpha=float("nan"), auc=float("nan"))
    text = format_report(rep)
    assert "<script>" not in text and "&lt;script&gt;" in text


# ------------------------------------------------------------------------------ 3. terminal output
def test_prepare_table_and_warnings_keep_escape_sequences_off_the_terminal(tmp_path, sample_breakhis):
    import shutil

    src = tmp_path / "src"
    for name, cls in (("evil\x1b[31mred\x07", "fibroadenoma"), ("plain", "ductal_carcinoma")):
        shutil.copytree(sample_breakhis / cls, src / name)
    (src / "plain" / "broken.png").write_bytes(b"not an image")
    proc = subprocess.run([sys.executable, "-m", "pathup", "prepare", str(src), "--out", str(tmp_path / "ds"),
                           "--tile-px", "64", "--patch-px", "128", "--overview-px", "400", "--workers", "1"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "evilred" in proc.stdout
    assert "\x1b" not in proc.stdout + proc.stderr and "\x07" not in proc.stdout + proc.stderr
    assert "broken.png" in proc.stderr


def test_cli_errors_show_control_characters_written_out(capsys, monkeypatch):
    import pathup.cli.generate as gen

    def hostile(args):
        raise PathUpError("unknown class 'evil\x1b[2Jred'")

    monkeypatch.setattr(gen, "run", hostile)
    parser_args = ["generate", "--model", "x", "--class", "evil", "--out", "o"]
    assert main(parser_args) == 2
    line = _one_line_error(capsys)
    assert "\x1b" not in line and "evil\\x1b[2Jred" in line


# ------------------------------------------------------------------------------ 7. non-UTF-8 option files
@pytest.mark.parametrize("command", [["prepare", "SRC", "--out", "OUT"], ["train", "--data", "SRC", "--out", "OUT"],
                                     ["evaluate", "--real", "SRC", "--fake", "SRC", "--out", "OUT/m.json"],
                                     ["generate", "--model", "micro", "--class", "a", "--out", "OUT"],
                                     ["experiment", "run", "--data", "SRC", "--out", "OUT"]])
def test_non_utf8_config_is_one_line(tmp_path, capsys, command):
    cfg = tmp_path / "run.yaml"
    cfg.write_bytes("max_steps: 1\n# r\xe9sum\xe9\n".encode("latin-1"))
    argv = [a.replace("SRC", str(tmp_path)).replace("OUT", str(tmp_path / "o")) for a in command]
    assert main(argv + ["--config", str(cfg)]) == 2
    line = _one_line_error(capsys)
    assert str(cfg) in line and "not UTF-8" in line


def test_non_utf8_descriptions_and_train_config_are_one_line(tmp_path, sample_breakhis, capsys):
    bad = tmp_path / "d.yaml"
    bad.write_bytes("fibroadenoma: tumeur b\xe9nigne\n".encode("latin-1"))
    assert main(["prepare", str(sample_breakhis), "--out", str(tmp_path / "ds"), "--descriptions", str(bad)]) == 2
    line = _one_line_error(capsys)
    assert str(bad) in line and "not UTF-8" in line
    from pathup.config import load_yaml

    with pytest.raises(PathUpError, match="not UTF-8"):
        load_yaml(bad)  # what experiment run reads --train-config with


# ------------------------------------------------------------------------------ 8. malformed result JSON
@pytest.mark.parametrize("res,match", [
    ({"level": "overview", "runs": [{"seed": 0}]}, "precision"),
    ({"level": "overview", "runs": {"a": 1}}, "'runs' must be a list"),
    ({"level": "overview", "runs": [[1, 2]]}, "'runs' must be a list of objects"),
    ({"level": ["x"], "runs": []}, "'level' must be text"),
    ({"level": "overview", "runs": [{"precision": "high", "recall": 1, "fid": 1, "kid_x1000": 1}]}, "precision"),
    ({"level": "patch", "runs": [], "seam": {"per_image": [1, 2]}}, "seam"),
])
def test_malformed_result_json_is_one_line(tmp_path, capsys, res, match):
    f = tmp_path / "results" / "table2" / "PathUp" / "r.json"
    f.parent.mkdir(parents=True)
    f.write_text(json.dumps(res))
    assert main(["experiment", "report", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "o")]) == 2
    line = _one_line_error(capsys)
    assert str(f) in line and match in line


# ------------------------------------------------------------------------------ 4. study server limits
def _closed_within(sock, seconds: float) -> bool:
    import socket

    sock.settimeout(seconds)
    try:
        return sock.recv(1024) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def test_study_server_closes_slow_clients_and_caps_connections(monkeypatch):
    import http.client
    import socket
    import threading
    import time

    uvicorn = pytest.importorskip("uvicorn")
    from pathup.study import app as study_app

    monkeypatch.setattr(study_app, "REQUEST_TIMEOUT_S", 1.0)
    monkeypatch.setattr(study_app, "MAX_CONNECTIONS", 8)

    async def hello(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(study_app.server_config(hello, "127.0.0.1", port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    slow = []
    try:
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started
        for _ in range(20):  # headers that never end
            c = socket.create_connection(("127.0.0.1", port), timeout=5)
            c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
            slow.append(c)
        t0 = time.monotonic()
        assert all(_closed_within(c, 5) for c in slow[8:])  # over the cap: closed on arrival
        assert all(_closed_within(c, 5) for c in slow[:8])  # the others: after the request timeout
        assert time.monotonic() - t0 < 4
        # a client that keeps sending one header byte at a time is closed all the same
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        slow.append(c)
        t0 = time.monotonic()
        closed_after = None
        for b in b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 100:
            try:
                c.sendall(bytes([b]))
            except OSError:
                closed_after = time.monotonic() - t0
                break
            time.sleep(0.1)
        assert closed_after is not None and closed_after < 4
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)  # a normal client is served
        conn.request("GET", "/")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        for c in slow:
            c.close()
        server.should_exit = True
        thread.join(10)


# ------------------------------------------------------------------------------ 6, 10. model folders
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from safetensors.torch import save_file

    from pathup.model import build_ldm, save_ldm
    from pathup.prompts import PromptTable

    table = PromptTable(["fibroadenoma", "ductal_carcinoma"])
    path = save_ldm(build_ldm("micro", table), tmp_path_factory.mktemp("m") / "model")
    save_file({"bank": torch.nn.functional.normalize(torch.randn(len(table), 8), dim=1)},
              str(path / "fel_bank.safetensors"))
    return path


def _broken(model_dir, tmp_path, change):
    import shutil

    dst = tmp_path / "model"
    shutil.copytree(model_dir, dst)
    change(dst)
    return dst


def _set_meta(key, value):
    def change(d):
        meta = json.loads((d / "pathup.json").read_text())
        meta[key] = value
        (d / "pathup.json").write_text(json.dumps(meta))
    return change


def _pickled_text_encoder(marker):
    def change(d):
        (d / "text_encoder" / "model.safetensors").unlink()
        torch.save({"x": _Crafted(marker)}, d / "text_encoder" / "pytorch_model.bin")
    return change


@pytest.mark.parametrize("case,match", [
    ("pickle", "text_encoder holds pytorch_model.bin"),
    ("json", "pathup.json: not valid JSON"),
    ("prompts", "pathup.json: 'prompts' must be an object"),
    ("classes", "pathup.json: 'prompts.classes' must be a non-empty list"),
    ("bank", "fel_bank.safetensors: not a readable safetensors file"),
    ("tokenizer", "tokenizer: missing"),
    ("unet", "diffusion_pytorch_model.safetensors: not a readable safetensors file"),
    ("index", "model_index.json: not valid JSON"),
])
def test_broken_model_folders_are_one_line_before_loading(model_dir, tmp_path, case, match):
    import shutil

    from pathup.model import load_ldm

    marker = tmp_path / "PWNED"
    change = {
        "pickle": _pickled_text_encoder(marker),
        "json": lambda d: (d / "pathup.json").write_text('{"prompts": '),
        "prompts": _set_meta("prompts", ["fibroadenoma"]),
        "classes": _set_meta("prompts", {"classes": "fibroadenoma"}),
        "bank": lambda d: (d / "fel_bank.safetensors").write_bytes(b"\xff" * 64),
        "tokenizer": lambda d: shutil.rmtree(d / "tokenizer"),
        "unet": lambda d: (d / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x10" * 32),
        "index": lambda d: (d / "model_index.json").write_text("{"),
    }[case]
    with pytest.raises(PathUpError) as e:
        load_ldm(_broken(model_dir, tmp_path, change))
    assert not marker.exists()
    assert match in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_class_the_tokenizer_cannot_spell_is_refused_at_load(model_dir, tmp_path, capsys):
    from pathup.model import load_ldm

    load_ldm(model_dir)  # the folder as saved loads
    d = _broken(model_dir, tmp_path, _set_meta("prompts", {"classes": ["fibroadenoma", "ductal_carcinoma", "zebra"],
                                                           "levels": ["patch", "overview"], "descriptions": {}}))
    with pytest.raises(PathUpError, match="pathup.json: this model's tokenizer has no token for 'zebra'"):
        load_ldm(d)
    capsys.readouterr()
    assert main(["generate", "--model", str(d), "--class", "zebra", "--out", str(tmp_path / "g"), "--size", "64",
                 "--steps", "2", "--device", "cpu"]) == 2
    assert "'zebra'" in _one_line_error(capsys)


# ------------------------------------------------------------------------------ 13. --out inside the source
def test_out_inside_or_around_the_source_is_refused(tmp_path, sample_breakhis, capsys):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(sample_breakhis / "fibroadenoma", src / "fibroadenoma")
    cases = [
        (["prepare", str(src), "--out", str(src), "--overwrite"], "is the same folder as source"),
        (["prepare", str(src), "--out", str(src / "ds")], "is inside source"),
        (["prepare", str(src / "fibroadenoma"), "--out", str(src)], "holds source"),
        (["train", "--data", str(src), "--out", str(src / "run")], "is inside --data"),
        (["downstream", "--data", str(src), "--synthetic", str(tmp_path / "syn"), "--out", str(src / "d")],
         "is inside --data"),
        (["downstream", "--data", str(tmp_path / "syn"), "--synthetic", str(src), "--out", str(src / "d")],
         "is inside --synthetic"),
        (["study", "create", "--real", str(src), "--synthetic", str(tmp_path / "syn"), "--out",
          str(src / "study.db")], "is inside --real"),
        (["experiment", "run", "--data", str(src), "--out", str(src / "exp")], "is inside --data"),
    ]
    (tmp_path / "syn").mkdir()
    for argv, match in cases:
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        assert main(argv) == 2, argv
        line = _one_line_error(capsys)
        assert match in line and "--out" in line, (argv, line)
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before, argv  # nothing written


# ------------------------------------------------------------------------------ 15. GeoJSON in linear time
def _noise_layout(size: int):
    import numpy as np

    import pathup.sample.layout  # noqa: F401 - the sample package's import order
    from pathup.sample.layout import Layout

    labels = np.random.default_rng(0).integers(0, 3, size=(size, size)).astype(np.int32)
    return Layout(labels=labels, classes=["a", "b", "c"], colours=[(0, 0, 0)] * 3, ids=[0, 1, 2], source="noise")


def test_geojson_of_a_noise_layout_is_linear_in_pixels_and_covers_every_pixel():
    import time

    import numpy as np

    import pathup.sample.layout  # noqa: F401 - before geojson (the sample package's import order)
    from pathup.sample.geojson import _ring_area, geojson_regions

    def cpu_seconds(size: int) -> float:
        layout = _noise_layout(size)
        best = float("inf")
        for _ in range(2):
            t0 = time.process_time()
            geojson_regions(layout, size, size)
            best = min(best, time.process_time() - t0)
        return best

    small, large = cpu_seconds(96), cpu_seconds(384)  # 16 x the pixels
    assert large / small < 50, (small, large)  # linear: about 16 (before: 220, point-in-polygon per hole)
    layout = _noise_layout(48)
    fc = geojson_regions(layout, 100, 70)  # enlarged: each cell maps to a block of output pixels
    mask = layout.labels[np.minimum(((np.arange(70) + 0.5) * 48 / 70).astype(int), 47)[:, None],
                         np.minimum(((np.arange(100) + 0.5) * 48 / 100).astype(int), 47)[None, :]]
    for index, cls in enumerate(layout.classes):
        area = sum(sum(_ring_area([tuple(p) for p in ring[:-1]]) for ring in f["geometry"]["coordinates"])
                   for f in fc["features"] if f["properties"]["name"] == cls)
        assert area == (mask == index).sum()


# ------------------------------------------------------------------------------ 16. --class/--out from --config
def test_generate_takes_model_class_and_out_from_the_config(model_dir, tmp_path, capsys):
    import yaml

    cfg = tmp_path / "gen.yaml"
    cfg.write_text(yaml.safe_dump({"model": str(model_dir), "class": "fibroadenoma", "out": str(tmp_path / "g"),
                                   "size": 64, "steps": 2, "num": 1, "device": "cpu"}))
    assert main(["generate", "--config", str(cfg)]) == 0, capsys.readouterr().err
    assert (tmp_path / "g" / "fibroadenoma" / "fibroadenoma_s0.png").is_file()
    capsys.readouterr()
    cfg.write_text(yaml.safe_dump({"model": str(model_dir), "size": 64}))
    assert main(["generate", "--config", str(cfg), "--out", str(tmp_path / "g2")]) == 2
    line = _one_line_error(capsys)
    assert "--class NAME is required" in line and "'class:' in --config" in line
    assert main(["compose", "--config", str(cfg), "--random-layout", "2"]) == 2
    assert "--out DIR is required" in _one_line_error(capsys)


def test_the_size_bound_is_on_total_pixels_as_the_readme_says():
    from pathlib import Path

    from pathup.sample.config import SampleConfig
    from pathup.sample.generate import check_output_size

    check_output_size(SampleConfig(size="65536x16384"))  # a long side is fine: the area is 32768 x 32768
    with pytest.raises(PathUpError, match="over the limit"):
        check_output_size(SampleConfig(size="32769x32768"))
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "`--size` to be at most 1,073,741,824 pixels in all" in readme
    assert "every option can also come from a\nYAML file" in readme and "`model`, `class`, `out`" in readme


# ------------------------------------------------------------------------------ 5. generate --overwrite
def test_generate_overwrite_deletes_only_what_generate_wrote(model_dir, tmp_path):
    out = tmp_path / "g"
    base = ["generate", "--model", str(model_dir), "--class", "fibroadenoma", "--out", str(out), "--size", "64",
            "--num", "2", "--device", "cpu"]
    assert main(base + ["--steps", "2"]) == 0
    folder = out / "fibroadenoma"
    (folder / "notes.txt").write_text("my notes")
    (folder / "mine.png").write_bytes((folder / "fibroadenoma_s0.png").read_bytes())
    (folder / "keep").mkdir()
    (folder / "keep" / "x.txt").write_text("x")
    (folder / "overview" / "mine.png").write_bytes(b"png?")
    before = json.loads((folder / "fibroadenoma_s0.json").read_text())
    assert main(base + ["--steps", "3", "--num", "1", "--overwrite"]) == 0
    assert (folder / "notes.txt").read_text() == "my notes"
    assert (folder / "mine.png").is_file() and (folder / "keep" / "x.txt").is_file()
    assert (folder / "overview" / "mine.png").is_file()
    after = json.loads((folder / "fibroadenoma_s0.json").read_text())
    assert before["options"]["steps"] == 2 and after["options"]["steps"] == 3
    # the image of seed 1 was generate's (steps 2): removed with its sidecar and overview
    assert not (folder / "fibroadenoma_s1.png").exists() and not (folder / "fibroadenoma_s1.json").exists()
    assert not (folder / "overview" / "fibroadenoma_s1.png").exists()


# ------------------------------------------------------------------------------ 14. compose resume
def test_compose_resume_redoes_an_image_with_an_output_missing(model_dir, tmp_path, capsys):
    out = tmp_path / "c"
    argv = ["compose", "--model", str(model_dir), "--random-layout", "2", "--out", str(out), "--size", "64",
            "--steps", "2", "--num", "1", "--device", "cpu"]
    assert main(argv) == 0
    mask, geo = sorted(out.glob("*_mask.png")), sorted(out.glob("*.geojson"))
    assert len(mask) == 1 and len(geo) == 1
    mask[0].unlink()
    geo[0].unlink()
    capsys.readouterr()
    assert main(argv) == 0
    assert "wrote 1 image" in capsys.readouterr().out
    assert mask[0].is_file() and geo[0].is_file()
