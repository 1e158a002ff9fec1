"""Exercise 9 (lesson 09, lessons/09_asynchronous.ipynb): asynchronous pipelines, the weight versions of PipeDream.

An asynchronous pipeline never flushes: one run streams all ``steps x m`` microbatches through one
continuous 1F1B, and each stage updates its own weights after its backwards. Stage s of p runs p - s - 1
warm-up forwards, then alternates one forward and one backward, and drains once, at the end of the run.
Microbatch j of the stream is microbatch j % m of step j // m. A stage's *version* k is its weights after
k updates (version 0: the initial weights).

- ``"pipedream"`` (weight stashing): the stage updates after *every* backward. The forward of j uses the
  version current at that moment (the number of backwards the stage has done by then); its backward uses
  exactly the version its forward used, however many updates came in between.
- ``"pipedream-2bw"`` (double-buffered weights): the stage updates after the backward of the last
  microbatch of each step (j % m == m - 1); the microbatches of step t all use version t - 1 (version 0
  for t = 0), and the update makes version t + 1 from version t: W(t+1) = W(t) - lr g(W(t-1)).

For 3 stages (PipeDream), the stage-0 order and the version each action uses:

    stage 0:  F0 F1 F2 B0 F3 B1 F4 B2 ...
    version:   0  0  0  0  1  0  2  0        (B of j uses F of j's version: stashed)

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
        "Hint: PipeDream: count the backwards before F of j (after p - s - 1 warm-up forwards); 2BW: step j "
        "// m uses the one before.")


def versions_kept(schedule: str, stage: int, num_stages: int, num_microbatches: int,
                  actions: list[Action]) -> list[set[int]]:
    """The versions stage ``stage`` must hold right after each of its ``actions`` (its order in the stream:
    ``F`` and ``B`` of microbatches 0 .. n - 1, n = steps x m), one set per action.

    A version must be kept while a microbatch whose forward used it waits for its backward (the stash),
    while it is the newest one (the next update starts from it), or while a forward still to come will
    use it. Everything else is dropped at once.
    """
    raise NotImplementedError(
        "Exercise 9.2: play the stage's actions, stash each F's version, update after a B, drop what "
        "nothing needs. Hint: keep the newest version, the stash (microbatch -> version) and the next "
        "forward; later forwards need no older version than it.")
