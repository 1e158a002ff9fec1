"""zbv-auto, the Zero Bubble paper's ZB-V search (pipeline_ref/schedules/v_auto_schedule.py): the paper's
code's numbers reproduced, never over its memory limit, valid, and never longer than the hand-made zbv.

Where the numbers come from. The ZB-V rows of the paper (Qi et al., "Zero Bubble Pipeline Parallelism", arXiv
2401.10241, the version with section 6) could not be checked here against costs they came from, so this file
does not claim them. It records instead what the paper's own search gives on the costs the paper does publish
(Table 9's T_F, T_B, T_W, T_comm for the settings of Table 5), run once by hand outside this project:
sail-sg/zero-bubble-pipeline-parallelism at commit 39f2c186a27580b7051eb51e0f651e1efd0a8170,
``megatron/core/pipeline_parallel/zerobubble/scheduler/zbv.py``,
``PipelineGraph(p, m, T_F / 2, T_B / 2, T_W / 2, T_comm, f_mem=1, b_mem=-0.6, w_mem=-0.4).try_v_schedule``,
the best of ``create_schedule``'s four (fill_b, fill_f) variants (the function is the same at the first
release, tag zero-bubble-v0.1.0). A chunk is half a stage, so half the stage's costs; the message latency
stays; W keeps 0.4 of a chunk's activations, as tests/test_zero_bubble_paper.py explains; the limit is the
code's default, 2p chunks (1F1B's peak). Recorded: the idlest rank's idle time and the bubble rate, idle /
(idle + 2m (F + B + W)). Four settings with F = B = W and no latency (the repository README's "ZBV: bubble 0
at 1F1B's activation memory"), two with uneven costs, and four drawn at random where each of the heuristic's
rules (an extra W before an I, the approved idle time, the replays) changes the result, run the same way,
complete the record.
"""
import random

import pytest

from pipeline_ref import schedules, simulate
from pipeline_ref.schedules import v_auto_schedule
from pipeline_ref.schedules.geometry import ScheduleError
from tests.zero_bubble_measures import held, longest_rank

# name, p, m, per-chunk F, B (our I), W, T_comm, W's share of memory; then the paper's code: idle, bubble rate
BY_PAPER_CODE = [
    ("1.5B", 8, 24, 9.261, 9.043, 4.6685, 0.601, 0.4, 83.3425, 0.07027059),
    ("1.5B", 8, 32, 9.2565, 9.043, 4.6655, 0.626, 0.4, 84.406, 0.05430951),
    ("1.5B", 8, 64, 9.273, 9.0485, 4.6605, 0.762, 0.4, 90.347, 0.02979740),
    ("6.2B", 8, 24, 14.859, 14.722, 9.9635, 0.527, 0.4, 79.7485, 0.04032010),
    ("6.2B", 8, 32, 14.901, 14.714, 9.765, 0.577, 0.4, 85.064, 0.03264931),
    ("6.2B", 8, 64, 14.9675, 14.8105, 9.694, 0.535, 0.4, 85.506, 0.01664214),
    ("14.6B", 16, 48, 5.6735, 5.624, 4.066, 0.377, 0.4, 77.3465, 0.04982888),
    ("14.6B", 16, 64, 5.6535, 5.627, 4.0505, 0.379, 0.4, 77.752, 0.03811148),
    ("14.6B", 16, 128, 5.6625, 5.654, 4.0545, 0.378, 0.4, 78.078, 0.01945601),
    ("28.3B", 32, 96, 5.2095, 5.1035, 3.8575, 0.408, 0.4, 152.5685, 0.05309862),
    ("28.3B", 32, 128, 5.204, 5.102, 3.8515, 0.408, 0.4, 152.7295, 0.04043619),
    ("28.3B", 32, 256, 5.201, 5.124, 3.849, 0.46, 0.4, 163.148, 0.02198690),
    ("even", 4, 8, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0),
    ("even", 4, 16, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0),
    ("even", 8, 16, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0),
    ("even", 8, 32, 1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 0.0),
    ("uneven", 4, 12, 1.0, 1.5, 0.5, 0.1, 1.0, 7.1, 0.08975980),
    ("uneven", 8, 24, 1.0, 1.5, 0.5, 0.1, 1.0, 17.5, 0.10835913),
    ("drawn", 7, 6, 0.59, 1.55, 1.47, 0.5, 0.4, 20.65, 0.32280757),
    ("drawn", 5, 22, 0.77, 0.92, 0.72, 0.27, 1.0, 7.09, 0.06267126),
    ("drawn", 8, 20, 0.7, 0.73, 1.27, 0.0, 1.0, 1.11, 0.01017322),
    ("drawn", 8, 18, 0.71, 0.68, 1.16, 0.0, 0.4, 1.2, 0.01290323),
]


