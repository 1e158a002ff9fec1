"""The rank side of the graded tests of exercises 4 (data parallel), 6 (interleaved) and 7 (zero bubble).

The same machinery as rank_checks.py (which imports this module at its end, so that these checks join
``CHECKS`` wherever rank_checks is imported: in pytest and on the ranks): each check is registered with
``@check(name, module, needs, ranks)``, runs on the first ``ranks`` ranks, and returns what the tests
compare. Nothing here imports mpi4py at import time.
"""
from __future__ import annotations

import copy
import time

import torch
from torch import nn

from pipeline_ref.engine import topology
from pipeline_ref.front import partition
from pipeline_ref.config import RunConfig
from pipeline_ref.preflight import build_model
from tests.exercises.rank_checks import _student, check
from tests.exercises.rank_checks_pipeline import _executor

# =========================================================================== exercise 4: pipeline + data parallel

EX04 = "ex04_data_parallel"
GRIDS = ((2, 2), (1, 4), (4, 1))        # (pp, dp) on 4 ranks
# Grids of more ranks than the 4 there are, and of fewer (then ranks 2-3 fall outside the grid: a check of
# too few ranks alone lets those raise in grid_coords while the others wait in Split for them).
NOT_GRIDS = ((3, 2), (2, 4), (8, 1), (1, 2), (3, 1), (1, 1))
TOGETHER_SECONDS = 5    # after make_communicators, every rank must be back within this long (else some hang)
COMMUNICATORS = ((EX04, "make_communicators"), (EX04, "grid_coords"))
ALLREDUCE = ((EX04, "allreduce_gradients"),)
# The whole model on each rank, each replica on its slice of the batch (the pipeline part is exercises 2-3).
DP_MODEL = RunConfig(model="mlp", model_kwargs={"depth": 4, "width": 6, "batch": 8}, dtype="float64")
DP_STEP_GRIDS = ((2, 2), (1, 4))


def gradient_case(stage: int, replica: int, dtype: torch.dtype) -> list[nn.Parameter]:
    """Parameters of one stage with this replica's gradients: the same shapes on every replica of the stage.

    Built the same way on the ranks and in pytest (which computes the mean on its own).
    """
    g = torch.Generator().manual_seed(1000 * stage + replica)
    params = []
    for shape in ((3, 4), (4,), (), (2, 3, 5), (stage + 1, 2)):
        p = nn.Parameter(torch.randn(shape, generator=g, dtype=dtype))
        p.grad = torch.randn(shape, generator=g, dtype=dtype)
        params.append(p)
    return params


MIXED = ("float32", "float64")


def mixed_case(stage: int, replica: int, first: str) -> list[nn.Parameter]:
    """gradient_case's parameters, alternately float32 and float64 starting with ``first``: one buffer of the
    first gradient's dtype would round the float64 gradients to float32 (or mix types in one buffer)."""
    other = {"float32": "float64", "float64": "float32"}[first]
    mixed = []
    for i, p in enumerate(gradient_case(stage, replica, torch.float64)):
        dtype = getattr(torch, first if i % 2 == 0 else other)
        q = nn.Parameter(p.detach().to(dtype))
        q.grad = p.grad.to(dtype)
        mixed.append(q)
    return mixed


class CountingComm:
    """Passes every call on to the real communicator, and counts the reductions by kind."""

    BUFFER = ("Allreduce", "Iallreduce", "Reduce", "Ireduce", "Reduce_scatter", "Reduce_scatter_block")
    PICKLED = ("allreduce", "reduce", "iallreduce")

    def __init__(self, comm):
        self._comm = comm
        self.buffer_calls = 0
        self.pickled_calls = 0

    def __getattr__(self, name):
        method = getattr(self._comm, name)
        if name in self.BUFFER or name in self.PICKLED:
            def counted(*args, **kwargs):
                if name in self.BUFFER:
                    self.buffer_calls += 1
                else:
                    self.pickled_calls += 1
                return method(*args, **kwargs)
            return counted
        return method


def _describe(comm, world_rank: int) -> dict:
    return {"size": comm.Get_size(), "rank": comm.Get_rank(), "members": comm.allgather(world_rank)}


@check("ex04.communicators", EX04, COMMUNICATORS, ranks=4)
def communicators(comm, impl):
    """Each rank's two communicators, per grid: size, own rank, and the world ranks of the members in order."""
    ex = _student(impl, EX04)
    results = {}
    for pp, dp in GRIDS:
        pipeline, data = ex.make_communicators(comm, pp, dp)
        results[(pp, dp)] = {"pipeline": _describe(pipeline, comm.Get_rank()), "data": _describe(data, comm.Get_rank())}
        pipeline.Free()
        data.Free()
    return results


