"""The rank side of the graded tests of exercises 1 (the naive split), 2-3 (schedules through pipeline_ref's
executor) and 3.3 (the student's own executor, ``run_actions``).

The same machinery as rank_checks.py, which imports this module at its end so that these checks join
``CHECKS``. Nothing here imports mpi4py at import time.

``run_actions`` is played on real ranks with synchronous sends (every ``Isend`` becomes an ``Issend``:
a send completes only once its receive is posted, so no order passes because MPI buffered a small
message). The Stage it gets tells the watchdog each action it computes, so a deadlock is reported as
"rank 1 ... after F1, blocked before B0", and ends the check after STALL_SECONDS.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline_ref import schedules
from pipeline_ref.faults import watchdog
from pipeline_ref.front import partition
from pipeline_ref.config import RunConfig
from pipeline_ref.preflight import build_model
from pipeline_ref.schedules.geometry import Action
from pipeline_ref.engine.stage import Stage
from tests.exercises.rank_checks import EX00, EX01, SEND_RECV, _first, _student, check

# =========================================================================== exercise 1: the naive split

# Uneven on purpose: 5 layers are 3 + 2 on two stages and 2 + 2 + 1 on three.
MODEL = RunConfig(model="mlp", model_kwargs={"depth": 5, "width": 6, "batch": 8}, dtype="float64")


def _pipeline_stage(comm, num_stages):
    """The model (the same on every rank) and this rank's stage of it, split the reference way."""
    layers, loss_fn, (inputs, targets) = build_model(MODEL)
    ranges = partition.uniform(len(layers), num_stages)
    stage = nn.Sequential(*layers[ranges[comm.Get_rank()].start:ranges[comm.Get_rank()].stop])
    names = {id(p): n for n, p in nn.Sequential(*layers).named_parameters()}
    return stage, names, loss_fn, inputs, targets


def _grads(stage, names):
    return {names[id(p)]: p.grad.detach().clone() if p.grad is not None else None for p in stage.parameters()}


@check("ex01.stage_layers", EX01, ((EX01, "stage_layers"),), ranks=1)
def split_layers(comm, impl):
    if comm.Get_rank() != 0:
        return None
    ex = _student(impl, EX01)
    cases = {}
    for num_layers, num_stages in ((6, 2), (7, 3), (5, 5), (4, 1), (10, 4)):
        layers = [nn.Linear(1, 1) for _ in range(num_layers)]
        where = {id(layer): index for index, layer in enumerate(layers)}
        stages = []
        for s in range(num_stages):
            got = ex.stage_layers(layers, num_stages, s)
            stages.append(type(got).__name__ if not isinstance(got, nn.Sequential)
                          else [where.get(id(m), "a copy, not the same layer object") for m in got])
        cases[(num_layers, num_stages)] = stages
    try:
        got = ex.stage_layers([nn.Linear(1, 1) for _ in range(3)], 4, 0)
        too_many = f"returned {got!r}"
    except ValueError:
        too_many = "ValueError"
    except Exception as err:    # the student's own bug: report it, don't crash the check
        too_many = f"{type(err).__name__}: {err}"
    return {"cases": cases, "too_many_stages": too_many}


@check("ex01.forward", EX01, ((EX01, "stage_forward"),) + SEND_RECV, ranks=3)
def forward(comm, impl):
    ex = _student(impl, EX01)
    results = {}
    for num_stages in (2, 3):
        sub = _first(comm, num_stages)
        if sub is None:
            continue
        stage, _, _, inputs, _ = _pipeline_stage(sub, num_stages)
        rank = sub.Get_rank()
        x, y = ex.stage_forward(sub, stage, inputs if rank == 0 else None)
        results[num_stages] = {"output": y.detach() if rank == num_stages - 1 else None,
                               "input_requires_grad": bool(x.requires_grad)}
        sub.Free()
    return results


@check("ex01.backward", EX01, ((EX01, "stage_forward"), (EX01, "stage_backward")) + SEND_RECV, ranks=3)
def backward(comm, impl):
    ex = _student(impl, EX01)
    results = {}
    for num_stages in (2, 3):
        sub = _first(comm, num_stages)
        if sub is None:
            continue
        stage, names, loss_fn, inputs, targets = _pipeline_stage(sub, num_stages)
        rank = sub.Get_rank()
        x, y = ex.stage_forward(sub, stage, inputs if rank == 0 else None)
        ex.stage_backward(sub, x, loss_fn(y, targets) if rank == num_stages - 1 else y)
        results[num_stages] = _grads(stage, names)
        sub.Free()
    return results


