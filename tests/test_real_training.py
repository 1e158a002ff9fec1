"""Real training through the pipeline: a new batch of real text per step, AdamW, bf16 and fp16 autocast.

Each pipelined run's loss curve is compared with ``one_device.train`` of the same configuration (same model,
data, microbatches, optimizer, precision and loss scale, on one process): equal to rounding in float64, within a
stated tolerance in float32 and under autocast. One launch of 2 ranks plays every run (``train.run_many``).
"""
import dataclasses
import math

import pytest
import torch

from pipeline_ref import one_device
from pipeline_ref.engine import optim, precision
from pipeline_ref.models import batches, text_data
from pipeline_ref.config import ConfigError, RunConfig
from pipeline_ref.preflight import check_config
from pipeline_ref.launch import launch

TEXT = {"dim": 32, "heads": 4, "blocks": 2, "seq_len": 32, "batch": 8, "max_bytes": 200_000}


def test_text_batches_are_real_deterministic_and_shifted():
    corpus = text_data.Corpus.from_stdlib(max_bytes=50_000)
    data = text_data.Batches(corpus, batch=4, seq_len=16, seed=3)
    x, y = data(5)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.long
    assert torch.equal(x, text_data.Batches(corpus, batch=4, seq_len=16, seed=3)(5)[0])   # the same bytes anywhere
    assert not torch.equal(x, data(6)[0]) and not torch.equal(x, data.validation(5)[0])
    text = bytes(x[0].tolist())
    assert text.isascii() and b"\n" in bytes(torch.cat([x.flatten(), y.flatten()]).tolist())   # Python source
    assert text[1:] == bytes(y[0, :-1].tolist())                                       # targets = next byte
    assert len(corpus.validation) == pytest.approx(5000, abs=1)


def test_per_step_data_stands_as_its_first_batch():
    data = text_data.Batches(text_data.Corpus.from_stdlib(max_bytes=20_000), batch=2, seq_len=8)
    batch = batches.first_batch(data)
    inputs, targets = batch
    assert torch.equal(inputs, data(0)[0]) and torch.equal(batch.at(3)[1], data(3)[1])
    fixed = (torch.zeros(2), torch.ones(2))
    assert batches.first_batch(fixed) is fixed


def test_loss_scaler_halves_on_overflow_and_grows_after_good_steps():
    scaler = precision.LossScaler(scale=8.0, growth_interval=3)
    scaler.update(skipped=True)
    assert scaler.scale == 4.0
    for _ in range(3):
        scaler.update(skipped=False)
    assert scaler.scale == 8.0
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 8.0)
    scaler.unscale([p])
    assert torch.equal(p.grad, torch.ones(2))


def test_adamw_counts_its_state_and_sgd_has_none():
    p = torch.nn.Parameter(torch.ones(3, 4))
    p.grad = torch.ones(3, 4)
    adam, sgd = optim.make("adamw", [p], lr=0.1), optim.make("sgd", [p], lr=0.1)
    assert sgd.state_bytes() == 0
    adam.step()
    assert adam.state_bytes() >= 2 * p.numel() * p.element_size()       # two moments per parameter
    with pytest.raises(ValueError, match="unknown optimizer"):
        optim.make("lamb", [p], lr=0.1)


@pytest.mark.parametrize("change, message", [
    ({"optimizer": "adam"}, "unknown optimizer"),
    ({"autocast": "fp8"}, "unknown autocast"),
    ({"autocast": "bfloat16", "dtype": "float64"}, "float32 master weights"),
    ({"schedule": "pipedream", "checkpoint_dir": "/tmp/x"}, "no point where a checkpoint is exact"),
])
def test_bad_precision_or_optimizer_is_refused_before_any_rank(change, message):
    with pytest.raises(ConfigError, match=message):
        check_config(RunConfig(**change))


RUNS = {
    "float64 sgd 1f1b": RunConfig(schedule="1f1b", model="text_gpt", model_kwargs=TEXT, dtype="float64", steps=4,
                                  lr=0.5),
    "float32 adamw gpipe": RunConfig(schedule="gpipe", model="text_gpt", model_kwargs=TEXT, steps=4,
                                     optimizer="adamw", lr=3e-3),
    "bf16 adamw zb-h1": RunConfig(schedule="zb-h1", model="text_gpt", model_kwargs=TEXT, steps=4, optimizer="adamw",
                                  lr=3e-3, autocast="bfloat16"),
    "fp16 overflow": RunConfig(schedule="1f1b", model="tests.rank_targets:overflow_linear", steps=4, lr=0.01,
                               autocast="float16", sync_sends=True),
}


@pytest.fixture(scope="module")
def pipelined():
    return dict(zip(RUNS, launch(2, "pipeline_ref.train:run_many", list(RUNS.values()), timeout=240)[0]))


@pytest.mark.mpi
def test_real_text_float64_curve_equals_one_device(pipelined):
    expected = one_device.train(RUNS["float64 sgd 1f1b"]).losses
    assert pipelined["float64 sgd 1f1b"].losses == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert len(set(expected)) == len(expected)       # a new batch each step: no two losses alike


