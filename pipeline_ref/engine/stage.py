"""One chunk of the model on one rank (a virtual stage), and the activations it stashes between F and B.

    stage = Stage(module, is_first=False, is_last=False)
    outputs = stage.forward(microbatch, inputs)            # tuple of tensors to send on (None at the loss)
    grads_in = stage.backward(microbatch, grads_out)        # gradients of the inputs to send back

A rank holds one ``Stage`` per chunk (one chunk but for interleaved and ZB-V schedules), as
torch.distributed.pipelining holds one ``PipelineStage`` per virtual stage. A boundary is a tuple
of tensors (``message.py``): ``forward`` calls ``module(*inputs)``; ``backward`` takes one gradient
per output that requires one, runs autograd, and returns one gradient per input that gets one
(``wants_grad``, agreed at set-up: floating inputs the previous stage computed with grad).

A *split backward* (``split_backward=True``, the zero-bubble schedules') is a chunk's backward done as two
actions: ``I`` (``backward_input``), the gradient of the chunk's inputs, which the previous stage waits for,
and ``W`` (``backward_weight``), the gradient of its weights, which nobody waits for and so can fill a
bubble. Elsewhere in the package "split" alone means the model's split points (torch's term,
``front/split.py``); the grid of ranks is ``topology.grid``, layers to stages ``partition``.

The last virtual stage also applies the loss. Each microbatch's loss is divided by the number of
microbatches, so that the gradients accumulated over the microbatches equal the gradient of the
mean loss over the whole batch: the pipelined step equals the unsplit model's step.

The stash is measured, not guessed: a saved-tensors hook counts the bytes autograd keeps for each
microbatch's backward (parameters excluded); with a split backward, the module outputs kept for
``W`` and the output gradients an ``I`` keeps for it are counted too. A rank's stages share one
:class:`StashMeter`, so the peak is the rank's.

With ``recompute=True`` (activation checkpointing, GPipe's re-materialisation) the forward runs
without recording a graph and the stash keeps only the chunk's inputs; the backward runs the
forward again, recording, then differentiates. Memory per stashed microbatch falls to the inputs;
compute rises by about one forward. (Our models have no dropout; a model with random layers would
need the RNG state saved and restored, as torch.utils.checkpoint does.)
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from pipeline_ref.engine import precision
from pipeline_ref.engine.memory import nbytes
from pipeline_ref.engine.weight_gradients import WeightGradients


def as_tuple(value) -> tuple:
    return value if isinstance(value, tuple) else tuple(value) if isinstance(value, list) else (value,)


def _needs_grad(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point() and t.requires_grad


@dataclass
class Stashed:
    """What one microbatch leaves on a stage between its forward and its backward."""
    inputs: tuple              # the chunk's inputs (leaves that collect the gradient to send back)
    outputs: tuple | None      # its outputs, or (scaled loss,) on the last stage; None when recomputing
    target: object
    nbytes: int                # what autograd keeps for the backward (and an I's output gradients)


class StashMeter:
    """The activations a rank holds, over all its stages: how many microbatch-chunks, how many bytes,
    peaks."""

    def __init__(self):
        self.count = self.nbytes = self.peak_count = self.peak_bytes = 0

    def add(self, nbytes: int, count: int = 1) -> None:
        self.count += count
        self.nbytes += nbytes
        self.peak_count = max(self.peak_count, self.count)
        self.peak_bytes = max(self.peak_bytes, self.nbytes)

    def remove(self, nbytes: int, count: int = 1) -> None:
        self.count -= count
        self.nbytes -= nbytes

    def reset_peaks(self) -> None:
        self.peak_count, self.peak_bytes = self.count, self.nbytes


class Stage:
    def __init__(self, module: nn.Module, is_first: bool = False, is_last: bool = False, loss_fn=None,
                 num_microbatches: int = 1, recompute: bool = False, split_backward: bool = False,
                 meter: StashMeter | None = None):
        if recompute and split_backward:
            raise ValueError("activation checkpointing with a split backward (I/W) is not supported")
        self.module = module
        self.is_first = is_first                 # holds virtual stage 0: its input is data
        self.is_last = is_last                   # holds the last virtual stage: applies the loss
        self.loss_fn = loss_fn
        self.loss_scale = 1.0 / num_microbatches
        self.recompute = recompute
        self.weight_grads = WeightGradients([module]) if split_backward else None
        self.meter = meter if meter is not None else StashMeter()
        self.wants_grad: tuple[bool, ...] | None = None   # per input; None: every floating input
        self.weights = None                      # weight_versions.WeightVersions, for PipeDream and 2BW
        self.precision = contextlib.nullcontext  # a context to run the layers in: precision.autocast
        self.stash: dict[int, Stashed] = {}
        self.losses: list[torch.Tensor] = []     # unscaled loss of each microbatch, this step

    def parameters(self):
        return self.module.parameters()

    def start_step(self) -> None:
        for p in self.module.parameters():
            p.grad = None
        self.losses.clear()

    def _leaves(self, inputs: tuple) -> tuple:
        """The received inputs as leaves: those that get a gradient back require one."""
        wants = self.wants_grad or tuple(t.is_floating_point() for t in inputs)
        return tuple(t.detach().requires_grad_(True) if want else t for t, want in zip(inputs, wants))

    def forward(self, microbatch: int, inputs, target=None) -> tuple | None:
        """Run one microbatch through the chunk; return the outputs to send on (None on the last stage)."""
        inputs = as_tuple(inputs)
        if not self.is_first:
            inputs = self._leaves(inputs)
        if self.weights is not None:
            self.weights.before_forward(microbatch)
        # Asked now, not at set-up: a stage with weight versions switches its parameters' storage.
        param_storages = {p.untyped_storage().data_ptr() for p in self.module.parameters()}
        counted: set[tuple] = set()
        saved = [0]

        def pack(t: torch.Tensor):
            # Count each saved activation once, at its own size (a view of the whole batch is
            # not the whole batch); weights are not activations.
            key = (t.data_ptr(), tuple(t.shape))
            if t.untyped_storage().data_ptr() not in param_storages and key not in counted:
                counted.add(key)
                saved[0] += t.numel() * t.element_size()
            return t

        if self.recompute:
            # Keep only the inputs; the backward runs the forward again, this time recording the graph.
            with torch.no_grad():
                outputs = self._forward(inputs, target)
            stashed = Stashed(inputs, None, target, nbytes(inputs))
        else:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                if self.weight_grads:
                    with self.weight_grads.capture(microbatch):
                        outputs = self._forward(inputs, target)
                else:
                    outputs = self._forward(inputs, target)
            if self.weight_grads:
                # The outputs kept for W are held too, where autograd itself did not save them.
                saved[0] += nbytes(o for _, o in self.weight_grads.captured(microbatch)
                                    if (o.data_ptr(), tuple(o.shape)) not in counted)
            stashed = Stashed(inputs, outputs, target, saved[0])
        self.stash[microbatch] = stashed
        self.meter.add(stashed.nbytes)
        return None if self.is_last else tuple(t.detach() for t in outputs)

    def _forward(self, inputs: tuple, target, record: bool = True) -> tuple:
        """The chunk's layers, and at the last virtual stage the loss (scaled; recorded unscaled)."""
        y = self.run_module(*inputs)
        if not self.is_last:
            return as_tuple(y)
        with self.precision():                   # autocast's own policy computes losses in float32
            loss = self.loss_fn(y, target)
        if record:
            self.losses.append(loss.detach())
        return (loss * self.loss_scale,)

    def run_module(self, *inputs):
        """The chunk's layers alone, in the run's precision (also what set-up runs to learn the output
        specs)."""
        with self.precision():
            return self.module(*inputs)

    def _take(self, microbatch: int, op: str) -> Stashed:
        try:
            stashed = self.stash.pop(microbatch) if op != "I" else self.stash[microbatch]
        except KeyError:
            raise RuntimeError(f"{op} of microbatch {microbatch} before its forward") from None
        return stashed

    def _pairs(self, outputs: tuple, grads) -> tuple[list, list | None]:
        """The outputs that carry a gradient, and the gradients received for them (None: the loss)."""
        if self.is_last:
            return [outputs[0]], None
        carrying = [y for y in outputs if _needs_grad(y)]
        return carrying, list(as_tuple(grads))

    def _input_grads(self, stashed: Stashed, grads) -> tuple | None:
        if self.is_first:
            return None
        return tuple(g if g is not None else torch.zeros_like(x)
                     for x, g in zip(stashed.inputs, grads) if _needs_grad(x))

    def backward(self, microbatch: int, grads) -> tuple | None:
        """Backward of one microbatch through the chunk; return the inputs' gradients (None on the first
        stage)."""
        stashed = self._take(microbatch, "B")
        self.meter.remove(stashed.nbytes)
        if self.weights is not None:
            self.weights.before_backward(microbatch)     # the version its forward used
        # a full B in a split schedule (DualPipeV): W keeps nothing
        if self.weight_grads:
            self.weight_grads.forget(microbatch)
        outputs = stashed.outputs
        if self.recompute:
            outputs = self._forward(stashed.inputs, stashed.target, record=False)
        ys, gs = self._pairs(outputs, grads)
        torch.autograd.backward(ys, gs)
        input_grads = self._input_grads(stashed, [x.grad for x in stashed.inputs])
        if self.weights is not None:
            self.weights.after_backward(microbatch)      # the update, where the schedule's rule says
        return input_grads

    def backward_input(self, microbatch: int, grads) -> tuple | None:
        """Zero-bubble ``I``: only the inputs' gradients (to send upstream), keeping what ``W`` needs."""
        stashed = self._take(microbatch, "I")
        ys, gs = self._pairs(stashed.outputs, grads)
        wants = [] if self.is_first else [x for x in stashed.inputs if _needs_grad(x)]
        input_grads, kept = self.weight_grads.input_pass(microbatch, ys, gs, wants)
        stashed.nbytes += kept                      # the output gradients held until W are stash too
        self.meter.add(kept, count=0)
        if self.is_first:
            return None
        return tuple(g if g is not None else torch.zeros_like(x) for x, g in zip(wants, input_grads))

    def backward_weight(self, microbatch: int) -> None:
        """Zero-bubble ``W``: the weights' gradients, from what ``I`` kept; then the stash is freed."""
        stashed = self._take(microbatch, "W")
        self.meter.remove(stashed.nbytes)
        self.weight_grads.weight_pass(microbatch)


