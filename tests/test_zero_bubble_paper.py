"""The Zero Bubble paper's bubble rates, reproduced from its own profiled costs.

Source: Qi, Wan, Huang, Lin, "Zero Bubble Pipeline Parallelism", ICLR 2024 (arXiv 2401.10241):
Table 9 ("Profiled time of T_F, T_B, T_W, and T_comm", appendix D) gives each setting's costs in ms, and
Table 5 ("Bubble rates of 1F1B, 1F1B-I, ZB-H1, ZB-H2, ZB-1p, ZB-2p under different settings", section 5.3)
the bubble rates computed from them: (cost - m (T_F + T_B + T_W)) / cost, where cost is the longest time
any stage takes from the start of its first action to the end of its last. The paper's B is our I.

1F1B, ZB-H1 and ZB-H2 are the course's schedules played by the simulator; ZB-1p and ZB-2p are the paper's
heuristic (``auto_schedule.py``) with a memory limit of p and 2p microbatches per stage. Not reproduced
here: 1F1B-I (Megatron's interleaved schedule: the course's differs in its chunking). ZB-V, the paper's V
search (``zbv-auto``, ``v_auto_schedule.py``), is checked in tests/test_zero_bubble_v.py against what the
paper's own code gives on these same Table 9 costs; the paper's ZB-V rows themselves are not recomputed.
"""
import pytest

from pipeline_ref import schedules, simulate
from pipeline_ref.schedules import auto_schedule
from tests.zero_bubble_measures import longest_rank

# model, p, m, then Table 9: T_F, T_B, T_W, T_comm; then Table 5: 1F1B, ZB-H1, ZB-H2, ZB-1p, ZB-2p
TABLE = [("1.5B", 8, 24, 18.522, 18.086, 9.337, 0.601, 0.2431, 0.1585, 0.1083, 0.1585, 0.0433),
         ("1.5B", 8, 32, 18.513, 18.086, 9.331, 0.626, 0.1985, 0.1242, 0.0837, 0.1242, 0.0039),
         ("1.5B", 8, 64, 18.546, 18.097, 9.321, 0.762, 0.1240, 0.0674, 0.0444, 0.0674, 0.0026),
         ("6.2B", 8, 24, 29.718, 29.444, 19.927, 0.527, 0.2347, 0.1323, 0.0698, 0.1323, 0.0029),
         ("6.2B", 8, 32, 29.802, 29.428, 19.530, 0.577, 0.1898, 0.1045, 0.0559, 0.1045, 0.0022),
         ("6.2B", 8, 64, 29.935, 29.621, 19.388, 0.535, 0.1091, 0.0554, 0.0294, 0.0554, 0.0010),
         ("14.6B", 16, 48, 11.347, 11.248, 8.132, 0.377, 0.2552, 0.1397, 0.0672, 0.1397, 0.0066),
         ("14.6B", 16, 64, 11.307, 11.254, 8.101, 0.379, 0.2082, 0.1088, 0.0516, 0.1088, 0.0054),
         ("14.6B", 16, 128, 11.325, 11.308, 8.109, 0.378, 0.1251, 0.0576, 0.0266, 0.0576, 0.0028),
         ("28.3B", 32, 96, 10.419, 10.207, 7.715, 0.408, 0.2646, 0.1421, 0.0641, 0.1421, 0.0038),
         ("28.3B", 32, 128, 10.408, 10.204, 7.703, 0.408, 0.2168, 0.1106, 0.0490, 0.1106, 0.0029),
         ("28.3B", 32, 256, 10.402, 10.248, 7.698, 0.460, 0.1352, 0.0594, 0.0257, 0.0594, 0.0018)]

# The share of a microbatch's activations its W still needs once its B has run. The paper's code estimates
# a layer's as 32h of 34h + 5as bytes per token (megatron/core/pipeline_parallel/zerobubble/runtime.py,
# w_mem_approx / f_mem_approx): 32 / (34 + 5 s / head size), 0.37 to 0.43 at s = 1024 and head sizes 96 to
# 128. Every value from 0.3 to 0.5 reproduces the table; 0.4 is used for all rows, 0.3 and 0.5 for two.
WEIGHT_MEMORY = 0.4


def bubble_rate(trace: simulate.Trace, m: int, forward: float, backward: float, weight: float) -> float:
    """The paper's bubble rate: the longest stage's span from its first action to its last, less the work."""
    cost = longest_rank(trace)
    return (cost - m * (forward + backward + weight)) / cost


def _id(row):
    return f"{row[0]}-p{row[1]}-m{row[2]}"


@pytest.mark.parametrize("row", TABLE, ids=_id)
def test_table5_handmade_schedules(row):
    _, p, m, forward, backward, weight, comm, one_f_one_b, h1, h2, _, _ = row
    split = {"forward": forward, "input_grad": backward, "weight_grad": weight, "latency": comm}
    played = {"1f1b": simulate.simulate(schedules.build("1f1b", p, m), forward=forward,
                                        backward=backward + weight, latency=comm),
              "zb-h1": simulate.simulate(schedules.build("zb-h1", p, m), **split),
              "zb-h2": simulate.simulate(schedules.build("zb-h2", p, m), **split)}
    rates = {name: bubble_rate(trace, m, forward, backward, weight) for name, trace in played.items()}
    assert rates == pytest.approx({"1f1b": one_f_one_b, "zb-h1": h1, "zb-h2": h2}, abs=5e-5)


@pytest.mark.parametrize("row", TABLE, ids=_id)
def test_table5_searched_schedules(row):
    """ZB-1p (limit p) and ZB-2p (limit 2p): the heuristic's schedule, checked, played by the simulator."""
    _, p, m, forward, backward, weight, comm, _, _, _, one_p, two_p = row
    shares = (0.3, WEIGHT_MEMORY, 0.5) if (p, m) in ((8, 24), (16, 64)) else (WEIGHT_MEMORY,)
    for share in shares:
        for limit, published in ((p, one_p), (2 * p, two_p)):
            schedule, longest = auto_schedule.play(p, m, limit, forward, backward, weight, comm, share)
            schedules.validate(schedule)
            trace = simulate.simulate(schedule, forward=forward, input_grad=backward, weight_grad=weight,
                                      latency=comm)
            rate = bubble_rate(trace, m, forward, backward, weight)
            assert rate == pytest.approx((longest - m * (forward + backward + weight)) / longest, abs=1e-9)
            assert rate == pytest.approx(published, abs=5e-5), (limit, share)
