"""The Gradescope bundle (`make autograder`): unpacked into a temporary /autograder, it grades submissions in
Gradescope's results.json format: the stubs at zero, and the solutions with a SyntaxError in one file and one
wrong function at the total less exactly those tests' points (every other reference answer at full marks).

    .venv/bin/python -m pytest -q tests/test_autograder.py

run_autograder runs as Gradescope would run it, with AUTOGRADER_ROOT pointing at the temporary folder and
AUTOGRADER_PYTHON at this environment (setup.sh, which installs packages, and Gradescope's limits are
emulated by tools/autograder/emulate.py, which also grades the untouched solutions; its figures are
committed). The two submissions are graded at the same time: the stubs start no MPI rank, so they cost little.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tools.autograder import build as bundle_build
from tools.autograder import emulate, gradescope

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return bundle_build.build(tmp_path_factory.mktemp("bundle") / "autograder.zip")


def _unpack(bundle: Path, root: Path, submitted: list[Path], layout: str) -> Path:
    """An /autograder folder: source/ (the zip), submission/ (``submitted``, flat or under a repository copy)."""
    with zipfile.ZipFile(bundle) as zf:
        zf.extractall(root / "source")
        for info in zf.infolist():             # zipfile drops the mode bits; Gradescope keeps them
            mode = info.external_attr >> 16
            if mode:
                os.chmod(root / "source" / info.filename, mode)
    target = root / "submission" / ("repo/exercises" if layout == "repository" else "")
    target.mkdir(parents=True)
    for path in submitted:
        shutil.copy(path, target / path.name)
    return root


def test_the_bundle_has_gradescopes_layout_and_no_answers(bundle):
    with zipfile.ZipFile(bundle) as zf:
        names = set(zf.namelist())
        modes = {i.filename: i.external_attr >> 16 for i in zf.infolist()}
        manifest = json.loads(zf.read("manifest.json"))
        for stub in (ROOT / "exercises").glob("ex[0-9][0-9]_*.py"):
            shipped = zf.read(f"solutions/{stub.name}")
            assert shipped == stub.read_bytes() != (ROOT / "solutions" / stub.name).read_bytes(), (
                f"solutions/{stub.name} in the bundle should be the stub, not the answer")
    assert {"setup.sh", "run_autograder"} <= names, "Gradescope wants both at the top of the zip"
    assert all(modes[n] & stat.S_IXUSR for n in ("setup.sh", "run_autograder"))
    graded = sorted(p.name for p in (ROOT / "tests" / "exercises").glob("test_ex*.py"))
    assert graded and all(f"tests/exercises/{name}" in names for name in graded)
    assert "tests/one_device.py" in names, "a module the graded tests import was left out"
    assert {n.split("::")[0] for n in manifest["tests"]} == set(graded)
    assert manifest["max_score"] == sum(manifest["tests"].values()) > 0


@pytest.mark.mpi
def test_a_broken_file_costs_only_its_own_points_and_stubs_score_zero(bundle, tmp_path):
    """Two submissions graded at once: the solutions with a file that does not parse and one wrong function (in
    a copy of the repository), and the stubs (flat). The first scores the total less exactly those tests, so
    every other reference answer scores full marks; emulate.py grades the untouched solutions too."""
    stubs = sorted((ROOT / "exercises").glob("ex[0-9][0-9]_*.py"))
    edited = emulate.broken_submission(tmp_path / "edited")
    runs = {"broken": _unpack(bundle, tmp_path / "broken", edited, "repository"),
            "stubs": _unpack(bundle, tmp_path / "stubs", stubs, "flat")}
    env = {**os.environ, "AUTOGRADER_PYTHON": sys.executable}
    started = {name: subprocess.Popen(["bash", str(root / "source" / "run_autograder")],
                                      env={**env, "AUTOGRADER_ROOT": str(root)}, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
               for name, root in runs.items()}
    results = {}
    for name, process in started.items():
        out, _ = process.communicate(timeout=600)
        path = runs[name] / "results" / "results.json"
        assert path.exists(), f"{name}: run_autograder wrote no results.json:\n{out[-3000:]}"
        results[name] = json.loads(path.read_text())
    manifest = json.loads((runs["stubs"] / "source" / "manifest.json").read_text())
    broken, zero = results["broken"], results["stubs"]
    assert zero["score"] == 0 and zero["max_score"] == manifest["max_score"], zero["output"]
    for result in (broken, zero):
        assert {t["number"] for t in result["tests"]} == set(manifest["tests"]), "one entry per graded test"
        assert all(t["visibility"] == "visible" and t["output"] for t in result["tests"])
        assert all(t["name"].startswith("Exercise ") and "::" not in t["name"] for t in result["tests"])
        assert "Points per exercise:" in result["output"]
    # A stub's test says which exercise is missing, in the stub's own words.
    assert all(t["output"].startswith("FAIL") for t in zero["tests"])
    assert sum("Exercise" in t["output"] for t in zero["tests"]) >= len(zero["tests"]) // 2, zero["tests"][:3]
    assert "taken from repo/exercises/" in broken["output"] and "taken from ex" in zero["output"]
    # Exercise 5's tests all 0 with the SyntaxError shown, exercise 9's tests of the wrong function 0, every
    # other test (the rank-based ones of the other exercises too) its full points.
    lost = {t["number"] for t in broken["tests"] if t["score"] < t["max_score"]}
    expected = emulate.points_lost(manifest["tests"])
    log = (runs["broken"] / "results" / "pytest.log").read_text()[-3000:]
    assert lost == expected, f"lost {sorted(lost)}, not {sorted(expected)}\n{broken['output'][-3000:]}\n{log}"
    assert broken["score"] == manifest["max_score"] - sum(manifest["tests"][k] for k in expected)
    assert all(t["output"] == "PASS" for t in broken["tests"] if t["number"] not in expected)
    assert all("SyntaxError" in t["output"] for t in broken["tests"] if t["number"].startswith("test_ex05"))
    assert f"{emulate.SYNTAX_ERROR[0]}: DOES NOT IMPORT" in broken["output"]


def test_a_run_stopped_by_the_time_limit_keeps_the_points_it_recorded(tmp_path):
    """pytest stopped (no record, or the records written so far): the tests recorded keep their points, the
    others get 0 and say why; results.json has every test of the manifest."""
    (tmp_path / "pytest.log").write_text("... killed\n")
    (tmp_path / "placed.txt").write_text("ex02_gpipe.py: taken from ex02_gpipe.py\n")
    (tmp_path / "manifest.json").write_bytes(bundle_build.contents()["manifest.json"])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    data = gradescope.results(tmp_path / "missing.json", tmp_path / "pytest.log", tmp_path / "placed.txt",
                              status=124, seconds=540, manifest=tmp_path / "manifest.json")
    assert data["score"] == 0 and data["max_score"] == manifest["max_score"]
    assert len(data["tests"]) == len(manifest["tests"])
    assert "time limit" in data["output"] and "killed" in data["output"]
    first, second = list(manifest["tests"].items())[:2]
    recorded = [{"name": first[0], "score": first[1], "max_score": first[1], "output": ""},
                {"name": second[0], "score": 0.0, "max_score": second[1], "output": "AssertionError: 3 != 4"}]
    (tmp_path / "partial.json").write_text(json.dumps({"tests": recorded, "partial": True}))
    data = gradescope.results(tmp_path / "partial.json", tmp_path / "pytest.log", tmp_path / "placed.txt",
                              status=124, seconds=540, manifest=tmp_path / "manifest.json")
    by_key = {t["number"]: t for t in data["tests"]}
    assert data["score"] == first[1] and by_key[first[0]]["output"] == "PASS"
    assert "3 != 4" in by_key[second[0]]["output"]
    assert sum("before this test finished" in t["output"] for t in data["tests"]) == len(manifest["tests"]) - 2
    assert "  <-" in data["output"], "the per-exercise table marks the exercises that lost points"


def test_a_module_that_does_not_import_is_blamed_on_its_own_file(tmp_path):
    """A SyntaxError, or an exception raised at import (also when another exercise imports that file), is the
    fault of the file it comes from; the others import."""
    exercises = tmp_path / "exercises"
    exercises.mkdir()
    (exercises / "__init__.py").write_text("")
    (exercises / "ex00_raises.py").write_text("VALUE = 1\nraise RuntimeError('top-level code failed')\n")
    (exercises / "ex01_imports_it.py").write_text("from .ex00_raises import VALUE\n")
    (exercises / "ex02_syntax.py").write_text("def f(:\n    pass\n")
    (exercises / "ex03_fine.py").write_text("import math\n")
    names = sorted(p.name for p in exercises.glob("ex*.py"))
    broken = gradescope.import_errors(exercises, names)
    assert sorted(broken) == ["ex00_raises.py", "ex02_syntax.py"], broken
    assert "top-level code failed" in broken["ex00_raises.py"] and "SyntaxError" in broken["ex02_syntax.py"]


def test_placing_a_submission(tmp_path):
    exercises = tmp_path / "source" / "exercises"
    exercises.mkdir(parents=True)
    for name in ("ex02_gpipe.py", "ex03_1f1b.py"):
        (exercises / name).write_text("stub\n")
    sub = tmp_path / "submission"
    (sub / "repo" / "exercises").mkdir(parents=True)
    (sub / "repo" / "solutions").mkdir()
    (sub / "repo" / "exercises" / "ex02_gpipe.py").write_text("MINE = 1\n")
    (sub / "repo" / "solutions" / "ex02_gpipe.py").write_text("not mine\n")
    (sub / "ex99_extra.py").write_text("?\n")
    lines = gradescope.place(sub, exercises)
    assert (exercises / "ex02_gpipe.py").read_text() == "MINE = 1\n"
    assert (exercises / "ex03_1f1b.py").read_text() == "stub\n"
    assert any("ex03_1f1b.py: not in the submission" in line for line in lines)
    assert any("ex99_extra.py" in line and "ignored" in line for line in lines)
