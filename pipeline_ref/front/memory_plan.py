"""Memory per rank before training: what a configuration will hold, whether it fits a budget, the largest GPT
that does.

    python -m pipeline_ref memory --memory-budget 0.5 --model text_gpt --model-kwargs '{"dim": 256}' \\
        --optimizer adamw --schedule 1f1b --microbatches 8
    python -m pipeline_ref run -n 2 --memory-budget 0.5 ...     # refused before any rank starts if it cannot
                                                                fit

The reason pipelines exist is a model that does not fit one device, so the course counts, per pipeline rank:

    parameters    the bytes of the parameters its stages hold (a tied weight on each rank holding a copy)
    gradients     the same again: one gradient per parameter
    optimizer     SGD nothing; AdamW two moments per parameter (and one step counter per tensor)
    activations   the peak of the stash: each microbatch's activations held from its F to its B (or W),
                  played over the rank's own list of actions, with the bytes one microbatch leaves on each of
                  its chunks measured by running it through the real ``Stage`` on one process (a saved-tensors
                  hook, as in training: the same count the run reports as ``peak_stashed_bytes``)

The activation estimate leaves out what the schedule adds beyond the stash (an I's output gradients kept for
its W, though not the outputs W needs, which are counted; boundary buffers; autograd's temporaries during a
backward) and the allocator's own overhead; on a GPU, also the CUDA context. A budget should leave room for
them.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline_ref.front import partition
from pipeline_ref.engine.memory import (Memory, nbytes, optimizer_bytes, over_budget, peak_activation_bytes,
                                        table)
from pipeline_ref.engine.stage import stash_bytes


def plan(layers: list, loss_fn, batch, schedule, microbatches: int, optimizer: str = "sgd",
         method: str = "uniform", dp: int = 1, recompute: bool = False) -> list[Memory]:
    """What each pipeline rank will hold for ``schedule`` (a ``geometry.Schedule``) on this model and
    batch."""
    pipe = schedule.pipeline
    if method == "time":
        method = "parameters"          # time needs the ranks' profile; parameters stands in before training
    ranges = (partition.uniform(len(layers), pipe.num_virtual_stages) if method == "uniform"
              else partition.by_parameters(layers, pipe.num_virtual_stages))
    inputs, targets = batch
    per_micro, per_target = inputs.shape[0] // (dp * microbatches), targets.shape[0] // (dp * microbatches)
    modules = [nn.Sequential(*layers[r.start:r.stop]) for r in ranges]
    with torch.random.fork_rng(devices=[]):
        stash = stash_bytes(modules, loss_fn, inputs[:per_micro], targets[:per_target], recompute,
                            schedule.splits_backward)
    ranks = []
    for rank in range(pipe.num_stages):
        chunks = range(pipe.num_chunks)
        params = list({id(p): p for c in chunks for i in ranges[pipe.virtual_stage(rank, c)]
                       for p in layers[i].parameters()}.values())
        chunk_bytes = {c: stash[pipe.virtual_stage(rank, c)] for c in chunks}
        ranks.append(Memory(nbytes(params), nbytes(params), optimizer_bytes(optimizer, params),
                            peak_activation_bytes(schedule[rank], chunk_bytes)))
    return ranks


def check_budget(cfg, layers, loss_fn, batch, schedule) -> None:
    """ValueError, with the table of every rank, if a rank of run ``cfg`` (a ``RunConfig``) would hold more
    than ``cfg.memory_budget`` GB."""
    if not isinstance(layers, (list, tuple)):
        raise ValueError("--memory-budget plans a list of layers; a whole nn.Module (--split) is not "
                         "planned yet")
    ranks = plan(layers, loss_fn, batch, schedule, cfg.microbatches, cfg.optimizer, cfg.partition, cfg.dp,
                 cfg.checkpoint)
    problem = over_budget(ranks, cfg.memory_budget)
    if problem:
        raise ValueError(f"{problem}; add stages (--pp), microbatches, --checkpoint, or a smaller model\n"
                         + table(ranks))


def largest_fitting(fits, start: int = 1, limit: int = 4096) -> int | None:
    """The largest n in [start, limit] with ``fits(n)`` (monotone: bigger never fits better); None if none
    fits."""
    if not fits(start):
        return None
    low, high = start, start
    while high < limit and fits(min(2 * high, limit)):
        low = high = min(2 * high, limit)
    high = min(2 * high, limit)
    while low < high:                  # fits(low) holds; the answer is in [low, high]
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low
