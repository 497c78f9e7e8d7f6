"""The training loop on real BreakHis tiles with the micro model: L_r goes down, a SIGKILLed and resumed
run equals an uninterrupted one, RUN/model loads in diffusers, fine-tuning a saved checkpoint, bad input;
the EMA (diffusers' EMAModel) against a hand-computed average, the trackers, the dataset's MPP in the model."""

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

from pathup.errors import OptionError, PathUpError
from pathup.losses import denoising_loss, denoising_target
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


@torch.no_grad()
def denoising_loss_on(ldm, unet, images: torch.Tensor, prompts: list[str], *, seed: int = 0,
                      timesteps: torch.Tensor | None = None) -> float:
    """L_r of ``unet`` on fixed images (B, 3, R, R), prompts, noise and timesteps (a fair before/after measure).

    The VAE's posterior mean, ``ldm``'s text encoder and scheduler; noise from ``seed``; timesteps spread
    evenly over the schedule unless given.
    """
    dev = next(unet.parameters()).device
    latents = ldm.encode_images(images.to(dev)).float()  # (B, 4, h, w)
    b = latents.shape[0]
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(latents.shape, generator=g).to(dev)  # (B, 4, h, w)
    n_t = ldm.scheduler.config.num_train_timesteps
    t = timesteps if timesteps is not None else torch.linspace(0, n_t - 1, b).round().long()
    t = t.to(dev)
    emb = ldm.encode_prompts(prompts).to(dev)  # (B, L, D)
    noisy = ldm.scheduler.add_noise(latents, noise, t)
    pred = unet(noisy, t, encoder_hidden_states=emb).sample
    return float(denoising_loss(pred, denoising_target(ldm.scheduler, latents, noise, t)))