def rank_stages(model, schedule, rank: int, device: torch.device, num_microbatches: int,
                recompute: bool = False, autocast: str | None = None) -> dict[int, Stage]:
    """chunk -> Stage: the pieces of each virtual stage pipeline rank ``rank`` holds, sharing one stash meter.

    ``model``: the model cut into pieces (``cut.Cut``: ``layers``, one range of them per virtual stage in
    ``ranges``, ``chunk`` to make one module of a range, ``loss_fn``); ``schedule``: a ``geometry.Schedule``
    (where each chunk sits, whether the backward is split into I and W); ``autocast``: the run's mixed
    precision (``precision.autocast``)."""
    pipe, meter, stages = schedule.pipeline, StashMeter(), {}   # the rank's stash, over all its chunks
    for chunk in range(pipe.num_chunks):
        piece = model.ranges[pipe.virtual_stage(rank, chunk)]
        stages[chunk] = Stage(model.chunk(*model.layers[piece.start:piece.stop]).to(device),
                              pipe.is_first(rank, chunk), pipe.is_last(rank, chunk), model.loss_fn,
                              num_microbatches, recompute=recompute, split_backward=schedule.splits_backward,
                              meter=meter)
        stages[chunk].precision = precision.autocast(autocast, device)
    return stages


def stash_bytes(chunks: list, loss_fn, inputs, target, recompute: bool = False,
                split_backward: bool = False) -> list[int]:
    """Bytes one microbatch leaves stashed on each of ``chunks`` (a model's virtual stages, in order: one
    module each), run through a real ``Stage`` on this process."""
    sizes, x = [], (inputs,)
    for v, module in enumerate(chunks):
        last = v == len(chunks) - 1
        stage = Stage(module, is_first=v == 0, is_last=last, loss_fn=loss_fn, recompute=recompute,
                      split_backward=split_backward, meter=StashMeter())
        outputs = stage.forward(0, x, target if last else None)
        sizes.append(stage.stash[0].nbytes)
        x = outputs
    return sizes
