"""Exercise 8 (lesson 08, lessons/08_real_transformer.ipynb): choose where to cut a real model so every rank
fits.

A pipeline exists for the model that does not fit one device. Each rank holds, for the pieces of the model its
stage owns (``pipeline_ref/front/split.py`` cuts a whole ``nn.Module`` into pieces):

    weights       its parameters, their gradients, and the optimizer's state: AdamW keeps two moments per
                  parameter (as many bytes again, twice) and one 4-byte step counter per parameter tensor;
                  plain SGD keeps nothing
    activations   what autograd keeps for each microbatch between its forward and its backward, times the
                  microbatches in flight: 1F1B's stage s of p holds min(p - s, m) of them at once

A weight two pieces share (GPT-2's token embedding and output head) is held once by a stage holding both
pieces, and once by *each* stage when they are on two stages. The pieces come as a table, one dict per
piece, in model order: bytes of each parameter by name, and the activation bytes of one microbatch:

    pieces = [{"parameters": {"wte.weight": 65536}, "activations": 2048},               # the embedding
              {"parameters": {"h.0.w": 200000, "h.0.b": 800}, "activations": 1155072},  # a block
              ...,
              {"parameters": {"wte.weight": 65536}, "activations": 329732}]             # the head (tied)

    8.1 stage_bytes         what each stage of a split holds, in bytes
    8.2 split_under_budget  the split whose fullest stage holds the least, refused when even it does not fit
    8.3 fewest_stages       the fewest stages (and their split) whose every stage fits the budget

Stuck? ``exercises/hints/ex08_real_transformer.md`` has longer hints, one section per function.
Grade it (your splits are compared with a search over every split, in one process; one check runs your split
of a Hugging Face GPT-2 on 2 MPI ranks and compares your bytes with what each rank measured holding):

    .venv/bin/python -m pytest tests/exercises/test_ex08_real_transformer.py
"""
from __future__ import annotations

import math  # noqa: F401  (math.inf)

STEP_COUNTER_BYTES = 4          # AdamW's step, one float32 per parameter tensor


def stage_bytes(pieces: list[dict], ranges: list[range], num_microbatches: int,
                optimizer: str = "adamw") -> list[int]:
    """Bytes each stage of the split ``ranges`` (one range of piece indices per stage) holds under 1F1B.

    Stage ``s`` of ``p = len(ranges)``: its weights (parameters, gradients, optimizer state; a parameter name
    that several of its pieces list counted once) plus ``min(p - s, num_microbatches)`` times the activation
    bytes of its pieces. ``optimizer`` is ``"adamw"`` (two moments per parameter and a 4-byte step counter per
    parameter tensor) or ``"sgd"`` (no state); anything else raises ValueError naming it.
    """
    # BEGIN EXERCISE 8.1: the bytes each stage holds: its weights and state, and its activations in flight
    # HINT: what does a stage holding both ends of a tied weight keep of it? What does 1F1B keep in flight?
    if optimizer not in ("adamw", "sgd"):
        raise ValueError(f"unknown optimizer {optimizer!r}: stage_bytes knows 'adamw' and 'sgd'")
    num_stages, held = len(ranges), []
    for s, r in enumerate(ranges):
        params = {}
        for i in r:
            params.update(pieces[i]["parameters"])
        weights = 2 * sum(params.values())                       # the parameters and their gradients
        if optimizer == "adamw":
            weights += 2 * sum(params.values()) + STEP_COUNTER_BYTES * len(params)
        in_flight = min(num_stages - s, num_microbatches)
        held.append(weights + in_flight * sum(pieces[i]["activations"] for i in r))
    return held
    # END EXERCISE


def split_under_budget(pieces: list[dict], num_stages: int, num_microbatches: int, budget: int,
                       optimizer: str = "adamw") -> list[range]:
    """The contiguous split of the pieces into ``num_stages`` stages (one range per stage, in order, none
    empty) whose fullest stage (``stage_bytes``) holds the fewest bytes; any such split if several are.

    Raises ValueError when even that split's fullest stage holds more than ``budget`` bytes: the message says
    which stage (as ``stage N``, counted from 0) and by how many bytes it is over (the number itself). Also
    when ``num_stages`` is not between 1 and the number of pieces.
    """
    # BEGIN EXERCISE 8.2: the split whose fullest stage holds the least, or a refusal with its numbers
    # HINT: why do a stage's bytes depend on which stage it is? What must you know to place the last cut?
    n = len(pieces)
    if not isinstance(num_stages, int) or not 1 <= num_stages <= n:
        raise ValueError(f"cannot split {n} pieces into {num_stages!r} stages: use 1 to {n}")

    def cost(s: int, i: int, j: int) -> int:          # stage s of num_stages holding pieces i..j-1
        ranges = [range(0, 0)] * s + [range(i, j)] + [range(0, 0)] * (num_stages - s - 1)
        return stage_bytes(pieces, ranges, num_microbatches, optimizer)[s]

    # best[k][j]: (fullest stage, split) of pieces 0..j-1 into stages 0..k-1
    best = [[(math.inf, None)] * (n + 1) for _ in range(num_stages + 1)]
    best[0][0] = (0, [])
    for k in range(1, num_stages + 1):
        for j in range(k, n - (num_stages - k) + 1):
            for i in range(k - 1, j):
                before, split = best[k - 1][i]
                if split is None:
                    continue
                fullest = max(before, cost(k - 1, i, j))
                if fullest < best[k][j][0]:
                    best[k][j] = (fullest, split + [range(i, j)])
    fullest, split = best[num_stages][n]
    if fullest > budget:
        held = stage_bytes(pieces, split, num_microbatches, optimizer)
        worst = max(range(num_stages), key=held.__getitem__)
        raise ValueError(f"no split into {num_stages} stages fits {budget} bytes per stage: at best stage {worst} "
                         f"holds {held[worst]} bytes, {held[worst] - budget} over the budget")
    return split
    # END EXERCISE


def fewest_stages(pieces: list[dict], num_microbatches: int, budget: int,
                  optimizer: str = "adamw") -> tuple[int, list[range]]:
    """``(num_stages, split)``: the fewest stages, from 1 up to one per piece, that ``split_under_budget`` can
    fit in ``budget`` bytes each, and that split. Raises ValueError when none fits, saying by how many bytes
    the closest one (the fewest bytes over, of every stage count) misses the budget.
    """
    # BEGIN EXERCISE 8.3: the fewest stages whose best split fits, or a refusal saying the closest miss
    # HINT: which stage counts must you try, and what do you keep from those that do not fit?
    closest = math.inf
    for num_stages in range(1, len(pieces) + 1):
        try:
            return num_stages, split_under_budget(pieces, num_stages, num_microbatches, budget, optimizer)
        except ValueError:
            split = split_under_budget(pieces, num_stages, num_microbatches, math.inf, optimizer)
            closest = min(closest, max(stage_bytes(pieces, split, num_microbatches, optimizer)) - budget)
    raise ValueError(f"the model does not fit {budget} bytes per stage on 1 to {len(pieces)} stages: the closest "
                     f"is {closest} bytes over")
    # END EXERCISE
