"""Graded: exercise 2, microbatches, gradient accumulation and the GPipe schedule (exercises/ex02_gpipe.py).

    .venv/bin/python -m pytest tests/exercises/test_ex02_gpipe.py                  # your functions
    .venv/bin/python -m pytest tests/exercises/test_ex02_gpipe.py --impl solutions

Your schedule goes through pipeline_ref's validator, its simulator (utilization must equal the theory,
m / (m + p - 1)), and its executor on 2 and 3 real MPI ranks (gradients must equal one device's).
"""
import pytest
import torch

from pipeline_ref import models, schedules, simulate
from pipeline_ref.preflight import build_model
from pipeline_ref.schedules import Action
from tests.exercises import rank_checks_pipeline

GRID = [(p, m) for p in (1, 2, 3, 4) for m in (1, 2, 3, 4, 6, 8)]


@pytest.fixture
def ex(impl):
    return impl("ex02_gpipe")


def batch(size: int = 12):
    g = torch.Generator().manual_seed(0)
    return torch.randn(size, 3, generator=g), torch.randn(size, 2, generator=g)


@pytest.mark.points(2)
def test_split_microbatches_in_order(ex):
    inputs, targets = batch(12)
    for m in (1, 2, 3, 4, 6, 12):
        pieces = ex.split_microbatches(inputs, targets, m)
        assert len(pieces) == m, f"{m} microbatches asked for, {len(pieces)} returned"
        for i, (x, t) in enumerate(pieces):
            assert x.shape == (12 // m, 3) and t.shape == (12 // m, 2), (
                f"m={m}, microbatch {i}: shapes {tuple(x.shape)} and {tuple(t.shape)}, expected ({12 // m}, 3) "
                f"and ({12 // m}, 2)")
        assert torch.equal(torch.cat([x for x, _ in pieces]), inputs), f"m={m}: the inputs are not in order"
        assert torch.equal(torch.cat([t for _, t in pieces]), targets), f"m={m}: the targets are not in order"


@pytest.mark.points(2)
def test_split_microbatches_refuses_unequal(ex):
    inputs, targets = batch(10)
    with pytest.raises(ValueError) as refused:
        ex.split_microbatches(inputs, targets, 4)
    assert "10" in str(refused.value) and "4" in str(refused.value), (
        f"the message should say the batch size (10) and the number of microbatches (4): {refused.value}")
    for bad in (0, -2, True, 2.0):      # 8 % True == 0 and 8 % 2.0 == 0: neither is a count of microbatches
        with pytest.raises(ValueError):
            ex.split_microbatches(inputs[:8], targets[:8], bad)
            pytest.fail(f"split_microbatches(8 samples, {bad!r}) returned; {bad!r} is not a positive integer "
                        f"(True and 2.0 are not ints you can count microbatches with): raise ValueError")
    with pytest.raises(ValueError):
        ex.split_microbatches(inputs, targets[:8], 2)        # inputs and targets differ in batch size


@pytest.mark.points(3)
def test_accumulated_gradients_equal_full_batch(ex):
    """Gradients accumulated over 1, 3 and 6 microbatches equal one pass over the whole batch (float64)."""
    layers, loss_fn, (inputs, targets) = build_model(rank_checks_pipeline.MODEL)
    loss, grads = models.reference_step(layers, loss_fn, inputs, targets)
    model = torch.nn.Sequential(*layers)
    for m in (1, 2, 4, 8):
        model.zero_grad(set_to_none=True)
        pieces = list(zip(inputs.tensor_split(m), targets.tensor_split(m)))    # not your split: only 2.2 here
        mean = ex.accumulate_gradients(model, loss_fn, pieces)
        assert mean == pytest.approx(loss, rel=1e-12), f"{m} microbatches: mean loss {mean}, full batch {loss}"
        for name, p in model.named_parameters():
            assert p.grad is not None, f"{m} microbatches: {name} has no gradient"
            torch.testing.assert_close(p.grad, grads[name], rtol=1e-10, atol=1e-12,
                                       msg=lambda msg: f"{m} microbatches, {name}: {msg}")


