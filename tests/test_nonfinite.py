"""A NaN or inf stops the step where it appears, named; or, asked for, skips that step on every rank together."""
import math

import pytest

from pipeline_ref.config import RunConfig
from pipeline_ref.launch import LaunchError, launch


def _cfg(where: str, skip: bool, **options) -> RunConfig:
    return RunConfig(schedule="1f1b", pp=2, microbatches=2, steps=3, dtype="float64", skip_nonfinite=skip,
                     model="tests.rank_targets:nan_model", model_kwargs={"where": where, **options}, stall_timeout=30)


@pytest.mark.mpi
@pytest.mark.parametrize("where, message", [
    ("forward", "rank 1: loss is nan at F0 of step 1"),
    ("backward", "rank 1: input gradient is nan at B0 of step 1"),
])
def test_a_nan_ends_the_run_where_it_appears(where, message):
    with pytest.raises(LaunchError, match=message):
        launch(2, "pipeline_ref.train:run_rank", _cfg(where, skip=False), timeout=60)


@pytest.mark.mpi
def test_with_skipping_every_rank_skips_exactly_that_step():
    configs = [_cfg("forward", True), _cfg("backward", True), _cfg("forward", True, on_call=99)]   # the last: clean
    forward, backward, clean = launch(2, "pipeline_ref.train:run_many", configs, timeout=90)[0]
    for result in (forward, backward):
        assert result.skipped_steps == [1]
        # step 1 changed nothing, so step 2 starts from step 1's weights: its loss is the clean run's step 1 loss
        assert result.losses[0] == clean.losses[0] and result.losses[2] == pytest.approx(clean.losses[1], rel=1e-12)
    assert math.isnan(forward.losses[1]) and clean.skipped_steps == []
