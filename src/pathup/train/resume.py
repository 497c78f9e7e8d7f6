"""Resuming a training run: which checkpoint to continue from, and the checks that it fits this run.

A run continues from its newest complete checkpoint (``pathup.train.checkpoint``) only with ``resume``;
it is refused when the dataset's classes, prompt levels or prompt texts (``--descriptions``: the tokenizer
was built for them), the model, or an option that changes what is trained (FEL on/off, projection head,
EMA, text encoder, prediction type, noise schedule) differ from the checkpoint's. Options that only change
how the remaining steps run (learning rate, batch size, ...) may change.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pathup.errors import OptionError, PathUpError
from pathup.train import checkpoint as ckpt_io
from pathup.train.config import TrainConfig

log = logging.getLogger(__name__)

# options that fix what a run trains: a resumed run must keep them (``model``: ``check_model``, before loading)
FIXED = ("fel_proj_dim", "ema", "train_text_encoder", "prediction_type", "zero_terminal_snr")


def checkpoint_to_resume(run: Path, resume: bool) -> Path | None:
    """The checkpoint to continue from (None: start at step 0); refuses a used folder without ``resume``."""
    ckpt = ckpt_io.newest_checkpoint(run)
    used = [p for p in (run / "base", run / "model") if p.exists()] + ([ckpt] if ckpt else [])
    if not resume and used:
        raise PathUpError(f"{run} already holds a training run ({used[0].name}); pass --resume to continue "
                          "it or choose another --out")
    if resume and ckpt is None:
        log.info("no complete checkpoint in %s: starting from step 0", ckpt_io.checkpoint_dir(run))
    return ckpt


def check_model(state: dict[str, Any], cfg: TrainConfig) -> None:
    """The checkpoint was made from the same ``model`` (checked before loading it)."""
    if state["config"].get("model") != cfg.model:
        raise OptionError("model", f"{cfg.model} differs from the checkpoint's {state['config'].get('model')}; "
                          "resume with the same model or use a new --out")


def check_tokenizer(ldm, table, base: str | Path) -> None:
    """The model's tokenizer has a token for every word of this run's prompts: a from-scratch run resumed
    from its ``base/`` after the descriptions changed would spell new words letter by letter (and save a
    model advertising prompts it cannot read). ``pathup.model.ldm.check_table``, one line naming ``base``."""
    from pathup.model.ldm import check_table

    check_table(ldm.tokenizer, table, ldm.size, Path(base) / "pathup.json")


def check_state(state: dict[str, Any], table, cfg: TrainConfig, run: Path) -> None:
    """The checkpoint's prompt table and fixed options equal this run's."""
    old = state.get("prompts") or {}
    if list(old.get("classes", [])) != list(table.classes):
        raise PathUpError(f"the dataset's classes {table.classes} differ from the checkpoint's "
                          f"{old.get('classes')} ({run}); resume with the same dataset or use a new --out")
    if list(old.get("levels", [])) != list(table.levels):
        raise PathUpError(f"the prompt levels {table.levels} differ from the checkpoint's {old.get('levels')} "
                          "(--no-patho-align or --levels changed); use a new --out")
    if old.get("prompts") is not None and list(old["prompts"]) != table.prompts():
        changed = next((f"{a!r} was {b!r}" for a, b in zip(table.prompts(), old["prompts"]) if a != b), "")
        raise PathUpError(f"the prompts differ from the checkpoint's in {run} ({changed}; --descriptions or "
                          "dataset.json changed): the model was trained for the old ones; resume with the same "
                          "descriptions or use a new --out")
    for key in FIXED:
        if state["config"].get(key) != getattr(cfg, key):
            raise OptionError(key, f"{getattr(cfg, key)} differs from the checkpoint's "
                              f"{state['config'].get(key)}; resume with the same value or use a new --out")
    if (state["config"].get("fel_beta", 0) > 0) != (cfg.fel_beta > 0):
        raise PathUpError("the feature entropy loss is on in one of the checkpoint and this run and off in the "
                          "other (--fel-beta); resume with the same setting or use a new --out")
