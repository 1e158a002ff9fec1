"""Exercise 4 (lesson 04, lessons/04_data_parallel.ipynb): pipeline + data parallelism from MPI communicators.

``pp x dp`` ranks form a grid: ``dp`` replicas of one ``pp``-stage pipeline, each replica training on its own
slice of the batch. The ranks of one pipeline are neighbours:

    rank = replica * pp + stage

    pp = 4, dp = 2:      stage 0  stage 1  stage 2  stage 3
         replica 0:      rank 0   rank 1   rank 2   rank 3     <- a pipeline communicator (a row)
         replica 1:      rank 4   rank 5   rank 6   rank 7
                           ^ a data communicator (a column: the same stage in every replica)

Every rank needs two communicators: its pipeline's (activations and their gradients travel there, between
neighbouring stages) and its stage's data communicator (the replicas of the same layers average their
gradients there, once per step). ``comm.Split(color, key)`` makes both: the ranks that pass the same
``color`` land in one new communicator, ordered by ``key``.

    4.1 grid_coords           (stage, replica) of a rank
    4.2 make_communicators    the pipeline and the data communicator of this rank, with Comm.Split
    4.3 allreduce_gradients   average the gradients over the replicas, in a few large messages (buckets)
    4.4 reduce_step_gradients one pp x dp step's whole gradient reduction, with a weight tied across stages

Import mpi4py inside your functions if you need it, not at the top of this file: the grader imports this
file in its own process (which never starts MPI) to test grid_coords.

Stuck? ``exercises/hints/ex04_data_parallel.md`` has longer hints, one section per function.
Grade it (the tests start 4 MPI ranks: grids of 2 x 2, 1 x 4 and 4 x 1; 4.4 with a small GPT whose token
embedding and output head share one weight, against one device):

    .venv/bin/python -m pytest tests/exercises/test_ex04_data_parallel.py
"""
from __future__ import annotations

import torch  # noqa: F401  (for allreduce_gradients)


def grid_coords(rank: int, pp: int, dp: int) -> tuple[int, int]:
    """``(stage, replica)`` of world rank ``rank`` in a ``pp x dp`` grid, where ``rank = replica * pp +
    stage``.

    Raises ValueError for a rank outside ``0 .. pp * dp - 1``.
    """
    raise NotImplementedError(
        "Exercise 4.1: invert rank = replica * pp + stage, refusing a rank outside the grid. Hint: one "
        "divmod gives both coordinates.")


def make_communicators(comm, pp: int, dp: int):
    """``(pipeline_comm, data_comm)`` of this rank, made from ``comm`` (whose size must be ``pp * dp``).

    In the pipeline communicator the rank is the stage; in the data communicator, the replica. Every rank
    of ``comm`` calls this (``Split`` is collective). Raises ValueError, on every rank and before any
    Split, when ``comm.Get_size() != pp * dp`` (too few ranks for the grid, or too many).
    """
    raise NotImplementedError(
        "Exercise 4.2: check the world size, then two comm.Split calls: one per row, one per column. Hint: "
        "the same color puts ranks in the same communicator, and the key orders them there.")


def allreduce_gradients(data_comm, parameters) -> None:
    """Replace every parameter's ``.grad`` by its mean over the ranks of ``data_comm`` (the replicas).

    ``parameters``: an iterable of tensors whose ``.grad`` is set (CPU, float32 or float64, possibly both
    in one call), the same shapes in the same order on every rank of ``data_comm``. Bucketed: pack the
    gradients into one flat buffer (or a few, e.g. one per dtype), one ``Allreduce`` per buffer, never one
    message per parameter, then write the means back into ``.grad``.
    """
    raise NotImplementedError(
        "Exercise 4.3: sum flat buffers of the gradients with Allreduce, divide, write the means back. "
        "Hint: parameters may be a generator (it runs out after one pass), and a float64 gradient must stay "
        "exact.")


def reduce_step_gradients(pipeline_comm, data_comm, parameters: dict, tied: list) -> None:
    """After one ``pp x dp`` step's backwards, make every ``.grad`` this rank holds the whole batch's
    gradient.

    Why: each rank computed its stage's gradients on its replica's slice of the batch only; and a weight that
    several stages hold (GPT-2's token embedding, which is also its output head) got on each of them only the
    part of its gradient from that stage's own use of it. The optimizer on each rank must see the gradient one
    device would compute on the whole batch, the same on every copy.

    ``pipeline_comm`` / ``data_comm``: this rank's two communicators (exercise 4.2: rank = stage, rank =
    replica). ``parameters``: ``{name: Parameter}`` of this rank's stage, ``.grad`` set (CPU, contiguous).
    ``tied``: ``[(name, stages)]``, one entry per weight held by more than one stage, the same list in the
    same order on every rank; ``stages``, sorted, are the pipeline ranks holding a copy, and those ranks have
    ``name`` in their ``parameters``. Every rank calls this function, whether it holds a tied copy or not.
    Example, 2 x 2, a GPT of 4 layers (embedding, 2 blocks, head) as 2 stages::

        tied == [("0.token.weight", [0, 1])]    # rank 0 holds the embedding, rank 1 the head: one weight
        # after the call, on all four ranks: every .grad == the one-device gradient of the whole batch;
        # "0.token.weight" on the ranks of stages 0 and 1 alike: both uses' parts, over both replicas
    """
    raise NotImplementedError(
        "Exercise 4.4: every gradient the whole batch's: replicas averaged, tied copies summed. Hint: which "
        "ranks hold a copy, and which ranks' parts belong in its gradient?")
