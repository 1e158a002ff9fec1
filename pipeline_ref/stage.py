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
                 loss_fn=None, num_microbatches: int = 1, recompute: bool = False):
        self.modules = modules                   # indexed by chunk
        self.is_first = is_first                 # chunk holds virtual stage 0 (its input is data)
        self.is_last = is_last                   # chunk holds the last virtual stage (applies the loss)
        self.loss_fn = loss_fn
        self.loss_scale = 1.0 / num_microbatches
        self.recompute = recompute               # activation checkpointing (GPipe's re-materialisation)
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