def _unet_state(model_dir):
    from safetensors.torch import load_file

    return load_file(str(Path(model_dir) / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def runs(data):
    """One run SIGKILLed mid-way (a real process) then resumed, and one uninterrupted run."""
    root = data["root"]
    common = dict(FAST, data=data["two"], max_steps=8, batch_size=4, lr=1e-3, checkpoint_every=1,
                  keep_checkpoints=2, seed=3)
    killed = root / "killed"
    args = [sys.executable, "-m", "pathup", "train", "--data", str(data["two"]), "--out", str(killed)]
    for k, v in common.items():
        if k != "data":
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
    # TensorBoard orders event files by name: creation second, host, pid. A resume within the same second as
    # the kill could sort before the killed run's file, and TensorBoard would read the older steps last
    # (as a restart) and drop the resumed ones. A real resume comes later than that; so does this one.
    time.sleep(max(0.0, 1.05 - (time.time() % 1.0)))
    resumed = train(TrainConfig(out=killed, resume=True, **common))
    full = train(TrainConfig(out=root / "full", **common))
    return {"killed_names": names, "resumed": resumed, "full": full, "run": root / "full"}


def test_training_lowers_the_denoising_loss(data, runs):
    from safetensors.torch import load_file

    from pathup.model import load_ldm
    from pathup.train.data import TrainTiles

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
    out = train(TrainConfig(data=data["two"], out=tmp_path / "ft", model=str(src), max_steps=2,
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
        train(TrainConfig(data=empty, out=tmp_path / "r0", **FAST))
    broken = tmp_path / "broken"
    shutil.copytree(data["two"], broken)
    for p in sorted((broken / "tiles").iterdir())[:4]:
        p.unlink()
    with pytest.raises(PathUpError, match="4 tile file.*missing"):
        train(TrainConfig(data=broken, out=tmp_path / "r1", **FAST))
    # a different class set when resuming
    moved = tmp_path / "moved"
    shutil.copytree(runs["run"], moved)
    with pytest.raises(PathUpError, match="classes .* differ from the checkpoint"):
        train(TrainConfig(data=data["other"], out=moved, resume=True, max_steps=8, **FAST))
    with pytest.raises(PathUpError, match="already holds a training run"):
        train(TrainConfig(data=data["two"], out=moved, max_steps=8, **FAST))
    with pytest.raises(PathUpError, match="fp16 needs a GPU"):
        train(TrainConfig(data=data["two"], out=tmp_path / "r2", mixed_precision="fp16", cpu=True, **FAST))
    # a NaN loss stops the run with the last good checkpoint named and intact
    import pathup.train.trainer as loop

    real = loop.denoising_loss
    calls = {"n": 0}

    def flaky(pred, target, weights=None):  # denoising_loss's own signature
        calls["n"] += 1
        out = real(pred, target, weights)
        return out * float("nan") if calls["n"] >= 3 else out

    monkeypatch.setattr(loop, "denoising_loss", flaky)
    nan_run = tmp_path / "nan"
    with pytest.raises(PathUpError, match=r"loss is nan at step 3.*checkpoint-00000002"):
        train(TrainConfig(data=data["two"], out=nan_run, max_steps=5, checkpoint_every=1, **FAST))
    assert not (nan_run / "model").exists()
    assert sorted(p.name for p in (nan_run / "checkpoints").iterdir()) == ["checkpoint-00000001", "checkpoint-00000002"]
    monkeypatch.setattr(loop, "denoising_loss", real)

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(loop.Trainer, "_forward", oom)
    with pytest.raises(PathUpError, match="out of GPU memory in --batch-size 2: lower --batch-size"):
        train(TrainConfig(data=data["two"], out=nan_run, resume=True, max_steps=5, **FAST))
    # the CLI prints one line, no traceback
    capsys.readouterr()
    assert main(["train", str(empty), "--out", str(tmp_path / "r4"), "--model", "micro"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pathup train: error: empty dataset")


# ------------------------------------------------------------------------------------------- EMA
def test_ema_weights_equal_a_hand_computed_average(data, tmp_path):
    """The final model holds theta_ema <- d_k theta_ema + (1 - d_k) theta_k over the raw weights theta_k after
    each step k, with diffusers' EMAModel decay d_1 = 0, d_k = min(decay, k / (k + 9)); UNet and text encoder."""
    from safetensors.torch import load_file

    run, decay = tmp_path / "ema", 0.2  # d_2 = 2/11 (warm-up), d_3 = 0.2 (the cap, below 3/12)
    out = train(TrainConfig(data=data["two"], out=run, max_steps=3, checkpoint_every=1, keep_checkpoints=3,
                            ema_decay=decay, **FAST))
    for saved, final in [("model.safetensors", _unet_state(out)),
                         ("model_1.safetensors", load_file(str(out / "text_encoder" / "model.safetensors")))]:
        raw = [load_file(str(run / "checkpoints" / f"checkpoint-{k:08d}" / saved)) for k in (1, 2, 3)]
        ema = dict(raw[0])
        for k, weights in zip((2, 3), raw[1:]):
            d = min(decay, k / (k + 9))
            ema = {n: d * ema[n] + (1 - d) * weights[n] for n in ema}
        assert final.keys() == ema.keys()
        for n in ema:
            assert torch.allclose(final[n], ema[n], atol=1e-6, rtol=1e-5), (saved, n)
        assert any(not torch.equal(final[n], raw[2][n]) for n in ema)  # not just the last raw weights


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU"))])
def test_ema_offload_keeps_the_average_on_the_cpu(device):
    from pathup.train.ema import TrainEMA

    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3).to(device)
    near = TrainEMA(model.parameters(), 0.5)
    far = TrainEMA(model.parameters(), 0.5, offload=True)
    hand = [p.detach().cpu().clone() for p in model.parameters()]
    for k in range(1, 5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        near.step(model.parameters())
        far.step(model.parameters())
        d = 0.0 if k == 1 else min(0.5, k / (k + 9))
        hand = [d * h + (1 - d) * p.detach().cpu() for h, p in zip(hand, model.parameters())]
    assert all(s.device.type == "cpu" for s in far.shadow_params)
    assert all(s.device.type == device for s in near.shadow_params)
    for a, b, h in zip(near.shadow_params, far.shadow_params, hand):
        assert torch.allclose(a.cpu(), h, atol=1e-6) and torch.allclose(b, h, atol=1e-6)
    # a checkpoint's state (Accelerate loads it on the CPU) goes back where the average lives
    state = {k: ([s.cpu() for s in v] if k == "shadow_params" else v) for k, v in near.state_dict().items()}
    again = TrainEMA(model.parameters(), 0.5)
    again.load_state_dict(state)
    assert again.optimization_step == 4 and all(s.device.type == device for s in again.shadow_params)
    assert all(torch.equal(a, b) for a, b in zip(again.shadow_params, near.shadow_params))
    with pytest.raises(PathUpError, match="EMA weights do not match this model"):
        TrainEMA(torch.nn.Linear(5, 4).parameters(), 0.5).load_state_dict(state)


# -------------------------------------------------------------------------------------- trackers
def test_tensorboard_tracker_logs_the_loss_history(runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    hist = [json.loads(x) for x in (runs["run"] / "losses.jsonl").read_text().splitlines()]
    for run in (runs["run"], runs["resumed"].parent):  # the resumed run's repeated steps are purged
        events = EventAccumulator(str(run / "tensorboard"))
        events.Reload()
        for tag, key in [("loss/L_r", "l_r"), ("loss/L_e", "l_e"), ("loss/total", "loss"), ("lr", "lr")]:
            scalars = events.Scalars(tag)
            assert [e.step for e in scalars] == [h["step"] for h in hist] == list(range(1, 9)), (run, tag)
            if run == runs["run"]:
                assert [e.value for e in scalars] == pytest.approx([h[key] for h in hist], rel=1e-6)


def test_log_with_none_and_a_tracker_that_is_not_installed(data, tmp_path):
    from accelerate.tracking import get_available_trackers

    from pathup.train.config import TRACKERS

    train(TrainConfig(data=data["two"], out=tmp_path / "quiet", max_steps=2, log_with="none", **FAST))
    assert not (tmp_path / "quiet" / "tensorboard").exists()
    hist = [json.loads(x) for x in (tmp_path / "quiet" / "losses.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [1, 2]
    installed = {str(t) for t in get_available_trackers()}
    missing = [t for t in TRACKERS if t != "none" and t not in installed]
    if missing:
        with pytest.raises(OptionError, match=f"log_with '{missing[0]}' needs the {missing[0]} package") as err:
            train(TrainConfig(data=data["two"], out=tmp_path / "r", max_steps=1, log_with=missing[0], **FAST))
        assert err.value.for_cli().startswith(f"--log-with '{missing[0]}'")
        assert not (tmp_path / "r").exists()


def test_accelerate_state_is_released_between_runs(data, tmp_path):
    """Two runs with other mixed precision in one process: needs Accelerate's private reset (see
    pathup.train.accelerator.release); this fails if Accelerate renames it or its shared state."""
    from accelerate.state import AcceleratorState, PartialState

    assert callable(getattr(AcceleratorState, "_reset_state", None))
    train(TrainConfig(data=data["two"], out=tmp_path / "no", max_steps=1, **FAST))
    assert AcceleratorState._shared_state == {} and PartialState._shared_state == {}
    train(TrainConfig(data=data["two"], out=tmp_path / "bf16", max_steps=1, mixed_precision="bf16", cpu=True,
                      **FAST))
    assert yaml.safe_load((tmp_path / "bf16" / "config.yaml").read_text())["mixed_precision"] == "bf16"


# ------------------------------------------------------------------------------ physical scale
def test_model_records_the_dataset_mpp(data, runs, tmp_path):
    from pathup.model import load_ldm
    from pathup.train.data import dataset_mpp

    # a dataset prepared without a physical scale: null values
    assert json.loads((runs["full"] / "pathup.json").read_text())["mpp"] == {"patch": None, "overview": None}
    ds = tmp_path / "ds"
    shutil.copytree(data["two"], ds)
    meta = json.loads((ds / "dataset.json").read_text())
    (ds / "dataset.json").write_text(json.dumps({**meta, "mpp": {"patch": 0.5, "overview": 2.0}}))
    out = train(TrainConfig(data=ds, out=tmp_path / "run", max_steps=1, **FAST))
    assert json.loads((out / "pathup.json").read_text())["mpp"] == {"patch": 0.5, "overview": 2.0}
    assert load_ldm(out).mpp == {"patch": 0.5, "overview": 2.0}
    (ds / "dataset.json").write_text(json.dumps({**meta, "mpp": {"patch": -1, "overview": None}}))
    with pytest.raises(PathUpError, match="mpp of level 'patch' must be a positive number or null, got -1"):
        dataset_mpp(ds)


# ------------------------------------------------------------------------------------------- CLI
def test_cli_data_option_and_the_old_positional(tmp_path, capsys):
    from pathup.cli import main

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "manifest.csv").write_text("path,class,level,prompt,split\n")
    (empty / "dataset.json").write_text(json.dumps({"classes": ["a"], "levels": ["patch", "overview"]}))
    capsys.readouterr()
    assert main(["train", "--data", str(empty), "--out", str(tmp_path / "r"), "--model", "micro"]) == 2
    assert capsys.readouterr().err.strip().startswith("pathup train: error: empty dataset")
    assert main(["train", str(empty), "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "two datasets given" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "r")]) == 2
    assert "no dataset given: --data DATASET" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(f in text for f in ("--data DATASET", "--ema-offload", "--log-with", "--guidance GUIDANCE"))
    assert "--guidance-scale" not in text and "--dataset" not in text
