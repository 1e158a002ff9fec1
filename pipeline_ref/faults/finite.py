"""Finding a NaN or an inf where it first appears, cheaply enough to check every action.

    kind = nonfinite(tensors)        # "nan", "inf", or None when every floating element is finite
    check_gradients(params, "rank 1", step, skipping=False)    # raises NonFiniteError if one is not

The executor checks each loss, stage output and input gradient, and ``train.py`` (``check_gradients``) the
weight gradients once per step. A check per action must not cost like an action: ``torch.isfinite(t).all()``
writes a boolean tensor as large as ``t`` and reads it again, whereas a sum reads ``t`` once and
allocates nothing (for a 128 x 1024 float32 activation on the course's 2-core machine, 259 µs
against 10 µs: ``benchmarks/overhead.py``, part 4). NaN and inf survive a sum (inf - inf is NaN), so a finite
total proves every element finite; a total that is not finite may also come from finite values whose sum
overflows, so only then is each tensor checked element by element. One host sync per call.
"""
from __future__ import annotations

import math

import torch


class NonFiniteError(FloatingPointError):
    """A NaN or inf where it first appeared: "rank 1: loss is nan at F3 of step 2"."""


def _total(t: torch.Tensor) -> torch.Tensor:
    # Half-precision sums accumulate and return in float32: a float16 total overflows at 65504.
    return t.sum(dtype=torch.float32 if t.element_size() < 4 else None).double()


def nonfinite(tensors) -> str | None:
    """"nan" or "inf" if a floating tensor holds one, else None."""
    floating = [t for t in tensors if t is not None and t.is_floating_point() and t.numel()]
    if not floating:
        return None
    total = _total(floating[0]) if len(floating) == 1 else torch.stack([_total(t) for t in floating]).sum()
    if math.isfinite(total.item()):
        return None
    for t in floating:                    # the exact check, only when something is not finite (or overflowed)
        if not bool(torch.isfinite(t).all()):
            return "nan" if bool(torch.isnan(t).any()) else "inf"
    return None


def check_gradients(params, where: str, step: int, skipping: bool) -> str | None:
    """The weight gradients after a step's backward, checked once (the executor checks what crosses a
    boundary): None if finite; else NonFiniteError, or, when ``skipping`` non-finite steps, the message."""
    kind = nonfinite(p.grad for p in params)
    if kind is None:
        return None
    message = f"{where}: a weight gradient is {kind} after the backward of step {step}"
    if not skipping:
        raise NonFiniteError(message)
    return message
