"""Interleaved 1F1B, zero-bubble ZB-H1, ZB-H2 and ZB-V, and DualPipeV: equal to one device, deadlock-free, simulated as
the formulas say, the same orders as torch.distributed.pipelining's, and the split backward computes nothing
twice."""
import copy

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline_ref import models, schedules
from pipeline_ref.config import ConfigError, RunConfig
from pipeline_ref.preflight import build_model, check_config, check_fits, make_schedule
from pipeline_ref.launch import launch
from tests.one_device import assert_equals_one_device, reference
from pipeline_ref.engine.stage import Stage

MODELS = {"mlp": {"depth": 12, "width": 8, "batch": 12},
          "gpt_tied": {"dim": 16, "heads": 2, "blocks": 6, "seq_len": 8, "batch": 12, "vocab": 32}}


def _cfg(schedule, pp, m, model, chunks=1, dp=1, sync=False):
    return RunConfig(schedule=schedule, pp=pp, dp=dp, microbatches=m, chunks=chunks, model=model,
                     model_kwargs=MODELS[model], dtype="float64", collect_grads=True, sync_sends=sync,
                     stall_timeout=60)


CONFIGS = ([_cfg("interleaved", p, m, model, chunks=v, sync=sync)
            for model in MODELS for p, m, v in ((1, 2, 2), (2, 2, 2), (2, 4, 3), (3, 3, 2), (4, 4, 2))
            for sync in (False, True)]
           + [_cfg("zb-h1", p, m, model, sync=sync)
              for model in MODELS for p, m in ((1, 2), (2, 1), (2, 3), (3, 6), (4, 2), (4, 4))
              for sync in (False, True)]
           + [_cfg("zb-h2", p, m, model, sync=sync)
              for model in MODELS for p, m, sync in ((2, 1, False), (2, 3, True), (3, 6, False), (4, 4, True))]
           + [_cfg("zbv", p, m, model, sync=sync)
              for model in MODELS for p, m, sync in ((1, 2, False), (2, 1, True), (2, 4, False), (3, 6, True), (4, 6, False))]
           + [_cfg("dualpipev", p, m, model, sync=sync)      # m >= 2p; overlapped pairs played F then B
              for model, p, m, sync in (("mlp", 1, 2, False), ("mlp", 2, 4, True), ("gpt_tied", 2, 4, False),
                                        ("gpt_tied", 3, 6, True), ("mlp", 4, 12, False))]
           + [_cfg("zb-auto", p, m, model, sync=sync)         # searched under its default limit of 2p
              for model, p, m, sync in (("mlp", 3, 6, False), ("gpt_tied", 2, 4, True))]
           + [_cfg(s, 2, 2, "gpt_tied", chunks=v, dp=2)
              for s, v in (("interleaved", 2), ("zb-h1", 1), ("zb-h2", 1), ("zbv", 1))])


def _id(cfg):
    return (f"{cfg.model}-{cfg.schedule}-pp{cfg.pp}-dp{cfg.dp}-m{cfg.microbatches}-v{cfg.chunks}"
            + ("-ssend" if cfg.sync_sends else ""))


@pytest.fixture(scope="module")
def results():
    ran = launch(4, "pipeline_ref.train:run_many", CONFIGS, timeout=240)[0]
    return {_id(cfg): r for cfg, r in zip(CONFIGS, ran)}


@pytest.mark.mpi
@pytest.mark.parametrize("cfg", CONFIGS, ids=_id)
def test_equals_one_device(cfg, results):
    assert_equals_one_device(results[_id(cfg)], *reference(cfg))


@pytest.mark.mpi
def test_interleaved_gives_each_rank_its_chunks(results):
    # 12 layers, 2 ranks x 3 chunks: virtual stages of 2 layers, rank 0 holding virtual stages 0, 2, 4.
    assert results["mlp-interleaved-pp2-dp1-m4-v3"].partition == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10), (10, 12)]
    # the tied embedding and head of the GPT sit on rank 0 (virtual stage 0) and rank 1 (the last one)
    assert results["gpt_tied-interleaved-pp2-dp1-m2-v2"].tied == [("0.token.weight", [0, 1])]


