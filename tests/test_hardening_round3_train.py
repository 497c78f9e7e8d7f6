"""Issue 20 (hardening, round 3) on the training side: no code runs from a crafted checkpoint (item 1), a
resume with other prompt texts is refused (9), one training process per run folder (11), checkpoint files
follow the umask (12), and a corrupted dataset.json is one line (8)."""

import json
import os
import shutil
import stat

import pytest
import torch

from pathup.errors import PathUpError
from pathup.train import TrainConfig, train

from test_train import FAST, make_dataset


class _Crafted:
    """Unpickling this creates ``marker``: what a hostile checkpoint file would do instead."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def tiny_ds(tmp_path_factory, sample_breakhis):
    return make_dataset(tmp_path_factory.mktemp("h3") / "two", sample_breakhis, ["fibroadenoma", "ductal_carcinoma"])


@pytest.fixture(scope="module")
def one_step_run(tiny_ds, tmp_path_factory):
    """A run of one step with its checkpoint (copied by each test that changes it)."""
    run = tmp_path_factory.mktemp("h3run") / "run"
    old = os.umask(0o022)
    try:
        train(TrainConfig(data=tiny_ds, out=run, max_steps=1, checkpoint_every=1, progress=False, **FAST))
    finally:
        os.umask(old)
    return run


def _copy(run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    (ckpt,) = sorted((dst / "checkpoints").glob("checkpoint-*"))
    return dst, ckpt


# ------------------------------------------------------------------------------ 1. crafted checkpoint pickles
def test_resume_runs_no_code_from_a_crafted_custom_checkpoint_pickle(one_step_run, tiny_ds, tmp_path):
    run, ckpt = _copy(one_step_run, tmp_path)
    marker = tmp_path / "PWNED"
    for i in range(3):  # where Accelerate's register_for_checkpointing put the EMA, LR schedule and bank
        torch.save(_Crafted(marker), ckpt / f"custom_checkpoint_{i}.pkl")
    try:
        out = train(TrainConfig(data=tiny_ds, out=run, max_steps=2, resume=True, progress=False, **FAST))
    except PathUpError as err:  # (before the fix: the pickle ran, then its result did not fit)
        out = err
    assert not marker.exists()
    assert (out / "pathup.json").is_file()  # the stray pickles are never loaded: the run resumes


def test_an_older_checkpoint_with_a_crafted_pickle_is_refused_in_one_line(one_step_run, tiny_ds, tmp_path):
    # no custom_state.json: read as a checkpoint of an older PathUp, whose pickles load with weights_only=True
    run, ckpt = _copy(one_step_run, tmp_path)
    marker = tmp_path / "PWNED"
    (ckpt / "custom_state.json").unlink(missing_ok=True)
    torch.save(_Crafted(marker), ckpt / "custom_checkpoint_0.pkl")
    with pytest.raises(PathUpError) as e:
        train(TrainConfig(data=tiny_ds, out=run, max_steps=2, resume=True, progress=False, **FAST))
    assert not marker.exists()
    assert "custom_checkpoint_0.pkl" in str(e.value) and "\n" not in str(e.value)


def test_crafted_accelerate_files_run_no_code(one_step_run, tiny_ds, tmp_path):
    run, ckpt = _copy(one_step_run, tmp_path)
    marker = tmp_path / "PWNED"
    for name in ("optimizer.bin", "random_states_0.pkl", "scheduler.bin"):
        torch.save(_Crafted(marker), ckpt / name)
    with pytest.raises(PathUpError, match="cannot load checkpoint"):
        train(TrainConfig(data=tiny_ds, out=run, max_steps=2, resume=True, progress=False, **FAST))
    assert not marker.exists()


def test_custom_state_is_safetensors_and_json(one_step_run):
    (ckpt,) = sorted((one_step_run / "checkpoints").glob("checkpoint-*"))
    names = {p.name for p in ckpt.iterdir()}
    assert {"custom_state.json", "custom_state.safetensors"} <= names
    assert not [n for n in names if n.startswith("custom_checkpoint_")]
    meta = json.loads((ckpt / "custom_state.json").read_text())
    assert set(meta) == {"lr_schedule", "ema", "fel_bank"}


# ------------------------------------------------------------------------------ 12. umask
def test_checkpoint_files_follow_the_umask(one_step_run):
    for p in (one_step_run / "checkpoints").rglob("*"):
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o755 if p.is_dir() else 0o644), (p, oct(mode))


# ------------------------------------------------------------------------------ 9. prompts changed
def test_resume_with_other_descriptions_is_refused(one_step_run, tiny_ds, tmp_path):
    import csv

    run, _ = _copy(one_step_run, tmp_path)
    ds = tmp_path / "ds"
    shutil.copytree(tiny_ds, ds)
    meta = json.loads((ds / "dataset.json").read_text())
    meta["descriptions"] = {"fibroadenoma": "benign fibroepithelial tumour"}
    (ds / "dataset.json").write_text(json.dumps(meta))
    rows = list(csv.DictReader(open(ds / "manifest.csv")))
    for r in rows:
        if r["class"] == "fibroadenoma":
            r["prompt"] = f"benign fibroepithelial tumour, {r['level']}"
    with open(ds / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(PathUpError, match="prompts differ from the checkpoint's.*benign fibroepithelial") as e:
        train(TrainConfig(data=ds, out=run, max_steps=2, resume=True, progress=False, **FAST))
    assert "\n" not in str(e.value)
    # stopped before its first checkpoint: the base model's tokenizer has no token for the new words
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(PathUpError, match="base/pathup.json: this model's tokenizer has no token for 'benign'"):
        train(TrainConfig(data=ds, out=run, max_steps=2, resume=True, progress=False, **FAST))


# ------------------------------------------------------------------------------ 11. one process per run folder
def test_a_second_train_into_a_locked_run_is_refused_and_a_stale_lock_is_taken_over(tiny_ds, tmp_path):
    import subprocess
    import sys

    from pathup.io import FolderLock

    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathup.io import FolderLock; FolderLock(sys.argv[1], 'pathup train').acquire(); "
        "print('locked', flush=True); time.sleep(60)"), str(run)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(PathUpError) as e:
            train(TrainConfig(data=tiny_ds, out=run, max_steps=1, progress=False, **FAST))
        msg = str(e.value)
        assert f"PID {holder.pid}" in msg and str(run) in msg and "\n" not in msg
        assert not (run / "losses.jsonl").exists() and not (run / "base").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock file is stale, and the next run takes it over
    assert json.loads((run / FolderLock.NAME).read_text())["pid"] == holder.pid
    train(TrainConfig(data=tiny_ds, out=run, max_steps=1, progress=False, **FAST))
    assert (run / "model" / "pathup.json").is_file()


def test_folder_lock_falls_back_to_the_pid_without_flock(tmp_path, monkeypatch):
    import fcntl
    import socket

    from pathup.io import FolderLock

    def no_flock(fd, op):
        raise OSError(37, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    (tmp_path / FolderLock.NAME).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(),
                                                         "command": "pathup train"}))
    with pytest.raises(PathUpError, match=f"PID {os.getppid()}"):
        FolderLock(tmp_path, "pathup train").acquire()
    (tmp_path / FolderLock.NAME).write_text(json.dumps({"pid": 2 ** 22 + 12345, "host": socket.gethostname()}))
    FolderLock(tmp_path, "pathup train").acquire().release()  # a dead PID: stale


# ------------------------------------------------------------------------------ 8. corrupted dataset.json
@pytest.mark.parametrize("content,match", [
    (b'{"classes": ["a", "b"', "not valid JSON"),
    (b'\xff\xfe{"classes": []}', "not UTF-8"),
    (b'["a", "b"]', "top level must be an object"),
    (b'{"classes": "ab"}', "'classes' must be a non-empty list"),
    (b'{"classes": ["a"], "descriptions": ["x"]}', "'descriptions' must map"),
])
def test_corrupted_dataset_json_is_one_line(tiny_ds, tmp_path, content, match, capsys):
    from pathup.cli import main

    ds = tmp_path / "ds"
    shutil.copytree(tiny_ds, ds)
    (ds / "dataset.json").write_bytes(content)
    assert main(["train", "--data", str(ds), "--out", str(tmp_path / "r"), "--model", "micro",
                 "--max-steps", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dataset.json" in err[0] and match in err[0], err


def test_a_genuine_checkpoint_of_an_older_pathup_still_resumes(one_step_run, tiny_ds, tmp_path):
    from pathup.train.checkpoint import read_custom_state

    run, ckpt = _copy(one_step_run, tmp_path)
    names = ["lr_schedule", "ema", "fel_bank"]  # the order Accelerate's register_for_checkpointing numbered them
    states = read_custom_state(ckpt, dict.fromkeys(names))
    for i, state in enumerate(states):
        torch.save(state, ckpt / f"custom_checkpoint_{i}.pkl")
    (ckpt / "custom_state.json").unlink()
    (ckpt / "custom_state.safetensors").unlink()
    out = train(TrainConfig(data=tiny_ds, out=run, max_steps=2, resume=True, progress=False, **FAST))
    assert (out / "pathup.json").is_file()
    assert not list((run / "checkpoints").glob(".tmp-*"))
