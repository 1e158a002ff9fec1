"""What each action and each message of a schedule costs, from the forms ``simulate.simulate`` accepts.

Layer: sim (no processes). Used by ``simulate.py``; run nothing here directly.

An op's cost (``forward``, ``backward``, ``input_grad``, ``weight_grad``, ``forward_backward``) is one of

- a number: every action of that op, on every rank;
- a sequence with one entry per rank, each a number or a sequence with one number per chunk;
- a callable ``(rank, chunk, microbatch) -> cost``, or a Mapping keyed ``(rank, chunk, microbatch)``:
  a cost per action (a cluster's cost model, uneven microbatches).

A message's time (``latency``) is a number for any two different ranks, a callable
``(source_rank, destination_rank) -> time``, or a nested sequence ``latency[source][destination]`` (a
link model: NVLink inside a node, the network across). A message between two chunks of one rank (the turn
of a V) costs nothing. Costs and times must be non-negative; a bad one is refused with its name.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from pipeline_ref.schedules.replay import Plan

Cost = float | Sequence[float] | Sequence[Sequence[float]] | Callable[[int, int, int], float] | Mapping
Latency = float | Callable[[int, int], float] | Sequence[Sequence[float]]


def per_rank(name: str, cost, num_stages: int) -> list | None:
    """The cost as one entry per rank (a number or a list per chunk), or None when it is given per action."""
    if callable(cost) or isinstance(cost, Mapping):
        return None
    if isinstance(cost, (int, float)) and not isinstance(cost, bool):
        costs = [float(cost)] * num_stages
    elif isinstance(cost, Sequence) and not isinstance(cost, str):
        costs = [[float(c) for c in entry] if isinstance(entry, Sequence) else float(entry) for entry in cost]
    else:
        raise ValueError(f"{name}: expected a number, one per rank, a callable (rank, chunk, microbatch) or "
                         f"a mapping, got {cost!r}")
    if len(costs) != num_stages:
        raise ValueError(f"{name}: {len(costs)} costs given for {num_stages} ranks "
                         f"(give one, or one per rank)")
    if any(min(c) < 0 if isinstance(c, list) else c < 0 for c in costs):
        raise ValueError(f"{name}: costs must be non-negative, got {costs}")
    return costs


def of_actions(name: str, cost, plan: Plan, op_code: int, halve: bool = False) -> list[np.ndarray]:
    """Per rank, the cost of each action whose op is ``op_code`` (other actions get 0): float arrays.

    ``halve``: the cost given is a whole backward's and this op takes half of it (I, W by default).
    """
    table = per_rank(name, cost, len(plan.columns))
    out = []
    for rank, (ops, microbatches, chunks) in enumerate(plan.columns):
        mine = ops == op_code
        if table is not None:
            entry = table[rank]
            if isinstance(entry, list):
                if len(entry) < plan.pipeline.num_chunks:
                    raise ValueError(f"{name}: rank {rank} has {len(entry)} chunk costs for "
                                     f"{plan.pipeline.num_chunks} chunks")
                values = np.array(entry, np.float64)[chunks]
            else:
                values = np.full(len(ops), entry)
        else:
            values = np.zeros(len(ops))
            for k in np.flatnonzero(mine).tolist():
                values[k] = _one(name, cost, rank, int(chunks[k]), int(microbatches[k]))
        values = np.where(mine, values / 2 if halve else values, 0.0)
        out.append(values)
    return out


def _one(name: str, cost, rank: int, chunk: int, microbatch: int) -> float:
    try:
        value = float(cost(rank, chunk, microbatch) if callable(cost) else cost[(rank, chunk, microbatch)])
    except KeyError:
        raise ValueError(f"{name}: no cost for (rank {rank}, chunk {chunk}, "
                         f"microbatch {microbatch})") from None
    if not value >= 0:
        raise ValueError(f"{name}: costs must be non-negative, got {value} for (rank {rank}, chunk {chunk}, "
                         f"microbatch {microbatch})")
    return value


def latency_matrix(latency, num_stages: int) -> np.ndarray:
    """``latency`` as a num_stages x num_stages array [source, destination]."""
    if callable(latency):
        matrix = np.array([[float(latency(s, d)) for d in range(num_stages)] for s in range(num_stages)])
    elif isinstance(latency, (int, float)) and not isinstance(latency, bool):
        matrix = np.full((num_stages, num_stages), float(latency))
    else:
        matrix = np.array(latency, np.float64)
        if matrix.shape != (num_stages, num_stages):
            raise ValueError(f"latency: expected a number, a callable (source, destination) or a "
                             f"{num_stages} x {num_stages} table, got shape {matrix.shape}")
    if not (matrix >= 0).all():
        raise ValueError(f"message latency must be non-negative, got {latency}")
    return matrix


def of_messages(matrix: np.ndarray, plan: Plan) -> list[np.ndarray]:
    """Per rank, the time the message each action waits for spends on the way (0 from the rank itself)."""
    out = []
    for rank, source in enumerate(plan.sources):
        remote = (source >= 0) & (source != rank)
        out.append(np.where(remote, matrix[np.where(remote, source, 0), rank], 0.0))
    return out
