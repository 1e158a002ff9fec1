"""Graded: exercise 9, the weight versions of PipeDream and PipeDream-2BW (exercises/ex09_asynchronous.py).

    .venv/bin/python -m pytest tests/exercises/test_ex09_asynchronous.py                # your functions
    .venv/bin/python -m pytest tests/exercises/test_ex09_asynchronous.py --impl solutions

One process, no ranks. ``forward_version`` is checked against the stream's own order (PipeDream: the
backwards a stage has done before the forward) and against pipeline_ref's rule, on many (p, m, steps);
``versions_kept`` against pipeline_ref's weight store (``weight_versions.WeightVersions``, what the ranks
run), played over each stage's actions with a one-number parameter, and its peak against p - s (PipeDream)
and 2 (2BW).
"""
import pytest
import torch

from pipeline_ref.schedules import asynchronous
from pipeline_ref.async_run import _rule
from pipeline_ref.config import RunConfig
from pipeline_ref.engine.weight_versions import WeightVersions

SCHEDULES = ("pipedream", "pipedream-2bw")


def cases(schedule):
    """(p, m, steps) of the grid; 2BW needs m >= p - 1 (pipeline_ref refuses fewer)."""
    return [(p, m, steps) for p in (1, 2, 3, 4, 5, 6) for m in (1, 2, 3, 4, 6) for steps in (1, 2, 3)
            if schedule == "pipedream" or m >= p - 1]


@pytest.fixture
def ex(impl):
    return impl("ex09_asynchronous")


def order(actions) -> str:
    return " ".join(f"{a.op}{a.microbatch}" for a in actions)


def store_kept(schedule, stage, p, m, steps, actions) -> list[set[int]]:
    """The versions pipeline_ref's weight store holds after each action, with the rule the ranks use
    (PipeDream's forward takes whatever version is current: no formula)."""
    cfg = RunConfig(schedule=schedule, pp=p, microbatches=m, steps=steps)
    weight = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    store = WeightVersions([weight], *_rule(cfg, stage), lr=0.5, num_forwards=steps * m)
    kept = []
    for a in actions:
        if a.op == "F":
            store.before_forward(a.microbatch)
        else:
            store.before_backward(a.microbatch)
            weight.grad = torch.ones_like(weight)
            store.after_backward(a.microbatch)
        kept.append(set(store.versions))
    return kept


@pytest.mark.points(2)
def test_pipedream_forward_version_counts_the_backwards_before_it(ex):
    """PipeDream: F of j on stage s uses the version current then, the number of backwards the stage has done."""
    for p, m, steps in cases("pipedream"):
        n = steps * m
        for s, actions in enumerate(asynchronous.stream(p, n)):
            done = 0
            for a in actions:
                if a.op == "B":
                    done += 1
                    continue
                got = ex.forward_version("pipedream", s, p, m, a.microbatch)
                assert got == done, (
                    f"forward_version('pipedream', stage={s}, num_stages={p}, num_microbatches={m}, "
                    f"microbatch={a.microbatch}) = {got!r}, but stage {s} has done {done} backwards (so "
                    f"{done} updates) before that forward:\n  stage {s}: {order(actions)}")


@pytest.mark.points(2)
def test_2bw_forward_version_is_the_step_before(ex):
    """2BW: every microbatch of step t uses version t - 1 (version 0 in step 0), whatever the stage."""
    for p, m, steps in cases("pipedream-2bw"):
        for s in range(p):
            for j in range(steps * m):
                got = ex.forward_version("pipedream-2bw", s, p, m, j)
                expected = asynchronous.forward_version("pipedream-2bw", s, p, m, j)
                assert got == expected, (
                    f"forward_version('pipedream-2bw', stage={s}, num_stages={p}, num_microbatches={m}, "
                    f"microbatch={j}) = {got!r}, expected {expected}: microbatch {j} belongs to step {j // m}")
    with pytest.raises(ValueError):
        ex.forward_version("1f1b", 0, 2, 4, 0)


@pytest.mark.points(3)
def test_versions_kept_are_the_stores(ex):
    """After every action of every stage: exactly the versions pipeline_ref's weight store holds."""
    for schedule in SCHEDULES:
        for p, m, steps in cases(schedule):
            for s, actions in enumerate(asynchronous.stream(p, steps * m)):
                expected = store_kept(schedule, s, p, m, steps, actions)
                got = ex.versions_kept(schedule, s, p, m, list(actions))
                assert isinstance(got, list) and len(got) == len(actions), (
                    f"versions_kept({schedule!r}, {s}, {p}, {m}, ...) returned {type(got).__name__} of "
                    f"{len(got) if hasattr(got, '__len__') else '?'} items: expected one set per action "
                    f"({len(actions)})")
                for k, (mine, theirs) in enumerate(zip(got, expected)):
                    assert set(mine) == theirs, (
                        f"{schedule}, stage {s} of {p}, m = {m}, {steps} steps: after action {k} "
                        f"({actions[k].op}{actions[k].microbatch}) you keep {sorted(mine)}, the weight store "
                        f"holds {sorted(theirs)}\n  stage {s}: {order(actions)}")


@pytest.mark.points(1)
def test_versions_kept_peak_is_p_minus_s_or_two(ex):
    """The most versions held at once: p - s for PipeDream (one per microbatch in flight), 2 for 2BW."""
    for schedule, p, m, steps in (("pipedream", 4, 4, 2), ("pipedream", 5, 3, 3), ("pipedream-2bw", 4, 3, 3),
                                  ("pipedream-2bw", 3, 6, 2)):
        peaks = [max(len(v) for v in ex.versions_kept(schedule, s, p, m, list(actions)))
                 for s, actions in enumerate(asynchronous.stream(p, steps * m))]
        expected = [p - s for s in range(p)] if schedule == "pipedream" else [2] * p
        assert peaks == expected, (f"{schedule}, p = {p}, m = {m}, {steps} steps: at most {peaks} versions per "
                                   f"stage, expected {expected}")
