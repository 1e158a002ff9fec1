"""What this machine offers the course, and whether each part works: run it first on a new node.

    python -m pipeline_ref doctor            # a table: check, status, value, and under a failing row its fix
    python -m pipeline_ref doctor --json     # the same rows as JSON

In the spirit of DeepSpeed's ``ds_report`` and torch's ``collect_env``, but each row also says whether it
works (ok / warn / fail / n/a) and, where it does not, the one command that fixes it. ``fail`` is kept for
what the course cannot run without (Python, torch, MPI, starting ranks, the lessons' kernel); a missing
extra or a slow machine is a ``warn``. The exit code is 1 when any row fails.

Each check is a small function returning a :class:`Row` (``CHECKS``), so a test can run them one at a
time or add a failing one. The pytest process stays free of MPI: the MPI library is asked in a short
subprocess, and the start-up row really starts two ranks through ``launch.py``.
"""
from __future__ import annotations

import importlib.metadata as metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

KERNEL = "pipeline-course"      # the name `make kernel` registers
LESSON_RANKS = 4                # the most ranks a lesson starts (a test reads it from the notebooks)
STATUSES = ("ok", "warn", "fail", "n/a")
# PyPI's Linux wheel of torch is a CUDA build (a CPU build comes from PyTorch's CPU index).
_CUDA_TORCH = "pip install --force-reinstall --index-url https://pypi.org/simple torch==2.13.0"


@dataclass(frozen=True)
class Row:
    name: str
    value: str
    status: str                 # one of STATUSES
    fix: str | None = None      # the command that fixes a fail or warn row

    def __post_init__(self):
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")


def rank_of(comm) -> int:          # the start-up check's whole job on each rank
    return comm.Get_rank()


# --------------------------------------------------------------------------- what the checks ask

_PROBE = ("import json, mpi4py; from mpi4py import MPI; "
          "q = getattr(MPI, 'Query_cuda_support', None); "
          "print(json.dumps({'mpi4py': mpi4py.__version__, 'library': MPI.Get_library_version(), "
          "'cuda_support': q() if q else None}))")


@lru_cache(maxsize=None)
def _probe_mpi() -> dict:
    """The MPI library as a one-process MPI program sees it (a subprocess: this process never imports MPI)."""
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        said = done.stderr.strip().splitlines() or [f"mpi4py exited with {done.returncode}"]
        raise RuntimeError(said[-1])
    return json.loads(done.stdout.strip().splitlines()[-1])


def _start_ranks(num_ranks: int = 2) -> tuple[list, float]:
    from pipeline_ref.launch import launch
    t0 = time.perf_counter()
    results = launch(num_ranks, "pipeline_ref.tools.doctor:rank_of", timeout=120, stall_timeout=60)
    return results, time.perf_counter() - t0


def _gpus_present() -> bool:        # an NVIDIA driver on this machine, whatever torch was built for
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or shutil.which("nvidia-smi") is not None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


# --------------------------------------------------------------------------- the checks

def check_python() -> Row:
    value = f"{platform.python_version()} ({sys.executable})"
    if sys.version_info < (3, 10):
        return Row("Python", value + ": the course needs 3.10+", "fail", "make clean env PYTHON=python3.12")
    return Row("Python", value, "ok")


def check_torch() -> Row:
    try:
        import torch
    except ImportError as err:
        return Row("torch", f"not importable ({err})", "fail", "make env")
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU"
    value = f"{torch.__version__}, {build} build, {torch.get_num_threads()} threads here (ranks run 1 each)"
    pin = next((r.split("==", 1)[1].strip() for r in (metadata.requires("pipeline_ref") or [])
                if r.replace(" ", "").startswith("torch==")), None) if _version("pipeline_ref") else None
    if pin and torch.__version__.split("+")[0] != pin:
        return Row("torch", f"{value}; the course pins {pin}", "warn", "make env")
    return Row("torch", value, "ok")


