"""Pure tests of lesson 10's schedule search under a GPU's memory limit (lessons/lesson_code/l10_plan.py) and of
the cost model's split of memory it reads (step_model.static_bytes, microbatch_activation_bytes).

    .venv/bin/python -m pytest -q tests/test_lesson10.py
"""
import sys
from pathlib import Path

import pytest

LESSONS = Path(__file__).resolve().parents[1] / "lessons"
if str(LESSONS) not in sys.path:
    sys.path.insert(0, str(LESSONS))

from lesson_code import l10_plan  # noqa: E402
from pipeline_ref.sim import cluster, step_model, theory  # noqa: E402

GPT3 = cluster.MODELS["gpt3-175b"]


@pytest.mark.parametrize("schedule, chunks, recompute, cp", [
    ("1f1b", 1, "none", 1), ("gpipe", 1, "full", 1), ("interleaved", 3, "selective", 1),
    ("zb-h2", 1, "none", 2), ("1f1b", 1, "full", 2)])
def test_memory_is_the_static_bytes_plus_the_microbatches_in_flight(schedule, chunks, recompute, cp):
    plan = step_model.Plan(GPT3, "a100-80gb", tp=8, pp=8, dp=2, microbatch=1, num_microbatches=16,
                           schedule=schedule, chunks=chunks, recompute=recompute, cp=cp)
    peak = theory.peak_stashed(schedule, 8, 16, chunks=chunks)
    in_flight = max(peak) if schedule == "interleaved" else max(peak) * chunks
    expected = step_model.static_bytes(plan) + in_flight * step_model.microbatch_activation_bytes(plan)
    assert step_model.memory_bytes(plan) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("spare", [1.0, 5.5, 23.9])
def test_in_flight_limit_is_the_most_microbatches_that_fit(spare):
    plan = step_model.Plan(GPT3, "a100-80gb", tp=8, pp=16, dp=8, microbatch=1, num_microbatches=192)
    stage = step_model.microbatch_activation_bytes(plan)
    limit = step_model.static_bytes(plan) + spare * stage
    limits = l10_plan.in_flight_limits(plan, limit)
    assert limits["zbv-auto"][1] == pytest.approx(limits["zb-auto"][1] / 2)     # a chunk is half a stage
    for in_flight, unit in limits.values():
        static = step_model.static_bytes(plan)
        assert static + in_flight * unit <= limit < static + (in_flight + 1) * unit


def test_searched_schedules_keep_under_the_limit_they_were_given():
    plan = step_model.Plan(GPT3, "a100-80gb", tp=8, pp=4, dp=8, microbatch=1, num_microbatches=16)
    unit = step_model.microbatch_activation_bytes(plan)
    for spare in (4.5, 6.5):                  # a stage's worth of microbatches beyond the static bytes
        limit = step_model.static_bytes(plan) + spare * unit
        lines, found, orders = l10_plan.searched_schedules(plan, limit)
        assert set(found) == set(orders) == {"zb-auto", "zbv-auto"} and len(lines) == 3
        for step, memory in found.values():
            assert memory <= limit and step > 0
