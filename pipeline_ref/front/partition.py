"""Layers -> pipeline stages: which contiguous run of layers each stage owns.

Every partition is a list with one ``range`` of layer indices per stage: in order, contiguous, none empty,
together covering every layer once.

    ranges = partition.uniform(len(layers), num_stages)       # equal layer counts
    ranges = partition.by_parameters(layers, num_stages)      # balance parameters (memory)
    ranges = partition.by_cost(milliseconds, num_stages)      # balance measured time per layer
    partition.stage_costs(milliseconds, ranges)               # what each stage then costs
    stages = partition.group(layers, ranges)                  # the layers themselves, one list per stage
    partition.tied_groups(layers, ranges, pipeline)           # Parameters that stages on two ranks share

A pipeline in steady state runs at the pace of its slowest stage, so ``by_cost`` minimises the slowest stage's
cost, exactly (dynamic programming over all contiguous splits, not a greedy heuristic). Pure Python, no torch
needed except for ``by_parameters``.
"""
from __future__ import annotations

import math

from pipeline_ref.engine.machine import wait_quietly
from pipeline_ref.front.profiling import layer_costs


def _check_counts(num_layers: int, num_stages: int) -> None:
    if not isinstance(num_stages, int) or not isinstance(num_layers, int):
        raise TypeError(f"num_layers and num_stages must be integers, got {num_layers!r} and {num_stages!r}")
    if num_stages < 1:
        raise ValueError(f"num_stages must be at least 1, got {num_stages} (for {num_layers} layers)")
    if num_stages > num_layers:
        raise ValueError(f"cannot split {num_layers} layers into {num_stages} stages: every stage needs at "
                         f"least one layer; use at most {num_layers} stages")


def uniform(num_layers: int, num_stages: int) -> list[range]:
    """Equal layer counts; when they don't divide, the first ``num_layers % num_stages`` stages get one more.

    (numpy.array_split's convention: predictable, and ``by_cost`` with equal costs gives the same split.)
    """
    _check_counts(num_layers, num_stages)
    base, extra = divmod(num_layers, num_stages)
    bounds = [0]
    for stage in range(num_stages):
        bounds.append(bounds[-1] + base + (stage < extra))
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def _as_costs(costs) -> list[float]:
    values = [float(c) for c in costs]      # lists, tuples, numpy arrays and 1-d tensors alike
    for index, value in enumerate(values):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"layer costs must be finite and >= 0; layer {index} costs {value}")
    return values


def by_cost(costs, num_stages: int) -> list[range]:
    """The contiguous split of layers with per-layer ``costs`` into ``num_stages`` that minimises the slowest
    stage's cost. Among the optimal splits it returns the most even one (least sum of squared stage costs,
    then of squared layer counts; remaining ties give earlier stages more layers), so equal costs give
    ``uniform``. Float costs are compared to within 1e-10 of the total, so "optimal" holds up to that
    rounding.
    """
    costs = _as_costs(costs)
    n, stages = len(costs), num_stages
    _check_counts(n, stages)
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + c)

    def cost(i: int, j: int) -> float:      # layers i..j-1; always this expression, so comparisons are exact
        return prefix[j] - prefix[i]

    # Phase 1: slowest[k][j] = the least possible slowest stage when the first j layers form k stages. Stage k
    # takes layers i..j-1 after the best split of the first i layers into k-1: O(stages * n^2), exact.
    slowest = [[math.inf] * (n + 1) for _ in range(stages + 1)]
    slowest[0][0] = 0.0
    for k in range(1, stages + 1):
        for j in range(k, n - (stages - k) + 1):
            slowest[k][j] = min(max(slowest[k - 1][i], cost(i, j)) for i in range(k - 1, j))
    bottleneck = slowest[stages][n]

    # Phase 2: among splits whose every stage costs at most the bottleneck, the most even. Sums of squares add
    # up stage by stage, so the same recursion finds the minimum. Float sums of equal real costs differ in the
    # last bits (0.1 + 0.1 + 0.1 > 0.3), so costs count as equal within a tolerance far below any timing
    # noise.
    slack = 1e-10 * prefix[-1]
    tolerance = slack * prefix[-1]
    score: list[list[tuple[float, int] | None]] = [[None] * (n + 1) for _ in range(stages + 1)]
    cut = [[0] * (n + 1) for _ in range(stages + 1)]
    score[0][0] = (0.0, 0)
    for k in range(1, stages + 1):
        for j in range(k, n - (stages - k) + 1):
            for i in range(k - 1, j):       # ascending, ties replace: the last stage stays as short as it can
                before, c = score[k - 1][i], cost(i, j)
                if before is None or c > bottleneck + slack:
                    continue
                candidate = (before[0] + c * c, before[1] + (j - i) ** 2)
                best = score[k][j]
                if best is None or candidate[0] < best[0] - tolerance or (
                        abs(candidate[0] - best[0]) <= tolerance and candidate[1] <= best[1]):
                    score[k][j], cut[k][j] = candidate, i
    bounds = [n]
    for k in range(stages, 0, -1):
        bounds.append(cut[k][bounds[-1]])
    bounds.reverse()
    return [range(a, b) for a, b in zip(bounds, bounds[1:])]


