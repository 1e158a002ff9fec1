"""partition.py: uniform sizes, by_cost optimal against brute force, refused requests. Pure, no MPI, milliseconds."""
import itertools
import random

import pytest
from torch import nn

from pipeline_ref.front import partition


def _sizes(ranges):
    return [len(r) for r in ranges]


def _is_partition(ranges, num_layers, num_stages):
    return (len(ranges) == num_stages and ranges[0].start == 0 and ranges[-1].stop == num_layers
            and all(len(r) > 0 and r.step == 1 for r in ranges)
            and all(a.stop == b.start for a, b in zip(ranges, ranges[1:])))


def _brute_force_bottleneck(costs, num_stages):
    """The least slowest stage over every contiguous split (every choice of num_stages - 1 cut points)."""
    n = len(costs)
    return min(max(sum(costs[a:b]) for a, b in zip((0, *cuts), (*cuts, n)))
               for cuts in itertools.combinations(range(1, n), num_stages - 1))


@pytest.mark.parametrize("num_layers, num_stages, sizes", [
    (8, 4, [2, 2, 2, 2]), (10, 4, [3, 3, 2, 2]), (7, 3, [3, 2, 2]), (5, 5, [1] * 5), (9, 1, [9]), (1, 1, [1]),
])
def test_uniform_sizes(num_layers, num_stages, sizes):
    ranges = partition.uniform(num_layers, num_stages)
    assert _sizes(ranges) == sizes
    assert _is_partition(ranges, num_layers, num_stages)


def test_uniform_sizes_differ_by_at_most_one_earlier_stages_larger():
    for num_layers in range(1, 30):
        for num_stages in range(1, num_layers + 1):
            sizes = _sizes(partition.uniform(num_layers, num_stages))
            assert sum(sizes) == num_layers and max(sizes) - min(sizes) <= 1
            assert sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("integers", [True, False])
def test_by_cost_is_optimal_against_brute_force(integers):
    rng = random.Random(1234)
    for case in range(300):
        n = rng.randint(1, 9)
        num_stages = rng.randint(1, n)
        costs = [rng.randint(0, 20) if integers else rng.uniform(0.0, 5.0) for _ in range(n)]
        ranges = partition.by_cost(costs, num_stages)
        assert _is_partition(ranges, n, num_stages), (costs, num_stages, ranges)
        got = max(partition.stage_costs(costs, ranges))
        expected = _brute_force_bottleneck(costs, num_stages)
        if integers:
            assert got == expected, (case, costs, num_stages, ranges)
        else:   # by_cost treats costs within 1e-10 of the total as equal (float rounding)
            assert got == pytest.approx(expected, abs=1e-9 * sum(costs)), (case, costs, num_stages, ranges)


def test_by_cost_with_equal_costs_is_uniform():
    for num_layers in range(1, 13):
        for num_stages in range(1, num_layers + 1):
            for unit in (1, 0.1, 0):
                assert (partition.by_cost([unit] * num_layers, num_stages)
                        == partition.uniform(num_layers, num_stages)), (num_layers, num_stages, unit)


def test_heavy_first_and_last_layers_get_stages_of_their_own():
    costs = [100, 1, 1, 1, 1, 1, 1, 100]     # an embedding and a head much heavier than the blocks
    ranges = partition.by_cost(costs, 4)
    assert ranges[0] == range(0, 1) and ranges[-1] == range(7, 8)
    assert _sizes(ranges) == [1, 3, 3, 1]
    assert partition.stage_costs(costs, ranges) == [100, 3, 3, 100]
    # uniform would put a heavy layer with a light one on both ends
    assert max(partition.stage_costs(costs, partition.uniform(8, 4))) == 101


def test_by_cost_beats_greedy_fill():
    # Greedy "fill a stage while it stays <= total / num_stages" gives [4, 1], [1, 1, 1], [4, 4]: slowest 8.
    # The optimum is [4, 1, 1], [1, 1, 4], [4]: slowest 6.
    costs = [4, 1, 1, 1, 1, 4, 4]
    ranges = partition.by_cost(costs, 3)
    assert max(partition.stage_costs(costs, ranges)) == _brute_force_bottleneck(costs, 3) == 6
    assert ranges == [range(0, 3), range(3, 6), range(6, 7)]


def test_among_optimal_splits_the_most_even_one():
    # Bottleneck 10 whatever the split of the ones; the most even spreads them over the two other stages.
    ranges = partition.by_cost([10, 1, 1, 1, 1, 1, 1], 3)
    assert _sizes(ranges) == [1, 3, 3]


def test_by_parameters_balances_parameter_counts():
    layers = [nn.Linear(64, 64), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 4), nn.ReLU(), nn.Linear(64, 64)]
    ranges = partition.by_parameters(layers, 2)
    assert ranges == [range(0, 3), range(3, 6)]      # 4160 + 20 vs 20 + 4160
    assert ranges == partition.by_cost([4160, 0, 20, 20, 0, 4160], 2)


@pytest.mark.parametrize("call", [
    lambda: partition.uniform(3, 4), lambda: partition.by_cost([1, 2, 3], 4),
    lambda: partition.by_parameters([nn.ReLU()] * 3, 4),
])
def test_more_stages_than_layers_is_refused_naming_both(call):
    with pytest.raises(ValueError, match=r"cannot split 3 layers into 4 stages"):
        call()


@pytest.mark.parametrize("num_stages", [0, -2])
def test_fewer_than_one_stage_is_refused(num_stages):
    with pytest.raises(ValueError, match=rf"num_stages must be at least 1, got {num_stages} \(for 5 layers\)"):
        partition.uniform(5, num_stages)
    with pytest.raises(ValueError, match=rf"got {num_stages} \(for 5 layers\)"):
        partition.by_cost([1] * 5, num_stages)


@pytest.mark.parametrize("costs", [[1, -1, 2], [1, float("nan"), 2], [1, float("inf")]])
def test_bad_costs_are_refused(costs):
    with pytest.raises(ValueError, match="layer 1 costs"):
        partition.by_cost(costs, 2)


def test_split_and_stage_costs():
    layers = [nn.Linear(2, 2) for _ in range(5)]
    stages = partition.group(layers, [range(0, 2), range(2, 5)])
    assert stages == [layers[:2], layers[2:]]
    assert partition.stage_costs([1, 2, 3, 4, 5], [range(0, 2), range(2, 5)]) == [3, 12]


@pytest.mark.parametrize("ranges, message", [
    ([range(0, 2), range(3, 5)], "should start at layer 2"),
    ([range(0, 2), range(2, 2), range(2, 5)], "not be empty"),
    ([range(0, 2), range(2, 4)], "there are 5 layers"),
    ([range(0, 5, 2)], "step 1"),
])
def test_split_refuses_a_broken_partition(ranges, message):
    with pytest.raises(ValueError, match=message):
        partition.group([nn.ReLU()] * 5, ranges)
