"""`make autograder`: the course's graded tests as a Gradescope autograder bundle.

    .venv/bin/python tools/autograder/build.py [--out out/autograder/autograder.zip]

Upload the zip as a Gradescope "zip file upload" autograder. Its top level is what Gradescope expects:

    setup.sh             installs Python and the course's packages (pyproject.toml) into /autograder/venv
    run_autograder       places the submitted exNN_*.py files, runs tests/exercises, writes results.json
    gradescope.py        those two steps in Python (placing, and Gradescope's results format)
    manifest.json        every graded test and its points (for a run that crashes before recording any)
    pyproject.toml, README.md, pipeline_ref/      the package the tests and the ranks import
    tests/conftest.py, tests/exercises/, and each tests/*.py they import
    exercises/           the stubs: what a submission is graded as where it lacks a file
    solutions/           the stubs again, not the answers: the graded tests read from solutions/ only the
                         names of the functions the course asks for, and a submission runs beside these files

The file list is found when the bundle is built (tests/exercises/* and what it imports, every exercise), so a
new exercise or graded test needs no edit here. The bundle is built from the files as they are.
"""
from __future__ import annotations

import argparse
import ast
import json
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
OUT = ROOT / "out" / "autograder" / "autograder.zip"
TOOLS = ["setup.sh", "run_autograder", "gradescope.py"]
EXECUTABLE = {"setup.sh", "run_autograder"}


def _py_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def imported_test_modules(files: list[Path]) -> set[Path]:
    """Every tests/*.py module that ``files`` import, directly or through each other (``tests.x`` imports)."""
    seen: set[Path] = set()
    todo = list(files)
    while todo:
        path = todo.pop()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name == "tests" or not name.startswith("tests."):
                    continue
                target = ROOT / (name.replace(".", "/") + ".py")
                if target.exists() and target not in seen:
                    seen.add(target)
                    todo.append(target)
    return seen


def graded_points(test_files: list[Path]) -> dict[str, float]:
    """``{"test_ex02_gpipe.py::test_x": points}`` for every test function marked ``@pytest.mark.points(n)``."""
    points = {}
    for path in test_files:
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.FunctionDef):
                continue
            for deco in node.decorator_list:
                if isinstance(deco, ast.Call) and ast.unparse(deco.func).endswith("mark.points"):
                    points[f"{path.name}::{node.name}"] = float(ast.literal_eval(deco.args[0]))
    return points


def contents() -> dict[str, bytes]:
    """The bundle: its path inside the zip -> the bytes."""
    graded = ROOT / "tests" / "exercises"
    test_files = sorted(graded.glob("test_ex*.py"))
    if not test_files:
        raise FileNotFoundError(f"no graded tests (test_ex*.py) in {graded}")
    stubs = sorted((ROOT / "exercises").glob("ex[0-9][0-9]_*.py"))
    files = _py_files(ROOT / "pipeline_ref") + [ROOT / "pyproject.toml", ROOT / "README.md"]
    tests = [ROOT / "tests" / "conftest.py"] + _py_files(graded)
    files += tests + sorted(imported_test_modules(tests) - set(tests))
    files += [ROOT / "exercises" / "__init__.py"] + stubs
    bundle = {str(p.relative_to(ROOT)): p.read_bytes() for p in files}
    bundle["solutions/__init__.py"] = b'"""The stubs, standing in for the answers: the graded tests read the API here."""\n'
    for stub in stubs:
        bundle[f"solutions/{stub.name}"] = stub.read_bytes()
    for tool in TOOLS:
        bundle[tool] = (HERE / tool).read_bytes()
    points = graded_points(test_files)
    bundle["manifest.json"] = (json.dumps({"max_score": sum(points.values()), "tests": points}, indent=1)
                               + "\n").encode()
    return bundle


def build(out: Path = OUT) -> Path:
    bundle = contents()
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(bundle):
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))   # the same files, the same zip
            info.external_attr = (0o755 if name in EXECUTABLE else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, bundle[name])
    manifest = json.loads(bundle["manifest.json"])
    print(f"autograder: {out} ({len(bundle)} files, {len(manifest['tests'])} graded tests, "
          f"{manifest['max_score']:g} points)")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    build(parser.parse_args().out)
