"""Faults the fault-injection tests (tests/test_faults.py) plant in ranks; importable as tests.fault_targets.

Each is a model factory (for RunConfig(model=...)) or a rank target (for launch(..., "tests.fault_targets:f")).
The ones that need no training import no torch, so their ranks start in a fraction of a second.
"""
import os
import signal
import time


def idle(comm, seconds: float = 60):
    """Once every rank is up, rank 0 says so (one line: two ranks' lines can interleave), then all wait (not
    watched: only their launcher ending them is tested)."""
    from pipeline_ref.faults import watchdog
    watchdog.beat("waiting, as the test asked", watched=False)
    comm.Barrier()
    if comm.Get_rank() == 0:
        print("all ranks ready", flush=True)
    time.sleep(seconds)


def never_sends(comm):
    """Rank 0 never sends what rank 1 waits for: a hang in a receive, ended by rank 1's watchdog."""
    from mpi4py import MPI
    from pipeline_ref.faults import watchdog
    if comm.Get_rank() == 0:
        watchdog.beat("thinking about something else", watched=False)
        time.sleep(3600)
    watchdog.beat("F0 of step 0: waiting for the activation of microbatch 0 from rank 0")
    comm.Recv([bytearray(8), MPI.BYTE], source=0, tag=0)


def _mlp_with(trap):
    from pipeline_ref import models
    layers, loss_fn, batch = models.mlp(depth=4, width=8, batch=8)
    layers.append(trap)          # the last layer: on rank 1 of 2
    return layers, loss_fn, batch


def _trap(on_call: int, then):
    from torch import nn

    class Trap(nn.Module):
        """An identity layer that calls ``then`` on its n-th call (call 1 is the shape agreement, 2 is F0, ...)."""
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, x):
            if not self.training:     # the configuration check probes a copy in eval mode: not counted
                return x
            self.calls += 1
            if self.calls == on_call:
                then()
            return x
    return Trap()


def _kill_self(number=signal.SIGKILL):
    os.kill(os.getpid(), number)
    time.sleep(10)   # the signal arrives at once; never go on


def killed_in_compute():
    """Rank 1 is killed (SIGKILL) in F1 of step 0."""
    return _mlp_with(_trap(3, _kill_self))


def _shapes_refused():
    raise ValueError("this layer refuses its input shape")


def crash_in_setup():
    """Rank 1 raises while the stages agree on tensor shapes (set-up, before any step). """
    return _mlp_with(_trap(1, _shapes_refused))


def crash_in_allreduce(comm, cfg):
    """Train with --dp 2, but rank 1 crashes (SIGSEGV) inside the data-parallel all-reduce of step 0."""
    from pipeline_ref import train
    from pipeline_ref.engine import reduce
    start = reduce.GradientReducer.start

    def crashing_start(self):
        if comm.Get_rank() == 1 and self.comm.Get_size() > 1:
            _kill_self(signal.SIGSEGV)
        start(self)
    reduce.GradientReducer.start = crashing_start
    return train.run_rank(comm, cfg)
