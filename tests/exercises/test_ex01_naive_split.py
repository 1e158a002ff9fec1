"""Graded: exercise 1, a model split over ranks with blocking sends (exercises/ex01_naive_split.py).

    .venv/bin/python -m pytest tests/exercises/test_ex01_naive_split.py            # your functions
    .venv/bin/python -m pytest tests/exercises/test_ex01_naive_split.py --impl solutions

The model is pipeline_ref's MLP with 5 layers in float64, split over 1, 2 and 3 ranks (3 + 2 and
2 + 2 + 1 layers: the middle rank of 3 both receives and sends). Its outputs, loss and gradients must
equal the unsplit model's on one process, to 1e-12. Your exercise 0 carries the messages.
"""
import pytest
import torch

from pipeline_ref import models
from pipeline_ref.front import partition
from pipeline_ref.preflight import build_model
from tests.exercises import rank_checks_pipeline

pytestmark = pytest.mark.mpi


@pytest.fixture(scope="module")
def unsplit():
    """The whole model on this process: (output, loss, grads) of the full batch."""
    layers, loss_fn, (inputs, targets) = build_model(rank_checks_pipeline.MODEL)
    with torch.no_grad():
        output = torch.nn.Sequential(*layers)(inputs)
    loss, grads = models.reference_step(layers, loss_fn, inputs, targets)
    return output, loss, grads


def assert_grads(got: dict, expected: dict, where: str) -> None:
    assert set(got) == set(expected), f"{where}: gradients of {sorted(got)}, expected {sorted(expected)}"
    for name, grad in expected.items():
        assert got[name] is not None, f"{where}: {name} has no gradient (.grad is None)"
        torch.testing.assert_close(got[name], grad, rtol=1e-10, atol=1e-12, msg=lambda m: f"{where}, {name}: {m}")


@pytest.mark.points(2)
def test_stage_layers(on_ranks):
    """Contiguous, in order, the first stages one layer more when they don't divide; the same layer objects."""
    result = on_ranks("ex01.stage_layers")[0]
    for (num_layers, num_stages), stages in result["cases"].items():
        expected = [list(r) for r in partition.uniform(num_layers, num_stages)]
        assert stages == expected, (f"{num_layers} layers on {num_stages} stages: got the layers {stages}, "
                                    f"expected {expected}")
    assert result["too_many_stages"] == "ValueError", (
        f"3 layers on 4 stages must raise ValueError (a stage without layers), but it {result['too_many_stages']}")


@pytest.mark.points(3)
def test_stage_forward_matches_unsplit_model(on_ranks, unsplit):
    """The last rank's output equals the unsplit model's; every received input requires grad."""
    per_rank = on_ranks("ex01.forward")
    output, _, _ = unsplit
    for num_stages in (2, 3):
        last = per_rank[num_stages - 1][num_stages]
        torch.testing.assert_close(last["output"], output, rtol=1e-12, atol=1e-12,
                                   msg=lambda m: f"{num_stages} stages, the last stage's output: {m}")
        for rank in range(1, num_stages):
            assert per_rank[rank][num_stages]["input_requires_grad"], (
                f"{num_stages} stages: rank {rank}'s x does not require grad, so the backward cannot give "
                f"its gradient (call .requires_grad_(True) on what you receive)")


@pytest.mark.points(4)
def test_stage_backward_gives_one_device_gradients(on_ranks, unsplit):
    """After stage_forward and stage_backward, every rank holds the unsplit model's gradients of its layers."""
    per_rank = on_ranks("ex01.backward")
    _, _, grads = unsplit
    for num_stages in (2, 3):
        got = {name: g for rank in range(num_stages) for name, g in per_rank[rank][num_stages].items()}
        assert_grads(got, grads, f"{num_stages} stages")


@pytest.mark.points(3)
def test_naive_step_on_1_2_3_ranks(on_ranks, unsplit):
    """naive_step returns the loss on the last rank only, and leaves the one-device gradients."""
    per_rank = on_ranks("ex01.naive_step")
    _, loss, grads = unsplit
    for num_stages in (1, 2, 3):
        results = [per_rank[rank][num_stages] for rank in range(num_stages)]
        last = results[-1]["loss"]
        assert isinstance(last, float), f"{num_stages} stages: the last rank returned {last!r}, not the loss as a float"
        assert last == pytest.approx(loss, rel=1e-12, abs=1e-12), f"{num_stages} stages: loss {last}, one device {loss}"
        for rank, result in enumerate(results[:-1]):
            assert result["loss"] is None, f"{num_stages} stages: rank {rank} returned {result['loss']!r}, not None"
        assert_grads({n: g for r in results for n, g in r["grads"].items()}, grads, f"{num_stages} stages")
