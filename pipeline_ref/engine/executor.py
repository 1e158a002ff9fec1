"""Play one rank's list of actions for real: receive, compute, send, record.

The executor knows nothing about GPipe or 1F1B. For each action of the rank's list it asks the
pipeline's geometry (``geometry.Pipeline.receives`` / ``sends``) which message the action must
receive first and where its result goes, once, into a named plan (:class:`Step`); then
:meth:`Executor.run` plays the plan:

    for each step:   take its message (posted earlier)  ->  compute on its Stage  ->  start its send

Why it cannot deadlock on a valid schedule: sends are non-blocking, so a rank only ever blocks on
a receive, that is on a message its next action truly needs, and the validator (``replay.py``)
has checked that this wait-for relation has no cycle. This holds with synchronous sends too
(``Issend``, no eager buffering), which the tests run.

Overlap: a :class:`ReceiveWindow` keeps the receives of the next ``lookahead`` actions that need
one posted, so a message lands while the current action computes (``lookahead=0`` posts each
receive only when its action needs it). A receive's buffer goes back to the Messenger's pool
once nothing reads it: a gradient after its B (or the W after its I), an activation after the
backward (or W) of its microbatch, which is when the stash lets go of it.

Timing: a :class:`Clock` per device kind, host clock on CPU, CUDA events on GPU.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from pipeline_ref.faults import watchdog
from pipeline_ref.faults.finite import NonFiniteError, nonfinite
from pipeline_ref.schedules.geometry import Action, Op, Pipeline
from pipeline_ref.engine.message import Messenger, PendingRecv, gradient_specs, specs_of, tag_of
from pipeline_ref.engine.stage import Stage
from pipeline_ref.sim.trace import Event, Wait


@dataclass(frozen=True)
class Receive:
    """The message an action waits for: from ``source``, with ``tag``, shaped as ``specs``."""
    source: int
    tag: int
    specs: tuple
    what: str                  # "activation" or "gradient", for messages and traces


@dataclass(frozen=True)
class Send:
    dest: int
    tag: int


@dataclass(frozen=True)
class Step:
    """One action of the plan: what it receives first, and where its result goes (None: nothing)."""
    action: Action
    receive: Receive | None
    send: Send | None
    frees: tuple = ()          # earlier receives whose buffers this action is the last to read
    name: str = ""             # str(action), and what the heartbeat says while it waits: made once, in plan()
    waiting: str = ""


def plan(actions, pipeline: Pipeline, rank: int, in_specs: dict, out_specs: dict) -> list[Step]:
    """The rank's actions as steps; ``in_specs[chunk]``/``out_specs[chunk]``: the chunk's boundary specs."""
    steps = []
    for a in actions:
        incoming, outgoing = pipeline.messages(a, rank)
        receive = send = None
        if incoming is not None:
            specs = in_specs[a.chunk] if incoming.what == "activation" else gradient_specs(out_specs[a.chunk])
            receive = Receive(incoming.peer.rank, tag_of(incoming, pipeline.num_chunks), specs, incoming.what)
        if outgoing is not None:
            send = Send(outgoing.peer.rank, tag_of(outgoing, pipeline.num_chunks))
        frees = tuple(Action(op.value, a.microbatch, a.chunk) for op in Op(a.op).frees)
        waiting = (f"waiting for the {receive.what} of microbatch {a.microbatch} from rank {receive.source}"
                   if receive else "")
        steps.append(Step(a, receive, send, frees, str(a), waiting))
    return steps


def agree_specs(transport, stages: dict[int, Stage], pipeline: Pipeline, rank: int, sample_inputs: tuple):
    """Walk the virtual stages in order once, so each learns the specs its input arrives in.

    Each holder runs its chunk on zero tensors of the announced specs (no grad) and announces its
    outputs' specs to the next. Returns (input specs, output specs) by chunk, and sets each stage's
    ``wants_grad``. A blocking send to oneself would never return, so a rank's own chunks pass it by hand.
    """
    in_specs, out_specs = {}, {}
    device = sample_inputs[0].device
    for v in range(pipeline.num_virtual_stages):
        holder, chunk = pipeline.place(v)
        if holder != rank:
            continue
        if v == 0:
            inputs = sample_inputs
            specs = specs_of(inputs)
        else:
            source = pipeline.place(v - 1)
            specs = out_specs[source.chunk] if source.rank == rank else transport.recv_object(source.rank,
                                                                                              tag=v)
            inputs = tuple(torch.zeros(s.shape, dtype=s.dtype, device=device).requires_grad_(s.requires_grad)
                           for s in specs)
            stages[chunk].wants_grad = tuple(s.requires_grad for s in specs)
        in_specs[chunk] = specs
        with torch.enable_grad():   # requires_grad on the outputs says which get a gradient back
            outputs = stages[chunk].run_module(*inputs)
        out_specs[chunk] = specs_of(outputs if isinstance(outputs, tuple) else (outputs,))
        dest = pipeline.place(v + 1) if v + 1 < pipeline.num_virtual_stages else None
        if dest is not None and dest.rank != rank:
            transport.send_object(out_specs[chunk], dest.rank, tag=v + 1)
    return in_specs, out_specs


class ReceiveWindow:
    """The receives of the next ``size`` steps that need one, kept posted."""

    def __init__(self, steps: list[Step], messenger: Messenger, size: int):
        self.messenger, self.size = messenger, size
        self._todo = [i for i, s in enumerate(steps) if s.receive]
        self._steps = steps
        self._next = 0
        self.posted: dict[int, PendingRecv] = {}

    def _post(self) -> None:
        i = self._todo[self._next]
        r = self._steps[i].receive
        self.posted[i] = self.messenger.irecv(r.specs, r.source, r.tag)
        self._next += 1

    def advance(self) -> None:
        """Post receives ahead, up to the window's size."""
        while self._next < len(self._todo) and len(self.posted) < self.size:
            self._post()

    def take(self, i: int) -> PendingRecv:
        """The receive of step ``i`` (posted now if the window had not reached it)."""
        while i not in self.posted:
            self._post()
        return self.posted.pop(i)


