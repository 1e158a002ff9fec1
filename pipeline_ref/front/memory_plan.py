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
from pipeline_ref.engine.memory import Memory, nbytes
from pipeline_ref.engine.stage import Stage, StashMeter
from pipeline_ref.schedules.geometry import Op

GB = 1e9


def optimizer_bytes(name: str, params: list) -> int:
    if name == "sgd":
        return 0
    if name == "adamw":        # exp_avg and exp_avg_sq per parameter, a float32 step counter per tensor
        return 2 * nbytes(params) + 4 * len(params)
    raise ValueError(f"unknown optimizer {name!r}")


def chunk_stash_bytes(layers: list, loss_fn, ranges: list[range], inputs, target, recompute: bool = False,
                      split_backward: bool = False) -> list[int]:
    """Bytes one microbatch leaves stashed on each virtual stage, run through a real ``Stage`` (one
    process)."""
    sizes, x = [], (inputs,)
    for v, piece in enumerate(ranges):
        last = v == len(ranges) - 1
        stage = Stage(nn.Sequential(*layers[piece.start:piece.stop]), is_first=v == 0, is_last=last,
                      loss_fn=loss_fn, recompute=recompute, split_backward=split_backward, meter=StashMeter())
        outputs = stage.forward(0, x, target if last else None)
        sizes.append(stage.stash[0].nbytes)
        x = outputs
    return sizes


def peak_activation_bytes(actions, chunk_bytes: dict[int, int]) -> int:
    """Play one rank's actions: + a chunk's bytes at its F, - at its B (or W, which ends a split backward)."""
    held = peak = 0
    for action in actions:
        if action.op == "F":
            held += chunk_bytes[action.chunk]
            peak = max(peak, held)
        elif Op(action.op).ends_backward:
            held -= chunk_bytes[action.chunk]
    return peak


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
    with torch.random.fork_rng(devices=[]):
        stash = chunk_stash_bytes(layers, loss_fn, ranges, inputs[:per_micro], targets[:per_target],
                                  recompute,
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


def over_budget(ranks: list[Memory], budget_gb: float) -> str | None:
    """None if every rank fits ``budget_gb``; else a sentence naming the worst rank and by how much it is
    over."""
    worst = max(range(len(ranks)), key=lambda r: ranks[r].total)
    need = ranks[worst]
    if need.total <= budget_gb * GB:
        return None
    return (f"rank {worst} would hold {need.total / GB:.3f} GB (parameters {need.parameters / GB:.3f}, "
            f"gradients {need.gradients / GB:.3f}, optimizer {need.optimizer / GB:.3f}, activations "
            f"{need.peak_stashed_bytes / GB:.3f}), {(need.total - budget_gb * GB) / GB:.3f} GB over the "
            f"budget of {budget_gb:g} GB per rank")


def table(ranks: list[Memory]) -> str:
    lines = [f"{'rank':<6}{'parameters':>12}{'gradients':>12}{'optimizer':>12}{'activations':>13}"
             f"{'total':>10}  (MB)"]
    for r, b in enumerate(ranks):
        lines.append(f"{r:<6}{b.parameters / 1e6:>12.1f}{b.gradients / 1e6:>12.1f}{b.optimizer / 1e6:>12.1f}"
                     f"{b.peak_stashed_bytes / 1e6:>13.1f}{b.total / 1e6:>10.1f}")
    return "\n".join(lines)


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
