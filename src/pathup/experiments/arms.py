"""The training arms of the PathUp paper's Table 2 (the ablation of patho-align and the feature entropy
loss): ``PathUp`` (full), ``w-o FEL`` (``fel_beta = 0``) and ``w-o PA`` (``patho_align = False``), three
``pathup train`` runs with the same options otherwise.

A finished arm leaves ``runs/<arm>/experiment-done.json``, a ``pathup.stages.Marker`` of the settings the
arm was trained with; a rerun with the same settings reuses the model, an interrupted run resumes from its
newest checkpoint. From-scratch arms share one autoencoder: the ablation runs start from the full run's
trained first stage (``RUN/base``), so the arms differ only in the UNet stage.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from pathup.errors import PathUpError
from pathup.experiments.config import ARMS, TRAIN_FIXED, ExperimentConfig
from pathup.stages import Marker

log = logging.getLogger(__name__)

DONE = "experiment-done.json"


def train_options(cfg: ExperimentConfig) -> dict[str, Any]:
    """The user's TrainConfig options: ``--train-config`` YAML, then ``train_options``."""
    from pathup.config import load_yaml

    opts = load_yaml(cfg.train_config) if cfg.train_config else {}
    opts.update(cfg.train_options)
    fixed = sorted(set(opts) & set(TRAIN_FIXED))
    if fixed:
        raise PathUpError(f"train option(s) {', '.join(fixed)} are set by the experiment (use --model, "
                          "--train-steps); remove them from --train-config")
    clash = sorted(set(opts) & {"fel_beta", "patho_align"})
    if clash:
        raise PathUpError(f"train option(s) {', '.join(clash)} are what Table 2 varies; leave them at their defaults")
    return opts


def arm_settings(cfg: ExperimentConfig, arm: str, opts: dict[str, Any]) -> dict[str, Any]:
    """What an arm's trained model depends on (its marker's settings; the device is left out)."""
    return {"arm": arm, "condition": ARMS[arm][0], "overrides": ARMS[arm][1], "options": opts, "data": cfg.data,
            "model": cfg.model, "train_steps": cfg.train_steps}


def train_arm(cfg: ExperimentConfig, arm: str, opts: dict[str, Any]) -> tuple[Path, bool]:
    """Train one arm of Table 2 (or reuse it when finished with the same settings); return (model folder,
    trained now)."""
    from pathup.config import from_dict, save_config
    from pathup.train import TrainConfig, train

    run = Path(cfg.out) / "runs" / arm
    model = run / "model"
    marker, settings = Marker(run / DONE), arm_settings(cfg, arm, opts)
    if marker.matching(settings, requires=[model / "model_index.json"]) is not None:
        return model, False
    data = {**opts, **ARMS[arm][1], "data": cfg.data, "out": str(run), "model": cfg.model, "resume": True}
    if cfg.train_steps is not None:
        data["max_steps"] = cfg.train_steps
    if cfg.device == "cpu":
        data["cpu"] = True
    tcfg = from_dict(TrainConfig, data, source="--train-config")
    full_base = Path(cfg.out) / "runs" / "pathup" / "base"
    if arm != "pathup" and tcfg.from_scratch and (full_base / "model_index.json").is_file() \
            and not (run / "base").exists():
        from pathup.io import atomic_dir

        with atomic_dir(run / "base") as tmp:  # share the full run's trained autoencoder (first stage)
            shutil.copytree(full_base, tmp, dirs_exist_ok=True)
    log.info("training %s (%s) in %s", arm, ARMS[arm][0], run)
    model = Path(train(tcfg))
    save_config(tcfg, run / "experiment-train.yaml")
    marker.write(settings, arm=arm, condition=ARMS[arm][0])
    return model, True
