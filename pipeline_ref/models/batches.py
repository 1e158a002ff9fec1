"""A run's data: one fixed global batch, or a batch per step; and the share of it each rank holds.

A model factory returns its data as ``(inputs, targets)``, the same global batch at every step (the toy
models), or as a callable ``step -> (inputs, targets)`` (``text_data.Batches``: real text, a new batch each
step). Either way every rank holds the whole global batch, identical everywhere (seeded), and takes its own
share:

    batch = batches.first_batch(data)          # a pair; for a callable, a PerStep standing for step 0
    inputs, targets = batches.microbatches(batch.at(step), cfg, topo, pipeline, device)
"""
from __future__ import annotations

import torch


def floats_to(dtype: torch.dtype, pair: tuple) -> tuple:
    """A batch's floating tensors in ``dtype``; integer token ids stay as they are."""
    return tuple(t.to(dtype) if t.is_floating_point() else t for t in pair)


class PerStep(tuple):
    """A factory's per-step data (a callable ``step -> (inputs, targets)``, e.g. ``text_data.Batches``), as
    the pair ``(inputs, targets)`` of step 0, which every check and shape agreement uses, plus ``at(step)``.

    A tuple, so code written for a fixed batch (``inputs, targets = batch``) reads step 0 unchanged; the
    training loop asks ``at(step)`` for each later step's batch.
    """

    def __new__(cls, source, convert=None):
        self = super().__new__(cls, convert(source(0)) if convert else source(0))
        self.source, self.convert = source, convert
        return self

    def __reduce__(self):           # rebuilt from its source (a tuple would pickle only step 0's pair)
        return PerStep, (self.source, self.convert)

    def at(self, step: int):
        batch = self.source(step)
        return self.convert(batch) if self.convert else batch


def first_batch(data):
    """What a factory returned as its data, as a pair: a fixed ``(inputs, targets)``, or a
    :class:`PerStep`."""
    return PerStep(data) if callable(data) and not isinstance(data, (tuple, list)) else data


def microbatches(batch, cfg, topo, pipe, device) -> tuple[list | None, list | None]:
    """This rank's share of a global batch: its replica's slice, cut into m microbatches; the inputs on the
    first stage, the targets on the loss stage, nothing elsewhere."""
    inputs, targets = batch
    per_input, per_target = inputs.shape[0] // cfg.dp, targets.shape[0] // cfg.dp
    mine = slice(topo.replica * per_input, (topo.replica + 1) * per_input)
    theirs = slice(topo.replica * per_target, (topo.replica + 1) * per_target)
    m = cfg.microbatches
    return ([(x.to(device),) for x in inputs[mine].tensor_split(m)] if topo.stage == 0 else None,
            [t.to(device) for t in targets[theirs].tensor_split(m)] if topo.stage == pipe.loss_rank else None)