@pytest.mark.mpi
def test_zbv_places_its_chunks_in_a_v(results):
    # 12 layers, 3 ranks x 2 chunks: rank 0 holds virtual stages 0 and 5, rank 2 holds 2 and 3
    assert results["mlp-zbv-pp3-dp1-m6-v1-ssend"].partition == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10), (10, 12)]
    trace = results["mlp-zbv-pp3-dp1-m6-v1-ssend"].trace
    assert trace.meta.layout == "v"
    # the V puts the GPT's embedding (first stage) and head (last stage) on rank 0: no tied copy to sum
    assert results["gpt_tied-zbv-pp4-dp1-m6-v1"].tied == []
    assert results["gpt_tied-interleaved-pp4-dp1-m4-v2"].tied == [("0.token.weight", [0, 3])]


def test_refused_before_any_rank_starts():
    with pytest.raises(ConfigError, match=r"num_microbatches \(3\) must be a multiple of num_stages \(2\)"):
        make_schedule(RunConfig(schedule="interleaved", pp=2, microbatches=3, chunks=2))
    with pytest.raises(ConfigError, match=r"--chunks 2 applies only to --schedule interleaved \(or your own generator\)"):
        check_config(RunConfig(schedule="1f1b", chunks=2))
    with pytest.raises(ConfigError, match=r"--pp 4 stages x 3 chunks but the model has only 8 layers"):
        check_fits(RunConfig(schedule="interleaved", pp=4, microbatches=4, chunks=3), 8, 32, chunks=3)
    with pytest.raises(ConfigError, match=r"--checkpoint cannot be combined with schedule 'zb-h1'"):
        check_fits(RunConfig(schedule="zb-h1", checkpoint=True), 8, 32, split_backward=True)


@pytest.mark.parametrize("factory, options", [(models.mlp, {"depth": 4, "width": 16, "batch": 8}),
                                              (models.tiny_gpt, {"blocks": 2, "batch": 4, "tie_weights": True})])