class HostClock:
    """Seconds from the host's performance counter: right for CPU compute, which is synchronous."""

    def mark(self):
        return time.perf_counter()

    def seconds(self, marks: list, t0: float) -> list[float]:
        return [m - t0 for m in marks]


class CudaClock:
    """CUDA events: host clocks around asynchronous GPU work would time the kernel launches, not the
    kernels. Events are timestamped by the GPU and read after the step, placed on the host timeline
    at an origin taken when the step began."""

    def __init__(self, device: torch.device):
        self.device = device
        self.origin = (self.mark(), time.perf_counter())

    def mark(self):
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, marks: list, t0: float) -> list[float]:
        torch.cuda.synchronize(self.device)
        event0, host0 = self.origin
        return [host0 - t0 + event0.elapsed_time(m) / 1e3 for m in marks]


def clock_for(device: torch.device):
    return CudaClock(device) if device.type == "cuda" else HostClock()


class Executor:
    def __init__(self, stages: dict[int, Stage], steps: list[Step], messenger: Messenger, rank: int,
                 device: torch.device, lookahead: int = 2, skip_nonfinite: bool = False):
        if not isinstance(lookahead, int) or lookahead < 0:
            raise ValueError(f"lookahead must be a non-negative integer, got {lookahead!r}")
        self.stages, self.steps, self.messenger = stages, steps, messenger
        self.rank, self.device, self.lookahead = rank, device, lookahead
        self.skip_nonfinite = skip_nonfinite
        self.found_nonfinite: str | None = None     # the first NaN/inf of this step, when skipping

    def _check(self, a: Action, stage: Stage, out, step_index: int) -> None:
        """Catch a NaN/inf where it appears: in the loss, a stage's output, or a gradient it sends back."""
        if a.op == "F" and stage.is_last:
            what, kind = "loss", nonfinite(stage.losses[-1:])
        elif a.op == "F":
            what, kind = "output", nonfinite(out)
        elif a.op in ("B", "I") and out is not None:
            what, kind = "input gradient", nonfinite(out)
        else:
            return
        if kind is None or self.found_nonfinite:
            return
        message = f"rank {self.rank}: {what} is {kind} at {a} of step {step_index}"
        if not self.skip_nonfinite:
            raise NonFiniteError(message)
        self.found_nonfinite = message

    def run(self, inputs, targets, step_index: int = 0, t0: float | None = None, after_last_backward=None):
        """One training step's actions; returns (events, waits) timed from ``t0``.

        inputs/targets: per-microbatch inputs (tuples) and targets (None where this rank needs none).
        ``after_last_backward()`` is called once this rank's gradients are final, so a data-parallel
        all-reduce can start while other stages still drain the pipeline.
        """
        stages, messenger, rank = self.stages, self.messenger, self.rank
        for stage in stages.values():
            stage.start_step()
        self.found_nonfinite = None
        t0 = time.perf_counter() if t0 is None else t0
        clock = clock_for(self.device)
        window = ReceiveWindow(self.steps, messenger, self.lookahead)
        held: dict[Action, PendingRecv] = {}           # received buffers still read after their action
        ends = [i for i, s in enumerate(self.steps) if Op(s.action.op).ends_backward]
        last_backward = max(ends, default=-1)
        marks, waits = [], []
        # What the heartbeat says, formatted now: after an action's large matrix products the caches hold the
        # weights, and one f-string between actions costs 14 µs against 0.2 µs in a loop (overhead.py, part
        # 4).
        reports = [(f"{s.name} of step {step_index}: {s.waiting}",
                    f"{s.name} of step {step_index}: computing")
                   for s in self.steps]
        for i, step in enumerate(self.steps):
            a, stage = step.action, stages[step.action.chunk]
            window.advance()
            # Receive.
            received = None
            if step.receive:
                r = step.receive
                watchdog.beat(reports[i][0])
                pending = window.take(i)
                w0 = time.perf_counter()
                received = pending.wait()
                waits.append((r, a.microbatch, w0, time.perf_counter()))
            # Compute.
            watchdog.beat(reports[i][1])
            start = clock.mark()
            out = _compute(stage, a, received, inputs, targets)
            self._check(a, stage, out, step_index)
            marks.append((a, start, clock.mark()))
            # Send, and give back the buffers nothing reads any more.
            if step.send:
                messenger.isend(out, step.send.dest, step.send.tag)
            if step.receive and a.op in ("F", "I"):
                held[a] = pending
            elif step.receive:
                messenger.release(pending)
            for earlier in step.frees:
                if earlier in held:
                    messenger.release(held.pop(earlier))
            if i == last_backward and after_last_backward is not None:
                after_last_backward()
            messenger.progress()
        watchdog.beat(f"end of step {step_index}: waiting for {messenger.pending_sends} sends to be received")
        messenger.finish_sends()
        waits = [Wait(rank, f"recv {r.what} {microbatch} from rank {r.source}", w0 - t0, w1 - t0)
                 for r, microbatch, w0, w1 in waits]     # named after the step: no formatting between actions
        return self._events(marks, clock, t0), waits

    def _events(self, marks, clock, t0: float) -> list[Event]:
        starts = clock.seconds([s for _, s, _ in marks], t0)
        ends = clock.seconds([e for _, _, e in marks], t0)
        return [Event(self.rank, a.op, a.microbatch, a.chunk, s, e) for (a, _, _), s, e in zip(marks, starts,
                                                                                               ends)]


def _compute(stage, action: Action, received, inputs, targets):
    """One action's computation on its chunk; returns what it sends on (None where nothing goes on)."""
    if action.op == "F":
        x = inputs[action.microbatch] if received is None else received
        return stage.forward(action.microbatch, x, targets[action.microbatch] if stage.is_last else None)
    if action.op == "B":
        return stage.backward(action.microbatch, received)
    if action.op == "I":
        return stage.backward_input(action.microbatch, received)
    return stage.backward_weight(action.microbatch)
