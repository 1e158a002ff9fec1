"""Pipeline x data parallel, and tied weights: still equal to one device with the whole global batch.

One launch of 4 ranks plays every (pp, dp) grid with each schedule, on the tiny
GPT with and without its embedding tied to its output head; then a few SGD steps
on each grid, after which every replica's parameters must equal each other and
the one-process run.
"""
import pytest
import torch

from pipeline_ref import models
from pipeline_ref.config import RunConfig
from pipeline_ref.preflight import build_model
from pipeline_ref.launch import launch
from tests.one_device import assert_equals_one_device, reference

GRIDS = [(1, 2), (2, 1), (2, 2), (4, 1)]
GPT = {"dim": 16, "heads": 2, "blocks": 2, "seq_len": 8, "batch": 12, "vocab": 32}
STEP_CONFIGS = [RunConfig(schedule=s, pp=pp, dp=dp, microbatches=m, model=model, model_kwargs=GPT,
                          dtype="float64", collect_grads=True, stall_timeout=60)
                for pp, dp in GRIDS for s in ("naive", "gpipe", "1f1b") for model in ("gpt", "gpt_tied")
                for m in (2, 3)]
TRAIN_CONFIGS = [RunConfig(schedule="1f1b", pp=pp, dp=dp, microbatches=2, model="gpt_tied", model_kwargs=GPT,
                           dtype="float64", steps=3, lr=0.1, collect_params=True, overlap_allreduce=overlap,
                           stall_timeout=60)
                 for pp, dp in GRIDS for overlap in (False, True)]


def _id(cfg):
    return (f"{cfg.model}-{cfg.schedule}-pp{cfg.pp}-dp{cfg.dp}-m{cfg.microbatches}"
            + (f"-steps{cfg.steps}" if cfg.steps > 1 else "") + ("-overlap" if cfg.overlap_allreduce else ""))


@pytest.fixture(scope="module")
def results():
    configs = STEP_CONFIGS + TRAIN_CONFIGS
    ran = launch(4, "pipeline_ref.train:run_many", configs, timeout=240)[0]
    return {_id(cfg): r for cfg, r in zip(configs, ran)}


def _one_device(model: str, steps: int = 1, lr: float = 0.0):
    layers, loss_fn, (inputs, targets) = build_model(RunConfig(model=model, model_kwargs=GPT, dtype="float64"))
    named = dict(torch.nn.Sequential(*layers).named_parameters())
    for _ in range(steps):
        loss, grads = models.reference_step(layers, loss_fn, inputs, targets)
        with torch.no_grad():
            for name, grad in grads.items():
                named[name] -= lr * grad
    return loss, grads, {n: p.detach().clone() for n, p in named.items()}


@pytest.mark.mpi
@pytest.mark.parametrize("cfg", STEP_CONFIGS, ids=_id)
def test_step_equals_one_device(cfg, results):
    loss, grads, _ = _one_device(cfg.model)
    assert_equals_one_device(results[_id(cfg)], loss, grads)


@pytest.mark.mpi
def test_tied_weight_is_found_from_the_model(results):
    assert results["gpt_tied-1f1b-pp2-dp1-m2"].tied == [("0.token.weight", [0, 1])]
    assert results["gpt-1f1b-pp2-dp1-m2"].tied == []
    assert results["gpt_tied-1f1b-pp1-dp2-m2"].tied == []      # one stage holds both uses


@pytest.mark.mpi
@pytest.mark.parametrize("cfg", TRAIN_CONFIGS, ids=_id)
def test_replicas_stay_identical_and_equal_one_device(cfg, results):
    _, _, expected = _one_device(cfg.model, steps=cfg.steps, lr=cfg.lr)
    per_rank = results[_id(cfg)].params
    assert len(per_rank) == cfg.pp * cfg.dp
    seen = set()
    for params in per_rank:
        for name, value in params.items():
            seen.add(name)
            torch.testing.assert_close(value, expected[name], rtol=1e-10, atol=1e-12, msg=name)
    assert seen == set(expected)
