"""Measure what each layer costs (forward + backward of one microbatch), for ``partition.by_cost``.

    costs = profiling.layer_costs(layers, sample_microbatch)       # seconds per layer
    ranges = partition.by_cost(costs, num_stages)

Each layer is timed on its own, on the device it will run on, fed the activation
the layers before it produce, with a random output gradient for its backward;
the median of a few repeats after one warm-up is kept, so a stray slow run
(another process, a page fault) does not move a boundary. This is the
profile-based partitioning DeepSpeed names but leaves unimplemented
(``partition_method="profile"``), and what torchgpipe's ``balance_by_time`` does.
"""
from __future__ import annotations

import time
from statistics import median

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def layer_costs(layers, sample: torch.Tensor, repeats: int = 3) -> list[float]:
    """Median seconds of forward + backward of each layer on ``sample`` (one microbatch)."""
    device = sample.device
    costs = []
    x = sample
    for layer in layers:
        timings = []
        for attempt in range(repeats + 1):            # the first run warms up caches and allocators
            inp = x.detach().requires_grad_(x.is_floating_point())
            _sync(device)
            start = time.perf_counter()
            y = layer(inp)
            y.backward(torch.randn_like(y))
            _sync(device)
            if attempt:
                timings.append(time.perf_counter() - start)
        for p in layer.parameters():                  # profiling must leave no gradient behind
            p.grad = None
        costs.append(median(timings))
        with torch.no_grad():
            x = layer(x)
    return costs