@pytest.mark.points(2)
def test_accumulation_adds_to_the_gradients_already_there(ex):
    """Starting from non-empty .grad (a step's gradients accumulate over calls): what was there plus the batch's."""
    layers, loss_fn, (inputs, targets) = build_model(rank_checks_pipeline.MODEL)
    _, grads = models.reference_step(layers, loss_fn, inputs, targets)
    model = torch.nn.Sequential(*layers)
    g = torch.Generator().manual_seed(7)
    before = {name: torch.randn(p.shape, generator=g, dtype=p.dtype) for name, p in model.named_parameters()}
    for m in (1, 4):
        for name, p in model.named_parameters():
            p.grad = before[name].clone()
        ex.accumulate_gradients(model, loss_fn, list(zip(inputs.tensor_split(m), targets.tensor_split(m))))
        for name, p in model.named_parameters():
            assert p.grad is not None, f"{m} microbatches: {name}'s .grad is None after the call"
            torch.testing.assert_close(p.grad, before[name] + grads[name], rtol=1e-10, atol=1e-12, msg=lambda msg: (
                f"{m} microbatches, {name}: .grad held a gradient before the call; afterwards it should hold that "
                f"plus the batch's (backward() adds; don't zero or rescale what was there): {msg}"))


@pytest.mark.points(3)
def test_gpipe_is_valid_and_all_forwards_first(ex):
    for p, m in GRID:
        sched = ex.gpipe(p, m)
        schedules.validate(sched, m)
        assert len(sched) == p, f"gpipe({p}, {m}) has {len(sched)} stage lists, expected {p}"
        forwards = [Action("F", i) for i in range(m)]
        backwards = sorted([Action("B", i) for i in range(m)])
        for s, actions in enumerate(sched):
            actions = list(actions)
            assert actions[:m] == forwards, (f"gpipe({p}, {m}), stage {s}: first the {m} forwards in order, got "
                                             f"{' '.join(map(str, actions[:m]))}")
            assert sorted(actions[m:]) == backwards, (f"gpipe({p}, {m}), stage {s}: then the {m} backwards, got "
                                                      f"{' '.join(map(str, actions[m:]))}")


@pytest.mark.points(2)
def test_gpipe_simulated_bubble_and_memory(ex):
    """Simulated with F = 1, B = 2: utilization m / (m + p - 1), and every stage stashes all m microbatches."""
    for p, m in GRID:
        trace = simulate.simulate(ex.gpipe(p, m), forward=1.0, backward=2.0)
        where = f"gpipe({p}, {m}) simulated"
        theory, stash = simulate.theory_utilization("gpipe", p, m), simulate.theory_peak_stashed("gpipe", p, m)
        assert trace.utilization == pytest.approx(theory), (
            f"{where}: utilization {trace.utilization:.4f}, not {theory:.4f}")
        assert trace.makespan == pytest.approx(3.0 * (m + p - 1)), f"{where}: makespan {trace.makespan}, not 3(m+p-1)"
        assert trace.peak_stashed == stash, f"{where}: stashes {trace.peak_stashed} microbatches per stage, not {stash}"


@pytest.mark.mpi
@pytest.mark.points(4)
def test_gpipe_on_real_ranks_equals_one_device(on_ranks, impl_name, assert_equals_one_device):
    """Your schedule through pipeline_ref's executor on 2 and 3 ranks (synchronous sends), float64."""
    runs = rank_checks_pipeline.schedule_runs(impl_name, "ex02_gpipe:gpipe", rank_checks_pipeline.GPIPE_CASES)
    for cfg, result in zip(runs, on_ranks("ex02.executor")[0]):
        assert_equals_one_device(cfg, result)
        assert result.trace.peak_stashed == [cfg.microbatches] * cfg.pp, (
            f"{cfg.pp} stages, {cfg.microbatches} microbatches: measured activations stashed per stage "
            f"{result.trace.peak_stashed}")
