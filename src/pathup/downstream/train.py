"""One training loop for both classifiers: AdamW, cross-entropy, early stopping on validation."""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import torch
from tqdm.auto import tqdm

from pathup.downstream.metrics import validation_score

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What ``fit`` did: the epoch kept (1-based), its validation F1/loss, and the per-epoch history."""

    best_epoch: int
    best_f1: float
    best_loss: float
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)


def autocast(device: torch.device):
    """bfloat16 autocast on CUDA, a no-op elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def fit(model: torch.nn.Module, batches: Callable[[int], Iterable[tuple[Any, torch.Tensor]]],
        forward: Callable[[torch.nn.Module, Any], torch.Tensor],
        predict_val: Callable[[torch.nn.Module], tuple[np.ndarray, np.ndarray]], *,
        epochs: int, patience: int, lr: float, weight_decay: float, device: torch.device,
        desc: str = "train") -> FitResult:
    """Train ``model`` with cross-entropy; keep the weights of the best validation epoch.

    Args:
        model: the classifier, already on ``device``.
        batches: ``batches(epoch)`` yields ``(inputs, labels)`` for one epoch (labels on ``device``).
        forward: ``forward(model, inputs)`` returns logits, (B, C).
        predict_val: ``predict_val(model)`` returns ``(y_true, probs)`` on the validation units.
        epochs: maximum number of epochs.
        patience: stop after this many epochs without a better validation score.
        lr, weight_decay: AdamW settings.
        device: where the model lives.
        desc: progress bar label.

    Returns:
        A ``FitResult``; ``model`` holds the best epoch's weights on return.
    """
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    best: tuple[float, float] | None = None
    best_state = copy.deepcopy(model.state_dict())
    best_epoch, since = 0, 0
    history: list[dict[str, float]] = []
    bar = tqdm(range(1, epochs + 1), desc=desc, leave=False)
    for epoch in bar:
        model.train()
        total, count = 0.0, 0
        for inputs, labels in batches(epoch):
            with autocast(device):
                logits = forward(model, inputs)  # (B, C)
            loss = torch.nn.functional.cross_entropy(logits.float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(labels)
            count += len(labels)
        model.eval()
        y_true, probs = predict_val(model)
        f1, nll = validation_score(y_true, probs)
        history.append({"epoch": epoch, "train_loss": total / max(count, 1), "val_f1": f1, "val_loss": nll})
        bar.set_postfix(loss=f"{total / max(count, 1):.3f}", val_f1=f"{f1:.3f}")
        if best is None or f1 > best[0] + 1e-12 or (abs(f1 - best[0]) <= 1e-12 and nll < best[1]):
            best, best_epoch, since = (f1, nll), epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            since += 1
            if since >= patience:
                break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    assert best is not None
    return FitResult(best_epoch, best[0], best[1], len(history), history)


def group_mean(groups: list[str], probs: np.ndarray, labels: list[int]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Average tile probabilities per group (source image): (group names, labels (G,), probs (G, C))."""
    order: dict[str, int] = {}
    for g in groups:
        order.setdefault(g, len(order))
    sums = np.zeros((len(order), probs.shape[1]))
    counts = np.zeros(len(order))
    glabels = np.full(len(order), -1)
    for g, p, y in zip(groups, probs, labels):
        i = order[g]
        sums[i] += p
        counts[i] += 1
        if glabels[i] not in (-1, y):
            raise ValueError(f"group {g!r} has tiles of two classes")
        glabels[i] = y
    return list(order), glabels, sums / counts[:, None]