def _all_back(comm, outcome: str, what: str) -> None:
    """Raise, naming the call, if not every rank of ``comm`` got past it within TOGETHER_SECONDS.

    A non-blocking barrier, polled: the ranks that came back can say so while the others stay stuck in a
    collective (a Split that part of the ranks never join), instead of all waiting for the watchdog."""
    request = comm.Ibarrier()
    deadline = time.monotonic() + TOGETHER_SECONDS
    while not request.Test():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: on rank {comm.Get_rank()} it {outcome}, but not every one of the "
                               f"{comm.Get_size()} ranks came back within {TOGETHER_SECONDS} s (some wait in a Split "
                               f"the others never join): every rank must refuse, before any Split")
        time.sleep(0.01)


@check("ex04.refuses", EX04, COMMUNICATORS, ranks=4)
def refuses_wrong_sizes(comm, impl):
    ex = _student(impl, EX04)
    together = comm.Dup()       # the grader's own barriers: never mixed up with a Split left waiting on comm
    results = {}
    for pp, dp in NOT_GRIDS:
        try:
            got = ex.make_communicators(comm, pp, dp)
            results[(pp, dp)] = f"returned {type(got).__name__}"
        except ValueError:
            got, results[(pp, dp)] = None, "ValueError"
        except Exception as err:    # the student's own bug: report it, don't crash the check
            got, results[(pp, dp)] = None, f"{type(err).__name__}: {err}"
        _all_back(together, results[(pp, dp)], f"make_communicators(comm of {comm.Get_size()} ranks, pp={pp}, "
                                               f"dp={dp})")
        for c in got if isinstance(got, tuple) else ():
            if hasattr(c, "Free"):
                c.Free()
    together.Free()
    return results


@check("ex04.allreduce", EX04, ALLREDUCE, ranks=4)
def allreduce(comm, impl):
    """Per grid and dtype: the gradients after allreduce_gradients over the reference data communicator."""
    ex = _student(impl, EX04)
    results = {}
    for pp, dp in GRIDS:
        topo = topology.grid(comm, pp, dp)     # the reference communicators: only exercise 4.3 is graded here
        for dtype in (torch.float64, torch.float32):
            params = gradient_case(topo.stage, topo.replica, dtype)
            values = [p.detach().clone() for p in params]
            spy = CountingComm(topo.data)
            ex.allreduce_gradients(spy, (p for p in params))    # a generator, as model.parameters() is
            results[(pp, dp, str(dtype))] = {
                "grads": [None if p.grad is None else p.grad.detach().clone() for p in params],
                "values_unchanged": all(torch.equal(p.detach(), v) for p, v in zip(params, values)),
                "buffer_calls": spy.buffer_calls, "pickled_calls": spy.pickled_calls}
        for first in MIXED:         # float32 and float64 in one call, each order first
            params = mixed_case(topo.stage, topo.replica, first)
            ex.allreduce_gradients(CountingComm(topo.data), iter(params))
            results[(pp, dp, f"mixed, {first} first")] = {
                "grads": [None if p.grad is None else p.grad.detach().clone() for p in params]}
        topo.pipeline.Free()
        topo.data.Free()
    return results


@check("ex04.step", EX04, COMMUNICATORS + ALLREDUCE, ranks=4)
def data_parallel_step(comm, impl):
    """Each replica: the whole model on its slice of the batch; then its stage's gradients averaged over your
    data communicator. Returns {name: grad} of this rank's stage, which must be the full batch's."""
    ex = _student(impl, EX04)
    results = {}
    for pp, dp in DP_STEP_GRIDS:
        pipeline, data = ex.make_communicators(comm, pp, dp)
        stage, replica = topology.Grid(pp, dp).coords(comm.Get_rank())
        layers, loss_fn, (inputs, targets) = build_model(DP_MODEL)
        model = nn.Sequential(*layers)
        per_replica = inputs.shape[0] // dp
        mine = slice(replica * per_replica, (replica + 1) * per_replica)
        loss_fn(model(inputs[mine]), targets[mine]).backward()
        names = {id(p): name for name, p in model.named_parameters()}
        owned = partition.uniform(len(layers), pp)[stage]
        params = [p for layer in layers[owned.start:owned.stop] for p in layer.parameters()]
        ex.allreduce_gradients(data, params)
        results[(pp, dp)] = {names[id(p)]: p.grad.detach().clone() for p in params}
        pipeline.Free()
        data.Free()
    return results


# Exercise 4.4: a GPT of 4 layers (embedding, 2 blocks, head) whose head's weight is the embedding's, as in GPT-2.
TIED_MODEL = RunConfig(model="gpt_tied", model_kwargs={"vocab": 16, "dim": 8, "heads": 2, "blocks": 2,
                                                       "seq_len": 4, "batch": 8}, dtype="float64")
TIED_GRIDS = ((2, 2), (4, 1), (1, 4))   # tied across the whole pipeline; across 2 of 4 stages; on one stage
REDUCE_STEP = ((EX04, "reduce_step_gradients"),)


def tied_weights(layers, ranges) -> list[tuple[str, list[int]]]:
    """(name, stages holding a copy) of every Parameter that layers on more than one stage use."""
    names = {id(p): n for n, p in nn.Sequential(*layers).named_parameters()}     # a tied weight: its first name
    holders: dict[int, set] = {}
    for stage, r in enumerate(ranges):
        for index in r:
            for p in layers[index].parameters():
                holders.setdefault(id(p), set()).add(stage)
    return sorted((names[k], sorted(v)) for k, v in holders.items() if len(v) > 1)


