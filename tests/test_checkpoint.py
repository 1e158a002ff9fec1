"""Checkpoint and resume: per-layer files, atomic, loadable by another number of stages, equal to a run that never stopped."""
import json

import pytest
import torch

from pipeline_ref import checkpoint
from pipeline_ref.config import RunConfig
from pipeline_ref.launch import launch

MODEL = {"depth": 8, "width": 8, "batch": 16}


def _cfg(pp: int, steps: int, **options) -> RunConfig:
    options = {"model_kwargs": MODEL, **options}
    return RunConfig(schedule="1f1b", pp=pp, microbatches=4, steps=steps, dtype="float64", collect_params=True,
                     stall_timeout=60, **options)


def _params(result) -> dict:
    """Every parameter after the run, by name (a tied or replicated one once)."""
    return {name: value for per_rank in result.params if per_rank for name, value in per_rank.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    two, four = tmp_path_factory.mktemp("two_stages"), tmp_path_factory.mktemp("four_stages")
    configs = [_cfg(2, 5),                                                   # never stops
               _cfg(2, 2, checkpoint_dir=str(two)),                          # stops after step 2 ...
               _cfg(2, 5, resume_from=str(two)),                             # ... and is resumed
               _cfg(4, 5, resume_from=str(two)),                             # 2 -> 4 stages
               _cfg(4, 3, checkpoint_dir=str(four), checkpoint_every=3),     # 4 stages, saved at step 3
               _cfg(2, 5, resume_from=str(four))]                            # 4 -> 2 stages
    return dict(zip(["straight", "first", "resumed", "two_to_four", "four", "four_to_two"],
                    launch(4, "pipeline_ref.train:run_many", configs, timeout=180)[0]))


@pytest.mark.mpi
def test_a_resumed_run_equals_one_that_never_stopped(runs):
    straight, first, resumed = runs["straight"], runs["first"], runs["resumed"]
    assert resumed.first_step == 2 and len(resumed.losses) == 3
    assert first.losses + resumed.losses == straight.losses          # float64, bit for bit: the same arithmetic
    for name, value in _params(straight).items():
        assert torch.equal(_params(resumed)[name], value), name


@pytest.mark.mpi
@pytest.mark.parametrize("name, first_step", [("two_to_four", 2), ("four_to_two", 3)])
def test_a_checkpoint_loads_into_another_number_of_stages(runs, name, first_step):
    straight, resumed = runs["straight"], runs[name]
    assert resumed.first_step == first_step
    assert resumed.losses == pytest.approx(straight.losses[first_step:], rel=1e-12)
    for key, value in _params(straight).items():
        torch.testing.assert_close(_params(resumed)[key], value, rtol=1e-10, atol=1e-12)


@pytest.mark.mpi
def test_a_run_that_crashed_resumes_where_its_last_checkpoint_was(tmp_path):
    from pipeline_ref.launch import LaunchError
    crashing = dict(model="tests.rank_targets:crashing_mlp", model_kwargs={"crash_on_call": 14})
    # Call 1 of the last layer agrees shapes; 4 microbatches a step: call 14 is in step 3 (0-based), so steps
    # 0-2 are saved and the crash comes mid-step, after the gradients of step 3 have started.
    with pytest.raises(LaunchError, match="trap sprung on purpose"):
        launch(2, "pipeline_ref.train:run_rank", _cfg(2, 5, checkpoint_dir=str(tmp_path), **crashing), timeout=60)
    assert checkpoint.latest(tmp_path)[1]["step"] == 3
    clean = dict(model="tests.rank_targets:crashing_mlp", model_kwargs={})
    straight, resumed = launch(2, "pipeline_ref.train:run_many",
                               [_cfg(2, 5, **clean), _cfg(2, 5, resume_from=str(tmp_path), **clean)], timeout=60)[0]
    assert resumed.first_step == 3 and resumed.losses == straight.losses[3:]
    for name, value in _params(straight).items():
        assert torch.equal(_params(resumed)[name], value), name


def test_an_unfinished_step_never_loads(tmp_path):
    layers = [torch.nn.Linear(2, 2) for _ in range(2)]
    checkpoint.save_layers(tmp_path, 1, dict(enumerate(layers)))
    checkpoint.commit(tmp_path, 1, {"num_layers": 2})
    saved = {k: v.clone() for k, v in layers[0].state_dict().items()}
    # A crash while step 2 was written: its layers (one of them half-written, under a temporary name) but no marker.
    with torch.no_grad():
        layers[0].weight.add_(1.0)
    checkpoint.save_layers(tmp_path, 2, {0: layers[0]})
    (checkpoint.step_folder(tmp_path, 2) / ".layer-001.pt.tmp-123").write_bytes(b"half")
    folder, meta = checkpoint.latest(tmp_path)
    assert folder.name == "step-000001" and meta["step"] == 1
    (tmp_path / checkpoint.LATEST).unlink()                          # even without the pointer
    assert checkpoint.latest(tmp_path)[0].name == "step-000001"
    step, _ = checkpoint.load_layers(tmp_path, layers, [0])
    assert step == 1 and torch.equal(layers[0].weight, saved["weight"])
    with pytest.raises(ValueError, match="has 2 layers, the model 3"):
        checkpoint.load_layers(tmp_path, layers + [torch.nn.Linear(2, 2)], [0])
    assert json.loads((checkpoint.step_folder(tmp_path, 1) / "complete.json").read_text())["num_layers"] == 2


def test_no_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no complete checkpoint"):
        checkpoint.latest(tmp_path)
