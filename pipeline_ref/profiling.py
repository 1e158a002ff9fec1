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
from torch.utils import _pytree as pytree


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def layer_costs(layers, sample, repeats: int = 3) -> list[float]:
    """Median seconds of forward + backward of each layer on what the layers before it produce.

    ``sample`` is one microbatch: a tensor, or a tuple of the first layer's arguments (the pieces of a traced
    module take and return tuples, some of them integer or boolean tensors, which get no gradient).
    """
    costs, values = [], sample if isinstance(sample, tuple) else (sample,)
    device = next(v for v in values if isinstance(v, torch.Tensor)).device
    for layer in layers:
        timings = []
        for attempt in range(repeats + 1):            # the first run warms up caches and allocators
            inputs = tuple(v.detach().requires_grad_(v.is_floating_point()) if isinstance(v, torch.Tensor) else v
                           for v in values)
            _sync(device)
            start = time.perf_counter()
            outputs = [y for y in pytree.tree_leaves(layer(*inputs)) if isinstance(y, torch.Tensor) and y.requires_grad]
            torch.autograd.backward(outputs, [torch.randn_like(y) for y in outputs])
            _sync(device)
            if attempt:
                timings.append(time.perf_counter() - start)
        for p in layer.parameters():                  # profiling must leave no gradient behind
            p.grad = None
        costs.append(median(timings))
        with torch.no_grad():
            out = layer(*values)
        values = out if isinstance(out, tuple) else (out,)
    return costs
