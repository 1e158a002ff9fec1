"""The optimizer each stage runs on its own parameters after a step's gradients are reduced.

    opt = optim.make("adamw", params, lr=1e-3)
    opt.step()                 # after the all-reduces; a skipped step (NaN/inf, fp16 overflow) never calls it
    opt.state_bytes()          # what the optimizer keeps per parameter, counted in the run's memory report
    opt.state_of(param)        # that parameter's state ({} for SGD): a checkpoint keeps it by parameter name
    opt.restore(param, state)  # and puts back, so a resumed AdamW continues with its moments and step count

Each stage owns an optimizer over exactly the parameters it holds, as DeepSpeed and
torch.distributed.pipelining do: the update is elementwise, so N stages updating their own slices equal one
device updating the whole model (a parameter tied across stages is updated on every rank that holds a copy,
from the same summed gradient, so the copies stay equal). ``sgd`` is written out, nothing hidden; ``adamw`` is
``torch.optim.AdamW``.
"""
from __future__ import annotations

import torch

from pipeline_ref.engine.memory import nbytes

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

    def state_of(self, param) -> dict:
        return {}

    def restore(self, param, state: dict) -> None:
        pass


class AdamW:
    """torch's AdamW on this stage's parameters; its two moments per parameter are the optimizer memory."""

    def __init__(self, params: list, lr: float, weight_decay: float = 0.01):
        self.torch = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    def step(self) -> None:
        self.torch.step()

    def state_bytes(self) -> int:
        return nbytes(t for state in self.torch.state.values() for t in state.values()
                      if isinstance(t, torch.Tensor))

    def state_of(self, param) -> dict:
        """``exp_avg``, ``exp_avg_sq`` and ``step`` (a tensor) of ``param``; {} before its first update."""
        return {k: v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v
                for k, v in self.torch.state.get(param, {}).items()}

    def restore(self, param, state: dict) -> None:
        """Put back what ``state_of`` gave. The moments go to the parameter's device; ``step`` stays where
        torch keeps it (a CPU tensor unless the optimizer is fused or capturable), so the update is bit for
        bit the one an unstopped run makes."""
        if not state:
            return
        self.torch.state[param] = {k: (v.clone() if k == "step" else v.to(param.device, copy=True))
                                   if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def make(name: str, params: list, lr: float):
    if name == "sgd":
        return SGD(params, lr)
    if name == "adamw":
        return AdamW(params, lr)
    raise ValueError(f"unknown optimizer {name!r}: use one of {', '.join(OPTIMIZERS)}")
