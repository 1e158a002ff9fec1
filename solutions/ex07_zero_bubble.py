"""Exercise 7 (lesson 07, lessons/07_zero_bubble.ipynb): zero bubble, the backward split in two.

A backward is two computations: ``I``, the gradient of the stage's input (the previous stage waits for it),
and ``W``, the gradient of its weights (nobody needs it before the optimizer step). Zero-bubble schedules run
them apart, so that the ``W``s can fill the time where 1F1B idles. You write both halves, then the schedule.

    7.1 backward_input    I: the input's gradient now, and what W will need, computing no weight gradient
    7.2 backward_weight   W: the weights' gradients from what I kept, later, without computing anything twice
    7.3 zb_h1             ZB-H1 (Qi et al., 2023, "Zero Bubble Pipeline Parallelism") as data

Why it matters: an ``I`` that also computes the weight gradients makes the upstream stage wait for work it
does not need; a ``W`` that redoes the input path spends the time the split was meant to save; and whatever
``I`` keeps for ``W`` stays in memory until ``W`` runs, which in ZB-H1 can be many actions later (lesson 07,
section 7 counts those bytes).

ZB-H1 is 1F1B with every ``B`` split into ``I`` then ``W``, where stage s may hold back weight gradients so
that they fill the cool-down where 1F1B sits idle. Its contract, which the grader checks on every size:

- valid, and every stage runs F, I and W once per microbatch, each kind in microbatch order (no ``B``);
- with F = I = W = 1 and m >= p, every rank idles p - 1 (1F1B: 3 (p - 1)), and never longer than 1F1B;
- no stage holds more than min(p, m) microbatches at once (one stays stashed until its ``W``);
- exactly lesson 07's order, the one ``pipeline_ref.schedules.build("zb-h1", p, m)`` plays (and torch's
  ``ScheduleInterleavedZeroBubble`` with one stage per rank). Two of its orders:

    3 stages, 4 microbatches                      3 stages, 2 microbatches
    stage 0:  F0 F1 F2 I0 W0 F3 I1 W1 I2 W2 I3 W3    stage 0:  F0 F1 I0 W0 I1 W1
    stage 1:  F0 F1 I0 F2 I1 W0 F3 I2 W1 I3 W2 W3    stage 1:  F0 F1 I0 I1 W0 W1
    stage 2:  F0 I0 F1 I1 F2 I2 W0 F3 I3 W1 W2 W3    stage 2:  F0 I0 F1 I1 W0 W1

Stuck? ``exercises/hints/ex07_zero_bubble.md`` has hints, each behind the one before.
Grade it (your halves against the whole backward in float64, their FLOPs and what they keep, then under ZB-H1
on 3 real MPI ranks; your schedule through the validator, the simulator and the executor):

    .venv/bin/python -m pytest tests/exercises/test_ex07_zero_bubble.py
"""
from __future__ import annotations

import torch  # noqa: F401  (torch.autograd.grad)

from pipeline_ref.schedules import Action  # noqa: F401  (what the schedule is lists of)


def backward_input(outputs: list, output_grads: list | None, inputs: list, layer_outputs: list):
    """``I``: the gradients of the stage's ``inputs``, and what ``W`` will need; returns ``(input_grads,
    kept)``.

    ``outputs``: the stage's outputs from its forward (on the last stage ``[loss]``); ``output_grads``: their
    gradients as the next stage sent them (``None`` on the last stage: a loss needs none). ``inputs``: the
    stage's inputs that need a gradient (``[]`` on the first stage). ``layer_outputs``: the output of every
    layer that owns parameters (each ``Linear``, ...), in forward order, as the forward made them.

    ``input_grads``: one tensor per input, the same as a whole backward would give. ``kept``: a list, one
    tensor per layer output, that ``backward_weight`` gets later; the stage holds it from ``I`` to ``W``, so
    it must hold no more than lesson 07 counts: per layer output, one tensor of its size. Leaves every
    ``.grad`` untouched, and the graph usable by ``W``. Example, a stage ``Linear(4, 3), Tanh, Linear(3, 2)``
    on 5 rows of float64::

        input_grads, kept = backward_input([y], [g], [x], [h1, h2])  # x (5, 4), h1 (5, 3), h2 = y (5, 2)
        [t.shape for t in input_grads] == [(5, 4)];  [t.shape for t in kept] == [(5, 3), (5, 2)]   # 200 bytes
    """
    # BEGIN EXERCISE 7.1: the inputs' gradients and what W needs, computing no weight gradient
    # HINT: autograd computes only what leads to the tensors you ask it for
    wanted = list(inputs) + list(layer_outputs)
    grads = torch.autograd.grad(outputs, wanted, grad_outputs=output_grads, retain_graph=True, allow_unused=True)
    # The layer outputs' gradients are all W needs: from each, its layer's weight gradient is one product.
    return list(grads[:len(inputs)]), list(grads[len(inputs):])
    # END EXERCISE


def backward_weight(layers: list, layer_outputs: list, kept: list) -> None:
    """``W``: add to every parameter's ``.grad`` its gradient, from what ``backward_input`` kept.

    ``layers[k]`` made ``layer_outputs[k]`` (the same lists ``backward_input`` got, in the same order);
    ``kept`` is what your ``backward_input`` returned. A ``.grad`` that is ``None`` becomes the gradient; one
    that holds a tensor (an earlier microbatch's) gets it added. Afterwards every parameter of ``layers``
    holds what a whole backward (``loss.backward()``) would have added, and nothing of the input path was
    computed again. In the example of ``backward_input``: the first Linear's weight ``.grad`` (3, 4) and bias
    (3,), the second's (2, 3) and (2,).
    """
    # BEGIN EXERCISE 7.2: every parameter's gradient added into .grad, from what I kept, nothing twice
    # HINT: which parameters does one layer's output depend on directly, and what do you need to reach them?
    for layer, output, grad in zip(layers, layer_outputs, kept):
        params = [p for p in layer.parameters(recurse=False) if p.requires_grad]
        if grad is None or not params:
            continue
        for p, g in zip(params, torch.autograd.grad(output, params, grad, retain_graph=True, allow_unused=True)):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g
    # END EXERCISE


def zb_h1(num_stages: int, num_microbatches: int) -> list[list[Action]]:
    """ZB-H1: one list of ``Action`` per stage with ops ``F``, ``I`` and ``W`` (no ``B``), as the module's
    docstring states it (``zb_h1(3, 4)`` is its first table)."""
    # BEGIN EXERCISE 7.3: ZB-H1 as data: 1F1B with each B split, and the held-back Ws placed where 1F1B idles
    # HINT: how many Ws can stage s hold back before it holds more microbatches than ZB-H1 allows?
    p, m = num_stages, num_microbatches
    schedule = []
    for s in range(p):
        actions: list[Action] = []
        count = {"F": 0, "I": 0, "W": 0}        # the next microbatch of each op

        def run(*ops):
            for op in ops:
                actions.append(Action(op, count[op]))
                count[op] += 1

        for _ in range(min(p - s - 1, m)):      # warm-up
            run("F")
        for _ in range(s):                      # hold back s weight gradients
            if count["F"] < m:
                run("F", "I")
        while count["F"] < m:                   # steady state
            run("F", "I", "W")
        while count["I"] < m:                   # cool-down
            run("I", "W")
        while count["W"] < m:                   # the held-back Ws fill the tail
            run("W")
        schedule.append(actions)
    return schedule
    # END EXERCISE
