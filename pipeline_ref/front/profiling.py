"""Measure what each layer costs (forward + backward of one microbatch), for ``partition.by_cost``.

    costs = profiling.layer_costs(layers, sample_microbatch)       # seconds per layer
    ranges = partition.by_cost(costs, num_stages)
    profiling.consistency(costs, profiling.identical_layers(layers))   # do identical layers measure alike?

Layer: front (a model to stages); it imports only torch.

Each layer is timed on its own, on the device it will run on, fed the activation the layers before it produce,
with a random output gradient for its backward. The timing runs in rounds: one warm-up round that is not used,
then rounds that each time every layer once, in forward order on even rounds and in reverse order on odd ones,
and each layer keeps the median of its rounds. Timing all of one layer's repeats before the next layer's would
charge a machine's drift during the profile (caches warming, another process starting or stopping) to
whichever layers happen to come late; alternating rounds spread it over all of them, and the median drops a
stray slow round. Identical layers (same class, same parameter shapes) must then measure alike, which
``consistency`` checks. This is the profile-based partitioning DeepSpeed names but leaves unimplemented
(``partition_method="profile"``), and what torchgpipe's ``balance_by_time`` does.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from statistics import median

import torch
from torch.utils import _pytree as pytree


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _as_args(value) -> tuple:
    return value if isinstance(value, tuple) else (value,)


def layer_inputs(layers, sample) -> list[tuple]:
    """What each layer receives, as a tuple of arguments: ``sample``, then each layer's output (no graph)."""
    inputs, values = [], _as_args(sample)
    with torch.no_grad():
        for layer in layers:
            inputs.append(values)
            values = _as_args(layer(*values))
    return inputs


def time_layer(layer, values: tuple, device: torch.device, clock=time.perf_counter) -> float:
    """Seconds of one forward and backward of ``layer`` on ``values`` (the layer's gradients are dropped)."""
    inputs = tuple(v.detach().requires_grad_(v.is_floating_point()) if isinstance(v, torch.Tensor) else v
                   for v in values)
    _sync(device)
    start = clock()
    outputs = [y for y in pytree.tree_leaves(layer(*inputs))
               if isinstance(y, torch.Tensor) and y.requires_grad]
    torch.autograd.backward(outputs, [torch.randn_like(y) for y in outputs])
    _sync(device)
    seconds = clock() - start
    for p in layer.parameters():                  # profiling must leave no gradient behind
        p.grad = None
    return seconds


def layer_costs(layers, sample, repeats: int = 5, warmup: int = 1, clock=time.perf_counter) -> list[float]:
    """Median seconds of forward + backward of each layer over ``repeats`` alternating rounds.

    ``sample`` is one microbatch: a tensor, or a tuple of the first layer's arguments (the pieces of a traced
    module take and return tuples, some of them integer or boolean tensors, which get no gradient).
    ``warmup`` rounds come first and are not used (the first run of a layer fills caches and allocators).
    ``clock`` returns seconds; a test passes its own to play a drifting machine.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"layer_costs needs repeats >= 1 and warmup >= 0, "
                         f"got repeats={repeats}, warmup={warmup}")
    layers = list(layers)
    inputs = layer_inputs(layers, sample)
    device = next((v.device for v in inputs[0] if isinstance(v, torch.Tensor)), torch.device("cpu"))
    order = list(range(len(layers)))
    for _ in range(warmup):
        for index in order:
            time_layer(layers[index], inputs[index], device, clock)
    timings = [[] for _ in layers]
    for round_index in range(repeats):
        # Forward order, then backward order: a drift during a round lands on early and late layers alike.
        for index in (order if round_index % 2 == 0 else order[::-1]):
            timings[index].append(time_layer(layers[index], inputs[index], device, clock))
    return [median(t) for t in timings]


def identical_layers(layers) -> list[list[int]]:
    """Groups (of two or more) of the layers that have the same class and the same parameter shapes."""
    groups: dict[tuple, list[int]] = {}
    for index, layer in enumerate(layers):
        shapes = tuple((name, tuple(p.shape)) for name, p in layer.named_parameters())
        key = (type(layer).__qualname__, shapes)
        groups.setdefault(key, []).append(index)
    return [indices for indices in groups.values() if len(indices) > 1]


@dataclass(frozen=True)
class Consistency:
    """How far identical layers' measured costs lie from their group's median."""
    layers: list[int]
    median: float
    lowest: float
    highest: float
    tolerance: float

    @property
    def within(self) -> bool:
        """Every layer of the group within +-tolerance of the group's median."""
        return (self.lowest >= (1 - self.tolerance) * self.median
                and self.highest <= (1 + self.tolerance) * self.median)

    def sentence(self, unit: float = 1e-3, unit_name: str = "ms") -> str:
        verdict = "within" if self.within else "NOT within"
        return (f"layers {self.layers}: {self.lowest / unit:.2f} to {self.highest / unit:.2f} {unit_name}, "
                f"{self.lowest / self.median - 1:+.0%} to {self.highest / self.median - 1:+.0%} "
                f"of their median "
                f"{self.median / unit:.2f} {unit_name}: {verdict} +-{self.tolerance:.0%}")


def consistency(costs: list[float], groups: list[list[int]], tolerance: float = 0.2) -> list[Consistency]:
    """For each group of identical layers, the spread of their measured costs around the group's median."""
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance is a fraction between 0 and 1, got {tolerance}")
    out = []
    for group in groups:
        if any(not 0 <= i < len(costs) for i in group):
            raise ValueError(f"group {group} names a layer outside the {len(costs)} costs")
        values = [costs[i] for i in group]
        out.append(Consistency(list(group), median(values), min(values), max(values), tolerance))
    return out
