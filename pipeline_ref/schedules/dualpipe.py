"""DualPipeV (DeepSeek-V3's DualPipe, cut in half), as data: the order torch.distributed.pipelining's
``ScheduleDualPipeV`` runs.

Like ZB-V (``zero_bubble.zbv``), rank r of p holds two chunks in a V (``layout="v"``): chunk 0 is virtual
stage r (going down), chunk 1 is virtual stage 2p - 1 - r (coming back up), so rank 0 holds the first and
the last stage. What DualPipe adds is pairs: in its steady state a rank runs the forward of one chunk
*together with* the backward of its other chunk (``F0 B1``, then ``F1 B0``), two different microbatches,
so that one's communication (in DeepSeek-V3, the MoE all-to-all) hides behind the other's computation.
Only the cool-down splits backwards into I and W, to fill the drain, and only from the middle on.
Rank r runs (B: a whole backward; I, W: the zero-bubble halves; the Ws go in the order their Is ran):

    1. 2 (p - r - 1)   x  F0
    2. r + 1           x  F0 F1
    3. p - r - 1       x  I1 W F1
    4. m - 2p + r + 1  x  (F0 B1) (F1 B0)        the overlapped pairs
    5. p - r - 1       x  B1 (F1 B0)
    6. r + 1           x  B1 B0, becoming I1 / I0 from the middle on (odd ranks switch before chunk 1)
    7. p - r - 1       x  W I0
    8. r + 1           x  W

It needs m >= 2p microbatches (torch refuses fewer too).

Its bubble, played as here (:func:`idle_time`, checked against the simulator by tests/test_dualpipe.py): with
chunk costs F, I, W (B = I + W) and W <= I <= F <= B, every rank idles (p - 1)(F + I - W) of a step of
2m (F + I + W) + (p - 1)(F + I - W): with a whole stage's F = I = W split in two chunks, the same
6m / (6m + p - 1) as ZB-V. Only there: with unequal costs the two schedules' steps differ, and not always
the same way (lesson 09 plays a few). The pairs buy communication hiding, not a smaller bubble in sequence.

DeepSeek's published bubble for DualPipe and DualPipeV, (PP/2 - 1)(F&B + B - 3W), is of another execution:
its F&B is a forward and a backward overlapped as one block, which starts only when both its inputs have
arrived and lasts less than F + B. Here a pair is two independent actions, each starting as soon as its own
input is there, so :func:`idle_time` (not that formula) is this executor's bubble.

Overlap, honestly: a pair is two Actions here, ``F`` then ``B``, and the executor (like torch's runtime
unless a custom ``OVERLAP_F_B`` function is registered) plays them one after the other: the order, the
dependencies and the memory are DualPipeV's, the simulated and measured times are of the pair played in
sequence (F&B = F + B). Real overlap needs two streams of work on one device: the forward's kernels
running while the backward's communication is in flight (and vice versa), which on a GPU means splitting
each chunk into pieces (attention, MLP, dispatch, combine) and interleaving them by hand on separate CUDA
streams, as DeepSeek's DualPipe does; on CPU ranks with MPI there is nothing to overlap with.
"""
from __future__ import annotations

from pipeline_ref.schedules.geometry import Action, Schedule, ScheduleError, actions_of, interleave


def dualpipev(num_stages: int, num_microbatches: int) -> Schedule:
    p, m = num_stages, num_microbatches
    if m < 2 * p:
        raise ScheduleError(f"dualpipev needs at least 2 x num_stages microbatches ({m} < {2 * p}), "
                            f"as torch's ScheduleDualPipeV does")
    whole = {(op, c): actions_of(op, m, c) for op in "FB" for c in (0, 1)}   # shared by every rank
    schedule = []
    for r in range(p):
        actions: list[Action] = []
        forwards, backwards = [0, 0], [0, 0]    # next microbatch to run forward / backward, per chunk
        deferred: list[tuple[int, int]] = []    # (chunk, microbatch) whose I ran and W has not

        def f(chunk: int) -> None:
            actions.append(Action("F", forwards[chunk], chunk))
            forwards[chunk] += 1

        def b(chunk: int, split: bool = False) -> None:
            """The next backward of ``chunk``: whole (B), or its input half (I) with the W deferred."""
            actions.append(Action("I" if split else "B", backwards[chunk], chunk))
            if split:
                deferred.append((chunk, backwards[chunk]))
            backwards[chunk] += 1

        def w() -> None:
            if deferred:
                chunk, microbatch = deferred.pop(0)
                actions.append(Action("W", microbatch, chunk))

        for _ in range(2 * (p - r - 1)):
            f(0)
        for _ in range(r + 1):
            f(0), f(1)
        for _ in range(p - r - 1):
            b(1, split=True), w(), f(1)
        pairs = m - 2 * p + r + 1               # (F0 B1) (F1 B0); torch runs the last rank's first in turn
        actions += interleave(*(whole[op, c][start:start + pairs] for op, c, start in
                                (("F", 0, forwards[0]), ("B", 1, backwards[1]), ("F", 1, forwards[1]),
                                 ("B", 0, backwards[0]))))
        forwards[0], forwards[1] = forwards[0] + pairs, forwards[1] + pairs
        backwards[0], backwards[1] = backwards[0] + pairs, backwards[1] + pairs
        for _ in range(p - r - 1):
            b(1)
            f(1), b(0)                          # a pair
        split = False
        for i in range(r + 1):
            split = split or (i == (r + 1) // 2 and r % 2 == 1)
            b(1, split)
            split = split or (i == (r + 1) // 2 and r % 2 == 0)
            b(0, split)
        for _ in range(p - r - 1):
            w(), b(0, split)
        for _ in range(r + 1):
            w()
        schedule.append(actions)
    return Schedule(schedule, layout="v")


def idle_time(num_stages: int, num_microbatches: int, forward: float, input_grad: float,
              weight_grad: float) -> float:
    """Each rank's idle time in a DualPipeV step with F&B played in sequence: (p - 1)(F + I - W), chunk costs.

    Holds for num_microbatches >= 2 num_stages and W <= I <= F <= I + W; elsewhere use
    ``simulate.simulate``."""
    p, m, f, i, w = num_stages, num_microbatches, forward, input_grad, weight_grad
    if m < 2 * p:
        raise ValueError(f"the DualPipeV closed form needs num_microbatches >= 2 num_stages ({m} < {2 * p})")
    if not w <= i <= f <= i + w:
        raise ValueError(f"the DualPipeV closed form holds for W <= I <= F <= I + W; here F = {f:g}, I = "
                         f"{i:g}, W = {w:g}: use simulate()")
    return (p - 1) * (f + i - w)
