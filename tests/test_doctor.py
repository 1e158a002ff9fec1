"""`python -m pipeline_ref doctor`: every row present, failing rows carry their fix and the exit code, the CLI.

All pure (the MPI library and the rank start are replaced) except the one `mpi` test, which starts two ranks.
"""
import contextlib
import io
import json
import re
from pathlib import Path

import pytest

from pipeline_ref import launch
from pipeline_ref.tools import doctor
from pipeline_ref.tools.doctor import Row

ROWS = ["Python", "torch", "MPI library", "mpiexec", "2-rank start", "cores", "CUDA", "CUDA-aware MPI",
        "torch.distributed", "transformers", "Jupyter kernel"]
MPICH = {"mpi4py": "4.1.2", "library": "MPICH Version:      5.0.2\nMPICH configure: --with-device=ch4:ofi",
         "cuda_support": None}


@pytest.fixture
def no_processes(monkeypatch):
    """The two checks that start processes, answered as a working machine would."""
    monkeypatch.setattr(doctor, "_probe_mpi", lambda: MPICH)
    monkeypatch.setattr(doctor, "_start_ranks", lambda num_ranks=2: (list(range(num_ranks)), 1.5))


def _by_name(rows):
    return {r.name: r for r in rows}


def test_every_row_is_present_with_a_status_and_fixes_where_needed(no_processes):
    rows = doctor.run_checks()
    assert [r.name for r in rows] == ROWS
    for row in rows:
        assert row.status in doctor.STATUSES and row.value
        assert row.status not in ("fail", "warn") or row.fix, row
    found = _by_name(rows)
    assert found["MPI library"] == Row("MPI library", "MPICH Version: 5.0.2 (mpi4py 4.1.2)", "ok")
    assert found["2-rank start"].status == "ok" and found["2-rank start"].value.startswith("1.5 s")


def test_missing_mpiexec_fails_both_mpi_rows_with_make_env(monkeypatch):
    def missing():
        raise launch.LaunchError("no mpiexec next to python")
    monkeypatch.setattr(launch, "mpiexec", missing)    # launch() asks it before starting anything
    rows = _by_name(doctor.run_checks([doctor.check_python, doctor.check_mpiexec, doctor.check_startup]))
    assert rows["mpiexec"].status == rows["2-rank start"].status == "fail"
    assert rows["mpiexec"].fix == rows["2-rank start"].fix == "make env"
    text = doctor.table(list(rows.values()))
    assert re.search(r"^mpiexec +fail +none next to .*\n +fix: make env$", text, re.M), text
    assert doctor.exit_code(list(rows.values())) == 1
    assert doctor.exit_code([rows["Python"]]) == 0


def test_unregistered_kernel_fails_with_make_kernel(monkeypatch):
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    def none(self, name):
        raise NoSuchKernel(name)
    monkeypatch.setattr(KernelSpecManager, "get_kernel_spec", none)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = doctor.main(checks=[doctor.check_python, doctor.check_kernel])
    assert code == 1
    assert '"pipeline-course" is not registered' in out.getvalue() and "fix: make kernel" in out.getvalue()
    assert "1 check(s) fail (Jupyter kernel)" in out.getvalue()


def test_kernel_registered_for_this_python_or_another(monkeypatch, tmp_path):
    import sys
    spec = tmp_path / "kernels" / doctor.KERNEL / "kernel.json"
    spec.parent.mkdir(parents=True)
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path))       # searched before every other kernel folder
    spec.write_text(json.dumps({"argv": ["/elsewhere/bin/python", "-m", "ipykernel_launcher"],
                                "display_name": "Pipeline course (.venv)", "language": "python"}))
    assert doctor.check_kernel().status == "warn" and doctor.check_kernel().fix == "make kernel"
    spec.write_text(json.dumps({"argv": [sys.executable, "-m", "ipykernel_launcher"],
                                "display_name": "Pipeline course (.venv)", "language": "python"}))
    assert doctor.check_kernel().status == "ok"


def test_cuda_aware_is_decided_from_the_setting_and_the_library(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(doctor, "_probe_mpi", lambda: MPICH)
    monkeypatch.setenv("PIPELINE_REF_CUDA_AWARE", "1")
    row = doctor.check_cuda_aware()
    assert (row.status, row.fix) == ("fail", "unset PIPELINE_REF_CUDA_AWARE")
    assert "set yes" in row.value and "library no (its configure line has no CUDA)" in row.value
    monkeypatch.delenv("PIPELINE_REF_CUDA_AWARE")
    assert doctor.check_cuda_aware().status == "ok"                   # staged through host memory
    monkeypatch.setattr(doctor, "_probe_mpi", lambda: {**MPICH, "cuda_support": True})   # Open MPI's answer
    row = doctor.check_cuda_aware()
    assert (row.status, row.fix) == ("warn", "export PIPELINE_REF_CUDA_AWARE=1")
    assert "MPI.Query_cuda_support()" in row.value


def test_a_check_that_raises_is_a_failing_row():
    def check_broken():
        raise RuntimeError("boom")
    rows = doctor.run_checks([doctor.check_python, check_broken])
    assert rows[1].name == "broken" and rows[1].status == "fail" and "boom" in rows[1].value
    assert doctor.exit_code(rows) == 1


def test_cli_prints_the_table_and_json(no_processes):
    from pipeline_ref.__main__ import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["doctor"])
    lines = out.getvalue().splitlines()
    assert lines[0].split() == ["check", "status", "value"]
    assert [name for name in ROWS if not any(line.startswith(name + " ") for line in lines)] == []
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["doctor", "--json"]) == code
    rows = json.loads(out.getvalue())
    assert [r["name"] for r in rows] == ROWS
    assert code == (1 if any(r["status"] == "fail" for r in rows) else 0)


def test_lesson_ranks_is_the_most_any_lesson_starts():
    root = Path(__file__).resolve().parents[1] / "lessons"
    counts = {int(n) for nb in root.glob("*.ipynb") for n in re.findall(r"launch\((\d+),", nb.read_text())}
    assert max(counts) == doctor.LESSON_RANKS


@pytest.mark.mpi
def test_the_mpi_rows_work_here_for_real():
    rows = _by_name(doctor.run_checks([doctor.check_mpi_library, doctor.check_mpiexec, doctor.check_startup]))
    assert {r.status for r in rows.values()} == {"ok"}, rows
    assert rows["MPI library"].value.startswith(("MPICH", "Open MPI")) and "mpi4py" in rows["MPI library"].value
