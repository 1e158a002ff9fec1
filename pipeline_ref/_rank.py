"""The program each rank runs when ``launch.py`` starts ranks (not for direct use).

    mpiexec -n N python -m mpi4py -m pipeline_ref._rank PAYLOAD OUTDIR

PAYLOAD is a pickle of (target "pkg.module:function", args, kwargs, stall_timeout).
The rank calls ``function(MPI.COMM_WORLD, *args, **kwargs)`` and saves what it
returns to OUTDIR/rank<r>.pt. If it raises, the rank prints one line naming
itself and what it was doing (launch.py reads it), then the exception propagates
and ``python -m mpi4py`` aborts every rank (a refused configuration aborts at once,
without a traceback: the one line is the whole story).
"""
import importlib
import os
import pickle
import sys
import traceback

import torch
from mpi4py import MPI

from . import watchdog
from .config import ConfigError


def main(payload_path: str, outdir: str) -> None:
    with open(payload_path, "rb") as f:
        target, args, kwargs, stall_timeout = pickle.load(f)
    rank = MPI.COMM_WORLD.Get_rank()
    with open(f"{outdir}/rank{rank}.pid", "w") as f:   # so the launcher can make sure we are gone
        f.write(str(os.getpid()))
    watchdog.start(rank, stall_timeout)
    module_name, _, function_name = target.partition(":")
    function = getattr(importlib.import_module(module_name), function_name)
    try:
        result = function(MPI.COMM_WORLD, *args, **kwargs)
    except BaseException as err:
        detail = traceback.format_exception_only(type(err), err)[-1].strip()
        watchdog.report(f"failed while {watchdog.doing()}: {detail}")
        if isinstance(err, ConfigError):   # the user's request, refused: the line above says it all
            watchdog.abort_all(MPI.COMM_WORLD, 2)
        raise
    torch.save(result, f"{outdir}/rank{rank}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:3])
