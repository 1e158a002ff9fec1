"""How the grader takes a student's module: its own work only, and never stuck in an endless loop.

    refuse_borrowed(path)            ValueError if the file imports pipeline_ref's (or the solutions') answers
    timed(module)                    the module, each public function limited to CPU_SECONDS of CPU time

*Borrowed answers.* An exercise that imports ``pipeline_ref.schedules.gpipe`` (or ``solutions``) passes
every test and teaches nothing, so it gets no points. Read from the source (the ranks' exercises import
mpi4py, which the pytest process never does): an exercise may import from ``pipeline_ref`` only the
types the stubs name (``BORROWABLE``), and no import machinery (``importlib``, ``__import__``) at all.
Also at run time: a public function must be defined in its own file.

*Endless loops.* A pure-Python loop that never ends would hold the test until pytest-timeout's 300 s.
``timed`` arms a CPU-time timer (``ITIMER_PROF``, SIGPROF: pytest-timeout owns SIGALRM) around each
call; a function still running after ``CPU_SECONDS`` of CPU ends with ``TimeoutError`` naming it and
its arguments. CPU time, not wall time: a loaded machine does not make a correct answer time out.
The expiry is a BaseException inside the student's code, so ``except Exception`` cannot swallow it.
"""
from __future__ import annotations

import ast
import functools
import inspect
import signal
import threading
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CPU_SECONDS = 5.0
BORROWABLE = {"Action", "Schedule", "ScheduleError", "Stage"}     # types, not answers
FORBIDDEN_TOP = {"solutions", "exercises", "importlib"}


def refuse_borrowed(path: Path) -> None:
    """Raise ValueError naming the line if the file at ``path`` borrows an answer instead of writing it."""
    __tracebackhide__ = True
    path = Path(path)
    tree = ast.parse(path.read_text(), filename=str(path))
    where = f"{path.parent.name}/{path.name}"
    forbidden = FORBIDDEN_TOP - {path.parent.name}      # the file's own package may be imported absolutely
    for node in ast.walk(tree):
        found = None
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top == "pipeline_ref" or top in forbidden:
                    found = f"imports {alias.name}"
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            top = node.module.split(".")[0]
            if top in forbidden:
                found = f"imports from {node.module}"
            elif top == "pipeline_ref":
                taken = [a.name for a in node.names if a.name not in BORROWABLE]
                if taken:
                    found = f"imports {', '.join(taken)} from {node.module}"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "__import__":
            found = "calls __import__"
        if found:
            raise ValueError(
                f"{where} line {node.lineno} {found}: no points for an answer taken from pipeline_ref or the "
                f"solutions; write it yourself (from pipeline_ref you may import only {', '.join(sorted(BORROWABLE))})")


class _Expired(BaseException):
    """Raised inside the student's code by the timer; turned into TimeoutError once out of it."""


def _describe_call(name: str, args, kwargs) -> str:
    def short(value) -> str:
        text = repr(value)
        return text if len(text) <= 40 else type(value).__name__
    parts = [short(a) for a in args] + [f"{k}={short(v)}" for k, v in kwargs.items()]
    return f"{name}({', '.join(parts)})"


_active = threading.local()


def limit(function, name: str, seconds: float = CPU_SECONDS):
    """``function``, ended with TimeoutError after ``seconds`` of CPU time (main thread; not nested)."""
    @functools.wraps(function)
    def call(*args, **kwargs):
        if threading.current_thread() is not threading.main_thread() or getattr(_active, "on", False):
            return function(*args, **kwargs)

        def expired(signum, frame):
            raise _Expired()
        previous = signal.signal(signal.SIGPROF, expired)
        _active.on = True
        signal.setitimer(signal.ITIMER_PROF, seconds)
        try:
            return function(*args, **kwargs)
        except _Expired:
            raise TimeoutError(f"your {_describe_call(name, args, kwargs)} was still running after {seconds:g} s "
                               f"of CPU time: an endless loop?") from None
        finally:
            signal.setitimer(signal.ITIMER_PROF, 0)
            signal.signal(signal.SIGPROF, previous)
            _active.on = False
    return call


def api(module_name: str) -> list[str]:
    """The functions the course asks for in ``module_name`` (exNN_topic): the solution's public functions."""
    tree = ast.parse((ROOT / "solutions" / f"{module_name}.py").read_text())
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")]


def timed(module: types.ModuleType, seconds: float = CPU_SECONDS) -> types.SimpleNamespace:
    """A stand-in for ``module`` whose public functions are :func:`limit` ed; its other names as they are.

    Raises ValueError if a function the course asks for was not written in the module itself
    (``gpipe = schedules.gpipe``, a ``functools.partial``, ...).
    """
    __tracebackhide__ = True
    short = module.__name__.split(".")[-1]
    for name in api(short):
        value = getattr(module, name, None)
        if not inspect.isfunction(value) or value.__module__ != module.__name__:
            origin = getattr(value, "__module__", None) or type(value).__name__
            raise ValueError(f"{short}.{name} comes from {origin}, not from {short}.py: no points for an answer "
                             f"taken from elsewhere; write it in {short}.py yourself")
    names = {}
    for name, value in vars(module).items():
        if inspect.isfunction(value) and not name.startswith("_") and value.__module__ == module.__name__:
            value = limit(value, f"{short}.{name}", seconds)
        names[name] = value
    return types.SimpleNamespace(**names)
