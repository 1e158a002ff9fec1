"""The weight versions one stage keeps for an asynchronous schedule (PipeDream, 2BW): weight stashing.

    store = WeightVersions(params, forward_version, updates_after, lr=0.1, num_forwards=steps * m)
    stage.weights = store            # Stage.forward / backward call the three hooks below

    before_forward(j)    switch the stage's parameters to the version F of j uses, and remember it
    before_backward(j)   switch back to exactly that version: the backward differentiates the function
                         its forward computed, even if the stage has updated since (weight stashing)
    after_backward(j)    when the rule says so, the optimizer step: a *new* version, current - lr * grad

A version is a list of tensors, one per parameter; switching is ``param.data = tensor`` (no copy), and an
update never writes into a version in place, since a stashed microbatch may still read it. (So the views of
the weights autograd saved in a forward already read that forward's version; the switch back before the
backward is still needed for an op that saves the Parameter itself, as layer_norm does its weight, and for
recomputation: tests/test_pipedream.py shows both.) A version is
dropped as soon as nothing needs it: no stashed microbatch used it, it is not the current one, and no
forward still to come will use it. ``peak`` is the most versions held at once (counted after each drop:
an optimizer that updates in place needs none extra while it runs). ``log`` records (op, microbatch,
version) for every action, so a test or a lesson can draw which version each action used.

The rule (which version a forward uses, when to update) comes from ``asynchronous.py``; the store only
keeps versions and checks that the one asked for exists. The optimizer is plain SGD, written out.
"""
from __future__ import annotations

from typing import Callable

import torch

from pipeline_ref.engine.memory import nbytes


class WeightVersions:
    def __init__(self, params, forward_version: Callable[[int, int], int],
                 updates_after: Callable[[int], bool],
                 lr: float, num_forwards: int, where: str = "this stage"):
        """``forward_version(j, current)``: the version F of j uses (``current``: the newest version's
        number);
        ``updates_after(j)``: whether the optimizer steps after B of j; ``num_forwards``: microbatches in the
        run (no forward comes after the last one, so nothing is kept for it)."""
        self.params = list(params)
        self.forward_version, self.updates_after = forward_version, updates_after
        self.lr, self.num_forwards, self.where = lr, num_forwards, where
        self.versions: dict[int, list[torch.Tensor]] = {0: [p.detach() for p in self.params]}
        self.current = 0                          # number of updates applied: the newest version
        self.stash: dict[int, int] = {}           # microbatch in flight -> the version its forward used
        self.next_forward = 0
        self.peak = 1
        self.log: list[tuple[str, int, int]] = []

    @property
    def version_bytes(self) -> int:
        """Bytes of one version (all versions have the same shapes)."""
        return nbytes(self.params)

    def _load(self, version: int) -> None:
        for p, tensor in zip(self.params, self.versions[version]):
            p.data = tensor

    def before_forward(self, microbatch: int) -> None:
        version = self.forward_version(microbatch, self.current)
        if version not in self.versions:
            raise RuntimeError(f"{self.where}: the forward of microbatch {microbatch} needs weight version "
                               f"{version}, but the stage holds only {sorted(self.versions)} (newest "
                               f"{self.current})")
        self._load(version)
        self.stash[microbatch] = version
        self.next_forward = microbatch + 1
        self.log.append(("F", microbatch, version))

    def before_backward(self, microbatch: int) -> None:
        version = self.stash[microbatch]
        self._load(version)
        self.log.append(("B", microbatch, version))

    def after_backward(self, microbatch: int) -> None:
        del self.stash[microbatch]
        if self.updates_after(microbatch):
            # SGD on the newest version with the gradient computed at the stashed one: PipeDream's update.
            with torch.no_grad():
                new = [w - self.lr * p.grad if p.grad is not None else w
                       for w, p in zip(self.versions[self.current], self.params)]
            self.current += 1
            self.versions[self.current] = new
            for p in self.params:
                p.grad = None
        self._drop()

    def _drop(self) -> None:
        needed = set(self.stash.values()) | {self.current}
        if self.next_forward < self.num_forwards:
            # Forwards run in microbatch order and their versions never decrease: the next one bounds them
            # all.
            needed |= {v for v in self.versions if v >= self.forward_version(self.next_forward, self.current)}
        for version in [v for v in self.versions if v not in needed]:
            del self.versions[version]
        self.peak = max(self.peak, len(self.versions))

    def finish(self) -> None:
        """Leave the newest version in the parameters (what the run ends with)."""
        self._load(self.current)
