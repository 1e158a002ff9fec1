"""The pipeline's geometry (pipeline_ref.geometry) and the shape of the package around it. Pure, milliseconds."""
import ast
import copy
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_ref import schedules
from pipeline_ref.geometry import LAYOUTS, Action, Pipeline, Place, Schedule, ScheduleError

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline_ref"


def test_dependency_follows_the_pipeline():
    pipe = Pipeline(3)
    assert pipe.dependency(Action("F", 4), 0) is None                      # first stage reads the input
    assert pipe.dependency(Action("F", 4), 2) == (1, Action("F", 4))
    assert pipe.dependency(Action("B", 4), 2) is None                      # last stage owns the loss
    assert pipe.dependency(Action("B", 4), 0) == (1, Action("B", 4))
    assert pipe.dependency(Action("I", 4), 1) == (2, Action("B", 4))
    assert pipe.dependency(Action("W", 4), 1) is None                      # local: needs only its own I


def test_receives_and_sends_are_the_two_neighbours():
    pipe = Pipeline(3)
    assert pipe.receives(Action("F", 0), 1) == Place(0, 0) and pipe.sends(Action("F", 0), 1) == Place(2, 0)
    assert pipe.receives(Action("B", 0), 1) == Place(2, 0) and pipe.sends(Action("B", 0), 1) == Place(0, 0)
    assert pipe.sends(Action("F", 0), 2) is None and pipe.sends(Action("I", 0), 0) is None
    assert pipe.sends(Action("W", 0), 1) is None and pipe.receives(Action("W", 0), 1) is None
    assert pipe.loss_rank == 2 and pipe.is_first(0) and pipe.is_last(2) and not pipe.is_last(1)


def test_dependency_across_chunks():
    # 2 ranks x 2 chunks: rank 0 chunk 1 is virtual stage 2, fed by rank 1 chunk 0 (virtual stage 1)
    pipe = Pipeline(2, 2)
    assert pipe.dependency(Action("F", 0, 1), 0) == (1, Action("F", 0, 0))
    assert pipe.dependency(Action("B", 0, 0), 1) == (0, Action("B", 0, 1))
    assert pipe.dependency(Action("B", 0, 1), 1) is None                   # virtual stage 3 is last
    assert pipe.sends(Action("F", 0, 0), 1) == Place(0, 1)                 # round the ranks again
    assert pipe.loss_rank == 1


@pytest.mark.parametrize("layout", LAYOUTS)
def test_virtual_stage_and_place_are_inverse(layout):
    for num_stages in range(1, 5):
        pipe = Pipeline(num_stages, 3, layout)
        seen = set()
        for rank in range(num_stages):
            for chunk in range(3):
                v = pipe.virtual_stage(rank, chunk)
                assert pipe.place(v) == (rank, chunk)
                seen.add(v)
        assert seen == set(range(3 * num_stages))


def test_v_layout_goes_down_and_back_up():
    # 3 ranks x 2 chunks in a V: rank 0 holds stages 0 and 5, rank 2 holds the neighbours 2 and 3
    pipe = Pipeline(3, 2, "v")
    assert [[pipe.virtual_stage(r, c) for c in (0, 1)] for r in range(3)] == [[0, 5], [1, 4], [2, 3]]
    assert pipe.dependency(Action("F", 0, 1), 2) == (2, Action("F", 0, 0))   # same rank
    assert pipe.dependency(Action("F", 0, 1), 1) == (2, Action("F", 0, 1))
    assert pipe.dependency(Action("I", 0, 1), 0) is None                     # stage 5 is last
    assert pipe.dependency(Action("I", 0, 0), 0) == (1, Action("B", 0, 0))
    assert pipe.loss_rank == 0


def test_unknown_layout_is_refused():
    with pytest.raises(ScheduleError, match="unknown layout 'w'"):
        Pipeline(2, 2, "w")


def test_schedule_is_immutable_and_keeps_its_layout_when_sliced_copied_or_pickled():
    sched = schedules.build("zbv", 3, 5)
    assert isinstance(sched, Schedule) and sched.layout == "v"
    for other in (sched[:2], copy.copy(sched), copy.deepcopy(sched), pickle.loads(pickle.dumps(sched))):
        assert other.layout == "v"
    assert sched[:2].pipeline == Pipeline(2, 2, "v")
    with pytest.raises(TypeError):
        sched[0] = ()
    with pytest.raises(AttributeError):
        sched[0].append(Action("F", 0))
    # the same actions laid out otherwise are another schedule; a plain list of lists compares by its actions
    assert sched != Schedule(sched, "interleaved") and sched == [list(actions) for actions in sched]


def test_every_generator_returns_a_schedule():
    for name in schedules.GENERATORS:
        sched = schedules.build(name, 2, 4)
        assert isinstance(sched, Schedule), name
        assert sched.pipeline.num_chunks == schedules.num_chunks(sched)


def _imports(path: Path) -> set[str]:
    """The pipeline_ref modules a module imports (relative or absolute), at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
                found.update(n.split(".")[0] for n in names)
            elif node.module and node.module.startswith("pipeline_ref"):
                rest = node.module.split(".")[1:]
                found.update(rest[:1] or [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("pipeline_ref."))
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    return found & modules


def test_the_import_graph_has_no_cycle():
    graph = {p.stem: _imports(p) - {p.stem} for p in PACKAGE.glob("*.py")}
    state: dict[str, str] = {}

    def visit(module, path):
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", f"import cycle: {' -> '.join(path + [module])}"
        state[module] = "open"
        for other in sorted(graph[module]):
            visit(other, path + [module])
        state[module] = "done"

    for module in sorted(graph):
        visit(module, [])
    assert graph["geometry"] == set(), "geometry imports nothing else: everyone else builds on it"


# One interpreter imports the third-party libraries once, then forks a fresh child per module: each child starts with
# no pipeline_ref module loaded, so an import that works only after another's fails there, as in a new interpreter.
ALONE = """
import importlib, os, sys, traceback
import numpy, torch  # shared by every child; pipeline_ref itself is imported only after the fork
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module("pipeline_ref." + name)
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
    if os.waitpid(pid, 0)[1]:
        failed.append(name)
print("failed:", " ".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_module_imports_on_its_own():
    names = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__main__", "_rank"))
    done = subprocess.run([sys.executable, "-c", ALONE, *names], capture_output=True, text=True, timeout=300,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0, f"modules that do not import on their own:\n{done.stdout}\n{done.stderr[-3000:]}"


def test_every_module_is_short():
    for path in PACKAGE.glob("*.py"):
        lines = len(path.read_text().splitlines())
        assert lines < 300, f"{path.name} has {lines} lines; the course keeps each module readable in one sitting"
