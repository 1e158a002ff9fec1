"""The split backward of zero-bubble schedules: a chunk's input gradients now (``I``), its weight gradients
later (``W``), nothing computed twice. ``Stage`` uses it when a schedule splits its backward; see the class
below.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline_ref.engine.memory import nbytes


class WeightGradients:
    """The split backward: input gradients now (``I``), weight gradients later (``W``), nothing twice.

    During the forward, the output of every module that owns parameters directly
    (a Linear, a LayerNorm, an Embedding, a head holding a tied weight) is kept.
    ``I`` asks autograd for the gradient of the stage input *and* of those outputs:
    autograd then skips every weight-gradient kernel (it computes only what leads
    to the tensors asked for). ``W`` asks, module by module, for the gradient of
    its own parameters from its output and the output gradient ``I`` kept: only
    the weight-gradient kernels run. (A module whose parameters are used before a
    child module inside it would recompute through that child; our models have none.)

    A Parameter that two modules of this rank use (a tied embedding and head on one
    stage) is the exception: from the head's output, autograd would reach it again
    through the embedding, counting that part twice. Its gradient is taken in ``I``.
    The same idea as torch.distributed.pipelining's stage_backward_input/weight,
    at the granularity of modules rather than autograd nodes.
    """

    def __init__(self, modules: list[nn.Module]):
        self.owners = [m for chunk in modules for m in chunk.modules()
                       if any(True for _ in m.parameters(recurse=False))]
        users: dict[int, int] = {}
        for module in self.owners:
            for p in module.parameters(recurse=False):
                users[id(p)] = users.get(id(p), 0) + 1
        unique = {id(p): p for m in self.owners for p in m.parameters(recurse=False) if p.requires_grad}
        self.shared = [p for key, p in unique.items() if users[key] > 1]
        self._current: list | None = None
        self._outputs: dict[int, list] = {}        # microbatch -> [(module, output)]
        self._pending: dict[int, list] = {}        # microbatch -> [(module, output, grad)]
        for module in self.owners:
            module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if self._current is not None and isinstance(output, torch.Tensor) and output.requires_grad:
            self._current.append((module, output))

    class _Capture:
        def __init__(self, owner, key):
            self.owner, self.key = owner, key

        def __enter__(self):
            self.owner._current = []

        def __exit__(self, *exc):
            self.owner._outputs[self.key] = self.owner._current
            self.owner._current = None

    def capture(self, key):
        return self._Capture(self, key)

    def forget(self, key) -> None:
        """Drop what the forward of ``key`` kept, when its backward runs whole (B) rather than as I and W."""
        self._outputs.pop(key, None)

    def captured(self, key) -> list:
        """The (module, output) pairs the forward of ``key`` kept for its W."""
        return self._outputs.get(key, [])

    def input_pass(self, key, ys: list, grad_outputs: list | None, wants: list) -> tuple[list, int]:
        """Gradients of ``wants`` (the stage inputs) from ``ys``; keeps the owners' output gradients for
        ``W``.

        Returns (the inputs' gradients, bytes of the output gradients kept until ``W``)."""
        captured = self._outputs.pop(key)
        outputs = [o for _, o in captured]
        grads = torch.autograd.grad(ys, wants + outputs + self.shared, grad_outputs=grad_outputs,
                                    retain_graph=True,
                                    allow_unused=True)
        for p, g in zip(self.shared, grads[len(wants) + len(outputs):]):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g
        self._pending[key] = [(m, o, g) for (m, o), g in zip(captured, grads[len(wants):]) if g is not None]
        return list(grads[:len(wants)]), nbytes(g for _, _, g in self._pending[key])

    def weight_pass(self, key) -> None:
        for module, output, grad in self._pending.pop(key):
            shared = {id(p) for p in self.shared}
            params = [p for p in module.parameters(recurse=False) if p.requires_grad and id(p) not in shared]
            if not params:
                continue
            for p, g in zip(params,
                            torch.autograd.grad(output, params, grad, retain_graph=True, allow_unused=True)):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad + g
