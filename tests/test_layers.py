"""The shape of pipeline_ref: folders are layers, each imports only from the layers below it. Pure, seconds.

    .venv/bin/python -m pytest -q tests/test_layers.py

Every import is read from the source (function-level ones too, and ``from pipeline_ref import x``), so a
module that reaches up the stack inside a function is caught as surely as one that does at its top.
"""
import ast
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline_ref"

# Bottom to top; a layer may import itself and every layer listed before it, never one after it.
LAYERS = [
    ("schedules", "actions, schedules, replay: pure data, no torch process state"),
    ("sim", "the simulator, theory, traces and their pictures, the cluster cost model: no processes"),
    ("faults", "watchdog, non-finite checks, checkpoint files, the rank entry"),
    ("engine", "one rank, one step: executor, stage, messages and transports, reduce, device, optim"),
    ("models", "the zoo, Hugging Face models, data, one-process references"),
    ("front", "a model to stages: split, cut, partition, profiling, memory plan"),
    ("run", "the package root: config (a leaf), preflight, train, launch, results, measure"),
    ("tools", "demo, bench, doctor, memory, plan, export: around the library, never imported by it"),
    ("__main__", "the command line"),
]
RANK = {name: index for index, (name, _) in enumerate(LAYERS)}


def modules(package: Path) -> dict[str, Path]:
    """Every module of the package by dotted name ('pipeline_ref.sim.trace'; a folder by its __init__)."""
    found = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def layer_of(name: str) -> str:
    parts = name.split(".")
    if len(parts) == 1 or parts[1] == "__init__":
        return "run"
    if parts[1] == "__main__":
        return "__main__"
    return parts[1] if len(parts) > 2 or parts[1] in RANK else "run"


def imports_of(name: str, path: Path, known: dict) -> dict[str, int]:
    """The package's modules that one module imports, each with the line of its first import."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:       # pipeline_ref.sim.trace.Trace -> pipeline_ref.sim.trace
                target = target.rpartition(".")[0]
            if target and target != name:
                found.setdefault(target, node.lineno)
    return found


def graph(package: Path) -> dict[str, dict[str, int]]:
    known = modules(package)
    return {name: imports_of(name, path, known) for name, path in sorted(known.items())}


def upward_imports(package: Path) -> list[str]:
    """Every import of a layer above the importer's own, as 'file:line: a (layer) imports b (layer)'."""
    breaches = []
    for name, targets in graph(package).items():
        for target, line in sorted(targets.items()):
            if RANK[layer_of(target)] > RANK[layer_of(name)]:
                breaches.append(f"{modules(package)[name].relative_to(package.parent)}:{line}: {name} "
                                f"({layer_of(name)}) imports {target} ({layer_of(target)})")
    return breaches


def test_every_module_sits_in_a_known_layer():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(RANK) - {"run", "__main__"}, "a folder of pipeline_ref that is no layer, or a lost one"


def test_no_import_reaches_up_a_layer():
    assert upward_imports(PACKAGE) == []


def test_a_planted_upward_import_is_caught(tmp_path):
    """The check itself can fail: an import of a tool inside a function of the geometry is found."""
    copy = tmp_path / "pipeline_ref"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    geometry = copy / "schedules" / "geometry.py"
    geometry.write_text(geometry.read_text() + "\n\ndef _planted():\n    from pipeline_ref.tools import demo\n")
    breaches = upward_imports(copy)
    assert len(breaches) == 1 and "pipeline_ref.schedules.geometry (schedules) imports pipeline_ref.tools.demo " \
        "(tools)" in breaches[0], breaches


def test_config_is_a_leaf_and_the_reference_never_imports_student_code():
    assert graph(PACKAGE)["pipeline_ref.config"] == {}, "config imports nothing of the package"
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in ("exercises", "solutions") for n in names), path


def test_the_import_graph_has_no_cycle():
    imports = graph(PACKAGE)
    state: dict[str, str] = {}

    def visit(module, path):
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", f"import cycle: {' -> '.join(path + [module])}"
        state[module] = "open"
        for other in sorted(imports[module]):
            visit(other, path + [module])
        state[module] = "done"

    for module in sorted(imports):
        visit(module, [])
    assert imports["pipeline_ref.schedules.geometry"] == {}, "geometry imports nothing else: all builds on it"


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
            importlib.import_module(name)
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
    names = [n for n in modules(PACKAGE) if not n.endswith(("__main__", "_rank"))]
    done = subprocess.run([sys.executable, "-c", ALONE, *names], capture_output=True, text=True, timeout=300,
                          cwd=PACKAGE.parent)
    assert done.returncode == 0, f"modules that do not import on their own:\n{done.stdout}\n{done.stderr[-3000:]}"


def test_every_file_line_and_function_is_short():
    """No file over 300 lines, no line over 110 characters, no function over 60 lines: each reads at once."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        where = path.relative_to(PACKAGE.parent)
        if len(text.splitlines()) > 300:
            long.append(f"{where}: {len(text.splitlines())} lines")
        long += [f"{where}:{n}: {len(line)} characters" for n, line in enumerate(text.splitlines(), 1)
                 if len(line) > 110]
        long += [f"{where}:{node.lineno}: {node.name} has {node.end_lineno - node.lineno + 1} lines"
                 for node in ast.walk(ast.parse(text)) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                 and node.end_lineno - node.lineno + 1 > 60]
    assert long == [], "\n".join(long)
