"""The measurement protocol (pipeline_ref.measure, pipeline_ref.sim.band): statistics, bands, flags and verdicts.

Pure tests feed planted numbers and simulated traces (no MPI, milliseconds); one small launched test plays
two configs in alternating rounds on 2 ranks. Never asserts a timing.
    .venv/bin/python -m pytest -q tests/test_measure.py
"""
import random

import pytest

from pipeline_ref import measure, schedules, simulate
from pipeline_ref.sim import band
from pipeline_ref.config import ConfigError, RunConfig
from pipeline_ref.results import RunResult


def test_alternate_plays_alternating_rounds_and_keeps_the_warm_up_apart():
    calls = []
    t = measure.alternate({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1)
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert len(t.warmup["a"]) == len(t.warmup["b"]) == 1
    assert len(t.values["a"]) == len(t.values["b"]) == t.rounds == 3
    with pytest.raises(ValueError, match="rounds >= 1"):
        measure.alternate({"a": lambda: None}, rounds=0)


def _rounds(values: dict) -> measure.Rounds:
    return measure.Timings(values, {name: [] for name in values})


def test_statistics_and_ratio_are_taken_round_by_round():
    t = _rounds({"a": [1.0, 2.0, 4.0], "b": [2.0, 4.0, 8.0]})
    assert t.median("a") == 2.0 and t.spread("a") == (1.0, 4.0)
    # every round a is half of b, although their spreads overlap
    assert t.ratio("a", "b") == measure.Ratio(0.5, 0.5, 0.5)
    assert t.ratio("a", "b").word == "shorter" and t.ratio("b", "a").word == "longer"


def test_a_verdict_never_says_shorter_or_longer_when_the_ratios_straddle_one():
    rng = random.Random(0)
    for _ in range(500):
        rounds = rng.randint(1, 9)
        t = _rounds({"a": [rng.uniform(0.5, 1.5) for _ in range(rounds)], "b": [1.0] * rounds})
        ratios = [a / b for a, b in zip(t.values["a"], t.values["b"])]
        sentence = t.verdict("a", "b", theory=0.9)
        if min(ratios) <= 1 <= max(ratios):
            assert "not distinguishable" in sentence and "shorter" not in sentence and "longer" not in sentence
        else:
            assert ("shorter" in sentence) == (max(ratios) < 1) and ("longer" in sentence) == (min(ratios) > 1)
        assert f"{t.ratio('a', 'b').median:.2f}" in sentence and "theory 0.90" in sentence


def test_drift_between_rounds_is_flagged_and_noise_is_not():
    drifting = _rounds({"a": [1.0, 1.05, 1.1, 1.3, 1.4, 1.5], "b": [1.0] * 6})
    assert [(f.name, f.likely_cause) for f in drifting.flags] == [("a", "drift between rounds")]
    assert "flagged: drift between rounds" in drifting.verdict("a", "b")
    noisy = _rounds({"a": [1.0, 1.3, 0.9, 1.25, 1.0, 1.2], "b": [1.0, 1.01, 0.99, 1.0, 1.02, 1.0]})
    assert noisy.flags == []
    assert "flagged" not in noisy.verdict("a", "b")


def test_too_few_rounds_are_flagged():
    assert {f.likely_cause for f in _rounds({"a": [1.0, 1.1]}).flags} == {"too few rounds"}
    assert _rounds({"a": [1.0, 1.1, 1.05]}).flags == []


def _result(schedule="1f1b", pp=2, m=4, forward=0.01, backward=0.02, steps=None) -> RunResult:
    """A run whose trace the simulator made; ``steps`` (s) are what it reports, the warm-up first."""
    trace = simulate.simulate(schedules.build(schedule, pp, m), forward, backward, time_unit="s")
    steps = steps or [2 * trace.makespan, trace.makespan]
    return RunResult(config=RunConfig(schedule=schedule, pp=pp, microbatches=m, steps=len(steps)), losses=[1.0],
                     trace=trace, step_seconds=steps, step_utilization=[trace.utilization] * len(steps), memory=[])


def test_the_band_holds_the_step_its_costs_explain():
    schedule = schedules.build("1f1b", 2, 4)
    traces = [_result(forward=f, backward=2 * f).trace for f in (0.010, 0.012, 0.011)]
    low, high, predicted = band.band(schedule, traces)
    assert low == pytest.approx(traces[0].makespan) and high == pytest.approx(traces[1].makespan)
    assert predicted == pytest.approx(traces[2].makespan)
    zb = _result("zb-h1", forward=0.01, backward=0.02).trace       # I and W: its own costs, played again
    assert band.band(schedules.build("zb-h1", 2, 4), [zb]).predicted == pytest.approx(zb.makespan)


def _comparison(steps_a, steps_b, shares=1.0, free_cores=2) -> measure.Comparison:
    make = lambda steps: [_result(steps=[0.5, s]) for s in steps]
    configs = {"A": RunConfig(schedule="1f1b", pp=2, microbatches=4, steps=2),
               "B": RunConfig(schedule="1f1b", pp=2, microbatches=4, steps=2)}
    return measure.Comparison(configs, {"A": make(steps_a), "B": make(steps_b)},
                              {"A": [shares] * len(steps_a), "B": [1.0] * len(steps_b)}, warmup=1,
                              free_cores=free_cores)


def test_a_comparison_inside_its_bands_is_not_flagged():
    span = _result().trace.makespan      # (m + p - 1)(F + B) = 0.15 s
    c = _comparison([span, span * 1.01, span * 0.99], [span] * 3)
    assert c.flags == []
    assert c.warmup["A"] == [0.5, 0.5, 0.5] and c.median("A") == pytest.approx(span)
    assert c.band("A").predicted == pytest.approx(span)
    table = c.table()
    assert "500.0" in table and "150.0" in table and table.splitlines()[1].endswith("-")
    assert c.verdict("A", "B", theory=1.0).endswith("not distinguishable; theory 1.00.")


def test_a_median_outside_its_band_is_flagged_with_its_likely_cause():
    span = _result().trace.makespan
    c = _comparison([span * 1.5] * 3, [span] * 3)
    outside = [f for f in c.flags if "outside its band" in f.what]
    assert [f.name for f in outside] == ["A"] and "do not explain" in outside[0].likely_cause
    assert "longer" in c.verdict("A", "B") and "flagged" in c.verdict("A", "B")
    shared = _comparison([span * 1.5] * 3, [span] * 3, shares=0.6)
    assert {f.likely_cause for f in shared.flags if f.name == "A"} == {"contention"}
    assert "flagged: contention" in shared.verdict("A", "B")


def test_more_ranks_than_free_cores_is_contention():
    span = _result().trace.makespan
    assert {f.likely_cause for f in _comparison([span] * 3, [span] * 3, free_cores=1).flags} == {"contention"}


@pytest.mark.parametrize("configs, options, message", [
    ({}, {}, "at least one"),
    ({"a": RunConfig(steps=1)}, {"warmup": 1}, "no step after 1 warm-up"),
    ({"a": RunConfig(pp=4, steps=2)}, {"num_ranks": 2}, "needs 4 ranks"),
    ({"a": RunConfig(schedule="zigzag", steps=2)}, {}, "unknown schedule"),
    ({"a": RunConfig(steps=2)}, {"rounds": 0}, "rounds >= 1"),
])
def test_compare_refuses_bad_requests_before_any_rank_starts(configs, options, message):
    with pytest.raises(ConfigError, match=message):
        measure.compare(configs, **options)


@pytest.mark.mpi
def test_compare_plays_every_config_each_round_in_one_launch():
    tiny = {"depth": 2, "width": 8, "batch": 4}
    configs = {name: RunConfig(schedule=name, pp=2, microbatches=2, steps=2, model="mlp", model_kwargs=tiny)
               for name in ("gpipe", "1f1b")}
    c = measure.compare(configs, num_ranks=2, rounds=2, warmup=1)
    assert [len(c.results[n]) for n in configs] == [2, 2] and c.rounds == 2
    assert all(len(c.warmup[n]) == 2 and len(c.shares[n]) == 2 for n in configs)
    assert all(0 < s <= 1.0 for n in configs for s in c.shares[n])
    assert "too few rounds" in c.verdict("1f1b", "gpipe")
    assert c.band("1f1b").low <= c.band("1f1b").predicted <= c.band("1f1b").high
