"""DualPipeV: the order torch's ScheduleDualPipeV runs, valid, and simulated as its closed form says.

(Equal to one device on the ranks: tests/test_beyond_1f1b.py's matrix runs it with the other schedules past 1F1B.)
"""
import random

import pytest

from pipeline_ref import schedules, simulate
from pipeline_ref.schedules.dualpipe import dualpipev, idle_time


def test_the_same_order_as_torch_distributed_pipelining():
    """torch's ScheduleDualPipeV, built on a fake process group, runs the same actions in the same order
    (each OVERLAP_F_B pair as its forward, then its backward)."""
    from pipeline_ref.tools import torch_orders
    for p in (1, 2, 3, 4):
        for m in (2 * p, 2 * p + 1, 3 * p + 2):
            assert torch_orders.torch_schedule("dualpipev", p, m, chunks=2) == schedules.build("dualpipev", p, m), (p, m)


@pytest.mark.parametrize("p", [1, 2, 3, 4, 5])
def test_valid_in_a_v_with_whole_and_split_backwards(p):
    for m in (2 * p, 2 * p + 1, 4 * p):
        schedule = schedules.build("dualpipev", p, m)
        assert schedule.layout == "v" and schedule.num_chunks == 2
        schedules.validate(schedule)
        ops = {a.op for actions in schedule for a in actions}
        assert ops == {"F", "B", "I", "W"}          # whole backwards in the pairs, split ones in the cool-down
    with pytest.raises(schedules.ScheduleError, match=rf"dualpipev needs at least 2 x num_stages microbatches \({2 * p - 1} < {2 * p}\)"):
        schedules.build("dualpipev", p, 2 * p - 1)


def test_simulated_idle_time_is_the_closed_form():
    """Every rank idles (p - 1)(F + I - W) for W <= I <= F <= I + W, whatever m >= 2p; outside that the form is refused."""
    rng = random.Random(0)
    checked = 0
    while checked < 40:
        f, i, w = (rng.choice([0.25, 0.5, 0.75, 1.0, 1.5, 2.0]) for _ in range(3))
        if not w <= i <= f <= i + w:
            with pytest.raises(ValueError, match="closed form holds for W <= I <= F <= I \\+ W"):
                idle_time(3, 6, f, i, w)
            continue
        p = rng.randint(1, 6)
        m = 2 * p + rng.randint(0, 5)
        trace = simulate.simulate(schedules.build("dualpipev", p, m), forward=f, backward=i + w,
                                  input_grad=i, weight_grad=w)
        work = 2 * m * (f + i + w)
        assert [trace.busy(r) for r in range(p)] == pytest.approx([work] * p)
        assert trace.makespan - work == pytest.approx(idle_time(p, m, f, i, w), abs=1e-9), (p, m, f, i, w)
        checked += 1
    with pytest.raises(ValueError, match=r"needs num_microbatches >= 2 num_stages \(5 < 6\)"):
        idle_time(3, 5, 1.0, 1.0, 1.0)


@pytest.mark.parametrize("p", [2, 3, 4, 6])
def test_played_in_sequence_its_bubble_is_zbv_s(p):
    """A whole stage's F = I = W = 1 in two chunks of 1/2: the same utilization as ZB-V, 6m / (6m + p - 1)."""
    for m in (2 * p, 3 * p):
        trace = simulate.simulate(schedules.build("dualpipev", p, m), forward=0.5, backward=1.0,
                                  input_grad=0.5, weight_grad=0.5)
        assert trace.utilization == pytest.approx(6 * m / (6 * m + p - 1), abs=1e-12)
        assert trace.utilization == pytest.approx(simulate.theory_utilization("zbv", p, m), abs=1e-12)
        assert trace.peak_stashed == [2 * p + 1] * p          # half-stage chunks: one more than ZB-V's 2p


@pytest.mark.parametrize("p, m", [(2, 4), (2, 7), (3, 6), (3, 9), (4, 8), (4, 13)])
def test_theory_closed_form_equals_the_simulator(p, m):
    from pipeline_ref import schedules, simulate
    from pipeline_ref.sim import theory
    trace = simulate.simulate(schedules.build("dualpipev", p, m), forward=1, input_grad=1, weight_grad=1)
    assert theory.utilization("dualpipev", p, m) == pytest.approx(trace.utilization, rel=1e-12)
    assert theory.peak_stashed("dualpipev", p, m) == trace.peak_stashed


