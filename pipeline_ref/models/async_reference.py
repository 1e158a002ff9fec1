"""What PipeDream and PipeDream-2BW compute, in one process: the ground truth the pipelined runs are tested
against.

    losses, params = async_reference.train("pipedream", layers, loss_fn, (inputs, targets),
                                           ranges=[(0, 4), (4, 8)], num_microbatches=4, steps=3, lr=0.1)

No pipeline, no schedule, no MPI: each stage's weights are a list of versions (version k: after k updates of
that stage), and the microbatches go through one after another, each on the versions the schedule would give
it (``asynchronous.forward_version``, the rule the ranks' weight stores follow too). The whole model runs as
one function (``torch.func.functional_call``) on a dict that takes every stage's parameters from the version
that stage uses, so a microbatch that meets stage 0 at version 3 and stage 1 at version 5 is just one forward
and one backward.

- PipeDream: microbatch j (of the steps x m in the run) sees stage s at version max(0, j - (p - s - 1));
  afterwards stage s takes one SGD step with j's gradient: version j + 1 = version j - lr * g_j.
- 2BW: the microbatches of step t all see version max(0, t - 1) everywhere; their mean gradient g_t is
  applied to version t: version t + 1 = version t - lr * g_t.
- flush (GPipe, 1F1B, every synchronous schedule): step t sees version t; version t + 1 = version t - lr *
  g_t.

The order in which a stage receives its updates is the only order the pipelined run could apply them in
(one per backward, backwards in microbatch order), so the two agree to rounding: tests/test_pipedream.py.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import functional_call

from pipeline_ref.schedules import asynchronous


def version_used(schedule: str, stage: int, num_stages: int, num_microbatches: int, microbatch: int) -> int:
    """The version of ``stage`` that microbatch j of the run (step j // m) meets."""
    if schedule == "flush":     # any synchronous schedule (GPipe, 1F1B, ...): step t on version t
        return microbatch // num_microbatches
    if schedule not in asynchronous.ASYNCHRONOUS:
        raise ValueError(f"unknown schedule {schedule!r}: pipedream, pipedream-2bw or flush")
    return asynchronous.forward_version(schedule, stage, num_stages, num_microbatches, microbatch)


def train(schedule: str, layers, loss_fn, batch, ranges, num_microbatches: int, steps: int, lr: float,
          after_step=None):
    """(mean loss of each step, {name: parameter after the run}) for ``schedule`` in ("pipedream",
    "pipedream-2bw", "flush"); "flush" is what every synchronous schedule computes (one SGD step per step).

    ``ranges``: the layers of each stage, as (start, stop) pairs (``RunResult.partition``); names as
    ``nn.Sequential(*layers).named_parameters()`` gives them. ``batch``: the global batch of every step, or a
    callable ``step -> (inputs, targets)``. ``after_step(t, weights)``, if given, sees the newest weights of
    every stage once step t's microbatches are through (to measure a validation loss).
    """
    model = nn.Sequential(*copy.deepcopy(layers))
    p, m = len(ranges), num_microbatches
    def stage_of(name):
        return next(s for s, (start, stop) in enumerate(ranges) if start <= int(name.split(".")[0]) < stop)
    names = [[n for n, _ in model.named_parameters() if stage_of(n) == s] for s in range(p)]
    start = dict(model.named_parameters())
    versions = [{0: {n: start[n].detach() for n in names[s]}} for s in range(p)]   # versions[s][k]
    newest = [0] * p
    losses = []
    for j in range(steps * m):
        t, i = divmod(j, m)
        if i == 0:
            inputs, targets = (batch(t) if callable(batch) else batch)
            inputs, targets = inputs.tensor_split(m), targets.tensor_split(m)
        used = [version_used(schedule, s, p, m, j) for s in range(p)]
        scale = 1.0 if schedule == "pipedream" else 1.0 / m
        loss, grads = _loss_and_gradients(model, loss_fn, [versions[s][used[s]] for s in range(p)],
                                          inputs[i], targets[i], scale)
        losses.append(loss)
        if schedule == "pipedream":
            step_gradient = grads
        else:        # accumulated in microbatch order, as autograd accumulates .grad: g_0 + g_1 + ...
            step_gradient = grads if i == 0 else {n: step_gradient[n] + grads[n] for n in grads}
        if schedule == "pipedream" or i == m - 1:
            for s in range(p):
                newest[s] += 1
                previous = versions[s][newest[s] - 1]
                versions[s][newest[s]] = {n: w - lr * step_gradient[n] for n, w in previous.items()}
                # Versions no later microbatch meets are dropped (their number never decreases along the run).
                oldest = version_used(schedule, s, p, m, j + 1)
                versions[s] = {k: v for k, v in versions[s].items() if k >= oldest or k == newest[s]}
        if i == m - 1 and after_step is not None:
            after_step(t, {n: w for s in range(p) for n, w in versions[s][newest[s]].items()})
    step_losses = [sum(losses[t * m:(t + 1) * m]) / m for t in range(steps)]
    return step_losses, {n: w for s in range(p) for n, w in versions[s][newest[s]].items()}


def _loss_and_gradients(model, loss_fn, weights: list[dict], x, y, scale: float):
    """The unscaled loss of one microbatch, and the gradient of loss * scale for every weight given."""
    leaves = {n: w.detach().requires_grad_(True) for version in weights for n, w in version.items()}
    loss = loss_fn(functional_call(model, leaves, (x,)), y)
    grads = torch.autograd.grad(loss * scale, list(leaves.values()), allow_unused=True)
    return loss.item(), {n: g if g is not None else torch.zeros_like(w)
                         for (n, w), g in zip(leaves.items(), grads)}


def per_microbatch_sgd(layers, loss_fn, batch, num_microbatches: int, steps: int, lr: float):
    """Plain SGD, one update per microbatch, on one process: what PipeDream is on one stage."""
    model = nn.Sequential(*copy.deepcopy(layers))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        for x, y in zip(batch[0].tensor_split(num_microbatches), batch[1].tensor_split(num_microbatches)):
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    m = num_microbatches
    return [sum(losses[t * m:(t + 1) * m]) / m for t in range(steps)], dict(model.named_parameters())
