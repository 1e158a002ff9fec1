"""Exercise 10 (lesson 10, lessons/10_plan_a_run.ipynb): the memory and the step of one configuration.

Before a run on hundreds of GPUs starts, three numbers decide whether a configuration is worth trying: the
bytes one GPU must hold, how many of them are activations the schedule keeps, and how long a step takes
once the pipeline's fill and drain are counted. All three are arithmetic on the model's shape.

Sizes in bytes, activations in 16 bits. ``s`` is the sequence length, ``b`` the microbatch size, ``h`` the
hidden size, ``a`` the number of attention heads, ``t`` the tensor-parallel size. For GPT-3 175B
(s = 2048, h = 12288, a = 96) with b = 1 on t = 8 GPUs, one layer keeps (in decimal MB)

    layer_activation_bytes(2048, 1, 12288, 96, tp=8)                            579 MB
    layer_activation_bytes(2048, 1, 12288, 96, tp=8, sequence_parallel=True)    359 MB
    layer_activation_bytes(2048, 1, 12288, 96, tp=8, recompute="full")          50 MB

    10.1 layer_activation_bytes   what one transformer layer keeps for its backward (Korthikanti et al. 2022)
    10.2 memory_per_gpu           weights, gradients, Adam's state and the stashed activations, fullest GPU
    10.3 step_seconds             a step's time and its bubble, from one stage's forward and backward times

Stuck? ``exercises/hints/ex10_planning.md`` has longer hints, one section per function.
Grade it (pure Python, no MPI: compared with pipeline_ref's cost model on shapes you have not seen):

    .venv/bin/python -m pytest tests/exercises/test_ex10_planning.py
"""
from __future__ import annotations

import math  # noqa: F401  (math.ceil)


def layer_activation_bytes(seq_len: int, microbatch: int, hidden: int, heads: int, tp: int = 1,
                           sequence_parallel: bool = False, recompute: str = "none") -> float:
    """Bytes one transformer layer keeps for its backward (Korthikanti et al. 2022, "Reducing Activation
    Recomputation in Large Transformer Models", Sec. 4):

    - ``recompute="none"``: ``s b h (24/t + 10 + 5 a s / (h t))``, or with ``sequence_parallel``
      ``s b h (34 + 5 a s / h) / t`` (the 10 s b h that tensor parallelism leaves whole is split too);
    - ``recompute="full"``: only the layer's input, ``2 s b h`` (divided by t with ``sequence_parallel``).

    Raises ValueError for another ``recompute``.
    """
    raise NotImplementedError(
        "Exercise 10.1: Korthikanti's bytes per layer, by recomputation and sequence parallelism. Hint: "
        "write the products of s, b, h first; t divides what each GPU holds.")


def memory_per_gpu(parameters: float, num_layers: int, layer_bytes: float, tp: int, pp: int,
                   num_microbatches: int, schedule: str = "1f1b", chunks: int = 1,
                   bytes_per_parameter: float = 18) -> dict:
    """The bytes of the GPU that holds the most: ``{"states": ..., "activations": ..., "total": ...}``.

    ``states``: weights, gradients and Adam's state, ``bytes_per_parameter`` (18 for bf16 weights with fp32
    gradients and optimizer state) for each of the ``parameters / (tp * pp)`` a GPU holds.
    ``activations``: ``layer_bytes`` (one layer, one microbatch, on one GPU) times the layers the first stage
    holds for the microbatches it has started and not finished, at the worst moment of the step:

    - ``"gpipe"``: every microbatch, each through the stage's ``ceil(L / p)`` layers;
    - ``"1f1b"``: the forwards of its warm-up, plus the one of its steady state (never more than m);
    - ``"interleaved"`` with v = ``chunks``: the same count in chunk-microbatches, as lesson 06 and exercise
      6.1's warm-up have it (never more than v m), each through ``ceil(L / (p v))`` layers.

    For GPT-3 175B (L = 96, 174.6e9 parameters, 359 MB per layer with sequence parallelism) on tp = 8, pp = 8,
    1f1b with m = 64: 49.1 GB of states and 8 x 12 layer-microbatches, 34.4 GB of activations.
    Raises ValueError for another schedule.
    """
    raise NotImplementedError(
        "Exercise 10.2: the states split tp x pp ways, plus the first stage's stash of layers. Hint: count "
        "the layer-microbatches the first stage keeps, then multiply by layer_bytes.")


def step_seconds(forward: float, backward: float, num_stages: int, num_microbatches: int,
                 chunks: int = 1, allreduce: float = 0.0) -> tuple[float, float]:
    """``(step, bubble)`` of 1F1B (``chunks=1``) or interleaved 1F1B, with equal stages and free messages.

    ``forward``, ``backward``: one microbatch through one whole stage (all its chunks). Every stage computes
    ``m (F + B)`` and idles while the pipeline fills and drains; with v chunks per stage a hop of the fill
    costs a v-th of a stage's time (lesson 06). Then the data-parallel ``allreduce`` (not overlapped).
    ``bubble``: the idle fraction of the pipeline's time (the all-reduce not counted): lesson 06's closed
    form.
    For example ``step_seconds(1.0, 2.0, 4, 8) == (33.0, 9 / 33)``.
    """
    raise NotImplementedError(
        "Exercise 10.3: the pipeline's time, its idle fraction, then the all-reduce after it. Hint: the "
        "fill and drain shrink as chunks grow; the work does not.")
