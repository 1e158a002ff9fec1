"""The torch.distributed transport (gloo on CPU) gives what MPI gives: the one-device step.

One launch of 4 ranks plays the correctness subset over gloo: every schedule on 2 stages, the
deep ones on 3, pipeline x data parallel (dp 2), all on the tiny GPT with its embedding tied to its
output head (the tied all-reduce and the data-parallel one stay on MPI). A second pass runs part of
it with ``PIPELINE_REF_TORCH_ORDERED=1``: messages matched by order within a channel, as NCCL
matches them, over the per-channel groups the NCCL path builds, so that path runs on a CPU too.

    .venv/bin/python -m pytest -q tests/test_torch_transport.py
"""
import os

import pytest

from pipeline_ref.config import RunConfig
from pipeline_ref.launch import launch
from tests.one_device import assert_equals_one_device, reference

GPT = {"dim": 16, "heads": 2, "blocks": 4, "seq_len": 8, "batch": 12, "vocab": 32}
SCHEDULES = ("naive", "gpipe", "1f1b", "interleaved", "zb-h1", "zb-h2", "zbv")


def _cfg(schedule, pp, dp=1, microbatches=None):
    chunks = 2 if schedule == "interleaved" else 1
    m = microbatches or (pp if schedule == "interleaved" else 4 if dp == 1 else 2)
    return RunConfig(schedule=schedule, pp=pp, dp=dp, microbatches=m, chunks=chunks, model="gpt_tied",
                     model_kwargs=GPT, dtype="float64", collect_grads=True, transport="torch", stall_timeout=60)


BY_TAG = ([_cfg(s, 2) for s in SCHEDULES] + [_cfg(s, 3) for s in ("1f1b", "zbv")]
          + [_cfg(s, 2, dp=2) for s in ("1f1b", "zb-h1")])
BY_ORDER = [_cfg("1f1b", 3), _cfg("interleaved", 2, microbatches=4), _cfg("zbv", 2), _cfg("1f1b", 2, dp=2)]
RUNS = [(cfg, False) for cfg in BY_TAG] + [(cfg, True) for cfg in BY_ORDER]


def _id(run):
    cfg, ordered = run
    return f"{cfg.schedule}-pp{cfg.pp}-dp{cfg.dp}-m{cfg.microbatches}" + ("-ordered" if ordered else "")


def run_matrix(comm, runs):
    """On every rank: each run in turn (the ordered ones with NCCL's matching rule); then whether a
    process group outlived its run (it must not: the next run opens its own)."""
    import torch.distributed as dist
    from pipeline_ref.train import run_many
    results = []
    for cfg, ordered in runs:
        os.environ["PIPELINE_REF_TORCH_ORDERED"] = "1" if ordered else "0"
        results.append(run_many(comm, [cfg])[0])
    return results, dist.is_initialized()


@pytest.fixture(scope="module")
def ran():
    results, left_open = launch(4, "tests.test_torch_transport:run_matrix", RUNS, timeout=240)[0]
    return dict(zip(map(_id, RUNS), results)), left_open


@pytest.mark.mpi
@pytest.mark.parametrize("run", RUNS, ids=_id)
def test_gloo_step_equals_one_device(run, ran):
    cfg, _ = run
    result = ran[0][_id(run)]
    assert result.config.transport == "torch"
    loss, grads = reference(cfg)
    assert_equals_one_device(result, loss, grads, where=_id(run))
    # The tied weight's all-reduce ran between the first and last stage (ZB-V holds both on rank 0).
    assert result.tied == ([] if cfg.schedule == "zbv" else [("0.token.weight", [0, cfg.pp - 1])])


@pytest.mark.mpi
def test_every_run_closes_its_process_group(ran):
    assert ran[1] is False
