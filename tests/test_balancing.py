"""The time partitioner balances an unbalanced model: in the simulator, and in a real run."""
import pytest

from pipeline_ref import partition, schedules, simulate
from pipeline_ref.config import RunConfig
from pipeline_ref.launch import launch
from pipeline_ref.trace import Trace

HEAVY_ENDS = [8.0, 1, 1, 1, 1, 1, 1, 1, 1, 8.0]   # an embedding and a head far heavier than the blocks
HEAVY_FRONT = [8.0, 1, 1, 1, 1, 1, 1, 1, 1, 1]    # (on 2 stages HEAVY_ENDS is already balanced by uniform)


def _simulated_makespan(costs, ranges, schedule="1f1b", num_microbatches=8):
    per_stage = partition.stage_costs(costs, ranges)
    # A layer's backward costs about twice its forward: split each stage's F+B cost 1:2.
    return simulate.simulate(schedules.build(schedule, len(ranges), num_microbatches),
                             forward=[c / 3 for c in per_stage], backward=[2 * c / 3 for c in per_stage]).makespan


@pytest.mark.parametrize("costs, num_stages", [(HEAVY_FRONT, 2), (HEAVY_ENDS, 3), (HEAVY_ENDS, 4)])
def test_time_partition_beats_uniform_in_the_simulator(costs, num_stages):
    uniform = partition.uniform(len(costs), num_stages)
    balanced = partition.by_cost(costs, num_stages)
    assert max(partition.stage_costs(costs, balanced)) < max(partition.stage_costs(costs, uniform))
    assert _simulated_makespan(costs, balanced) < _simulated_makespan(costs, uniform)


@pytest.mark.mpi
def test_time_partition_beats_uniform_in_a_real_run():
    configs = [RunConfig(schedule="1f1b", pp=2, microbatches=4, steps=2, model="tests.rank_targets:unbalanced_mlp",
                         partition=p) for p in ("uniform", "time")]
    uniform, timed = launch(2, "pipeline_ref.runner:run_many", configs, timeout=120)[0]
    assert uniform["partition"] == [(0, 4), (4, 7)]
    # Optimal is [1 | 6] (about 5.7 and 6 units: the first layer skips one input gradient); [2 | 5] is
    # within profiling noise of it. Either way stage 0 must shed layers.
    assert timed["partition"] in ([(0, 1), (1, 7)], [(0, 2), (2, 7)]), timed["partition"]
    # The slowest stage's compute sets the pace: 6 units against 9, about 2/3. Compute time is what the
    # partition changes, and it is far less noisy than the step's makespan; the margins absorb the rest.
    timed_trace, uniform_trace = Trace.from_dict(timed["trace"]), Trace.from_dict(uniform["trace"])
    bottleneck = lambda trace: max(trace.busy(rank) for rank in range(trace.num_ranks))
    assert bottleneck(timed_trace) < 0.9 * bottleneck(uniform_trace)
    assert timed_trace.makespan < 0.97 * uniform_trace.makespan
    assert len(timed["predicted_stage_costs"]) == 2 and min(timed["predicted_stage_costs"]) > 0
    assert uniform["predicted_stage_costs"] is None          # only the time partition profiles
