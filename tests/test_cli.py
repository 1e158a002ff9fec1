"""The command line as a user runs it: starting its own ranks, and under a user's own mpiexec."""
import json
import subprocess
import sys

import pytest
import torch

from pipeline_ref import models
from pipeline_ref.config import RunConfig
from pipeline_ref.preflight import build_model
from pipeline_ref.launch import mpiexec


def _reference(model: str):
    layers, loss_fn, (inputs, targets) = build_model(RunConfig(model=model, dtype="float64"))
    return models.reference_step(layers, loss_fn, inputs, targets)


@pytest.mark.mpi
def test_run_starts_its_ranks_and_saves_grads_and_trace(tmp_path):
    grads_file, trace_file = tmp_path / "grads.pt", tmp_path / "trace.json"
    done = subprocess.run([sys.executable, "-m", "pipeline_ref", "run", "-n", "2", "--pp", "2", "--schedule", "gpipe",
                           "--microbatches", "4", "--steps", "2", "--dtype", "float64", "--model", "gpt",
                           "--save-grads", str(grads_file), "--trace", str(trace_file)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "step 2/2" in done.stdout and "utilization" in done.stdout
    # the report is the warm step's, with the cold first step labelled as the warm-up
    assert "utilization" in done.stdout.splitlines()[-3] and "(step 2; step 1, the warm-up: " in done.stdout
    loss, expected = _reference("gpt")
    saved = torch.load(grads_file)
    assert set(saved) == set(expected)
    for name in expected:
        torch.testing.assert_close(saved[name], expected[name], rtol=1e-10, atol=1e-12)
    events = [e for e in json.loads(trace_file.read_text())["traceEvents"] if e.get("ph") == "X"
              and not e.get("cat") == "wait"]
    assert len(events) == 2 * 2 * 4        # ranks x (F, B) x microbatches


@pytest.mark.mpi
def test_run_under_users_mpiexec_with_users_model(tmp_path):
    grads_file = tmp_path / "grads.pt"
    done = subprocess.run([str(mpiexec()), "-n", "2", sys.executable, "-m", "pipeline_ref", "run", "--pp", "2",
                           "--microbatches", "2", "--dtype", "float64", "--model", "tests.rank_targets:user_model",
                           "--save-grads", str(grads_file)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    _, expected = _reference("tests.rank_targets:user_model")
    saved = torch.load(grads_file)
    assert sorted(saved) == ["0.0.bias", "0.0.weight", "1.bias", "1.weight"]
    for name in expected:
        torch.testing.assert_close(saved[name], expected[name], rtol=1e-10, atol=1e-12)


def test_the_preflight_is_handed_to_the_ranks_only_when_it_pickles():
    from pipeline_ref.launch import handed_on
    from pipeline_ref.preflight import preflight
    prepared = preflight(RunConfig(model="mlp"))
    assert handed_on(prepared) is prepared
    assert handed_on(prepared._replace(loss_fn=lambda outputs, targets: outputs.sum())) is None


@pytest.mark.mpi
@pytest.mark.parametrize("picklable, builds", [(True, 1), (False, 3)])
def test_run_checks_once_in_the_parent_unless_the_model_does_not_pickle(tmp_path, picklable, builds):
    """``run -n 2`` builds (and checks) the model once, in the parent, and hands it to the ranks; a model that
    pickle refuses is built again by each rank, and the run still works."""
    log = tmp_path / "builds.log"
    done = subprocess.run([sys.executable, "-m", "pipeline_ref", "run", "-n", "2", "--pp", "2", "--microbatches",
                           "2", "--steps", "1", "--model", "tests.rank_targets:counted_model", "--model-kwargs",
                           json.dumps({"log": str(log), "picklable": picklable})],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "step 1/1" in done.stdout
    assert len(set(log.read_text().split())) == builds      # the processes that built the model


def test_simulate_command_prints_the_schedule_and_utilization(tmp_path):
    from pipeline_ref.__main__ import main
    import io, contextlib
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["simulate", "--schedule", "1f1b", "--pp", "4", "--microbatches", "4",
                     "--plot", str(tmp_path / "g.png")]) == 0
    text = buffer.getvalue()
    assert "rank 3: F0 B0 F1 B1" in text.replace("  ", " ")
    assert f"utilization {4 / (4 + 4 - 1):.4f}" in text     # simulated, against m/(m+p-1)
    assert (tmp_path / "g.png").stat().st_size > 0


def test_the_report_is_the_median_of_the_warm_steps():
    from pipeline_ref.results import RunResult
    from pipeline_ref.sim.trace import Trace
    result = RunResult(config=RunConfig(), losses=[1.0] * 4, trace=Trace(num_ranks=2),
                       step_seconds=[0.5, 0.03, 0.01, 0.02], step_utilization=[0.3, 0.8, 0.7, 0.9], memory=[])
    assert result.warm_utilization == 0.8 and result.warm_step_seconds == 0.02      # step 1 left out
    one = RunResult(config=RunConfig(), losses=[1.0], trace=Trace(num_ranks=2), step_seconds=[0.5],
                    step_utilization=[0.3], memory=[])
    assert one.warm_utilization == 0.3
