"""The Accelerate side of a run: the ``Accelerator`` with its experiment tracker, the loss history, and
the release of Accelerate's process-wide state at the end.

Losses go to two places every ``log_every`` steps:

* ``RUN/losses.jsonl``: one JSON line per logged step (``step``, ``loss``, ``l_r``, ``l_e``, ``lr``,
  ``time``), always written (the demo and the tests read it); a resumed run drops the lines after its
  checkpoint's step and writes them again;
* Accelerate's tracker ``log_with`` (``Accelerator(log_with=...)``, ``init_trackers``, ``log``,
  ``end_training``) under the tags ``loss/L_r``, ``loss/L_e``, ``loss/total`` and ``lr``. TensorBoard (the
  default) writes ``RUN/tensorboard/``; the others (wandb, mlflow, ...) log to project ``pathup`` and read
  their own settings (``WANDB_*``, ``MLFLOW_*`` environment variables...). ``none``: the JSON lines only.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from pathup.config import to_dict
from pathup.errors import OptionError, PathUpError
from pathup.train.config import TrainConfig

TENSORBOARD_DIR = "tensorboard"  # RUN/tensorboard: the TensorBoard tracker's "project" folder


def make_accelerator(cfg: TrainConfig, run: Path):
    """The run's ``Accelerator`` (mixed precision, gradient accumulation, device, tracker) with its seed set."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if cfg.mixed_precision == "fp16" and (cfg.cpu or not torch.cuda.is_available()):
        raise OptionError("mixed_precision", "fp16 needs a GPU; use bf16 or no on the CPU")
    log_with = None if cfg.log_with == "none" else cfg.log_with
    if log_with is not None:
        from accelerate.tracking import get_available_trackers

        available = sorted(str(t) for t in get_available_trackers())
        if log_with not in available:
            raise OptionError("log_with", f"{log_with!r} needs the {log_with} package, which is not installed "
                                          f"(pip install {log_with}); installed: {', '.join(available + ['none'])}")
    try:
        acc = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
                          cpu=cfg.cpu, log_with=log_with, project_dir=str(run))
    except (ValueError, RuntimeError) as err:
        raise PathUpError(f"cannot start Accelerate with --mixed-precision {cfg.mixed_precision}: "
                          f"{str(err).splitlines()[0]}") from None
    set_seed(cfg.seed)
    return acc


def _hparams(cfg: TrainConfig) -> dict[str, Any]:
    """The options as the flat str / int / float / bool values every tracker stores."""
    return {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
            for k, v in to_dict(cfg).items()}


class LossLog:
    """Writes the logged losses of a run to ``RUN/losses.jsonl`` and the Accelerate tracker.

    ``start(step)`` (every process) begins logging after optimizer step ``step`` (0, or the resumed
    checkpoint's); ``log(step, values)`` logs one step (main process; the tracker ignores the others).
    """

    def __init__(self, acc, cfg: TrainConfig, run: Path) -> None:
        self.acc, self.cfg = acc, cfg
        self.path = Path(run) / "losses.jsonl"

    def start(self, step: int) -> None:
        if self.acc.is_main_process:
            trim_history(self.path, step)
        if self.cfg.log_with == "none":
            return
        project = TENSORBOARD_DIR if self.cfg.log_with == "tensorboard" else "pathup"
        # purge_step: TensorBoard hides the events a resumed run writes again
        self.acc.init_trackers(project, config=_hparams(self.cfg),
                               init_kwargs={"tensorboard": {"purge_step": step + 1}})

    def log(self, step: int, values: dict[str, float]) -> None:
        """``values``: ``loss``, ``l_r``, ``l_e``, ``lr`` of optimizer step ``step`` (1-based)."""
        if not self.acc.is_main_process:
            return
        rec = {"step": step, **values, "time": round(time.time(), 3)}
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
        self.acc.log({"loss/L_r": values["l_r"], "loss/L_e": values["l_e"], "loss/total": values["loss"],
                      "lr": values["lr"]}, step=step)


def trim_history(path: Path, step: int) -> None:
    """Keep only the logged steps <= ``step`` (a resumed run rewrites the later ones)."""
    if not path.is_file():
        return
    from pathup.io import atomic_write_text

    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                keep.append(line)
        except (ValueError, KeyError):
            continue
    atomic_write_text(path, "".join(x + "\n" for x in keep))


def release(acc) -> None:
    """End the run's trackers and, in a single-process run, forget Accelerate's process-wide state.

    Why the private call: Accelerate keeps one ``AcceleratorState`` per Python process, and a second
    ``Accelerator`` with another ``mixed_precision`` raises ValueError ("AcceleratorState has already been
    initialized and cannot be changed"). Several ``train`` calls in one process (the experiments runner,
    the demo, the tests) may differ in it. Accelerate has no public reset; ``AcceleratorState._reset_state``
    is what its own test suite calls between tests (``accelerate.test_utils.AccelerateTestCase``).
    ``tests/test_train.py::test_accelerate_state_is_released_between_runs`` fails if it goes away. Under
    ``accelerate launch`` (several processes) the state belongs to the launcher and is kept.
    """
    from accelerate.state import AcceleratorState

    acc.end_training()
    if acc.num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
