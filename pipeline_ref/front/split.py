"""A whole ``nn.Module`` cut into pipeline pieces by torch's own tracer, and the pieces run as our stages.

    pieces = split.trace(module, sample_microbatch)                 # --split auto: one piece per block
    pieces = split.trace(module, sample, ["transformer.h.2"])        # --split-at: a piece begins at each name
    y = split.compose(pieces)(sample)                               # equals module(sample)

``trace`` marks where a piece begins (a ``pipe_split()`` before the named submodule's forward, what
``SplitPoint.BEGINNING`` does), and ``torch.distributed.pipelining.pipeline`` traces the module with
``torch.export`` and cuts the graph there. Each cut graph (a ``GraphModule``) becomes a :class:`Piece` that
takes the previous piece's outputs as a tuple and returns a tuple: the values any later piece still needs, so
a skip connection, an attention mask or integer position ids travel from piece to piece (only floating tensors
that need one get a gradient back, ``message.py``). The last piece returns what the module returns (a Hugging
Face ``ModelOutput`` too), so ``loss_fn`` sees what it sees on one device.

Shared weights: torch's front end deep-copies a Parameter used by two pieces (GPT-2's ``wte`` and
``lm_head``). We bind every piece's parameters and buffers back to the original module's objects, by the names
the cut graphs keep (the original names): tied weights are one Parameter again, so on one rank autograd sums
their gradients, and across ranks ``partition.tied_groups`` finds them by identity, as for lists of layers.
Gradients are named as ``module.named_parameters()`` names them.

``--split auto`` cuts before every *block*: the submodules the forward calls once that hold parameters,
descending from the root through containers and stopping at each item of a ``ModuleList``/``Sequential`` (a
repeated block) or a module without called children. The blocks are then grouped into stages like layers
(``partition.py``: by parameters, or by measured time). One trace serves every stage count, and a process
keeps it (``_CACHE``): a test matrix traces each model once per rank.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils import _pytree as pytree


def is_whole_module(model) -> bool:
    """A factory's model is a whole module (cut by the tracer), not a list of single-tensor layers."""
    return isinstance(model, nn.Module) and not isinstance(model, (nn.Sequential, nn.ModuleList))


def as_args(inputs) -> tuple:
    return tuple(inputs) if isinstance(inputs, (tuple, list)) else (inputs,)


# ---------------------------------------------------------------------------------------------- blocks

@dataclass
class Calls:
    """One forward of the module on a sample: submodules in the order first called, call counts, output."""
    order: list
    counts: dict
    output: object


def record_calls(module: nn.Module, sample) -> Calls:
    """Run a copy of ``module`` once (no grad) with hooks that record which submodule is called when."""
    try:
        probe = copy.deepcopy(module)    # BatchNorm statistics and the like stay as they were
    except Exception:
        probe = module
    names = {id(m): n for n, m in probe.named_modules() if n}
    order, counts, handles = [], {}, []

    def hook(mod, args):
        name = names[id(mod)]
        counts[name] = counts.get(name, 0) + 1
        if counts[name] == 1:
            order.append(name)

    for m in probe.modules():
        if id(m) in names:
            handles.append(m.register_forward_pre_hook(hook))
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            output = probe(*as_args(sample))
    finally:
        for h in handles:
            h.remove()
    return Calls(order, counts, output)


def blocks(module: nn.Module, calls: Calls) -> list[str]:
    """The automatic cut candidates, in call order (see the module docstring); never the first block."""
    called = set(calls.order)

    def children(name: str, mod: nn.Module):
        for child_name, child in mod.named_children():
            full = f"{name}.{child_name}" if name else child_name
            if isinstance(child, (nn.ModuleList, nn.ModuleDict)) and full not in called:
                yield from ((f"{full}.{n}", c, True) for n, c in child.named_children())   # transparent
            else:
                yield full, child, isinstance(mod, nn.Sequential)

    def expand(name: str, mod: nn.Module, repeated: bool) -> list[str]:
        inner = [(n, c, r) for n, c, r in children(name, mod) if n in called]
        if name and (repeated or not inner):
            return [name]
        found = [b for n, c, r in inner for b in expand(n, c, r)]
        return found if found or not name else [name]

    position = {n: i for i, n in enumerate(calls.order)}
    found = sorted(expand("", module, False), key=position.__getitem__)
    owns = lambda n: any(True for _ in module.get_submodule(n).parameters())
    return [n for n in found[1:] if calls.counts[n] == 1 and owns(n)]


