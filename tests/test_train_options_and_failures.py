"""Training options and failures: numeric options checked once in the config layer, empty
classes refused unless asked for, and one progress setting for every bar of a run."""

import pytest

from pathup.config import from_dict
from pathup.errors import PathUpError
from pathup.train import TrainConfig, train

from test_train import FAST, make_dataset


@pytest.mark.parametrize("key,value,msg", [
    ("max_grad_norm", float("nan"), "max_grad_norm"),
    ("vae_kl_weight", -1e9, "vae_kl_weight must be at least 0"),
    ("vae_lr", -1.0, "vae_lr must be > 0"),
    ("vae_lr", float("nan"), "vae_lr"),
    ("weight_decay", float("nan"), "weight_decay"),
    ("guidance", float("nan"), "guidance"),
    ("guidance_scale", float("inf"), "guidance"),  # the older name of guidance
    ("snr_gamma", 0.0, "snr_gamma must be > 0"),
])
def test_train_numeric_options_are_checked_in_the_config_layer(key, value, msg, tmp_path):
    with pytest.raises(PathUpError, match=msg):
        from_dict(TrainConfig, {"data": str(tmp_path), "out": str(tmp_path / "run"), key: value})
    # the Python API checks the same, before any work
    with pytest.raises(PathUpError, match=msg):
        train(TrainConfig(data=tmp_path, out=tmp_path / "run2", **{key: value}))
    assert not (tmp_path / "run2").exists()


@pytest.fixture(scope="module")
def tiny_ds(tmp_path_factory, sample_breakhis):
    return make_dataset(tmp_path_factory.mktemp("ht") / "two", sample_breakhis, ["fibroadenoma", "ductal_carcinoma"])


def test_no_progress_silences_every_training_bar(tiny_ds, tmp_path, capfd):
    train(TrainConfig(data=tiny_ds, out=tmp_path / "quiet", max_steps=2, progress=False, **FAST))
    err = capfd.readouterr().err
    assert "autoencoder:" not in err and "train:" not in err and "\r" not in err
    train(TrainConfig(data=tiny_ds, out=tmp_path / "loud", max_steps=2, **FAST))
    assert "train:" in capfd.readouterr().err


def test_empty_class_refused_unless_asked(tiny_ds, tmp_path):
    import json
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(tiny_ds, ds)
    meta = json.loads((ds / "dataset.json").read_text())
    meta["classes"].append("ghost")
    (ds / "dataset.json").write_text(json.dumps(meta))
    with pytest.raises(PathUpError, match="ghost"):
        train(TrainConfig(data=ds, out=tmp_path / "r1", max_steps=1, **FAST))
    out = train(TrainConfig(data=ds, out=tmp_path / "r2", max_steps=1, allow_empty_classes=True, **FAST))
    assert "ghost" in json.loads((out / "pathup.json").read_text())["prompts"]["classes"]


def test_library_write_failures_are_one_line(tiny_ds, tmp_path, monkeypatch):
    # torch.save's zip writer and safetensors report a full disk as RuntimeError / SafetensorError
    import accelerate

    def full(self, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 4096 vs 0")

    monkeypatch.setattr(accelerate.Accelerator, "save_state", full)
    with pytest.raises(PathUpError, match="disk full while writing checkpoint"):
        train(TrainConfig(data=tiny_ds, out=tmp_path / "r", max_steps=1, progress=False, **FAST))
    assert not list((tmp_path / "r" / "checkpoints").glob(".tmp*"))


def test_model_files_honour_the_umask(tiny_ds, tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        out = train(TrainConfig(data=tiny_ds, out=tmp_path / "r", max_steps=1, progress=False, **FAST))
    finally:
        os.umask(old)
    for p in [out, *out.rglob("*"), *(tmp_path / "r" / "base").rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o755 if p.is_dir() else 0o644), (p, oct(mode))


def test_cli_negative_numbers_with_exponents_reach_the_config_layer(tmp_path, capsys):
    from pathup.cli import main

    assert main(["train", str(tmp_path), "--out", str(tmp_path / "r"), "--vae-kl-weight", "-1e9"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["pathup train: error: --vae-kl-weight must be at least 0, got -1000000000.0"]
