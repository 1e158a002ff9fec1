"""`make autograder`: the course's graded tests as a Gradescope autograder bundle.

    .venv/bin/python tools/autograder/build.py [--out out/autograder/autograder.zip]

Upload the zip as a Gradescope "zip file upload" autograder. Its top level is what Gradescope expects:

    setup.sh             installs Python, torch's CPU-only build and what grading needs into /autograder/venv
    requirements.txt     what grading needs besides torch: pyproject.toml's dependencies less the notebooks'
    run_autograder       places the submitted exNN_*.py files, runs tests/exercises, writes results.json
    gradescope.py        those two steps in Python (placing, and Gradescope's results format)
    record_each_test.py  a pytest plugin: the scores written as each test finishes (a time limit keeps them)
    manifest.json        every graded test and its points (for a run that crashes before recording any)
    README.md            for the course team: the settings to choose on Gradescope, with the measured figures
                         (measured.json, written by emulate.py); pip reads it as the package's description
    pyproject.toml, pipeline_ref/      the package the tests and the ranks import
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
import re
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
OUT = ROOT / "out" / "autograder" / "autograder.zip"
TOOLS = ["setup.sh", "run_autograder", "gradescope.py", "record_each_test.py"]
EXECUTABLE = {"setup.sh", "run_autograder"}
# pyproject.toml's dependencies that only the lessons use (Jupyter and its widgets, the notebooks' tests):
# setup.sh does not install them. torch is installed first, on its own (the CPU-only build by default).
NOT_FOR_GRADING = {"jupyter", "ipywidgets", "ipykernel", "nbval"}
MEASURED = HERE / "measured.json"
# Gradescope's defaults for an autograder (its documentation): what the settings are compared with.
DEFAULTS = {"memory_mb": 768, "minutes": 10, "cpus": 0.5}


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


def grading_requirements() -> str:
    """requirements.txt: pyproject.toml's dependencies, less the notebooks' packages and torch."""
    # Read with a pattern, not tomllib: build.py also runs on Python 3.10 (pyproject's requires-python).
    listed = re.search(r"^dependencies = \[(.*?)^\]", (ROOT / "pyproject.toml").read_text(), re.M | re.S)[1]
    deps = re.findall(r'^\s*"([^"]+)"', listed, re.M)
    name = lambda dep: re.split(r"[<>=!~\[; ]", dep, maxsplit=1)[0].lower()     # noqa: E731
    kept = [d for d in deps if name(d) not in NOT_FOR_GRADING | {"torch"}]
    head = "# Written by tools/autograder/build.py from pyproject.toml: what grading needs besides torch.\n"
    return head + "\n".join(kept) + "\n"


def settings() -> list[str]:
    """What to set on Gradescope, from the measured figures (measured.json), as lines of text."""
    if not MEASURED.exists():
        return [f"No measurement yet (run tools/autograder/emulate.py): keep Gradescope's defaults "
                f"({DEFAULTS['memory_mb']} MB, {DEFAULTS['minutes']} min, {DEFAULTS['cpus']} CPU) and check "
                f"a run."]
    measured = json.loads(MEASURED.read_text())
    reference = next(r for r in measured["runs"] if r["submission"] == "reference")
    peak = max(max(r["peak_pss_sum_mb"], r["cgroup_peak_mb"] or 0) for r in measured["runs"])
    slowest = max(r["seconds"] for r in measured["runs"])
    advice = measured["advice"]
    machine = measured["machine"]
    lines = [f"Measured ({measured['when']}; {measured['how']}; load average "
             f"{machine['load_average_before'][0]} on {machine['cores']} cores): grading the reference "
             f"answers peaks at {reference['peak_pss_sum_mb']:.0f} MB summed over its "
             f"{reference['processes_at_peak']} processes (proportional set size; the cgroup's peak, page "
             f"cache included, {reference['cgroup_peak_mb']} MB) and takes {reference['seconds']:.0f} s; the "
             f"slowest of the three submissions {slowest:.0f} s."]
    if peak > DEFAULTS["memory_mb"] * 0.85:
        lines.append(f"Set the autograder's memory to at least {advice['memory_mb']} MB (Gradescope's "
                     f"default {DEFAULTS['memory_mb']} MB is too little: the ranks would be killed).")
    if advice["cpus"] > DEFAULTS["cpus"] or slowest > DEFAULTS["minutes"] * 60 * 0.75:
        lines.append(f"Set {advice['cpus']} CPU and a timeout of at least {advice['minutes']} minutes.")
    else:
        lines.append(f"The default {DEFAULTS['cpus']} CPU and {DEFAULTS['minutes']} minutes are enough.")
    return lines


def bundle_readme() -> str:
    return (HERE / "README.bundle.md").read_text().replace("{{SETTINGS}}", "\n".join(f"- {line}"
                                                                                      for line in settings()))


def contents() -> dict[str, bytes]:
    """The bundle: its path inside the zip -> the bytes."""
    graded = ROOT / "tests" / "exercises"
    test_files = sorted(graded.glob("test_ex*.py"))
    if not test_files:
        raise FileNotFoundError(f"no graded tests (test_ex*.py) in {graded}")
    stubs = sorted((ROOT / "exercises").glob("ex[0-9][0-9]_*.py"))
    files = _py_files(ROOT / "pipeline_ref") + [ROOT / "pyproject.toml"]
    tests = [ROOT / "tests" / "conftest.py"] + _py_files(graded)
    files += tests + sorted(imported_test_modules(tests) - set(tests))
    files += [ROOT / "exercises" / "__init__.py"] + stubs
    bundle = {str(p.relative_to(ROOT)): p.read_bytes() for p in files}
    bundle["solutions/__init__.py"] = b'"""The stubs, standing in for the answers: the graded tests read the API here."""\n'
    for stub in stubs:
        bundle[f"solutions/{stub.name}"] = stub.read_bytes()
    for tool in TOOLS:
        bundle[tool] = (HERE / tool).read_bytes()
    bundle["requirements.txt"] = grading_requirements().encode()
    bundle["README.md"] = bundle_readme().encode()
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
    print("Gradescope settings (also in the bundle's README.md):\n" + "\n".join(f"  {l}" for l in settings()))
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    build(parser.parse_args().out)
