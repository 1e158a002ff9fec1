"""The optimizer each stage runs on its own parameters after a step's gradients are reduced.

    opt = optim.make("adamw", params, lr=1e-3)
    opt.step()                 # after the all-reduces; a skipped step (NaN/inf, fp16 overflow) never calls it
    opt.state_bytes()          # what the optimizer keeps per parameter, counted in the run's memory report

Each stage owns an optimizer over exactly the parameters it holds, as DeepSpeed and torch.distributed.pipelining
do: the update is elementwise, so N stages updating their own slices equal one device updating the whole model
(a parameter tied across stages is updated on every rank that holds a copy, from the same summed gradient, so
the copies stay equal). ``sgd`` is written out, nothing hidden; ``adamw`` is ``torch.optim.AdamW``.
"""
from __future__ import annotations

import torch

OPTIMIZERS = ("sgd", "adamw")


def sgd(params: list, lr: float) -> None:
    """Plain SGD: p <- p - lr * grad, for every parameter that has a gradient."""
    with torch.no_grad():
        for p in params:
            if p.grad is not None:
                p -= lr * p.grad


class SGD:
    def __init__(self, params: list, lr: float):
        self.params, self.lr = params, lr

    def step(self) -> None:
        sgd(self.params, self.lr)

    def state_bytes(self) -> int:
        return 0                           # no state: the reason SGD is the lessons' optimizer


class AdamW:
    """torch's AdamW on this stage's parameters; its two moments per parameter are the optimizer memory."""

    def __init__(self, params: list, lr: float, weight_decay: float = 0.01):
        self.torch = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    def step(self) -> None:
        self.torch.step()

    def state_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for state in self.torch.state.values()
                   for t in state.values() if isinstance(t, torch.Tensor))


def make(name: str, params: list, lr: float):
    if name == "sgd":
        return SGD(params, lr)
    if name == "adamw":
        return AdamW(params, lr)
    raise ValueError(f"unknown optimizer {name!r}: use one of {', '.join(OPTIMIZERS)}")