def stage_gradients(layers, loss_fn, inputs, targets, owned: range) -> dict:
    """{name: Parameter} of a copy of the layers in ``owned``, after a backward of the whole model on this batch
    with those copies in place: a tied weight's copy gets only the part from this stage's own use of it."""
    names = {id(p): n for n, p in nn.Sequential(*layers).named_parameters()}
    copies = copy.deepcopy(layers[owned.start:owned.stop])     # ties inside the stage stay tied (one memo)
    model = nn.Sequential(*layers[:owned.start], *copies, *layers[owned.stop:])
    loss_fn(model(inputs), targets).backward()
    own = {}
    for original, mine in zip(layers[owned.start:owned.stop], copies):
        for (_, p), (_, q) in zip(original.named_parameters(), mine.named_parameters()):
            own[names[id(p)]] = q
    return own


@check("ex04.tied_step", EX04, REDUCE_STEP, ranks=4)
def tied_step(comm, impl):
    """Per grid: this rank's {name: grad} after your reduce_step_gradients, and the tied list it was given."""
    ex = _student(impl, EX04)
    results = {}
    for pp, dp in TIED_GRIDS:
        topo = topology.grid(comm, pp, dp)     # the reference communicators: only exercise 4.4 is graded here
        layers, loss_fn, (inputs, targets) = build_model(TIED_MODEL)
        ranges = partition.uniform(len(layers), pp)
        per_replica = inputs.shape[0] // dp
        mine = slice(topo.replica * per_replica, (topo.replica + 1) * per_replica)
        params = stage_gradients(layers, loss_fn, inputs[mine], targets[mine], ranges[topo.stage])
        tied = tied_weights(layers, ranges)
        ex.reduce_step_gradients(topo.pipeline, topo.data, params, tied)
        results[(pp, dp)] = {"grads": {n: None if p.grad is None else p.grad.detach().clone()
                                       for n, p in params.items()}, "tied": tied}
        topo.pipeline.Free()
        topo.data.Free()
    return results


# =========================================================================== exercises 6 and 7: past 1F1B

EX06, EX07 = "ex06_interleaved", "ex07_zero_bubble"
# The training loop calls a generator as f(num_stages, num_microbatches): interleaved runs with its default
# 2 chunks. 6 layers: 3 stages x 2 chunks is one layer per virtual stage.
INTERLEAVED_CASES = ((2, 2), (2, 4), (3, 3))
ZB_H1_CASES = ((2, 3), (3, 2), (3, 6))


@check("ex06.interleaved", EX06, ((EX06, "interleaved"),), ranks=3)
def interleaved_on_ranks(comm, impl):
    return _executor(comm, impl, f"{EX06}:interleaved", INTERLEAVED_CASES)


@check("ex07.zb_h1", EX07, ((EX07, "zb_h1"),), ranks=3)
def zb_h1_on_ranks(comm, impl):
    return _executor(comm, impl, f"{EX07}:zb_h1", ZB_H1_CASES)


# Exercises 7.1-7.2: the student's I and W inside pipeline_ref's own ZB-H1 run (its schedule, executor, stage).
SPLIT = ((EX07, "backward_input"), (EX07, "backward_weight"))
SPLIT_CASES = ((3, 4), (2, 3))


def split_runs() -> list[RunConfig]:
    return [RunConfig(schedule="zb-h1", pp=p, microbatches=m, model="mlp",
                      model_kwargs={"depth": 6, "width": 8, "batch": 12}, dtype="float64",
                      collect_grads=True, sync_sends=True, stall_timeout=30) for p, m in SPLIT_CASES]


def _student_split(ex, base):
    """pipeline_ref's WeightGradients (it captures each layer's output in the forward) with I and W the student's."""
    class StudentSplit(base):
        def input_pass(self, key, ys, grad_outputs, wants):
            captured = self._outputs.pop(key)
            input_grads, kept = ex.backward_input(list(ys), grad_outputs, list(wants), [o for _, o in captured])
            self._pending[key] = (captured, kept)
            held = sum(t.numel() * t.element_size() for t in kept if isinstance(t, torch.Tensor))
            return list(input_grads), held

        def weight_pass(self, key):
            captured, kept = self._pending.pop(key)
            ex.backward_weight([m for m, _ in captured], [o for _, o in captured], kept)
    return StudentSplit


@check("ex07.split", EX07, SPLIT, ranks=3)
def split_on_ranks(comm, impl):
    from pipeline_ref.engine import stage as stage_module
    from pipeline_ref.train import run_many
    ex = _student(impl, EX07)
    original = stage_module.WeightGradients
    stage_module.WeightGradients = _student_split(ex, original)      # what Stage(split_backward=True) makes
    try:
        results = run_many(comm, split_runs())
    finally:
        stage_module.WeightGradients = original
    return results if comm.Get_rank() == 0 else None
