"""The GPU path: CUDA tensors through MPI, one device per rank, timing by CUDA events, memory in the trace.

Skipped without CUDA. With one GPU, two ranks share it: enough to prove correctness,
not to measure speed-ups (benchmarks/ records what a GPU session measured).
"""
import pytest
import torch

from pipeline_ref import models
from pipeline_ref.config import RunConfig
from pipeline_ref.preflight import build_model
from pipeline_ref.launch import launch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

GPT = {"dim": 32, "heads": 4, "blocks": 2, "seq_len": 16, "batch": 8, "vocab": 64}


def test_cuda_tensors_cross_ranks_unchanged():
    sent, received = launch(2, "tests.rank_targets:cuda_round_trip", timeout=120)
    for a, b in zip(sent, received):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a, b)


@pytest.mark.parametrize("schedule, chunks", [("gpipe", 1), ("1f1b", 1), ("interleaved", 2), ("zb-h1", 1), ("zb-h2", 1),
                                             ("zbv", 1)])
def test_cuda_pipeline_equals_one_device(schedule, chunks):
    cfg = RunConfig(schedule=schedule, pp=2, microbatches=4, chunks=chunks, model="gpt_tied", model_kwargs=GPT,
                    dtype="float64", device="cuda", collect_grads=True, sync_sends=True)
    result = launch(2, "pipeline_ref.train:run_rank", cfg, timeout=180)[0]
    layers, loss_fn, (inputs, targets) = build_model(cfg)
    loss, grads = models.reference_step(layers, loss_fn, inputs, targets)
    assert result.losses[0] == pytest.approx(loss, rel=1e-9)
    for name, grad in grads.items():
        torch.testing.assert_close(result.grads[name], grad, rtol=1e-9, atol=1e-11, msg=name)
    trace = result.trace
    assert trace.peak_memory_bytes and all(b > 0 for b in trace.peak_memory_bytes)
    assert all(e.end > e.start for e in trace.events)
