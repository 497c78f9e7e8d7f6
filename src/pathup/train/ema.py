"""Exponential moving average of model weights (kept in float32, saved in checkpoints)."""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """theta_ema <- d theta_ema + (1 - d) theta after each optimizer step.

    The decay warms up as ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates (as diffusers'
    ``EMAModel``), so early averages are not dominated by the random initialisation.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow = [p.detach().float().clone() for p in model.parameters()]

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        params = [p.detach() for p in model.parameters()]
        for s, p in zip(self.shadow, params):
            s.lerp_(p.to(s.device, s.dtype), 1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for s, p in zip(self.shadow, model.parameters()):
            p.copy_(s.to(p.device, p.dtype))

    def swap(self, model: nn.Module) -> None:
        """Exchange the model's weights and the averaged ones (call twice to undo)."""
        with torch.no_grad():
            for s, p in zip(self.shadow, model.parameters()):
                tmp = p.detach().clone()
                p.copy_(s.to(p.device, p.dtype))
                s.copy_(tmp.to(s.device, s.dtype))

    def to(self, device: torch.device | str) -> "EMA":
        self.shadow = [s.to(device) for s in self.shadow]
        return self

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": [s.cpu() for s in self.shadow]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self.shadow):
            from pathup.errors import PathUpError

            raise PathUpError("the checkpoint's EMA weights do not match this model (different architecture)")
        dev = self.shadow[0].device if self.shadow else "cpu"
        self.num_updates = int(state["num_updates"])
        self.shadow = [s.to(dev, torch.float32) for s in state["shadow"]]
