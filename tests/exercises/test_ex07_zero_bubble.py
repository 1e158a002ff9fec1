"""Graded: exercise 7, the backward split in two and the zero-bubble schedule ZB-H1 (exercises/ex07_zero_bubble.py).

    .venv/bin/python -m pytest tests/exercises/test_ex07_zero_bubble.py                # your functions
    .venv/bin/python -m pytest tests/exercises/test_ex07_zero_bubble.py --impl solutions

Your I and W (7.1, 7.2), on a stage of Linear, LayerNorm and Tanh in float64 (first, middle and last stage):
together the whole backward's gradients; I leaves every .grad alone and keeps one tensor per layer output (the
bytes lesson 07 counts); I + W cost the FLOPs of one whole backward (nothing computed twice); and both inside
pipeline_ref's ZB-H1 run on 3 real MPI ranks, whose gradients must equal one device's.

Your schedule (7.3) must be lesson 07's order exactly, at fewer, as many and more microbatches than stages; goes through pipeline_ref's validator; its simulator, where ZB-H1 (F = I = W = 1) must idle
each rank only p - 1, a third of 1F1B's 3 (p - 1), holding at most p microbatches per stage; and
pipeline_ref's executor on 2 and 3 real MPI ranks (I and W computed apart), whose gradients must equal
one device's.
"""
import copy

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline_ref import schedules, simulate
from tests.exercises import rank_checks_pipeline
from tests.exercises import rank_checks_parallel as checks

ZB_GRID = [(p, m) for p in (1, 2, 3, 4, 5) for m in (1, 2, 3, 4, 5, 6, 8)]


@pytest.fixture
def ex(impl):
    return impl("ex07_zero_bubble")


def table(schedule) -> str:
    return schedules.describe(schedule) if schedule and all(schedule) else repr(schedule)


# =========================================================================== 7.1 and 7.2: the split backward

def split_stage(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 7), nn.LayerNorm(7), nn.Tanh(),
                         nn.Linear(7, 3)).double()


def owners(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if any(True for _ in m.parameters(recurse=False))]


class Forward:
    """One microbatch's forward through a stage, keeping what I and W get: as pipeline_ref's Stage does."""

    def __init__(self, module: nn.Module, position: str, microbatch: int):
        g = torch.Generator().manual_seed(100 + microbatch)
        self.x = torch.randn(4, 5, generator=g, dtype=torch.float64)
        if position != "first":
            self.x.requires_grad_(True)
        self.layers, self.layer_outputs = owners(module), []
        hooks = [m.register_forward_hook(lambda m, i, o: self.layer_outputs.append(o)) for m in self.layers]
        y = module(self.x)
        for h in hooks:
            h.remove()
        if position == "last":
            self.outputs, self.output_grads = [nn.functional.mse_loss(y, torch.randn(y.shape, generator=g,
                                                                                     dtype=y.dtype))], None
        else:
            self.outputs, self.output_grads = [y], [torch.randn(y.shape, generator=g, dtype=y.dtype)]
        self.inputs = [self.x] if self.x.requires_grad else []

    def whole_backward(self):
        torch.autograd.backward(self.outputs, self.output_grads)
        return [x.grad for x in self.inputs]


def as_list(value, what: str) -> list:
    assert isinstance(value, (list, tuple)), f"{what} is a {type(value).__name__}, not a list"
    return list(value)


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


@pytest.mark.points(3)
def test_split_backward_equals_the_whole_backward(ex):
    """First, middle and last stage, two microbatches: I's input gradients and W's .grad, accumulated, equal a
    whole backward's (float64)."""
    for position in ("first", "middle", "last"):
        split, whole = split_stage(), split_stage()
        for microbatch in (0, 1):
            mine, reference = Forward(split, position, microbatch), Forward(whole, position, microbatch)
            where = f"a {position} stage, microbatch {microbatch}"
            input_grads, kept = ex.backward_input(mine.outputs, mine.output_grads, mine.inputs, mine.layer_outputs)
            input_grads = as_list(input_grads, f"{where}: backward_input's input_grads")
            expected = reference.whole_backward()
            assert len(input_grads) == len(expected), (
                f"{where}: {len(input_grads)} input gradients for {len(mine.inputs)} inputs")
            for got, want in zip(input_grads, expected):
                assert got is not None, f"{where}: an input's gradient is None"
                torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14, msg=lambda m: (
                    f"{where}: the input's gradient from backward_input is not the whole backward's: {m}"))
            ex.backward_weight(mine.layers, mine.layer_outputs, kept)
        for (name, got), (_, want) in zip(split.named_parameters(), whole.named_parameters()):
            assert got.grad is not None, f"a {position} stage: {name} has no .grad after backward_weight"
            torch.testing.assert_close(got.grad, want.grad, rtol=1e-12, atol=1e-14, msg=lambda m: (
                f"a {position} stage, after two microbatches: {name}.grad is not the whole backward's sum: {m}"))


