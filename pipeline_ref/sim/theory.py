"""The closed forms: utilization, bubble and stashed activations of each schedule, and where they hold.

    >>> from pipeline_ref.sim import theory
    >>> theory.utilization("gpipe", num_stages=4, num_microbatches=8)
    0.7272727272727273
    >>> theory.peak_stashed("1f1b", 4, 8)
    [4, 3, 2, 1]

Each formula assumes equal stages and free messages, and some hold only for some costs or enough
microbatches: outside those conditions a function raises ValueError saying so, and ``simulate.simulate``
answers instead. tests/test_simulate.py and tests/test_beyond_1f1b.py check every formula against the
simulator. (``simulate.theory_utilization`` and friends are the same functions, under the names the
lessons use.)
"""
from __future__ import annotations

SCHEDULES = ("naive", "gpipe", "1f1b", "interleaved", "zb-h1", "zb-h2", "zbv", "dualpipev")


def _check(name: str, num_stages: int, num_microbatches: int) -> None:
    if name not in SCHEDULES:
        raise ValueError(f"no closed form for schedule {name!r}; known schedules: {', '.join(SCHEDULES)}")
    for what, value in (("num_stages", num_stages), ("num_microbatches", num_microbatches)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{what} must be a positive integer, got {value!r}")


def utilization(name: str, num_stages: int, num_microbatches: int, chunks: int = 2,
                       forward: float = 1.0, input_grad: float = 1.0, weight_grad: float = 1.0) -> float:
    """Fraction of time the ranks compute, with equal stages and free messages.

    With p = num_stages, m = num_microbatches, v = chunks:

    - naive:        1 / p               (one microbatch crosses all p stages at a time)
    - gpipe, 1f1b:  m / (m + p - 1)     (p - 1 slots of fill and drain around m slots of work;
                                         independent of the forward/backward ratio)
    - interleaved:  v m / (v m + p - 1) (the fill and drain shrink to 1/v: chunks are 1/v of a stage;
                                         Megatron's layout, m a multiple of p)
    - zb-h1:        m (F + I + W) / (m (F + I + W) + (p - 1)(F + I - W)), for m >= p and W <= min(F, I): the
      deferred
                    weight gradients W fill part of 1F1B's (p - 1)(F + I + W) of idle time
                    (forward, input_grad, weight_grad: the costs F, I, W; a third of 1F1B's bubble
                    when they are equal).
    - zb-h2:        3 m / (3 m + p - 1), for m >= p and F = I = W: the synchronous step's lower bound,
                    (p - 1) F before the last stage can start plus its m (F + I + W) of work. The same as
                    ZB-H1's: ZB-H2's extra memory removes the idle time *inside* each stage's span
                    (``Trace.idle_inside``), not the step's fill. For other costs use simulate().
    - zbv:          6 m / (6 m + p - 1), for m >= 2p - 1 and F = I = W (the costs of a whole stage; a chunk
                    costs half): the last rank starts (p - 1) F / 2 late, half of ZB-H1's (p - 1) F, because
                    the V's first p chunks are half stages, and then no rank idles until it is done.
    - dualpipev:    ZB-V's 6 m / (6 m + p - 1), for m >= 2p (DualPipeV's own minimum) and F = I = W: its pairs
                    are played one after the other here, so the same work fills the same V
                    (``dualpipe.idle_time`` gives the idle time for W <= I <= F <= B).
    """
    _check(name, num_stages, num_microbatches)
    p, m = num_stages, num_microbatches
    if name == "naive":
        return 1.0 / p
    if name == "interleaved":
        return chunks * m / (chunks * m + p - 1)
    if name == "zb-h1":
        if m < p:
            raise ValueError(f"the ZB-H1 closed form needs num_microbatches >= num_stages ({m} < {p}); "
                             f"use simulate() for fewer microbatches")
        if p > 1 and weight_grad > min(forward, input_grad):
            # Checked against the simulator: beyond this a deferred W no longer fits the slot it fills.
            raise ValueError(f"the ZB-H1 closed form holds for W <= min(F, I); here W = {weight_grad:g}, "
                             f"F = {forward:g}, I = {input_grad:g}: use simulate()")
        work = m * (forward + input_grad + weight_grad)
        return work / (work + (p - 1) * (forward + input_grad - weight_grad))
    if name == "zb-h2":
        _needs_equal_costs("ZB-H2", p, m, p, "num_stages", forward, input_grad, weight_grad)
        return 3 * m / (3 * m + p - 1)
    if name == "zbv":
        _needs_equal_costs("ZB-V", p, m, 2 * p - 1, "2 num_stages - 1", forward, input_grad, weight_grad)
        return 6 * m / (6 * m + p - 1)
    if name == "dualpipev":
        _needs_equal_costs("DualPipeV", p, m, 2 * p, "2 num_stages", forward, input_grad, weight_grad)
        return 6 * m / (6 * m + p - 1)
    return m / (m + p - 1)


def _needs_equal_costs(label: str, p: int, m: int, least: int, least_name: str, *costs: float) -> None:
    """ZB-H2's and ZB-V's closed forms hold from ``least`` microbatches on, with F = I = W (the costs their
    orders are built for); elsewhere only the simulator answers."""
    if m < least:
        raise ValueError(f"the {label} closed form needs num_microbatches >= {least_name} ({m} < {least}); "
                         f"use simulate() for fewer microbatches")
    if p > 1 and len(set(costs)) > 1:
        forward, input_grad, weight_grad = costs
        raise ValueError(f"the {label} closed form holds for F = I = W; here F = {forward:g}, I = "
                         f"{input_grad:g}, W = {weight_grad:g}: use simulate()")


def bubble(name: str, num_stages: int, num_microbatches: int, **costs) -> float:
    """Idle fraction, 1 - utilization: naive (p - 1) / p; gpipe and 1f1b (p - 1) / (m + p - 1); ..."""
    return 1.0 - utilization(name, num_stages, num_microbatches, **costs)


def peak_stashed(name: str, num_stages: int, num_microbatches: int, chunks: int = 2) -> list[int]:
    """Most microbatches whose activations stage s holds at once, one number per stage.

    - naive:        1                  (each backward follows its forward)
    - gpipe:        m                  (all forwards run before any backward)
    - 1f1b:         min(p - s, m)      (p - s - 1 warmup forwards, plus one in the steady state)
    - interleaved:  min(2 (p - s - 1) + (v - 1) p + 1, v m) chunk-microbatches (Megatron's warm-up, plus one)
    - zb-h1:        min(p, m)          (every stage, until each microbatch's W)
    - zb-h2:        min(2 p - 1, m)    (every stage: the price of its longer warm-up)
    - zbv:          min(2 p, m + 1 + s, 2 m) chunk-microbatches of half a stage each: p whole microbatches'
                    worth on every rank once m >= 2p - 1, 1F1B's first stage's
    - dualpipev:    2 p + 1 chunk-microbatches on every rank (m >= 2p): ZB-V's 2 p and the pair in flight
    """
    _check(name, num_stages, num_microbatches)
    p, m = num_stages, num_microbatches
    if name == "naive":
        return [1] * p
    if name == "gpipe":
        return [m] * p
    if name == "interleaved":
        if chunks == 1:
            return [min(p - s, m) for s in range(p)]
        return [min(2 * (p - s - 1) + (chunks - 1) * p + 1, chunks * m) for s in range(p)]
    if name == "zb-h1":
        return [min(p, m)] * p
    if name == "zb-h2":
        return [min(2 * p - 1, m)] * p
    if name == "zbv":
        return [min(2 * p, m + 1 + s, 2 * m) for s in range(p)]
    if name == "dualpipev":
        if m < 2 * p:
            raise ValueError(f"DualPipeV needs num_microbatches >= 2 num_stages ({m} < {2 * p})")
        return [2 * p + 1] * p
    return [min(p - s, m) for s in range(p)]
