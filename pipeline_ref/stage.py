"""The layers one pipeline rank owns, and the activations it stashes between F and B.

A rank holds one module per *chunk* (one chunk except in interleaved schedules).
``forward`` runs a microbatch through a chunk and keeps what the backward will
need; ``backward`` takes the gradient of that chunk's output, runs autograd, and
returns the gradient of its input (which the executor sends upstream).

The last virtual stage also applies the loss. Each microbatch's loss is divided
by the number of microbatches, so that the gradients accumulated over the
microbatches equal the gradient of the mean loss over the whole batch: the
pipelined step equals the unsplit model's step.

The stash is measured, not guessed: a saved-tensors hook counts the bytes that
autograd keeps for each microbatch's backward (parameters excluded).

With ``recompute=True`` (activation checkpointing, GPipe's re-materialisation)
the forward runs without recording a graph and the stash keeps only the chunk's
input; the backward runs the forward again, recording, then differentiates.
Memory per stashed microbatch falls to one input tensor; compute rises by about
one forward. (Our models have no dropout; a model with random layers would need
the RNG state saved and restored, as torch.utils.checkpoint does.)
"""
from __future__ import annotations

import torch
from torch import nn


class Stage:
    def __init__(self, modules: list[nn.Module], is_first: list[bool], is_last: list[bool],
                 loss_fn=None, num_microbatches: int = 1, recompute: bool = False, split_backward: bool = False):
        self.modules = modules                   # indexed by chunk
        self.is_first = is_first                 # chunk holds virtual stage 0 (its input is data)
        self.is_last = is_last                   # chunk holds the last virtual stage (applies the loss)
        self.loss_fn = loss_fn
        self.loss_scale = 1.0 / num_microbatches
        self.recompute = recompute               # activation checkpointing (GPipe's re-materialisation)
        if recompute and split_backward:
            raise ValueError("activation checkpointing with a split backward (I/W) is not supported")
        self.weight_grads = WeightGradients(modules) if split_backward else None
        self._param_storages = {p.untyped_storage().data_ptr() for m in modules for p in m.parameters()}
        self.stash: dict[tuple[int, int], tuple] = {}
        self.stash_bytes = 0
        self.peak_stashed = 0
        self.peak_stashed_bytes = 0
        self.losses: list[torch.Tensor] = []     # unscaled loss of each microbatch, this step

    def parameters(self):
        seen = set()
        for m in self.modules:
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p

    def start_step(self) -> None:
        for p in self.parameters():
            p.grad = None
        self.losses.clear()
        self.peak_stashed = self.peak_stashed_bytes = 0

    def forward(self, microbatch: int, chunk: int, x: torch.Tensor, target=None):
        """Run one microbatch through one chunk; return the activation to send on (None at the end)."""
        if not self.is_first[chunk]:
            # A leaf that requires grad: after backward its .grad is what we send upstream.
            x = x.detach().requires_grad_(True)
        counted: set[tuple] = set()
        saved = [0]

        def pack(t: torch.Tensor):
            # Count each saved activation once, at its own size (a view of the whole batch is
            # not the whole batch); weights are not activations.
            key = (t.data_ptr(), tuple(t.shape))
            if t.untyped_storage().data_ptr() not in self._param_storages and key not in counted:
                counted.add(key)
                saved[0] += t.numel() * t.element_size()
            return t

        if self.recompute:
            # Keep only the input; the backward runs the forward again, this time recording the graph.
            with torch.no_grad():
                y = self._forward(chunk, x, target)
            saved[0] = x.numel() * x.element_size()
            self.stash[(microbatch, chunk)] = (x, None, target, saved[0])
        else:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                if self.weight_grads:
                    with self.weight_grads.capture((microbatch, chunk)):
                        y = self._forward(chunk, x, target)
                else:
                    y = self._forward(chunk, x, target)
            self.stash[(microbatch, chunk)] = (x, y, target, saved[0])
        self.stash_bytes += saved[0]
        self.peak_stashed = max(self.peak_stashed, len(self.stash))
        self.peak_stashed_bytes = max(self.peak_stashed_bytes, self.stash_bytes)
        return None if self.is_last[chunk] else y.detach()

    def _forward(self, chunk: int, x: torch.Tensor, target, record: bool = True):
        """The chunk's layers, and at the last virtual stage the loss (scaled; recorded unscaled)."""
        y = self.modules[chunk](x)
        if not self.is_last[chunk]:
            return y
        loss = self.loss_fn(y, target)
        if record:
            self.losses.append(loss.detach())
        return loss * self.loss_scale

    def backward(self, microbatch: int, chunk: int, grad_output: torch.Tensor | None):
        """Backward of one microbatch through one chunk; return the input's gradient (None at the start)."""
        try:
            x, y, target, nbytes = self.stash.pop((microbatch, chunk))
        except KeyError:
            raise RuntimeError(f"backward of microbatch {microbatch} (chunk {chunk}) before its forward") from None
        self.stash_bytes -= nbytes
        if self.recompute:
            y = self._forward(chunk, x, target, record=False)
        if self.is_last[chunk]:
            y.backward()
        else:
            torch.autograd.backward(y, grad_output)
        return None if self.is_first[chunk] else x.grad

    def backward_input(self, microbatch: int, chunk: int, grad_output: torch.Tensor | None):
        """Zero-bubble ``I``: only the input's gradient (to send upstream), keeping what ``W`` needs."""
        x, y, _, _ = self.stash[(microbatch, chunk)]
        wants = [] if self.is_first[chunk] else [x]
        grads = self.weight_grads.input_pass((microbatch, chunk), y, grad_output, wants)
        return None if self.is_first[chunk] else grads[0]

    def backward_weight(self, microbatch: int, chunk: int) -> None:
        """Zero-bubble ``W``: the weights' gradients, from what ``I`` kept; then the stash is freed."""
        *_, nbytes = self.stash.pop((microbatch, chunk))
        self.stash_bytes -= nbytes
        self.weight_grads.weight_pass((microbatch, chunk))


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
        self.owners = [m for chunk in modules for m in chunk.modules() if any(True for _ in m.parameters(recurse=False))]
        users: dict[int, int] = {}
        for module in self.owners:
            for p in module.parameters(recurse=False):
                users[id(p)] = users.get(id(p), 0) + 1
        unique = {id(p): p for m in self.owners for p in m.parameters(recurse=False) if p.requires_grad}
        self.shared = [p for key, p in unique.items() if users[key] > 1]
        self._current: list | None = None
        self._outputs: dict[tuple, list] = {}      # (microbatch, chunk) -> [(module, output)]
        self._pending: dict[tuple, list] = {}      # (microbatch, chunk) -> [(module, output, grad)]
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

    def input_pass(self, key, y, grad_output, wants: list) -> list:
        captured = self._outputs.pop(key)
        outputs = [o for _, o in captured]
        grads = torch.autograd.grad(y, wants + outputs + self.shared, grad_outputs=grad_output, retain_graph=True,
                                    allow_unused=True)
        for p, g in zip(self.shared, grads[len(wants) + len(outputs):]):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g
        self._pending[key] = [(m, o, g) for (m, o), g in zip(captured, grads[len(wants):]) if g is not None]
        return list(grads[:len(wants)])

    def weight_pass(self, key) -> None:
        for module, output, grad in self._pending.pop(key):
            shared = {id(p) for p in self.shared}
            params = [p for p in module.parameters(recurse=False) if p.requires_grad and id(p) not in shared]
            if not params:
                continue
            for p, g in zip(params, torch.autograd.grad(output, params, grad, retain_graph=True, allow_unused=True)):
                if g is not None:
                    p.grad = g if p.grad is None else p.grad + g
