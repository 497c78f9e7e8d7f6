"""The training loop on real BreakHis tiles with the micro model: L_r goes down, a SIGKILLed and resumed
run equals an uninterrupted one, RUN/model loads in diffusers, fine-tuning a saved checkpoint, bad input."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from pathup.errors import PathUpError
from pathup.prompts import build_prompt
from pathup.train import TrainConfig, train

# small, fast settings shared by the runs below (micro model, 64 px tiles)
FAST = dict(model="micro", batch_size=2, vae_steps=2, vae_batch_size=2, vae_crop=32, num_workers=0,
            sample_every=0, log_every=1, lr_warmup_steps=0)


def make_dataset(root: Path, sample_dir: Path, classes=None, tile: int = 64) -> Path:
    """A prepared dataset (manifest.csv + dataset.json) cut from the shipped BreakHis images:
    per image one overview (the centred square, resized) and two 230 px patches (resized)."""
    (root / "tiles").mkdir(parents=True, exist_ok=True)
    rows = list(csv.DictReader(open(sample_dir / "MANIFEST.csv")))
    if classes:
        rows = [r for r in rows if r["class"] in classes]
    out = []
    for r in rows:
        img = Image.open(sample_dir / r["path"]).convert("RGB")
        w, h = img.size
        stem = Path(r["path"]).stem
        for k, (lv, (x, y, s)) in enumerate([("overview", ((w - h) // 2, 0, h)), ("patch", (0, 0, 230)),
                                              ("patch", (w - 230, h - 230, 230))]):
            p = f"tiles/{stem}_{k}.png"
            img.crop((x, y, x + s, y + s)).resize((tile, tile), Image.BICUBIC).save(root / p)
            out.append({"path": p, "class": r["class"], "level": lv, "prompt": build_prompt(r["class"], lv),
                        "source": r["path"], "patient": r["patient"], "slide": r["slide"], "split": "train",
                        "x": x, "y": y, "width": s, "height": s})
    with open(root / "manifest.csv", "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(out[0]))
        wr.writeheader()
        wr.writerows(out)
    cls = sorted({r["class"] for r in out})
    (root / "dataset.json").write_text(json.dumps({"classes": cls, "levels": ["patch", "overview"],
                                                   "descriptions": {}, "tile_size": tile}))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory, sample_breakhis):
    root = tmp_path_factory.mktemp("train")
    return {"two": make_dataset(root / "two", sample_breakhis, ["fibroadenoma", "ductal_carcinoma"]),
            "other": make_dataset(root / "other", sample_breakhis, ["fibroadenoma", "mucinous_carcinoma"]),
            "root": root}


def _unet_state(model_dir):
    from safetensors.torch import load_file

    return load_file(str(Path(model_dir) / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def runs(data):
    """One run SIGKILLed mid-way (a real process) then resumed, and one uninterrupted run."""
    root = data["root"]
    common = dict(FAST, dataset=data["two"], max_steps=8, batch_size=4, lr=1e-3, checkpoint_every=1,
                  keep_checkpoints=2, seed=3)
    killed = root / "killed"
    args = [sys.executable, "-m", "pathup", "train", str(data["two"]), "--out", str(killed)]
    for k, v in common.items():
        if k != "dataset":
            args += [f"--{k.replace('_', '-')}", str(v)]
    # same thread count as this process: float reductions (and so the weights) depend on it
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    target = killed / "checkpoints" / "checkpoint-00000003"
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate()
    assert target.exists(), err.decode()[-2000:]
    names = sorted(p.name for p in (killed / "checkpoints").iterdir())
    resumed = train(TrainConfig(out=killed, resume=True, **common))
    full = train(TrainConfig(out=root / "full", **common))
    return {"killed_names": names, "resumed": resumed, "full": full, "run": root / "full"}


def test_training_lowers_the_denoising_loss(data, runs):
    from safetensors.torch import load_file

    from pathup.model import load_ldm
    from pathup.train.data import TrainTiles
    from pathup.train.loop import denoising_loss_on

    base = load_ldm(runs["run"] / "base")  # trained VAE, untrained UNet
    after = load_ldm(runs["run"] / "base")
    # the raw (not averaged) UNet of the last checkpoint, as Accelerate saved it
    after.unet.load_state_dict(load_file(str(runs["run"] / "checkpoints" / "checkpoint-00000008" / "model.safetensors")))
    # the text encoder trains with the UNet for from-scratch models (Accelerate's second prepared model)
    after.text_encoder.load_state_dict(load_file(str(runs["run"] / "checkpoints" / "checkpoint-00000008" /
                                                     "model_1.safetensors")))
    assert base.scheduler.config.prediction_type == "v_prediction"  # the from-scratch default, saved in base/
    final = load_ldm(runs["full"])
    assert torch.equal(base.vae.decoder.conv_out.weight, final.vae.decoder.conv_out.weight)  # VAE frozen
    tiles = TrainTiles(data["two"], "train", [], True, 64)
    images = torch.stack([tiles[i][0] for i in range(0, len(tiles), 3)])  # (12, 3, 64, 64), fixed
    prompts = [tiles[i][2] for i in range(0, len(tiles), 3)]
    l0 = denoising_loss_on(base, base.unet, images, prompts, seed=1)
    l1 = denoising_loss_on(after, after.unet, images, prompts, seed=1)
    assert l1 < 0.9 * l0, (l0, l1)
    hist = [json.loads(x) for x in (runs["run"] / "losses.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == list(range(1, 9)) and all(h["l_e"] > 0 for h in hist)
    assert final.fel_bank.shape == (4, 64)  # 2 classes x 2 levels, the micro mid block has 64 channels


def test_sigkill_then_resume_equals_uninterrupted_run(runs):
    assert not [n for n in runs["killed_names"] if n.startswith("checkpoint-") and ".tmp" in n]
    a, b = _unet_state(runs["resumed"]), _unet_state(runs["full"])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5, rtol=1e-4), k
    from safetensors.torch import load_file

    ba = load_file(str(runs["resumed"] / "fel_bank.safetensors"))["bank"]
    bb = load_file(str(runs["full"] / "fel_bank.safetensors"))["bank"]
    assert torch.allclose(ba, bb, atol=1e-5)
    la = [json.loads(x) for x in (runs["resumed"].parent / "losses.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (runs["full"].parent / "losses.jsonl").read_text().splitlines()]
    assert [x["step"] for x in la] == [x["step"] for x in lb] == list(range(1, 9))
    for x, y in zip(la, lb):
        assert x["l_r"] == pytest.approx(y["l_r"], rel=1e-4, abs=1e-6)
    # only the last K=2 complete checkpoints are kept, no temporary folders remain
    names = sorted(p.name for p in (runs["run"] / "checkpoints").iterdir())
    assert names == ["checkpoint-00000007", "checkpoint-00000008"]


def test_run_model_loads_in_diffusers_and_samples(runs):
    from diffusers import StableDiffusionPipeline

    from pathup.model import load_ldm

    model = runs["full"]
    index = json.loads((model / "model_index.json").read_text())
    assert {"vae", "unet", "text_encoder", "tokenizer", "scheduler"} <= set(index)
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None)
    ldm = load_ldm(runs["run"])
    assert ldm.prompts.classes == ["ductal_carcinoma", "fibroadenoma"] and ldm.prompts.levels == ["patch", "overview"]
    assert torch.allclose(ldm.fel_bank.norm(dim=1), torch.ones(4), atol=1e-5)
    sd = pipe.unet.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in ldm.unet.state_dict().items())
    assert ldm.scaling_factor != 0.18215 and ldm.scaling_factor > 0  # set from the trained VAE's latents
    img = pipe(ldm.prompts.prompts()[0], num_inference_steps=2, height=64, width=64, output_type="np",
               generator=torch.Generator().manual_seed(0)).images
    assert img.shape == (1, 64, 64, 3) and float(abs(img).max()) <= 1.0
    cfg = yaml.safe_load((runs["run"] / "config.yaml").read_text())
    assert cfg["fel_beta"] == 0.1 and cfg["lr"] == 1e-3 and cfg["max_steps"] == 8
    assert list((runs["run"] / "tensorboard").glob("events.out.tfevents.*"))


def test_sample_grid_and_finetune_a_saved_checkpoint(data, tmp_path):
    from pathup.model import build_ldm, load_ldm, save_ldm

    src = save_ldm(build_ldm("micro", seed=5), tmp_path / "pretrained")
    shutil.rmtree(src / "unet")  # a plain SD folder is enough: re-save only the UNet via diffusers
    build_ldm("micro", seed=5).unet.save_pretrained(src / "unet")
    (src / "pathup.json").unlink()
    out = train(TrainConfig(dataset=data["two"], out=tmp_path / "ft", model=str(src), max_steps=2,
                            batch_size=2, num_workers=0, checkpoint_every=0, sample_every=2, sample_steps=2,
                            patho_align=False, fel_proj_dim=8))
    a, b = load_ldm(src), load_ldm(out)
    assert all(torch.equal(x, y) for x, y in zip(a.vae.state_dict().values(), b.vae.state_dict().values()))
    assert all(torch.equal(x, y) for x, y in zip(a.text_encoder.state_dict().values(),
                                                  b.text_encoder.state_dict().values()))
    assert any(not torch.equal(x, y) for x, y in zip(a.unet.state_dict().values(), b.unet.state_dict().values()))
    assert b.prompts.levels == [] and b.prompts.prompts() == ["ductal carcinoma", "fibroadenoma"]
    assert b.fel_bank.shape == (2, 8) and (out / "fel_head.safetensors").is_file()
    cfg = yaml.safe_load((tmp_path / "ft" / "config.yaml").read_text())
    assert cfg["lr"] == 5e-6 and cfg["batch_size"] == 2
    grid = Image.open(tmp_path / "ft" / "samples" / "step-00000002.png")
    assert grid.size == (64, 2 * 64)  # rows: 2 classes, one column (no levels)


def test_bad_inputs(data, runs, tmp_path, monkeypatch, capsys):
    from pathup.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "manifest.csv").write_text("path,class,level,prompt,split\n")
    (empty / "dataset.json").write_text(json.dumps({"classes": ["a"], "levels": ["patch", "overview"]}))
    with pytest.raises(PathUpError, match="empty dataset"):
        train(TrainConfig(dataset=empty, out=tmp_path / "r0", **FAST))
    broken = tmp_path / "broken"
    shutil.copytree(data["two"], broken)
    for p in sorted((broken / "tiles").iterdir())[:4]:
        p.unlink()
    with pytest.raises(PathUpError, match="4 tile file.*missing"):
        train(TrainConfig(dataset=broken, out=tmp_path / "r1", **FAST))
    # a different class set when resuming
    moved = tmp_path / "moved"
    shutil.copytree(runs["run"], moved)
    with pytest.raises(PathUpError, match="classes .* differ from the checkpoint"):
        train(TrainConfig(dataset=data["other"], out=moved, resume=True, max_steps=8, **FAST))
    with pytest.raises(PathUpError, match="already holds a training run"):
        train(TrainConfig(dataset=data["two"], out=moved, max_steps=8, **FAST))
    with pytest.raises(PathUpError, match="fp16 needs a GPU"):
        train(TrainConfig(dataset=data["two"], out=tmp_path / "r2", mixed_precision="fp16", cpu=True, **FAST))
    # a NaN loss stops the run with the last good checkpoint named and intact
    import pathup.train.loop as loop

    real = loop.denoising_loss
    calls = {"n": 0}

    def flaky(pred, target):
        calls["n"] += 1
        out = real(pred, target)
        return out * float("nan") if calls["n"] >= 3 else out

    monkeypatch.setattr(loop, "denoising_loss", flaky)
    nan_run = tmp_path / "nan"
    with pytest.raises(PathUpError, match=r"loss is nan at step 3.*checkpoint-00000002"):
        train(TrainConfig(dataset=data["two"], out=nan_run, max_steps=5, checkpoint_every=1, **FAST))
    assert not (nan_run / "model").exists()
    assert sorted(p.name for p in (nan_run / "checkpoints").iterdir()) == ["checkpoint-00000001", "checkpoint-00000002"]
    monkeypatch.setattr(loop, "denoising_loss", real)

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(loop.Trainer, "_forward", oom)
    with pytest.raises(PathUpError, match="out of GPU memory in --batch-size 2: lower --batch-size"):
        train(TrainConfig(dataset=data["two"], out=nan_run, resume=True, max_steps=5, **FAST))
    # the CLI prints one line, no traceback
    capsys.readouterr()
    assert main(["train", str(empty), "--out", str(tmp_path / "r4"), "--model", "micro"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pathup train: error: empty dataset")