def check_points(module: nn.Module, calls: Calls, points) -> list[str]:
    """``--split-at`` names, checked (submodules called exactly once, not the first) and put in call order."""
    points = list(points)
    if len(set(points)) != len(points):
        raise ValueError(f"--split-at names a submodule twice: {points}")
    hint = ", ".join(blocks(module, calls)) or "(none found)"
    for name in points:
        try:
            module.get_submodule(name)
        except AttributeError:
            raise ValueError(f"--split-at {name!r}: the model has no submodule of that name; blocks a stage "
                             f"can begin at: {hint}") from None
        if calls.counts.get(name, 0) != 1:
            raise ValueError(f"--split-at {name!r}: its forward runs {calls.counts.get(name, 0)} times in "
                             f"one step, but a stage can only begin at a submodule called once; try: {hint}")
        first = next((n for n in calls.order if any(True for _ in module.get_submodule(n).parameters(False))),
                     name)
        if calls.order.index(name) <= calls.order.index(first):
            raise ValueError(f"--split-at {name!r} is where the model begins: the first stage would be empty")
    return sorted(points, key=calls.order.index)


# ---------------------------------------------------------------------------------------------- pieces

class _Ref:
    """A value of the cut model's top-level graph, by node name (plans hold these, not fx nodes)."""

    def __init__(self, name: str):
        self.name = name


def _refs(value):
    return torch.fx.node.map_arg(value, lambda node: _Ref(node.name))


def _resolve(value, env: dict):
    return torch.fx.node.map_aggregate(value, lambda v: env[v.name] if isinstance(v, _Ref) else v)


class Piece(nn.Module):
    """One cut of the model: its GraphModule, plus what it receives from the piece before and passes on."""

    def __init__(self, graph_module: nn.Module, inputs: list, steps: list, outputs, out_spec=None):
        super().__init__()
        self.graph_module = graph_module
        self.inputs, self.steps, self.outputs, self.out_spec = inputs, steps, outputs, out_spec

    def forward(self, *values):
        env = dict(zip(self.inputs, values))
        for name, target, args, kwargs in self.steps:
            call = self.graph_module if target is None else target
            env[name] = call(*_resolve(args, env), **_resolve(kwargs, env))
        out = _resolve(self.outputs, env)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)


class Chain(nn.Module):
    """Pieces applied in sequence, each taking the previous one's tuple: one stage's chunk of the model.

    The last piece returns the module's output as a flat tuple of tensors (what a stage can describe);
    with ``out_spec`` (``compose``) the chain gives it back in the module's own structure.
    """

    def __init__(self, *pieces: nn.Module, out_spec=None):
        super().__init__()
        self.pieces, self.out_spec = nn.ModuleList(pieces), out_spec

    def forward(self, *values):
        for piece in self.pieces:
            values = piece(*values)
        return values if self.out_spec is None else pytree.tree_unflatten(list(values), self.out_spec)


def compose(pieces) -> Chain:
    """All the pieces as one module that returns what the traced module returns: equal to it."""
    return Chain(*pieces, out_spec=pieces[-1].out_spec)


def loss_of(pieces, loss_fn):
    """``loss_fn`` for the last stage, whose chunk returns the module's output flattened (``Chain``)."""
    spec = pieces[-1].out_spec
    return lambda flat, targets: loss_fn(pytree.tree_unflatten(list(flat), spec), targets)