@pytest.mark.parametrize("where", ["first", "last", "whole"])
def test_split_backward_computes_nothing_twice(factory, options, where):
    """I + W give the gradients of B, and their FLOPs add up to exactly B's (also with the tied
    embedding and head on one stage: "whole")."""
    torch.manual_seed(0)
    layers, loss_fn, batch = factory(**options)
    layers, (x, t) = models.to_dtype(layers, batch, torch.float64)
    cut = {"first": len(layers) // 2, "last": len(layers) // 2, "whole": len(layers)}[where]
    first, last = where in ("first", "whole"), where in ("last", "whole")
    part = nn.Sequential(*(layers[:cut] if first else layers[cut:]))
    inputs = x if first else nn.Sequential(*layers[:cut])(x).detach()
    whole, split = copy.deepcopy(part), copy.deepcopy(part)
    plain = Stage(whole, first, last, loss_fn)
    zero_bubble = Stage(split, first, last, loss_fn, split_backward=True)
    out = plain.forward(0, inputs, t)
    zero_bubble.forward(0, inputs, t)
    grad = None if last else (torch.randn_like(out[0]),)
    with FlopCounterMode(display=False) as full:
        expected_input_grad = plain.backward(0, grad)
    with FlopCounterMode(display=False) as input_half:
        input_grad = zero_bubble.backward_input(0, grad)
    shared = {id(p) for p in zero_bubble.weight_grads.shared}    # tied on this stage: taken in I
    assert all(p.grad is None for p in split.parameters() if id(p) not in shared), "I computed weight gradients"
    with FlopCounterMode(display=False) as weight_half:
        zero_bubble.backward_weight(0)
    assert input_half.get_total_flops() + weight_half.get_total_flops() == full.get_total_flops()
    assert input_half.get_total_flops() > 0 and weight_half.get_total_flops() > 0
    if not first:
        torch.testing.assert_close(input_grad, expected_input_grad)
    else:
        assert input_grad is None and expected_input_grad is None
    for p, q in zip(whole.parameters(), split.parameters()):
        torch.testing.assert_close(q.grad, p.grad)
    assert zero_bubble.stash == {} and zero_bubble.meter.nbytes == 0


@pytest.mark.parametrize("num_stages", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("num_microbatches", [1, 2, 3, 4, 5, 8, 10])
def test_zb_h1_is_valid(num_stages, num_microbatches):
    schedules.validate(schedules.build("zb-h1", num_stages, num_microbatches))


@pytest.mark.parametrize("num_stages, num_microbatches, chunks",
                         [(p, m, v) for p in (1, 2, 3, 4) for m in (p, 2 * p, 4 * p) for v in (1, 2, 3)])
def test_interleaved_simulation_equals_the_formula(num_stages, num_microbatches, chunks):
    from pipeline_ref import simulate
    schedule = schedules.build("interleaved", num_stages, num_microbatches, chunks=chunks)
    trace = simulate.simulate(schedule, forward=1.0 / chunks, backward=2.0 / chunks)   # a chunk is 1/v of a stage
    assert trace.utilization == pytest.approx(
        simulate.theory_utilization("interleaved", num_stages, num_microbatches, chunks=chunks), abs=1e-12)
    assert trace.peak_stashed == simulate.theory_peak_stashed("interleaved", num_stages, num_microbatches, chunks)


@pytest.mark.parametrize("num_stages, num_microbatches", [(p, m) for p in (1, 2, 3, 4, 6) for m in (p, p + 1, 3 * p)])
@pytest.mark.parametrize("costs", [(1.0, 1.0, 1.0), (1.0, 1.5, 0.5)])
def test_zb_h1_simulation_equals_the_formula(num_stages, num_microbatches, costs):
    from pipeline_ref import simulate
    forward, input_grad, weight_grad = costs
    schedule = schedules.build("zb-h1", num_stages, num_microbatches)
    trace = simulate.simulate(schedule, forward=forward, input_grad=input_grad, weight_grad=weight_grad)
    assert trace.utilization == pytest.approx(simulate.theory_utilization(
        "zb-h1", num_stages, num_microbatches, forward=forward, input_grad=input_grad, weight_grad=weight_grad),
        abs=1e-12)
    assert trace.peak_stashed == simulate.theory_peak_stashed("zb-h1", num_stages, num_microbatches)
    one_f_one_b = simulate.simulate(schedules.build("1f1b", num_stages, num_microbatches),
                                    forward=forward, backward=input_grad + weight_grad)
    if num_stages > 1 and costs == (1.0, 1.0, 1.0):     # a third of 1F1B's idle time
        ideal = num_microbatches * 3.0
        assert trace.makespan - ideal == pytest.approx((one_f_one_b.makespan - ideal) / 3, abs=1e-12)


def test_zb_h1_closed_form_holds_exactly_where_it_claims_to():
    """Random costs: the formula equals the simulator when W <= min(F, I), and refuses otherwise."""
    import random
    from pipeline_ref import simulate
    rng = random.Random(7)
    for _ in range(200):
        forward, input_grad, weight_grad = (rng.uniform(0.2, 2.0) for _ in range(3))
        p = rng.randint(2, 5)
        m = rng.randint(p, 3 * p)
        costs = {"forward": forward, "input_grad": input_grad, "weight_grad": weight_grad}
        simulated = simulate.simulate(schedules.build("zb-h1", p, m), **costs).utilization
        if weight_grad <= min(forward, input_grad):
            assert simulate.theory_utilization("zb-h1", p, m, **costs) == pytest.approx(simulated, abs=1e-12)
        else:
            with pytest.raises(ValueError, match=r"W <= min\(F, I\)"):
                simulate.theory_utilization("zb-h1", p, m, **costs)


@pytest.mark.parametrize("num_stages", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("num_microbatches", [1, 2, 3, 4, 5, 8, 10])
def test_zb_h2_is_valid_and_holds_at_most_2p_minus_1(num_stages, num_microbatches):
    from pipeline_ref import simulate
    schedule = schedules.build("zb-h2", num_stages, num_microbatches)
    schedules.validate(schedule)
    assert {a.op for actions in schedule for a in actions} <= {"F", "I", "W"}
    trace = simulate.simulate(schedule, forward=1.0, input_grad=1.0, weight_grad=1.0)
    assert trace.peak_stashed == simulate.theory_peak_stashed("zb-h2", num_stages, num_microbatches)
    assert max(trace.peak_stashed) <= 2 * num_stages - 1


@pytest.mark.parametrize("num_stages, num_microbatches", [(p, m) for p in (1, 2, 3, 4, 6) for m in (p, 2 * p - 1, 3 * p)])
def test_zb_h2_reaches_the_synchronous_lower_bound(num_stages, num_microbatches):
    """F = I = W = 1: the step is (p - 1) + 3m, the formula's; ZB-H1's too; and from m = 2p - 1 on,
    no stage idles between its first and its last action (ZB-H1's stages do, except the last)."""
    from pipeline_ref import simulate
    p, m = num_stages, num_microbatches
    costs = {"forward": 1.0, "input_grad": 1.0, "weight_grad": 1.0}
    trace = simulate.simulate(schedules.build("zb-h2", p, m), **costs)
    assert trace.makespan == (p - 1) + 3 * m
    assert trace.utilization == pytest.approx(simulate.theory_utilization("zb-h2", p, m, **costs), abs=1e-12)
    h1 = simulate.simulate(schedules.build("zb-h1", p, m), **costs)
    assert h1.makespan == trace.makespan
    if m >= 2 * p - 1:
        assert [trace.idle_inside(r) for r in range(p)] == [0.0] * p
    if p > 1:
        assert h1.idle_inside(0) > 0


def test_zb_h2_needs_its_warm_up_to_fill_every_stage():
    from pipeline_ref import simulate
    # below m = 2p - 1 there are not enough forwards to cover the first gradient's round trip
    assert simulate.simulate(schedules.build("zb-h2", 4, 6), forward=1.0, input_grad=1.0, weight_grad=1.0).idle_inside(0) > 0
    # and with only ZB-H1's memory (p per stage) the same rules leave gaps that the hand-made ZB-H1 avoids
    limited = simulate.simulate(schedules.build("zb-h2", 4, 8, max_in_flight=4), forward=1.0, input_grad=1.0, weight_grad=1.0)
    assert limited.peak_stashed == [4, 4, 4, 4]
    assert limited.makespan > simulate.simulate(schedules.build("zb-h1", 4, 8), forward=1.0, input_grad=1.0,
                                                weight_grad=1.0).makespan
    with pytest.raises(schedules.ScheduleError, match=r"max_in_flight must be a positive integer, got 0"):
        schedules.build("zb-h2", 2, 2, max_in_flight=0)


def test_zb_h2_is_never_slower_than_zb_h1_and_faster_when_i_exceeds_w():
    """Random costs with m >= p: ZB-H2's order (built for F = I = W) never loses to ZB-H1's and never
    beats the synchronous lower bound (p - 1) F + m (F + I + W); ZB-H1 is on that bound when I <= W <= F.
    With I > W ZB-H2 wins, since ZB-H1 keeps (p - 1)(F + I - W) of idle time."""
    import random
    from pipeline_ref import simulate
    rng = random.Random(11)
    for _ in range(150):
        costs = {k: rng.uniform(0.2, 2.0) for k in ("forward", "input_grad", "weight_grad")}
        p = rng.randint(2, 5)
        m = rng.randint(p, 3 * p)
        h2 = simulate.simulate(schedules.build("zb-h2", p, m), **costs).makespan
        h1 = simulate.simulate(schedules.build("zb-h1", p, m), **costs).makespan
        assert h2 <= h1 + 1e-9, (costs, p, m)
        bound = (p - 1) * costs["forward"] + m * sum(costs.values())
        assert h2 >= bound - 1e-9
        if costs["input_grad"] <= costs["weight_grad"] <= costs["forward"]:
            assert h1 == pytest.approx(bound, abs=1e-9), (costs, p, m)
    costs = {"forward": 1.0, "input_grad": 2.0, "weight_grad": 1.0}
    h2 = simulate.simulate(schedules.build("zb-h2", 4, 8), **costs).makespan
    h1 = simulate.simulate(schedules.build("zb-h1", 4, 8), **costs).makespan
    assert (h1, h2) == (8 * 4 + 3 * 2.0, 8 * 4 + 3 * 1.0)          # bubble (p-1)(F+I-W) = 6 against (p-1)F = 3
    with pytest.raises(ValueError, match=r"ZB-H2 closed form holds for F = I = W"):
        simulate.theory_utilization("zb-h2", 4, 8, **costs)
    with pytest.raises(ValueError, match=r"ZB-H2 closed form needs num_microbatches >= num_stages \(3 < 4\)"):
        simulate.theory_utilization("zb-h2", 4, 3)


@pytest.mark.parametrize("num_stages", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("num_microbatches", [1, 2, 3, 4, 5, 8, 10])
def test_zbv_is_valid_with_two_chunks_in_a_v(num_stages, num_microbatches):
    from pipeline_ref import simulate
    schedule = schedules.build("zbv", num_stages, num_microbatches)
    assert schedule.layout == "v"
    schedules.validate(schedule)
    assert {(a.op, a.chunk) for actions in schedule for a in actions} == {(op, c) for op in "FIW" for c in (0, 1)}
    trace = simulate.simulate(schedule, forward=0.5, input_grad=0.5, weight_grad=0.5)
    assert trace.peak_stashed == simulate.theory_peak_stashed("zbv", num_stages, num_microbatches)


@pytest.mark.parametrize("num_stages, num_microbatches", [(p, m) for p in (1, 2, 3, 4, 6) for m in (2 * p - 1, 2 * p, 3 * p)])
def test_zbv_simulation_equals_the_formula(num_stages, num_microbatches):
    """A chunk is half a stage (F = I = W = 1/2 per chunk): from m = 2p - 1 on, ZB-V idles (p - 1) / 2 per
    rank, half of ZB-H1's (p - 1), only before its first action; and holds p whole microbatches' worth."""
    from pipeline_ref import simulate
    p, m = num_stages, num_microbatches
    trace = simulate.simulate(schedules.build("zbv", p, m), forward=0.5, input_grad=0.5, weight_grad=0.5)
    assert trace.utilization == pytest.approx(simulate.theory_utilization("zbv", p, m), abs=1e-12)
    assert trace.makespan - 3 * m == pytest.approx((p - 1) / 2, abs=1e-12)
    h1 = simulate.simulate(schedules.build("zb-h1", p, m), forward=1.0, input_grad=1.0, weight_grad=1.0)
    assert trace.makespan - 3 * m == pytest.approx((h1.makespan - 3 * m) / 2, abs=1e-12)
    assert [trace.idle_inside(r) for r in range(p)] == [0.0] * p
    assert trace.peak_stashed == [2 * p] * p                     # 2p half stages = 1F1B's first stage's p
    with pytest.raises(ValueError, match=r"ZB-V closed form holds for F = I = W"):
        simulate.theory_utilization("zbv", max(p, 2), m + 4, forward=1.0, input_grad=2.0, weight_grad=1.0)
    with pytest.raises(ValueError, match=r"ZB-V closed form needs num_microbatches >= 2 num_stages - 1"):
        simulate.theory_utilization("zbv", p + 1, 2 * p)


def test_zbv_is_torch_distributed_pipelining_order():
    """torch's ScheduleZBVZeroBubble, built on a fake process group (no other process), runs the same order."""
    from pipeline_ref.tools import torch_orders
    for p in (1, 2, 3, 4):
        for m in (1, p, 2 * p - 1, 2 * p + 1):
            assert torch_orders.torch_schedule("zbv", p, m, chunks=2) == schedules.build("zbv", p, m), (p, m)
