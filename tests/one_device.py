"""The ground truth of every multi-process test: the unsplit model's step on one process, whole batch."""
import pytest
import torch

from pipeline_ref import models
from pipeline_ref.config import RunConfig
from pipeline_ref.preflight import build_model


def reference(cfg: RunConfig):
    """(loss, {name: grad}) of one step of the unsplit model with cfg's model, seed and dtype."""
    layers, loss_fn, (inputs, targets) = build_model(cfg)
    return models.reference_step(layers, loss_fn, inputs, targets)


def assert_equals_one_device(result: dict, loss: float, grads: dict, where: str = "") -> None:
    """A run's first-step loss and gradients equal the one-process ones (float64 tolerances).

    ``where`` starts each failure message (the graded tests say which run a student's code failed).
    """
    __tracebackhide__ = True
    prefix = f"{where}: " if where else ""
    got = result.losses[0]
    assert got == pytest.approx(loss, rel=1e-12, abs=1e-12), f"{prefix}loss {got}, one device {loss}"
    # a tied weight appears once, under its first name
    assert set(result.grads) == set(grads), f"{prefix}gradients of {sorted(result.grads)}"
    for name, grad in grads.items():
        torch.testing.assert_close(result.grads[name], grad, rtol=1e-10, atol=1e-12,
                                   msg=lambda msg, name=name: f"{prefix}{name}: {msg}")