@check("ex01.naive_step", EX01, ((EX01, "naive_step"),) + SEND_RECV, ranks=3)
def naive_step(comm, impl):
    ex = _student(impl, EX01)
    results = {}
    for num_stages in (1, 2, 3):
        sub = _first(comm, num_stages)
        if sub is None:
            continue
        stage, names, loss_fn, inputs, targets = _pipeline_stage(sub, num_stages)
        rank = sub.Get_rank()
        loss = ex.naive_step(sub, stage, inputs if rank == 0 else None,
                             targets if rank == num_stages - 1 else None, loss_fn)
        results[num_stages] = {"loss": loss, "grads": _grads(stage, names)}
        sub.Free()
    return results


# =========================================================================== exercises 2 and 3: the executor

def schedule_runs(impl: str, spec: str, cases) -> list[RunConfig]:
    """Runs of the student's generator ``module:function`` by pipeline_ref's training loop, one per (stages, microbatches)."""
    return [RunConfig(schedule=f"{impl}.{spec}", pp=p, microbatches=m, model="mlp",
                      model_kwargs={"depth": 6, "width": 8, "batch": 12}, dtype="float64",
                      collect_grads=True, sync_sends=True, stall_timeout=30) for p, m in cases]


# Microbatches fewer than, as many as, and more than the stages (the simulator tests cover many more sizes).
GPIPE_CASES = ((2, 2), (3, 2), (3, 6))
ONE_F_ONE_B_CASES = ((2, 2), (3, 1), (3, 6))


def _executor(comm, impl, spec, cases):
    from pipeline_ref.train import run_many
    results = run_many(comm, schedule_runs(impl, spec, cases))
    return results if comm.Get_rank() == 0 else None


@check("ex02.executor", "ex02_gpipe", (("ex02_gpipe", "gpipe"),), ranks=3)
def gpipe_on_ranks(comm, impl):
    return _executor(comm, impl, "ex02_gpipe:gpipe", GPIPE_CASES)


@check("ex03.executor", "ex03_1f1b", (("ex03_1f1b", "one_f_one_b"),), ranks=3)
def one_f_one_b_on_ranks(comm, impl):
    return _executor(comm, impl, "ex03_1f1b:one_f_one_b", ONE_F_ONE_B_CASES)


# =========================================================================== exercise 3.3: the student's executor

EX03 = "ex03_1f1b"
RUN_ACTIONS = ((EX03, "run_actions"), (EX00, "isend_tensor"), (EX00, "irecv_tensor"))
EXECUTOR_MODEL = RunConfig(model="mlp", model_kwargs={"depth": 6, "width": 8, "batch": 12}, dtype="float64")
# (stages, microbatches) per schedule: fewer microbatches than stages, and more; 3 ranks: a middle one.
RUN_ACTIONS_CASES = {"naive": ((2, 2), (3, 3)), "gpipe": ((2, 3), (3, 4)), "1f1b": ((2, 2), (2, 4), (3, 1), (3, 6))}


class SyncComm:
    """The pipeline communicator with synchronous sends, keeping the requests of the sends it started, and the
    peer and tag of every point-to-point call (checked in pytest against the documented tag rule)."""

    SYNC = {"Isend": "Issend", "Send": "Ssend", "isend": "issend", "send": "ssend"}
    SENDS = ("Isend", "isend", "Issend", "issend", "Send", "send", "Ssend", "ssend")
    RECEIVES = ("Irecv", "irecv", "Recv", "recv")

    def __init__(self, comm):
        self._comm = comm
        self.sends = []
        self.messages: list[tuple[str, object, object]] = []    # ("send" | "recv", peer, tag), in call order

    def _record(self, name: str, args, kwargs) -> None:
        # mpi4py: Isend(buf, dest, tag=0), Irecv(buf, source=ANY_SOURCE, tag=ANY_TAG); lowercase the same.
        from mpi4py import MPI
        sending = name in self.SENDS
        peer = kwargs.get("dest" if sending else "source", args[1] if len(args) > 1 else MPI.ANY_SOURCE)
        tag = kwargs.get("tag", args[2] if len(args) > 2 else (0 if sending else MPI.ANY_TAG))
        self.messages.append(("send" if sending else "recv", int(peer), int(tag)))

    def __getattr__(self, name):
        method = getattr(self._comm, self.SYNC.get(name, name))
        if name in self.SENDS or name in self.RECEIVES:
            def recorded(*args, **kwargs):
                self._record(name, args, kwargs)
                request = method(*args, **kwargs)
                if name in ("Isend", "isend", "Issend", "issend"):
                    self.sends.append(request)
                return request
            return recorded
        return method

    def unfinished(self) -> int:
        """Sends not completed when run_actions returned; completed now, so the next case starts clean."""
        from mpi4py import MPI
        left = [r for r in self.sends if r != MPI.REQUEST_NULL and not r.Test()]
        for request in left:
            request.Wait()
        return len(left)