def check_mpi_library() -> Row:
    try:
        probe = _probe_mpi()
    except Exception as err:
        return Row("MPI library",
                   f"mpi4py {_version('mpi4py') or 'not installed'}: MPI does not start ({err})",
                   "fail", "make env")
    first = " ".join(probe["library"].splitlines()[0].split())
    return Row("MPI library", f"{first} (mpi4py {probe['mpi4py']})", "ok")


def check_mpiexec() -> Row:
    from pipeline_ref.launch import LaunchError, mpiexec
    try:
        return Row("mpiexec", str(mpiexec()), "ok")
    except LaunchError:
        return Row("mpiexec", f"none next to {sys.executable}", "fail", "make env")


def check_startup() -> Row:
    try:
        results, seconds = _start_ranks(2)
    except Exception as err:
        return Row("2-rank start", f"failed: {str(err).splitlines()[0]}", "fail", "make env")
    if sorted(results) != [0, 1]:
        return Row("2-rank start", f"ranks answered {results}, expected [0, 1]", "fail", "make env")
    return Row("2-rank start", f"{seconds:.1f} s for 2 ranks to start, import torch, answer and leave", "ok")


def check_cores() -> Row:
    from pipeline_ref.engine.machine import core_warning, cores
    free = cores()
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    value = f"{free} free of {os.cpu_count()}{load}; the lessons start 2 ranks, some cells {LESSON_RANKS}"
    if core_warning(LESSON_RANKS, free):
        # No command adds cores: the lessons still run, only their 4-rank timings measure the OS scheduler.
        return Row("cores", value + f": {LESSON_RANKS} ranks would share cores", "warn",
                   f"no command: time the {LESSON_RANKS}-rank cells on a machine with {LESSON_RANKS}+ free "
                   "cores")
    return Row("cores", value, "ok")


def check_cuda() -> Row:
    import torch
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return Row("CUDA", f"CUDA {torch.version.cuda}, {len(names)} GPU(s): {', '.join(names)}", "ok")
    if _gpus_present():
        cuda = torch.version.cuda
        why = "a CPU build of torch" if not cuda else f"torch built for CUDA {cuda}"
        return Row("CUDA", f"an NVIDIA driver is here but torch sees no GPU ({why})", "warn", _CUDA_TORCH)
    return Row("CUDA", "no GPU on this machine: the course runs on CPU ranks", "n/a")


def _cuda_aware_setting() -> tuple[bool | None, str]:
    from pipeline_ref.engine.message import cuda_aware
    return cuda_aware(), "message.cuda_aware()"


def _library_cuda_support() -> tuple[bool | None, str]:
    """What the MPI library says of itself: Open MPI answers MPIX_Query_cuda_support; MPICH shows its
    build."""
    try:
        probe = _probe_mpi()
    except Exception:
        return None, "the library did not start"
    if probe.get("cuda_support") is not None:
        return bool(probe["cuda_support"]), "MPI.Query_cuda_support()"
    configure = next((line for line in probe["library"].splitlines() if "configure" in line.lower()), None)
    if configure is not None:
        return "cuda" in configure.lower(), "its configure line " + (
            "names CUDA" if "cuda" in configure.lower() else "has no CUDA")
    return None, "the library does not say"


def check_cuda_aware() -> Row:
    setting, source = _cuda_aware_setting()
    library, how = _library_cuda_support()
    said = {True: "yes", False: "no", None: "unknown"}
    value = f"set {said[setting]} (PIPELINE_REF_CUDA_AWARE, {source}); library {said[library]} ({how})"
    import torch
    if not torch.cuda.is_available():
        return Row("CUDA-aware MPI", value + "; no GPU here", "n/a")
    if setting and library is False:
        return Row("CUDA-aware MPI", value + ": device pointers would reach an MPI that cannot read them",
                   "fail", "unset PIPELINE_REF_CUDA_AWARE")
    if setting and library is None:
        return Row("CUDA-aware MPI", value + ": unverified", "warn", "unset PIPELINE_REF_CUDA_AWARE")
    if not setting and library:
        return Row("CUDA-aware MPI", value + ": messages are staged through host memory needlessly", "warn",
                   "export PIPELINE_REF_CUDA_AWARE=1")
    staged = "" if setting else ": GPU messages are staged through pinned host memory"
    return Row("CUDA-aware MPI", value + staged, "ok")