def by_parameters(layers, num_stages: int) -> list[range]:
    """``by_cost`` with each layer's parameter count as its cost: balances the parameters' memory.

    A Parameter shared by two layers (tied embeddings) counts in both: each stage holding one keeps a copy.
    """
    return by_cost([sum(p.numel() for p in layer.parameters()) for layer in layers], num_stages)


def _check_ranges(ranges, num_layers: int) -> None:
    expected_start = 0
    for stage, r in enumerate(ranges):
        if not isinstance(r, range) or r.step != 1:
            raise ValueError(f"stage {stage}: expected a range of layer indices with step 1, got {r!r}")
        if r.start != expected_start or len(r) == 0:
            raise ValueError(f"stage {stage}: {r!r} should start at layer {expected_start} and not be empty; "
                             f"a partition is contiguous, in order, with no empty stage")
        expected_start = r.stop
    if expected_start != num_layers:
        raise ValueError(f"the stages cover layers 0..{expected_start - 1} but there are {num_layers} layers")


def stage_costs(costs, ranges: list[range]) -> list[float]:
    """The summed cost of each stage's layers."""
    costs = _as_costs(costs)
    _check_ranges(ranges, len(costs))
    return [math.fsum(costs[r.start:r.stop]) for r in ranges]


def group(layers, ranges: list[range]) -> list[list]:
    """The layers of each stage, as lists (one per range)."""
    layers = list(layers)
    _check_ranges(ranges, len(layers))
    return [layers[r.start:r.stop] for r in ranges]


def choose(comm, method: str, layers, sample, num_pieces: int, profile=None) -> tuple[list[range],
                                                                                      list[float] | None]:
    """Layers -> ``num_pieces`` (virtual) stages, the same on every rank; with "time", also each layer's
    seconds.

    "time" profiles every layer once, on world rank 0, and broadcasts the costs:
    every rank must cut the model at the same places, and timings differ between ranks.
    ``profile(layers, sample)`` measures them (default ``profiling.layer_costs``; ``cut.piece_costs`` for
    pieces).
    """
    if method == "uniform":
        return uniform(len(layers), num_pieces), None
    if method == "parameters":
        return by_parameters(layers, num_pieces), None
    costs = (profile or layer_costs)(layers, sample) if comm.Get_rank() == 0 else None
    wait_quietly(comm)                 # the others sleep while rank 0 profiles, instead of spinning
    costs = comm.bcast(costs, root=0)
    return by_cost(costs, num_pieces), costs


def tied_groups(layers, ranges, pipeline, names: dict | None = None) -> list[tuple[str, list[int]]]:
    """Parameters used by layers on more than one rank: (name, pipeline ranks holding a copy), by name.

    Found from the model itself: the same Parameter object reached from layers on
    different stages (e.g. the tiny GPT's embedding and output head). ``ranges``
    holds one range per virtual stage; virtual stage v lives on ``pipeline.place(v).rank`` (a
    ``geometry.Pipeline``), and two chunks on one rank share the one Parameter object, needing no message.
    ``names``: id(Parameter) -> its name on one device (default: ``"{layer index}.{name in the layer}"``, as
    ``nn.Sequential(*layers)`` names it).
    """
    stages_of: dict[int, set] = {}
    name_of: dict[int, str] = {}
    for vstage, r in enumerate(ranges):
        for index in r:
            for name, p in layers[index].named_parameters():
                stages_of.setdefault(id(p), set()).add(pipeline.place(vstage).rank)
                name_of.setdefault(id(p), names[id(p)] if names is not None else f"{index}.{name}")
    return sorted((name_of[k], sorted(v)) for k, v in stages_of.items() if len(v) > 1)