def _played(p, m, f, i, w, comm, **options):
    schedule = schedules.build("zbv-auto", p, m, forward=f, input_grad=i, weight_grad=w, latency=comm,
                               **options)
    schedules.validate(schedule)
    return schedule, simulate.simulate(schedule, forward=f, input_grad=i, weight_grad=w, latency=comm)


@pytest.mark.parametrize("row", BY_PAPER_CODE, ids=lambda row: f"{row[0]}-p{row[1]}-m{row[2]}")
def test_reproduces_the_paper_codes_zbv(row):
    """Played by the simulator, the search's schedule idles exactly as the paper's code's does (to the digits
    recorded; the issue asks for 1%), and the search's own timeline agrees with the simulator."""
    _, p, m, f, i, w, comm, share, idle, rate = row
    schedule, trace = _played(p, m, f, i, w, comm, weight_memory=share)
    work = 2 * m * (f + i + w)
    longest = longest_rank(trace)
    assert longest - work == pytest.approx(idle, abs=1e-6)
    assert (longest - work) / longest == pytest.approx(rate, abs=1e-8)
    assert v_auto_schedule.play(p, m, None, f, i, w, comm, share)[1] == pytest.approx(longest, rel=1e-12)
    assert held(schedule, share) <= 2 * p + 1e-9


def test_never_over_its_memory_limit_and_always_valid_on_random_cases():
    rng = random.Random(31)
    played = refused = 0
    for _ in range(120):
        p, m = rng.randint(1, 8), rng.randint(1, 30)
        limit = rng.choice([2 * p, rng.randint(2, 3 * p)])
        f, i, w = (rng.choice([1.0, rng.uniform(0.3, 2.0)]) for _ in range(3))
        comm = rng.choice([0.0, rng.uniform(0.0, 0.5)])
        share = rng.choice([1.0, 1.0, rng.uniform(0.0, 1.0)])
        try:
            schedule, trace = _played(p, m, f, i, w, comm, max_in_flight=limit, weight_memory=share)
        except ScheduleError as refusal:
            assert "fits max_in_flight" in str(refusal) and limit < 2 * p, (p, m, limit)
            refused += 1
            continue
        assert schedule.layout == "v" and schedule.num_chunks == 2
        assert {a.op for actions in schedule for a in actions} == {"F", "I", "W"}
        assert held(schedule, share) <= limit + 1e-9, (p, m, limit, share)
        if share == 1.0:            # a chunk's activations held from its F to its W: what the trace counts
            assert max(trace.peak_stashed) <= limit
        played += 1
    assert played > 80 and refused > 0              # the default (2p) always plays; some tight limits refuse


def test_never_longer_than_the_hand_made_zbv():
    """By the paper's cost, on random costs at the default limit (2p, zbv's own peak); on Table 9's costs the
    paper's heuristic alone is shorter than zbv."""
    rng = random.Random(32)
    for _ in range(60):
        p, m = rng.randint(1, 8), rng.randint(1, 30)
        f, i, w = (rng.choice([1.0, rng.uniform(0.3, 2.0)]) for _ in range(3))
        comm = rng.choice([0.0, rng.uniform(0.0, 0.5)])
        _, auto = _played(p, m, f, i, w, comm)
        hand = simulate.simulate(schedules.build("zbv", p, m), forward=f, input_grad=i, weight_grad=w,
                                 latency=comm)
        assert longest_rank(auto) <= longest_rank(hand) + 1e-9, (p, m, f, i, w, comm)
    for _, p, m, f, i, w, comm, share, _, _ in BY_PAPER_CODE[:3]:
        _, auto = _played(p, m, f, i, w, comm, weight_memory=share)
        hand = simulate.simulate(schedules.build("zbv", p, m), forward=f, input_grad=i, weight_grad=w,
                                 latency=comm)
        assert longest_rank(auto) < longest_rank(hand)


def test_build_defaults_to_two_p_and_refuses_bad_options():
    assert schedules.build("zbv-auto", 3, 9) == schedules.build("zbv-auto", 3, 9, max_in_flight=6)
    with pytest.raises(ScheduleError, match=r"max_in_flight must be at least 2 chunk activations"):
        schedules.build("zbv-auto", 3, 9, max_in_flight=1)
    with pytest.raises(ScheduleError, match=r"weight_memory must be in \[0, 1\]"):
        schedules.build("zbv-auto", 3, 9, weight_memory=-0.1)
    with pytest.raises(ScheduleError, match=r"forward: give one non-negative cost, or one per stage \(3\)"):
        schedules.build("zbv-auto", 3, 9, forward=[1.0, 2.0])
