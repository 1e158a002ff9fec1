"""Exercise 3 (lesson 03): the 1F1B schedule as data, and the executor that plays it over MPI.

GPipe keeps the activations of every microbatch on every stage until the backwards start. 1F1B
(PipeDream-flush) starts each microbatch's backward as early as possible instead: stage ``s`` of
``p`` runs a few *warmup* forwards, then alternates one forward and one backward (the *steady
state*), then runs the remaining backwards (the *cooldown*). It has GPipe's bubble, m / (m + p - 1)
utilization, but stage s never holds more than min(p - s, m) microbatches' activations.

For 3 stages and 5 microbatches:

    stage 0:  F0 F1 F2 B0 F3 B1 F4 B2 B3 B4
    stage 1:  F0 F1 B0 F2 B1 F3 B2 F4 B3 B4
    stage 2:  F0 B0 F1 B1 F2 B2 F3 B3 F4 B4

    3.1 warmup_forwards   how many forwards stage s runs before its first backward
    3.2 one_f_one_b       the whole schedule, one list of ``Action`` per stage
    3.3 run_actions       the executor: play one rank's list of actions over MPI, non-blocking

A schedule says nothing about messages: they follow from the actions. On stage r of p, ``F i``
needs microbatch i's activation from rank r - 1 (unless r is the first) and sends its output to
r + 1 (unless r is the last); ``B i`` needs the gradient of that output from r + 1 (unless r is
the last, which backwards from its loss) and sends its input's gradient to r - 1 (unless r is the
first). 3.3 plays a list in four moves: post the receives, then per action wait for its message,
compute, start its send; finally finish the sends. With non-blocking sends a rank only ever waits
for a message its next action truly needs, so a valid schedule cannot deadlock, even with
synchronous sends (which complete only once the receiver has posted its receive).

Stuck? ``exercises/hints/ex03_1f1b.md`` has longer hints, one section per function.
Grade it (your schedule runs through pipeline_ref's executor, and your executor plays naive,
GPipe and 1F1B, on 2 and 3 real MPI ranks with synchronous sends):

    .venv/bin/python -m pytest tests/exercises/test_ex03_1f1b.py
"""
from __future__ import annotations

from pipeline_ref.schedules import Action  # noqa: F401  (what one_f_one_b returns lists of)


def warmup_forwards(num_stages: int, stage_index: int, num_microbatches: int) -> int:
    """Forwards stage ``stage_index`` runs before its first backward, not counting the steady state's.

    In the example above: 2 on stage 0, 1 on stage 1, 0 on stage 2. Never more than the microbatches.
    """
    raise NotImplementedError(
        "Exercise 3.1: how many forwards stage s runs before its first backward, for any p, s and m. Hint: "
        "when can the last stage start its first backward, and what must the stage above it have done by "
        "then?")


def one_f_one_b(num_stages: int, num_microbatches: int) -> list[list[Action]]:
    """1F1B (PipeDream-flush): per stage, warmup forwards, then one forward / one backward, then cooldown."""
    raise NotImplementedError(
        "Exercise 3.2: per stage, the warmup forwards, then forward/backward pairs, then the backwards "
        "left. Hint: write the three phases as three loops; the steady state runs the oldest microbatch's "
        "backward.")


ACTIVATION, GRADIENT = 0, 1     # the direction of a message; its tag is 2 * microbatch + direction


def run_actions(comm, stage, actions, inputs, targets, shape, dtype) -> None:
    """Play this rank's ``actions`` (ops ``F`` and ``B``, one chunk per rank) for one training step.

    ``comm``: the pipeline's communicator; this rank is stage ``comm.Get_rank()`` of ``comm.Get_size()``.
    ``stage``: a ``pipeline_ref.engine.stage.Stage`` holding this rank's layers and its activation stash:
    ``stage.forward(i, x, target)`` returns ``(y,)``, the output to send on (None on the last stage,
    where it takes ``target`` and keeps the loss); ``stage.backward(i, grad)`` returns ``(dx,)``, the
    input's gradient to send back (None on the first stage; ``grad`` is None on the last).
    ``inputs[i]``: microbatch i's input on the first stage; ``targets[i]``: its target on the last
    (both None on the ranks that do not need them). Every message is a tensor of ``shape`` and
    ``dtype``, tagged ``2 * microbatch + ACTIVATION`` (forward) or ``+ GRADIENT`` (backward).

    Use your ``isend_tensor`` / ``irecv_tensor`` (exercise 0): import them inside this function
    (``from .ex00_mpi_tensors import ...``), since the grader imports this file without MPI.
    Compute the actions in the order given; return once every send has completed.
    """
    raise NotImplementedError(
        "Exercise 3.3: post every receive, then per action wait, compute and start its send; then finish "
        "sends. Hint: a rank that never blocks on a send only ever waits for what its next action needs.")