@pytest.mark.mpi
def test_adamw_float32_curve_equals_one_device_and_counts_optimizer_memory(pipelined):
    result = pipelined["float32 adamw gpipe"]
    assert result.losses == pytest.approx(one_device.train(RUNS["float32 adamw gpipe"]).losses, rel=1e-5)
    for memory in result.memory:                     # AdamW keeps two moments: at least twice the parameters
        assert memory.optimizer >= 2 * memory.parameters > 0


@pytest.mark.mpi
def test_bf16_tracks_one_device_and_float32(pipelined):
    bf16 = pipelined["bf16 adamw zb-h1"].losses
    assert bf16 == pytest.approx(one_device.train(RUNS["bf16 adamw zb-h1"]).losses, rel=2e-2)
    float32 = one_device.train(dataclasses.replace(RUNS["bf16 adamw zb-h1"], autocast=None)).losses
    assert bf16 == pytest.approx(float32, rel=2e-2)   # bf16's 8-bit mantissa: ~0.4% per op, within 2% here
    assert all(math.isfinite(x) for x in bf16)


@pytest.mark.mpi
def test_fp16_overflow_skips_exactly_that_step_on_every_rank(pipelined):
    result, reference = pipelined["fp16 overflow"], one_device.train(RUNS["fp16 overflow"])
    assert result.skipped_steps == reference.skipped_steps == [2]
    assert reference.scales == [2.0 ** 16] * 3 + [2.0 ** 15]        # halved after the overflow, the same everywhere
    kept = [s for s in range(4) if s != 2]
    assert [result.losses[s] for s in kept] == pytest.approx([reference.losses[s] for s in kept], rel=1e-2)


@pytest.mark.mpi
def test_memory_plan_equals_what_the_run_held(pipelined):
    from pipeline_ref.front import memory_plan
    from pipeline_ref.preflight import preflight
    cfg = RUNS["float32 adamw gpipe"]
    layers, loss_fn, batch, schedule, _ = preflight(cfg)
    planned = memory_plan.plan(layers, loss_fn, batch, schedule, cfg.microbatches, cfg.optimizer)
    for rank, (plan, held) in enumerate(zip(planned, pipelined["float32 adamw gpipe"].memory)):
        assert (plan.parameters, plan.gradients, plan.optimizer) == (held.parameters, held.gradients, held.optimizer)
        assert plan.peak_stashed_bytes == held.peak_stashed_bytes, f"rank {rank}"


def test_a_run_over_its_memory_budget_is_refused_saying_by_how_much():
    from pipeline_ref.preflight import preflight
    cfg = RunConfig(model="text_gpt", model_kwargs=TEXT, optimizer="adamw", memory_budget=0.0001)
    with pytest.raises(ConfigError, match=r"rank \d would hold .* GB over the budget of 0.0001 GB per rank"):
        preflight(cfg)
    preflight(RunConfig(model="text_gpt", model_kwargs=TEXT, optimizer="adamw", memory_budget=1.0))   # fits


def test_largest_fitting_finds_the_boundary_of_a_monotone_test():
    from pipeline_ref.front.memory_plan import largest_fitting
    for boundary in (1, 2, 3, 7, 8, 100, 511):
        assert largest_fitting(lambda n: n <= boundary, limit=512) == boundary
    assert largest_fitting(lambda n: False) is None
    assert largest_fitting(lambda n: True, limit=64) == 64


def test_more_stages_fit_a_larger_model():
    from pipeline_ref.front import memory_plan
    from pipeline_ref.preflight import build_model, make_schedule

    def total(stages):
        cfg = RunConfig(pp=stages, model="text_gpt", model_kwargs={**TEXT, "blocks": 4}, optimizer="adamw")
        layers, loss_fn, batch = build_model(cfg)
        ranks = memory_plan.plan(layers, loss_fn, batch, make_schedule(cfg), cfg.microbatches, "adamw")
        return max(r.parameters + r.gradients + r.optimizer for r in ranks)
    assert total(1) > total(2) > total(4)      # the model's state is divided; 1F1B's activations are not (lesson 03)


def test_memory_command_prints_each_depth_and_the_largest_model(capsys):
    from pipeline_ref.__main__ import main
    options = '{"dim": 32, "heads": 4, "blocks": 2, "seq_len": 32, "batch": 8, "max_bytes": 20000}'
    assert main(["memory", "--memory-budget", "0.004", "--model-kwargs", options, "--stages", "1", "2"]) == 0
    out = capsys.readouterr().out
    assert "1 stage(s): " in out and "2 stage(s): " in out and "parameters" in out
    sizes = [int(line.rsplit("= ", 1)[1]) for line in out.splitlines() if "stage(s): blocks = " in line]
    assert len(sizes) == 2 and sizes[1] >= sizes[0] >= 1       # a second stage never fits fewer blocks
