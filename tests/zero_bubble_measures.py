"""What the Zero Bubble paper measures of a schedule, for the tests of its searches (zb-auto, zbv-auto).

Importable as ``tests.zero_bubble_measures``.
"""
from pipeline_ref import simulate


def longest_rank(trace: simulate.Trace) -> float:
    """The paper's cost: the longest time from a rank's first action starting to its last ending."""
    first, last = {}, {}
    for e in trace.events:
        first[e.rank] = min(first.get(e.rank, e.start), e.start)
        last[e.rank] = max(last.get(e.rank, e.end), e.end)
    return max(last[r] - first[r] for r in first)


def held(schedule, weight_memory: float) -> float:
    """The most memory a rank holds, in activations of what it computes (a stage's microbatch, or a chunk's):
    F adds 1, I frees 1 - weight_memory, W the rest."""
    step = {"F": 1.0, "I": -(1.0 - weight_memory), "W": -weight_memory}
    peak = 0.0
    for actions in schedule:
        now = 0.0
        for a in actions:
            now += step[a.op]
            peak = max(peak, now)
    return peak
