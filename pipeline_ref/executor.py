"""Play one rank's list of actions for real: receive, compute, send, record.

The executor knows nothing about GPipe or 1F1B: it reads the schedule (see
``schedules.py``) and works out, for every action, which message it must receive
first and which message it produces (``schedules.dependency`` is the single
definition of both, shared with the validator and the simulator).

Why it cannot deadlock on a valid schedule: sends are non-blocking, so a rank
only ever blocks on a receive, that is on a message its next action truly needs.
The validator has checked that this wait-for relation has no cycle. This holds
with synchronous sends too (``Issend``, no eager buffering), which the tests run.

Overlap: the receives for the next ``lookahead`` actions that need one are kept
posted, so a message lands while the current action computes. Each posted
receive holds a buffer, so the look-ahead is kept small.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from . import schedules, watchdog
from .comm import ACTIVATION, GRADIENT, Messenger, message_tag
from .stage import Stage
from .trace import Event, Wait


@dataclass(frozen=True)
class Spec:
    """Shape and dtype of the tensor a chunk receives as input (its gradient has the output's)."""
    shape: tuple
    dtype: torch.dtype


@dataclass(frozen=True)
class Step:
    action: schedules.Action
    recv: tuple | None      # (source rank, tag, Spec, what)   message to receive first
    send: tuple | None      # (dest rank, tag)                  message the result goes to


def agree_specs(comm, stage: Stage, rank: int, num_stages: int, num_chunks: int, sample_input,
                layout: str = "interleaved"):
    """Walk the virtual stages in order once, so each learns the shape its input arrives in.

    Each holder runs its chunk on a zero tensor of the announced shape (no grad) and
    announces its output's shape to the next. Returns (input specs, output specs) by chunk.
    """
    in_specs, out_specs = {}, {}
    last = num_stages * num_chunks - 1
    for v in range(last + 1):
        holder, chunk = schedules.rank_of(v, num_stages, layout)
        if holder != rank:
            continue
        source, source_chunk = schedules.rank_of(v - 1, num_stages, layout)
        if v == 0:
            x = sample_input
        else:
            # A blocking send to oneself would never return, so a rank's own chunks pass it by hand.
            spec = out_specs[source_chunk] if source == rank else comm.recv(source=source, tag=v)
            x = torch.zeros(spec.shape, dtype=spec.dtype, device=sample_input.device)
        in_specs[chunk] = Spec(tuple(x.shape), x.dtype)
        with torch.no_grad():
            y = stage.modules[chunk](x)
        out_specs[chunk] = Spec(tuple(y.shape), y.dtype)
        dest = schedules.rank_of(v + 1, num_stages, layout)[0]
        if v < last and dest != rank:
            comm.send(out_specs[chunk], dest=dest, tag=v + 1)
    return in_specs, out_specs


class Executor:
    def __init__(self, stage: Stage, actions: list, messenger: Messenger, rank: int,
                 num_stages: int, num_chunks: int, num_microbatches: int,
                 in_specs: dict, out_specs: dict, device: torch.device, lookahead: int = 2,
                 layout: str = "interleaved"):
        self.stage, self.messenger, self.rank, self.device = stage, messenger, rank, device
        self.lookahead, self.layout = lookahead, layout
        self.plan = [self._plan(a, num_stages, num_chunks, in_specs, out_specs) for a in actions]

    def _plan(self, action, num_stages, num_chunks, in_specs, out_specs) -> Step:
        layout = self.layout
        v = schedules.virtual_stage(self.rank, action.chunk, num_stages, layout)
        tag = lambda direction, chunk: message_tag(direction, action.microbatch, chunk, num_chunks)
        recv = send = None
        dep = schedules.dependency(action, self.rank, num_stages, num_chunks, layout)
        if action.op == "F":
            if dep:
                recv = (dep[0], tag(ACTIVATION, action.chunk), in_specs[action.chunk], "activation")
            if not self.stage.is_last[action.chunk]:
                dest, chunk = schedules.rank_of(v + 1, num_stages, layout)
                send = (dest, tag(ACTIVATION, chunk))
        elif action.op in ("B", "I"):          # I: the input-gradient half of a split backward
            if dep:
                recv = (dep[0], tag(GRADIENT, action.chunk), out_specs[action.chunk], "gradient")
            if not self.stage.is_first[action.chunk]:
                dest, chunk = schedules.rank_of(v - 1, num_stages, layout)
                send = (dest, tag(GRADIENT, chunk))
        elif action.op != "W":                  # W: weight gradients, local, no message
            raise ValueError(f"rank {self.rank}: unknown action {action}")
        return Step(action, recv, send)

    def _clock(self):
        """A point in time on this rank's compute: a host clock reading on CPU, a CUDA event on GPU.

        Host clocks around asynchronous GPU work would time the kernel launches, not the
        kernels; CUDA events are timestamped by the GPU itself, read after the step.
        """
        if self.device.type != "cuda":
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def run(self, inputs, targets, step_index: int = 0, t0: float | None = None, after_last_backward=None):
        """One training step's actions; returns (events, waits) timed from ``t0``.

        inputs/targets: per-microbatch tensors (None where this rank needs none).
        ``after_last_backward()`` is called once this rank's gradients are final, so a
        data-parallel all-reduce can start while other stages still drain the pipeline.
        """
        stage, messenger, rank = self.stage, self.messenger, self.rank
        stage.start_step()
        events, waits = [], []
        needs_recv = [i for i, s in enumerate(self.plan) if s.recv]
        last_backward = max((i for i, s in enumerate(self.plan) if s.action.op in ("B", "W")), default=-1)
        posted: dict[int, object] = {}
        next_post = 0
        t0 = time.perf_counter() if t0 is None else t0
        origin = (self._clock(), time.perf_counter()) if self.device.type == "cuda" else None
        for i, step in enumerate(self.plan):
            a = step.action
            while next_post < len(needs_recv) and len(posted) < self.lookahead:
                j = needs_recv[next_post]
                src, tag, spec, _ = self.plan[j].recv
                posted[j] = messenger.irecv(spec.shape, spec.dtype, self.device, src, tag)
                next_post += 1
            x = None
            if step.recv:
                src, _, _, what = step.recv
                watchdog.beat(f"{a} of step {step_index}: waiting for the {what} of microbatch "
                              f"{a.microbatch} from rank {src}")
                w0 = time.perf_counter()
                x = posted.pop(i).wait()
                w1 = time.perf_counter()
                waits.append(Wait(rank, f"recv {what} {a.microbatch} from rank {src}", w0 - t0, w1 - t0))
            watchdog.beat(f"{a} of step {step_index}: computing")
            start = self._clock()
            if a.op == "F":
                out = stage.forward(a.microbatch, a.chunk, inputs[a.microbatch] if x is None else x,
                                    targets[a.microbatch] if stage.is_last[a.chunk] else None)
            elif a.op == "B":
                out = stage.backward(a.microbatch, a.chunk, x)
            elif a.op == "I":
                out = stage.backward_input(a.microbatch, a.chunk, x)
            else:
                out = stage.backward_weight(a.microbatch, a.chunk)
            events.append((a, start, self._clock()))
            if step.send:
                messenger.isend(out, *step.send)
            if i == last_backward and after_last_backward is not None:
                after_last_backward()
            messenger.progress()
        watchdog.beat(f"end of step {step_index}: waiting for {messenger.pending_sends} sends to be received")
        messenger.finish_sends()
        return self._timed(events, t0, origin), waits

    def _timed(self, marks, t0: float, origin) -> list[Event]:
        """Events in seconds since ``t0``: GPU timestamps are placed on the host timeline at ``origin``."""
        if self.device.type != "cuda":
            return [Event(self.rank, a.op, a.microbatch, a.chunk, s - t0, e - t0) for a, s, e in marks]
        torch.cuda.synchronize(self.device)
        event0, host0 = origin
        return [Event(self.rank, a.op, a.microbatch, a.chunk, host0 - t0 + event0.elapsed_time(s) / 1e3,
                      host0 - t0 + event0.elapsed_time(e) / 1e3) for a, s, e in marks]