def _plans(split_gm, out_spec) -> list[tuple]:
    """Cut the top-level graph into one plan per piece: inputs, steps (the call and its getitems), outputs."""
    nodes = list(split_gm.graph.nodes)
    segment, calls, output = {}, [], None
    for node in nodes:
        if node.op == "placeholder":
            segment[node] = -1
        elif node.op == "output":
            output = node
        else:
            if node.op == "call_module":
                calls.append(node)
            segment[node] = max([segment[a] for a in node.all_input_nodes] + [len(calls) - 1])

    def live(k: int) -> list:    # defined before piece k, used by piece k or later (or the output)
        return [n for n in nodes if n in segment and segment[n] < k and
                any(u is output or segment[u] >= k for u in n.users)]

    plans = []
    for k, call in enumerate(calls):
        steps = [(n.name, None if n is call else n.target, _refs(n.args), _refs(n.kwargs))
                 for n in nodes if segment.get(n) == k]
        last = k == len(calls) - 1
        outputs = _refs(output.args[0]) if last else tuple(_Ref(n.name) for n in live(k + 1))
        plans.append((getattr(split_gm, call.target), [n.name for n in live(k)], steps, outputs,
                      out_spec if last else None))
    return plans


def bind(pieces, module: nn.Module) -> None:
    """Point every piece's parameters and buffers at the module's own objects (by their original names)."""
    for piece in pieces:
        owner = piece.graph_module
        for name, _ in list(owner.named_parameters(remove_duplicate=False)):
            parent, _, leaf = name.rpartition(".")
            setattr(owner.get_submodule(parent), leaf, module.get_parameter(name))
        for name, _ in list(owner.named_buffers(remove_duplicate=False)):
            parent, _, leaf = name.rpartition(".")
            try:
                getattr(owner.get_submodule(parent), "_buffers")[leaf] = module.get_buffer(name)
            except AttributeError:
                pass         # a constant the tracer made, not one of the module's buffers


def _trace(module: nn.Module, sample, points: list[str], out_spec) -> list[Piece]:
    from torch.distributed.pipelining import pipe_split, pipeline

    marked = []
    for name in points:          # SplitPoint.BEGINNING, undone afterwards: the module keeps its own forward
        sub = module.get_submodule(name)
        own = sub.__dict__.get("forward")

        def begin(*args, __forward=sub.forward, **kwargs):
            pipe_split()
            return __forward(*args, **kwargs)
        sub.forward = begin
        marked.append((sub, own))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)     # torch's own pytree deprecation notices
            pipe = pipeline(module, as_args(sample))
    finally:
        for sub, own in marked:
            if own is None:
                del sub.forward
            else:
                sub.forward = own
    if pipe.num_stages != len(points) + 1:
        raise ValueError(f"the traced model has {pipe.num_stages} pieces, not {len(points) + 1}: a split "
                         f"point with no computation before the next one ({points})")
    pieces = [Piece(*plan) for plan in _plans(pipe.split_gm, out_spec)]
    flat = pieces[-1].outputs
    if len(flat if isinstance(flat, (tuple, list)) else (flat,)) != out_spec.num_leaves:
        raise ValueError(f"the traced model returns {len(flat)} tensors, but the module's output has "
                         f"{out_spec.num_leaves} leaves: only tensors can come out of a cut model")
    return pieces


_CACHE: dict = {}


def trace(module: nn.Module, sample, points=None, key=None) -> list[Piece]:
    """The module's pieces for one microbatch ``sample``: cut at ``points`` (names), or at every block (None).

    With ``key`` (anything that names the model's structure and dtype), the trace is kept and a later
    call with the same key and sample shapes reuses a copy of it, bound to this module's parameters.
    """
    shapes = tuple((tuple(t.shape), t.dtype) for t in as_args(sample))
    cache_key = None if key is None else (key, None if points is None else tuple(points), shapes)
    if cache_key not in _CACHE:
        calls = record_calls(module, sample)
        cuts = blocks(module, calls) if points is None else check_points(module, calls, points)
        pieces = _trace(module, sample, cuts, pytree.tree_flatten(calls.output)[1])
        if cache_key is None:
            bind(pieces, module)
            return pieces
        _CACHE[cache_key] = pieces
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        pieces = copy.deepcopy(_CACHE[cache_key])
    bind(pieces, module)
    return pieces


def count_pieces(module: nn.Module, sample, points=()) -> int:
    """How many pieces ``trace`` would make, without tracing (``--split-at`` names checked)."""
    calls = record_calls(module, sample)
    return 1 + len(check_points(module, calls, points) if points else blocks(module, calls))
