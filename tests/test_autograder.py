"""The Gradescope bundle (`make autograder`): unpacked into a temporary /autograder, it grades a submission of the
reference solutions at full marks and one of the stubs at zero, in Gradescope's results.json format.

    .venv/bin/python -m pytest -q tests/test_autograder.py

run_autograder runs as Gradescope would run it, with AUTOGRADER_ROOT pointing at the temporary folder and
AUTOGRADER_PYTHON at this environment (setup.sh, which installs packages, is not run here). The two
submissions are graded at the same time: the stubs start no MPI rank, so the second costs little.
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
from tools.autograder import gradescope

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
def test_solutions_score_full_marks_and_stubs_zero(bundle, tmp_path):
    solutions = sorted((ROOT / "solutions").glob("ex[0-9][0-9]_*.py"))
    stubs = sorted((ROOT / "exercises").glob("ex[0-9][0-9]_*.py"))
    runs = {"solutions": _unpack(bundle, tmp_path / "solutions", solutions, "repository"),
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
    full, zero = results["solutions"], results["stubs"]
    log = (runs["solutions"] / "results" / "pytest.log").read_text()[-3000:]
    assert full["score"] == full["max_score"] == manifest["max_score"], f"solutions: {full['output']}\n{log}"
    assert zero["score"] == 0 and zero["max_score"] == manifest["max_score"], zero["output"]
    for result in (full, zero):
        assert {t["name"] for t in result["tests"]} == set(manifest["tests"]), "one entry per graded test"
        assert all(t["visibility"] == "visible" and t["output"] for t in result["tests"])
    assert all(t["output"] == "PASS" for t in full["tests"])
    # A stub's test says which exercise is missing, in the stub's own words.
    assert all(t["output"].startswith("FAIL") for t in zero["tests"])
    assert sum("Exercise" in t["output"] for t in zero["tests"]) >= len(zero["tests"]) // 2, zero["tests"][:3]
    assert "taken from repo/exercises/" in full["output"] and "taken from ex" in zero["output"]


def test_a_run_that_records_nothing_still_gets_a_results_file(tmp_path):
    """pytest stopped by the time limit (no --grade-json record): every test of the manifest at 0, and why."""
    (tmp_path / "pytest.log").write_text("... killed\n")
    (tmp_path / "placed.txt").write_text("ex02_gpipe.py: taken from ex02_gpipe.py\n")
    (tmp_path / "manifest.json").write_bytes(bundle_build.contents()["manifest.json"])
    data = gradescope.results(tmp_path / "missing.json", tmp_path / "pytest.log", tmp_path / "placed.txt",
                              status=124, seconds=1800, manifest=tmp_path / "manifest.json")
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert data["score"] == 0 and data["max_score"] == manifest["max_score"]
    assert len(data["tests"]) == len(manifest["tests"])
    assert "time limit" in data["output"] and "killed" in data["output"]


def test_placing_a_submission(tmp_path):
    exercises = tmp_path / "source" / "exercises"
    exercises.mkdir(parents=True)
    for name in ("ex02_gpipe.py", "ex03_1f1b.py"):
        (exercises / name).write_text("stub\n")
    sub = tmp_path / "submission"
    (sub / "repo" / "exercises").mkdir(parents=True)
    (sub / "repo" / "solutions").mkdir()
    (sub / "repo" / "exercises" / "ex02_gpipe.py").write_text("mine\n")
    (sub / "repo" / "solutions" / "ex02_gpipe.py").write_text("not mine\n")
    (sub / "ex99_extra.py").write_text("?\n")
    lines = gradescope.place(sub, exercises)
    assert (exercises / "ex02_gpipe.py").read_text() == "mine\n"
    assert (exercises / "ex03_1f1b.py").read_text() == "stub\n"
    assert any("ex03_1f1b.py: not in the submission" in line for line in lines)
    assert any("ex99_extra.py" in line and "ignored" in line for line in lines)