class WatchedStage:
    """The Stage run_actions gets: it records the actions computed and tells the watchdog where this rank is."""

    def __init__(self, stage: Stage, actions, where: str):
        self._stage, self._actions, self._where = stage, list(actions), where
        self.played: list[Action] = []
        self._report()

    def _report(self) -> None:
        # The action first: the score table shows a failure's first 90 characters.
        done = len(self.played)
        after = f"after {' '.join(map(str, self.played[-3:]))}" if done else "before computing anything"
        if done < len(self._actions):
            state = (f"blocked before {self._actions[done]} ({after}; action {done + 1} of {len(self._actions)}: "
                     f"in a receive or a send that does not complete)")
        else:
            state = "blocked after its last action (finishing its sends?)"
        watchdog.beat(f"{state} in your run_actions ({self._where})")

    def forward(self, microbatch, inputs, target=None):
        self.played.append(Action("F", microbatch))
        watchdog.beat(f"computing F{microbatch} in your run_actions ({self._where})")
        out = self._stage.forward(microbatch, inputs, target)
        self._report()
        return out

    def backward(self, microbatch, grads):
        self.played.append(Action("B", microbatch))
        watchdog.beat(f"computing B{microbatch} in your run_actions ({self._where})")
        out = self._stage.backward(microbatch, grads)
        self._report()
        return out

    def __getattr__(self, name):
        return getattr(self._stage, name)


def _play(comm, ex, name: str, num_stages: int, num_microbatches: int) -> dict:
    """This rank's part of one step of schedule ``name`` played by the student's run_actions."""
    rank, last = comm.Get_rank(), num_stages - 1
    layers, loss_fn, (inputs, targets) = build_model(EXECUTOR_MODEL)
    piece = partition.uniform(len(layers), num_stages)[rank]
    stage = Stage(nn.Sequential(*layers[piece.start:piece.stop]), is_first=rank == 0, is_last=rank == last,
                  loss_fn=loss_fn, num_microbatches=num_microbatches)
    names = {id(p): n for n, p in nn.Sequential(*layers).named_parameters()}
    xs, ts = list(inputs.tensor_split(num_microbatches)), list(targets.tensor_split(num_microbatches))
    actions = list(schedules.build(name, num_stages, num_microbatches)[rank])
    watched = WatchedStage(stage, actions, f"{name}, {num_stages} stages, {num_microbatches} microbatches")
    sync = SyncComm(comm)
    ex.run_actions(sync, watched, actions, xs if rank == 0 else None, ts if rank == last else None,
                   tuple(xs[0].shape), xs[0].dtype)
    return {"actions": [str(a) for a in actions], "played": [str(a) for a in watched.played],
            "messages": sync.messages,
            "unfinished_sends": sync.unfinished(), "left_in_stash": sorted(stage.stash),
            "losses": [float(loss) for loss in stage.losses], "grads": _grads(stage.module, names)}


def _run_actions(comm, impl, name: str):
    ex = _student(impl, EX03)
    results = {}
    for p, m in RUN_ACTIONS_CASES[name]:
        # Ranks left out of a case wait for the others as long as they take: not watched, not a stall.
        watchdog.beat(f"waiting for the ranks of {name} on {p} stages", watched=False)
        sub = _first(comm, p)
        if sub is not None:
            results[(p, m)] = _play(sub, ex, name, p, m)
            sub.Free()
    return results


@check("ex03.run_naive", EX03, RUN_ACTIONS, ranks=3)
def run_actions_naive(comm, impl):
    return _run_actions(comm, impl, "naive")


@check("ex03.run_gpipe", EX03, RUN_ACTIONS, ranks=3)
def run_actions_gpipe(comm, impl):
    return _run_actions(comm, impl, "gpipe")


@check("ex03.run_1f1b", EX03, RUN_ACTIONS, ranks=3)
def run_actions_1f1b(comm, impl):
    return _run_actions(comm, impl, "1f1b")