def test_theory_refuses_where_the_closed_form_does_not_hold():
    from pipeline_ref.sim import theory
    with pytest.raises(ValueError, match="needs num_microbatches >= 2 num_stages"):
        theory.utilization("dualpipev", 3, 5)
    with pytest.raises(ValueError, match="holds for F = I = W"):
        theory.utilization("dualpipev", 2, 4, forward=1, input_grad=2, weight_grad=1)


@pytest.mark.parametrize("p", [2, 3, 4, 6, 8])
def test_overlapped_pairs_reproduce_the_dualpipe_readme_bubble(p):
    """DeepSeek's DualPipe README gives DualPipeV's bubble as (PP/2 - 1)(F&B + B - 3W) for PP stages on PP/2
    devices (github.com/deepseek-ai/DualPipe, README.md, "Pipeline Bubbles and Memory Usage Comparison"); here
    PP = 2p. Played with its pairs overlapped (``forward_backward``: each F0 B1 / F1 B0 one action that waits
    for both inputs and costs F&B), the most idle rank idles exactly that, on random chunk costs with
    W <= I, F <= I and max(F, B) <= F&B <= F + B; with F > I (a forward longer than its input gradient)
    the formula understates it."""
    import random
    rng = random.Random(p)
    for _ in range(20):
        weight_grad = rng.uniform(0.2, 1.0)
        input_grad = rng.uniform(weight_grad, 1.5)
        backward = input_grad + weight_grad
        longer_forward = rng.random() < 0.3
        forward = rng.uniform(input_grad, 2.0) if longer_forward else rng.uniform(0.3, input_grad)
        pair = rng.uniform(max(forward, backward), forward + backward)
        m = rng.randint(2 * p, 5 * p)
        trace = simulate.simulate(schedules.build("dualpipev", p, m), forward=forward, backward=backward,
                                  input_grad=input_grad, weight_grad=weight_grad, forward_backward=pair)
        readme = (2 * p / 2 - 1) * (pair + backward - 3 * weight_grad)
        idle = max(trace.makespan - trace.busy(rank) for rank in range(p))
        if longer_forward:
            assert idle >= readme - 1e-9
        else:
            assert idle == pytest.approx(readme, abs=1e-9)
        # every rank's busy time counts each pair once: 2m forwards and backwards, less what the pairs save
        pairs = trace.meta.overlapped_pairs
        assert sum(trace.busy(rank) for rank in range(p)) == pytest.approx(
            2 * m * p * (forward + backward) - pairs * (forward + backward - pair), rel=1e-12)


def test_an_overlapped_pair_waits_for_both_inputs():
    """Rank 0 of DualPipeV on 2 ranks: a pair F2.1 B0 starts only once B0's gradient has come back from
    rank 1."""
    from pipeline_ref.schedules.geometry import Action
    schedule = schedules.build("dualpipev", 2, 4)
    trace = simulate.simulate(schedule, forward=1.0, backward=2.0, forward_backward=2.5, latency=0.5)
    ended = {(e.rank, e.op, e.microbatch, e.chunk): e.end for e in trace.events}
    mine = [e for e in trace.events if e.rank == 0]
    checked = 0
    for forward, backward in zip(mine, mine[1:]):
        if (forward.op, backward.op) != ("F", "B") or forward.chunk == backward.chunk:
            continue
        assert backward.end - forward.start == pytest.approx(2.5)             # one action of F&B
        assert forward.end - forward.start == pytest.approx(2.5 / 3)          # shown split F : B = 1 : 2
        for action in (Action("F", forward.microbatch, forward.chunk),
                       Action("B", backward.microbatch, backward.chunk)):
            dependency = schedule.pipeline.dependency(action, 0)
            if dependency is not None:                # both inputs arrived before the pair began
                source, needed = dependency
                sent = ended.get((source, needed.op, needed.microbatch, needed.chunk))
                sent = sent if sent is not None else ended[(source, "I", needed.microbatch, needed.chunk)]
                assert forward.start >= sent + (0.5 if source != 0 else 0.0) - 1e-12
                checked += action.op == "B" and source == 1
    assert checked >= 1