@pytest.mark.points(2)
def test_input_half_computes_no_weight_gradient_and_keeps_one_gradient_per_layer(ex):
    """After I every .grad is still None, and what I keeps for W is one tensor per layer output, of its size:
    lesson 07's count of the bytes held from I to W."""
    for position in ("middle", "last"):
        stage = split_stage()
        fwd = Forward(stage, position, 0)
        _, kept = ex.backward_input(fwd.outputs, fwd.output_grads, fwd.inputs, fwd.layer_outputs)
        touched = [n for n, p in stage.named_parameters() if p.grad is not None]
        assert not touched, (f"a {position} stage: after backward_input, {touched} have a .grad: I computed weight "
                             f"gradients (ask autograd only for what I must send, and what W will need)")
        kept = as_list(kept, f"a {position} stage: backward_input's kept")
        tensors = [t for t in kept if isinstance(t, torch.Tensor)]
        counted = nbytes(fwd.layer_outputs)
        assert len(kept) == len(fwd.layer_outputs) and nbytes(tensors) == counted, (
            f"a {position} stage: backward_input keeps {len(kept)} item(s), {nbytes(tensors)} bytes of tensors, for W; "
            f"lesson 07 counts one gradient per layer output: {len(fwd.layer_outputs)} tensors, {counted} bytes")


def flops(function) -> int:
    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


@pytest.mark.points(2)
def test_input_and_weight_halves_compute_nothing_twice(ex):
    """FLOPs (FlopCounterMode): I + W cost exactly one whole backward, and I alone less."""
    split, whole = split_stage(), split_stage()
    mine, reference = Forward(split, "middle", 0), Forward(whole, "middle", 0)
    full = flops(reference.whole_backward)
    kept = []
    first = flops(lambda: kept.append(ex.backward_input(mine.outputs, mine.output_grads, mine.inputs,
                                                        mine.layer_outputs)[1]))
    second = flops(lambda: ex.backward_weight(mine.layers, mine.layer_outputs, kept[0]))
    assert first < full and first + second == full, (
        f"a stage of three Linears: backward_input took {first:,} FLOPs and backward_weight {second:,}, together "
        f"{first + second:,}; the whole backward takes {full:,} (I + W must cost exactly that: nothing twice)")


@pytest.mark.mpi
@pytest.mark.points(3)
def test_split_backward_under_zb_h1_on_real_ranks_equals_one_device(on_ranks, assert_equals_one_device):
    """Your I and W inside pipeline_ref's ZB-H1 on 3 and 2 real ranks (synchronous sends), float64."""
    for cfg, result in zip(checks.split_runs(), on_ranks("ex07.split")[0]):
        assert_equals_one_device(cfg, result)


# =========================================================================== 7.3: ZB-H1 as data


@pytest.mark.points(2)
def test_zb_h1_is_valid_and_splits_the_backward(ex):
    """Valid; every stage runs F, I and W (never B) once per microbatch, each kind in microbatch order."""
    for p, m in ZB_GRID:
        sched = ex.zb_h1(p, m)
        where = f"zb_h1({p}, {m})"
        assert isinstance(sched, list) and len(sched) == p, f"{where}: expected one list of actions per stage"
        schedules.validate(sched, m)
        for s, actions in enumerate(sched):
            for op in "FIW":
                assert [a.microbatch for a in actions if a.op == op] == list(range(m)), (
                    f"{where}, stage {s}: the {op}s are not microbatches 0..{m - 1} in order\n{table(sched)}")
            assert all(a.op in "FIW" and a.chunk == 0 for a in actions), f"{where}, stage {s}: {actions}"


