"""Real training through the pipeline: a new batch of real text per step, AdamW, bf16 and fp16 autocast.

Each pipelined run's loss curve is compared with ``one_device.train`` of the same configuration (same model,
data, microbatches, optimizer, precision and loss scale, on one process): equal to rounding in float64, within a
stated tolerance in float32 and under autocast. One launch of 2 ranks plays every run (``train.run_many``).
"""
import math

import pytest
import torch

from pipeline_ref import batches, one_device, optim, precision, text_data
from pipeline_ref.config import ConfigError, RunConfig, check_config
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
    ({"optimizer": "adamw", "checkpoint_dir": "/tmp/x"}, "need --optimizer sgd"),
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
    float32 = one_device.train(RunConfig(**{**RUNS["bf16 adamw zb-h1"].to_dict(), "autocast": None})).losses
    assert bf16 == pytest.approx(float32, rel=2e-2)   # bf16's 8-bit mantissa: ~0.4% per op, within 2% here
    assert all(math.isfinite(x) for x in bf16)


@pytest.mark.mpi
def test_fp16_overflow_skips_exactly_that_step_on_every_rank(pipelined):
    result, reference = pipelined["fp16 overflow"], one_device.train(RUNS["fp16 overflow"])
    assert result.skipped_steps == reference.skipped_steps == [2]
    assert reference.scales == [2.0 ** 16] * 3 + [2.0 ** 15]        # halved after the overflow, the same everywhere
    kept = [s for s in range(4) if s != 2]
    assert [result.losses[s] for s in kept] == pytest.approx([reference.losses[s] for s in kept], rel=1e-2)
