"""The main test: a pipelined step equals the unsplit model's step on one process.

Also with activation checkpointing, and with the parameter and time partitions.

One launch of 4 ranks plays every configuration (schedule x stages x microbatches
x model, asynchronous and synchronous sends), each on the first `pp` ranks;
pytest then compares each result with models.reference_step in this process.
"""
import pytest
import torch

from pipeline_ref import models
from pipeline_ref.config import RunConfig
from pipeline_ref.preflight import build_model
from pipeline_ref.launch import launch
from tests.one_device import assert_equals_one_device, reference

# microbatches per depth: fewer than the stages, equal, and not a multiple of them
MICROBATCHES = {1: [1, 3], 2: [1, 2, 3], 3: [2, 3, 4], 4: [2, 4, 6]}
MODELS = {"mlp": {"depth": 6, "width": 8, "batch": 12}, "gpt": {"dim": 16, "heads": 2, "blocks": 2,
                                                              "seq_len": 8, "batch": 12, "vocab": 32}}
CONFIGS = [RunConfig(schedule=s, pp=p, microbatches=m, model=model, model_kwargs=kwargs, dtype="float64",
                     collect_grads=True, sync_sends=sync, stall_timeout=60)
           for sync in (False, True) for model, kwargs in MODELS.items() for s in ("naive", "gpipe", "1f1b")
           for p, ms in MICROBATCHES.items() for m in ms]
# Activation checkpointing and the other partitions change where and when, never what is computed.
CONFIGS += [RunConfig(schedule=s, pp=p, microbatches=m, model=model, model_kwargs=kwargs, dtype="float64",
                      collect_grads=True, checkpoint=True, stall_timeout=60)
            for model, kwargs in MODELS.items() for s in ("gpipe", "1f1b") for p, m in ((2, 3), (4, 6))]
CONFIGS += [RunConfig(schedule="1f1b", pp=3, microbatches=4, model=model, model_kwargs=kwargs, dtype="float64",
                      collect_grads=True, partition=partition, stall_timeout=60)
            for model, kwargs in MODELS.items() for partition in ("parameters", "time")]
# Targets flattened per token split along their own first dimension, as torch.distributed.pipelining splits them.
FLAT = {"dim": 16, "heads": 2, "blocks": 2, "seq_len": 8, "batch": 8, "vocab": 32}
CONFIGS += [RunConfig(schedule="1f1b", pp=2, dp=dp, microbatches=2, model="tests.rank_targets:gpt_flat_targets",
                      model_kwargs=FLAT, dtype="float64", collect_grads=True, stall_timeout=60) for dp in (1, 2)]


def _id(cfg):
    return (f"{cfg.model}-{cfg.schedule}-pp{cfg.pp}-m{cfg.microbatches}" + (f"-dp{cfg.dp}" if cfg.dp > 1 else "") + ("-ssend" if cfg.sync_sends else "")
            + ("-checkpoint" if cfg.checkpoint else "") + (f"-{cfg.partition}" if cfg.partition != "uniform" else ""))


@pytest.fixture(scope="module")
def results():
    ran = launch(4, "pipeline_ref.train:run_many", CONFIGS, timeout=240)[0]
    return {_id(cfg): r for cfg, r in zip(CONFIGS, ran)}


@pytest.fixture(scope="module")
def references():
    cache = {}
    for cfg in CONFIGS:
        if cfg.model not in cache:
            cache[cfg.model] = reference(cfg)
    return cache


def test_targets_that_cannot_split_say_how_to_reshape_them():
    from pipeline_ref.config import ConfigError
    from pipeline_ref.preflight import check_fits
    with pytest.raises(ConfigError, match=r"targets' first dimension \(10\) does not split into 1 replica\(s\) x 4 "
                                          r"equal microbatches.*targets.view\(8, -1\)"):
        check_fits(RunConfig(pp=2, microbatches=4), num_layers=4, batch_size=8, target_size=10)
    check_fits(RunConfig(pp=2, microbatches=4), num_layers=4, batch_size=8, target_size=8 * 16)   # per token: fine


@pytest.mark.mpi
@pytest.mark.parametrize("cfg", CONFIGS, ids=_id)
def test_pipelined_step_equals_one_device(cfg, results, references):
    assert_equals_one_device(results[_id(cfg)], *references[cfg.model])


@pytest.mark.mpi
def test_measured_stash_matches_schedule(results):
    """GPipe holds every microbatch on every stage; 1F1B at most num_stages - stage."""
    for cfg in CONFIGS:
        trace = results[_id(cfg)].trace
        m, p = cfg.microbatches, cfg.pp
        expected = {"naive": [1] * p, "gpipe": [m] * p,
                    "1f1b": [min(p - s, m) for s in range(p)]}[cfg.schedule]
        assert trace.peak_stashed == expected, _id(cfg)
        assert all(b > 0 for b in trace.peak_stashed_bytes), _id(cfg)


@pytest.mark.mpi
def test_checkpointing_stashes_only_stage_inputs(results):
    """Same number of stashed microbatches, far fewer bytes: only each stage's input is kept."""
    for model in MODELS:
        plain = results[f"{model}-1f1b-pp2-m3"].trace
        recompute = results[f"{model}-1f1b-pp2-m3-checkpoint"].trace
        assert recompute.peak_stashed == plain.peak_stashed
        for kept, full in zip(recompute.peak_stashed_bytes, plain.peak_stashed_bytes):
            assert 0 < kept < full / 2, (model, recompute.peak_stashed_bytes, plain.peak_stashed_bytes)