# Lesson 07's phases, written out: fewer microbatches than stages (a section stops when its microbatches run out,
# and nothing is held back once the forwards have), as many, and more.
ZB_H1_ORDERS = {
    (3, 2): ["F0 F1 I0 W0 I1 W1", "F0 F1 I0 I1 W0 W1", "F0 I0 F1 I1 W0 W1"],
    (4, 2): ["F0 F1 I0 W0 I1 W1", "F0 F1 I0 W0 I1 W1", "F0 F1 I0 I1 W0 W1", "F0 I0 F1 I1 W0 W1"],
    (3, 3): ["F0 F1 F2 I0 W0 I1 W1 I2 W2", "F0 F1 I0 F2 I1 W0 I2 W1 W2", "F0 I0 F1 I1 F2 I2 W0 W1 W2"],
    (3, 4): ["F0 F1 F2 I0 W0 F3 I1 W1 I2 W2 I3 W3", "F0 F1 I0 F2 I1 W0 F3 I2 W1 I3 W2 W3",
             "F0 I0 F1 I1 F2 I2 W0 F3 I3 W1 W2 W3"],
    (2, 5): ["F0 F1 I0 W0 F2 I1 W1 F3 I2 W2 F4 I3 W3 I4 W4", "F0 I0 F1 I1 W0 F2 I2 W1 F3 I3 W2 F4 I4 W3 W4"],
}


@pytest.mark.points(2)
def test_zb_h1_is_lesson_07s_order(ex):
    """Action for action: the orders above (m < p, m = p, m > p), then every size of the grid against
    pipeline_ref's ZB-H1 (the same phases)."""
    for (p, m), expected in ZB_H1_ORDERS.items():
        got = [" ".join(map(str, actions)) for actions in ex.zb_h1(p, m)]
        assert got == expected, (f"zb_h1({p}, {m}) gave\n" + "\n".join(got) + "\nlesson 07's phases give\n"
                                 + "\n".join(expected))
    for p, m in ZB_GRID:
        got, expected = ex.zb_h1(p, m), schedules.build("zb-h1", p, m)
        for s in range(p):
            assert list(got[s]) == list(expected[s]), (
                f"zb_h1({p}, {m}), stage {s}: {' '.join(map(str, got[s]))}\nlesson 07's phases give "
                f"{' '.join(map(str, expected[s]))}")


@pytest.mark.points(3)
def test_zb_h1_simulated_bubble_and_memory(ex):
    """F = I = W = 1: each rank idles p - 1 (1F1B: 3 (p - 1)) once m >= p, never longer than 1F1B, stashes <= p."""
    for p, m in ZB_GRID:
        sched = ex.zb_h1(p, m)
        trace = simulate.simulate(sched, forward=1.0, input_grad=1.0, weight_grad=1.0)
        where = f"zb_h1({p}, {m}) simulated with F = I = W = 1"
        idle = [trace.makespan - trace.busy(r) for r in range(p)]
        if m >= p:
            assert idle == pytest.approx([p - 1] * p), (
                f"{where}: the ranks idle {idle}, not p - 1 = {p - 1} each (1F1B idles 3 (p - 1) = {3 * (p - 1)})"
                f"\n{table(sched)}")
        else:
            assert trace.makespan <= 3 * (m + p - 1) + 1e-9, (
                f"{where}: makespan {trace.makespan}, longer than 1F1B's 3 (m + p - 1) = {3 * (m + p - 1)}")
        assert max(trace.peak_stashed) <= min(p, m), (
            f"{where}: stages stash {trace.peak_stashed} microbatches at once; ZB-H1 holds at most p (and m)"
            f"\n{table(sched)}")


@pytest.mark.mpi
@pytest.mark.points(3)
def test_zb_h1_on_real_ranks_equals_one_device(on_ranks, impl_name, assert_equals_one_device):
    """zb_h1 through pipeline_ref's executor (I and W computed apart) on 2 and 3 ranks, float64; stash <= p."""
    runs = rank_checks_pipeline.schedule_runs(impl_name, f"{checks.EX07}:zb_h1", checks.ZB_H1_CASES)
    for cfg, result in zip(runs, on_ranks("ex07.zb_h1")[0]):
        assert_equals_one_device(cfg, result)
        stashed = result.trace.peak_stashed
        assert max(stashed) <= cfg.pp, (f"{cfg.pp} stages, {cfg.microbatches} microbatches: measured activations "
                                        f"stashed per stage {stashed}, more than p = {cfg.pp}")
