"""The cluster cost model (pipeline_ref/sim/cluster.py): shapes against their papers' parameter counts, the
FLOP and activation formulas against their closed forms, messages and all-reduces against their definitions.

    .venv/bin/python -m pytest -q tests/test_cluster.py
"""
import math

import pytest

from pipeline_ref.sim import cluster

# Narayanan et al. 2021, Table 1: each model's parameter count (billions) as published.
MEGATRON_PARAMETERS = {"megatron-1.7b": 1.7, "megatron-3.6b": 3.6, "megatron-7.5b": 7.5, "megatron-18b": 18.4,
                       "megatron-39b": 39.1, "megatron-76b": 76.1, "megatron-145b": 145.6,
                       "megatron-310b": 310.1, "megatron-530b": 529.6, "megatron-1t": 1008.0}


@pytest.mark.parametrize("key,billions", sorted(MEGATRON_PARAMETERS.items()))
def test_megatron_shapes_have_their_published_parameter_counts(key, billions):
    # The paper's own formula gives 1.65 for the first row, which it prints rounded to 1.7: hence 3%.
    assert cluster.MODELS[key].num_parameters() / 1e9 == pytest.approx(billions, rel=0.03)


def test_gpt3_and_llama3_shapes_have_their_names_parameter_counts():
    assert cluster.MODELS["gpt3-175b"].num_parameters() / 1e9 == pytest.approx(175, rel=0.01)
    assert cluster.MODELS["llama3-70b"].num_parameters() / 1e9 == pytest.approx(70.6, rel=0.01)
    assert cluster.MODELS["llama3-405b"].num_parameters() / 1e9 == pytest.approx(405.9, rel=0.01)


@pytest.mark.parametrize("key", ["megatron-1.7b", "gpt3-175b", "megatron-1t"])
def test_gpt_layer_flops_are_megatrons_formula(key):
    m = cluster.MODELS[key]
    b, s, h = 3, m.seq_len, m.hidden
    assert m.layer_forward_flops(b) == pytest.approx(24 * b * s * h * h * (1 + s / (6 * h)), rel=1e-12)
    # A step's model FLOPs with the recomputed forward are Megatron's 96 B s l h^2 (1 + s/6h + V/16lh).
    recomputed = m.model_flops(b) + m.num_layers * m.layer_forward_flops(b)
    expected = 96 * b * s * m.num_layers * h * h * (1 + s / (6 * h) + m.vocab / (16 * m.num_layers * h))
    assert recomputed == pytest.approx(expected, rel=1e-12)


def test_activation_bytes_follow_korthikanti():
    m = cluster.MODELS["gpt3-175b"]
    s, h, a = m.seq_len, m.hidden, m.heads
    unsplit = s * h * (34 + 5 * a * s / h)
    assert m.layer_activation_bytes(1) == pytest.approx(unsplit)
    assert m.layer_activation_bytes(2, tp=8, sequence_parallel=True) == pytest.approx(2 * unsplit / 8)
    # Tensor parallelism alone leaves 10 s b h of every layer unsplit (layer norms, dropouts, residuals).
    assert m.layer_activation_bytes(1, tp=8) == pytest.approx(s * h * (10 + 24 / 8 + 5 * a * s / (8 * h)))
    assert m.layer_activation_bytes(1, tp=8, recompute="full") == pytest.approx(2 * s * h)
    assert m.layer_activation_bytes(1, tp=8, sequence_parallel=True, recompute="selective") == \
        pytest.approx(34 * s * h / 8)
    with pytest.raises(ValueError, match="recompute must be"):
        m.layer_activation_bytes(1, recompute="some")


def test_a_bad_shape_is_refused_with_its_reason():
    with pytest.raises(ValueError, match="not a multiple of heads"):
        cluster.Transformer("odd", 2, 100, 3, 128, 1000)
    with pytest.raises(ValueError, match="num_layers must be a positive integer"):
        cluster.Transformer("none", 0, 128, 2, 128, 1000)


def test_every_device_and_link_number_has_a_source():
    for table in (cluster.DEVICES, cluster.NVLINK, cluster.NETWORK):
        for key, entry in table.items():
            for source in entry.source.split("+"):
                assert source in cluster.SOURCES, f"{key}: no source {source!r}"
                assert "http" in cluster.SOURCES[source]
    assert set(cluster.NVLINK) == set(cluster.NETWORK) == set(cluster.DEVICES)


def test_messages_and_allreduce_cost_latency_plus_bytes():
    link = cluster.Link("test", bandwidth=1e9, latency=1e-6, source="nccl")
    assert cluster.message_seconds(0, link) == pytest.approx(1e-6)
    assert cluster.message_seconds(1e9, link) == pytest.approx(1 + 1e-6)
    assert cluster.allreduce_seconds(1e9, 1, link) == 0.0
    for n in (2, 4, 8):     # a ring moves 2 (n - 1) / n of the bytes through each link, in 2 (n - 1) steps
        assert cluster.allreduce_seconds(1e9, n, link) == pytest.approx(2 * (n - 1) / n + 2 * (n - 1) * 1e-6)


def test_compute_time_and_optimizer_state():
    h100 = cluster.DEVICES["h100"]
    assert cluster.compute_seconds(989.4e12, h100, "bf16", 1.0) == pytest.approx(1.0)
    assert cluster.compute_seconds(989.4e12, h100, "bf16", 0.5) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no fp8 peak"):
        cluster.compute_seconds(1.0, cluster.DEVICES["a100-80gb"], "fp8", 0.5)
    assert cluster.state_bytes(1e9) == 18e9
    assert cluster.state_bytes(1e9, dp=4, distributed_optimizer=True) == pytest.approx(9e9)
    assert math.isclose(cluster.optimizer_seconds(1e9, h100), 1e9 * cluster.ADAM_TRAFFIC_BYTES / 3.35e12)


def test_the_docstring_examples_hold():
    import doctest

    from pipeline_ref.sim import step_model
    for module in (cluster, step_model):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, f"{module.__name__}: {result}"
