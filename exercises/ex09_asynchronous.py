"""Exercise 9 (lesson 09, lessons/09_asynchronous.ipynb): asynchronous pipelines, the weight versions of PipeDream.

An asynchronous pipeline never flushes: one run streams all ``steps x m`` microbatches through one
continuous 1F1B (each stage runs exercise 3.1's warm-up forwards, then alternates one forward and one
backward, and drains once, at the end of the run), and each stage updates its own weights after its
backwards. Microbatch j of the stream is microbatch j % m of step j // m. A stage's *version* k is its
weights after k updates (version 0: the initial weights).

- ``"pipedream"`` (weight stashing): the stage updates after *every* backward. The forward of j uses the
  version current at that moment; its backward uses exactly the version its forward used, however many
  updates came in between.
- ``"pipedream-2bw"`` (double-buffered weights): the stage updates after the backward of the last
  microbatch of each step (j % m == m - 1), and the update that ends step t makes version t + 1 from
  version t with the gradient of step t: W(t+1) = W(t) - lr g(W(t-1)). So the forwards of step t used the
  version that gradient was taken at.

Why it matters: the versions a forward uses are the weights a stage must keep until that microbatch's
backward: weight stashing's memory, which lesson 09 measures. Examples (3 stages, 4 microbatches per step)::

    forward_version("pipedream", 0, 3, 4, 1) == 0       forward_version("pipedream", 2, 3, 4, 1) == 1
    forward_version("pipedream-2bw", 1, 3, 4, 9) == 1

    9.1 forward_version   the version the forward (and so the backward) of stream microbatch j uses on stage s
    9.2 versions_kept     which versions stage s must hold after each of its actions (weight stashing's memory)

Stuck? ``exercises/hints/ex09_asynchronous.md`` has longer hints.
Grade it (one process: your answers against pipeline_ref's weight store, played over the stream's order):

    .venv/bin/python -m pytest tests/exercises/test_ex09_asynchronous.py
"""
from __future__ import annotations

from pipeline_ref.schedules import Action  # noqa: F401  (what a stage's order is a list of)

SCHEDULES = ("pipedream", "pipedream-2bw")


def forward_version(schedule: str, stage: int, num_stages: int, num_microbatches: int, microbatch: int) -> int:
    """The weight version the forward of stream microbatch ``microbatch`` uses on stage ``stage`` of
    ``num_stages``, under ``schedule`` ("pipedream" or "pipedream-2bw"; anything else: ValueError).
    Its backward uses the same version (weight stashing)."""
    raise NotImplementedError(
        "Exercise 9.1: the version of stage s the forward of stream microbatch j uses, for both schedules. "
        "Hint: write out stage s's order of F and B: how many updates has it made when the forward of j "
        "runs?")


def versions_kept(schedule: str, stage: int, num_stages: int, num_microbatches: int,
                  actions: list[Action]) -> list[set[int]]:
    """The versions stage ``stage`` must hold right after each of its ``actions`` (its order in the stream:
    ``F`` and ``B`` of microbatches 0 .. n - 1, n = steps x m), one set per action.

    A version must be kept while a microbatch whose forward used it waits for its backward (the stash),
    while it is the newest one (the next update starts from it), or while a forward still to come will
    use it. Everything else is dropped at once.
    """
    raise NotImplementedError(
        "Exercise 9.2: the versions the stage must hold after each of its actions, and no others. Hint: "
        "which versions can still be needed: by a backward to come, the next update, a forward to come?")
