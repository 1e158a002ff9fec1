"""Ranks that leave a run early with exit code 0, or hang on one replica: tests/test_faults.py's exits.

Importable as tests.exit_targets. Each is a model factory (for RunConfig(model=...)) or a rank target (for
launch(..., "tests.exit_targets:f")); the traps come from tests/fault_targets.py.
"""
import os
import sys
import time

from tests.fault_targets import _mlp_with, _trap


def os_exit_in_compute():
    """Rank 1 calls os._exit(0) in F1 of step 0: to MPI a success, in the middle of the run."""
    return _mlp_with(_trap(3, lambda: os._exit(0)))


def sys_exit_in_compute():
    """Rank 1 calls sys.exit(0) in F1 of step 0."""
    return _mlp_with(_trap(3, lambda: sys.exit(0)))


def returns_early(comm):
    """Rank 1's target returns at once, while rank 0 waits for its message."""
    from mpi4py import MPI
    from pipeline_ref.faults import watchdog
    if comm.Get_rank() == 1:
        watchdog.beat("F0 of step 0: computing")
        return "done too soon"
    watchdog.beat("F0 of step 0: waiting for the activation of microbatch 0 from rank 1")
    comm.Recv([bytearray(8), MPI.BYTE], source=1, tag=0)


def hangs_on_world_rank_3():
    """The last layer (stage 1 of 2) hangs in F0 of step 0, only on world rank 3 (replica 1 with --dp 2)."""
    from mpi4py import MPI

    def hang():
        if MPI.COMM_WORLD.Get_rank() == 3:
            time.sleep(3600)
    return _mlp_with(_trap(2, hang))