def check_distributed() -> Row:
    import torch
    import torch.distributed as dist
    if not dist.is_available():
        return Row("torch.distributed", "not built into this torch", "warn", "make env")
    nccl, gloo = dist.is_nccl_available(), dist.is_gloo_available()
    value = f"gloo {'yes' if gloo else 'no'}, NCCL {'yes' if nccl else 'no'}"
    if not gloo:   # benchmarks/vs_torch.py runs torch's pipelining over gloo
        return Row("torch.distributed", value, "warn", "make env")
    if torch.cuda.is_available() and not nccl:
        return Row("torch.distributed", value + " (GPUs without NCCL)", "warn", _CUDA_TORCH)
    return Row("torch.distributed", value, "ok")


def check_transformers() -> Row:
    version = _version("transformers")
    if version is None:
        return Row("transformers", "not installed (the lessons so far run without it)", "warn",
                   "pip install transformers")
    return Row("transformers", version, "ok")


def check_kernel() -> Row:
    try:
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    except ImportError:
        return Row("Jupyter kernel", "jupyter_client is not installed", "fail", "make env")
    try:
        spec = KernelSpecManager().get_kernel_spec(KERNEL)
    except NoSuchKernel:
        return Row("Jupyter kernel", f'"{KERNEL}" is not registered', "fail", "make kernel")
    interpreter = spec.argv[0] if spec.argv else "?"
    if os.path.abspath(interpreter) != os.path.abspath(sys.executable):
        return Row("Jupyter kernel", f'"{KERNEL}" runs {interpreter}, not {sys.executable}', "warn",
                   "make kernel")
    return Row("Jupyter kernel", f'"{KERNEL}" ({spec.display_name}) runs this Python', "ok")


CHECKS = [check_python, check_torch, check_mpi_library, check_mpiexec, check_startup, check_cores, check_cuda,
          check_cuda_aware, check_distributed, check_transformers, check_kernel]


# --------------------------------------------------------------------------- the report

def run_checks(checks=None) -> list[Row]:
    """Every check's Row; a check that raises becomes a failing row naming the error, not a traceback."""
    rows = []
    for check in CHECKS if checks is None else checks:
        try:
            rows.append(check())
        except Exception as err:
            name = check.__name__.removeprefix("check_")
            rows.append(Row(name, f"the check itself failed: {type(err).__name__}: {err}", "fail",
                            "make env"))
    return rows


def exit_code(rows: list[Row]) -> int:
    return 1 if any(r.status == "fail" for r in rows) else 0


def table(rows: list[Row]) -> str:
    """check | status | value, with the fix on its own line under a row that needs one (keeps it narrow)."""
    name_w = max(len("check"), *(len(r.name) for r in rows))
    lines = [f"{'check':<{name_w}}  status  value", f"{'-' * name_w}  ------  -----"]
    for r in rows:
        lines.append(f"{r.name:<{name_w}}  {r.status:<6}  {r.value}")
        if r.fix and r.status in ("fail", "warn"):
            lines.append(" " * (name_w + 10) + f"fix: {r.fix}")
    failed = [r.name for r in rows if r.status == "fail"]
    lines.append("")
    lines.append(f"{len(failed)} check(s) fail ({', '.join(failed)}): run the fix under each."
                 if failed else "everything the course needs works.")
    return "\n".join(lines)


def add_parser(sub) -> None:
    doctor = sub.add_parser("doctor", help="what this machine offers the course, and whether each part works")
    doctor.add_argument("--json", action="store_true", help="print the rows as JSON")


def main(args=None, checks=None) -> int:
    rows = run_checks(checks)
    if args is not None and getattr(args, "json", False):
        print(json.dumps([asdict(r) for r in rows], indent=1))
    else:
        print(table(rows))
    return exit_code(rows)
