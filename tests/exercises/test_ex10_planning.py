"""Graded: exercise 10, the memory and the step of one configuration (exercises/ex10_planning.py).

    .venv/bin/python -m pytest tests/exercises/test_ex10_planning.py                # your functions
    .venv/bin/python -m pytest tests/exercises/test_ex10_planning.py --impl solutions

One process, no ranks. Each function is compared with pipeline_ref's cost model, the one the planner uses
(``cluster.Transformer.layer_activation_bytes``, ``theory.peak_stashed``, ``theory.utilization``), on the
shapes of the published models and on seeded random shapes you have not seen.
"""
import math
import random

import pytest

from pipeline_ref.sim import cluster, theory


@pytest.fixture
def ex(impl):
    return impl("ex10_planning")


def shapes(count: int = 60):
    """The published models' shapes, then seeded random ones (hidden a multiple of heads)."""
    for model in cluster.MODELS.values():
        yield model
    rng = random.Random(10)
    for i in range(count):
        heads = rng.choice([4, 8, 12, 16, 32, 64])
        yield cluster.Transformer(f"random {i}", rng.randint(2, 96), heads * rng.choice([32, 64, 128]), heads,
                                  rng.choice([128, 512, 2048, 4096]), 32000)


@pytest.mark.points(3)
def test_layer_activation_bytes(ex):
    rng = random.Random(101)
    for model in shapes():
        b, tp = rng.choice([1, 2, 4]), rng.choice([1, 2, 4, 8])
        for sp in (False, True):
            for recompute in ("none", "full"):
                expected = model.layer_activation_bytes(b, tp, sp, recompute)
                got = ex.layer_activation_bytes(model.seq_len, b, model.hidden, model.heads, tp=tp,
                                                sequence_parallel=sp, recompute=recompute)
                assert got == pytest.approx(expected, rel=1e-9), (
                    f"{model.name} (s={model.seq_len}, h={model.hidden}, a={model.heads}), b={b}, tp={tp}, "
                    f"sequence_parallel={sp}, recompute={recompute!r}: {got}, expected {expected}")
    with pytest.raises(ValueError):
        ex.layer_activation_bytes(2048, 1, 1024, 16, recompute="sometimes")


def expected_memory(parameters, num_layers, layer_bytes, tp, pp, m, schedule, chunks):
    """pipeline_ref's answer: the first stage's peak stash (theory.peak_stashed) in layer-microbatches."""
    if schedule == "interleaved":
        stashed = theory.peak_stashed("interleaved", pp, m, chunks=chunks)[0]
        layers = math.ceil(num_layers / (pp * chunks))
    else:
        stashed = theory.peak_stashed(schedule, pp, m)[0]
        layers = math.ceil(num_layers / pp)
    states = 18 * parameters / (tp * pp)
    return states, stashed * layers * layer_bytes


@pytest.mark.points(3)
def test_memory_per_gpu(ex):
    rng = random.Random(102)
    for model in shapes():
        tp, pp = rng.choice([1, 2, 4, 8]), rng.randint(1, min(16, model.num_layers))
        m = rng.choice([1, 2, pp, 2 * pp, 4 * pp + 1]) if pp > 1 else rng.randint(1, 8)
        layer = model.layer_activation_bytes(1, tp)
        for schedule, chunks in (("gpipe", 1), ("1f1b", 1), ("interleaved", rng.choice([2, 3, 4]))):
            if schedule == "interleaved" and (m % pp or pp * chunks > model.num_layers):
                continue
            states, activations = expected_memory(model.num_parameters(), model.num_layers, layer, tp, pp, m,
                                                  schedule, chunks)
            got = ex.memory_per_gpu(model.num_parameters(), model.num_layers, layer, tp, pp, m,
                                    schedule=schedule, chunks=chunks)
            where = f"{model.name}, L={model.num_layers}, tp={tp}, pp={pp}, m={m}, {schedule} v={chunks}"
            assert set(got) == {"states", "activations", "total"}, f"{where}: keys {sorted(got)}"
            assert got["states"] == pytest.approx(states, rel=1e-9), f"{where}: states {got['states']}"
            assert got["activations"] == pytest.approx(activations, rel=1e-9), (
                f"{where}: activations {got['activations']}, expected {activations}")
            assert got["total"] == pytest.approx(states + activations, rel=1e-9), f"{where}: total"
    with pytest.raises(ValueError):
        ex.memory_per_gpu(1e9, 8, 1e6, 1, 2, 4, schedule="zb-v")


@pytest.mark.points(2)
def test_step_seconds(ex):
    rng = random.Random(103)
    for _ in range(200):
        p, v = rng.randint(1, 16), rng.choice([1, 2, 3, 4])
        m = p * rng.randint(1, 8)
        forward, backward, allreduce = rng.uniform(0.1, 2), rng.uniform(0.2, 4), rng.choice([0.0, 0.5])
        step, bubble = ex.step_seconds(forward, backward, p, m, chunks=v, allreduce=allreduce)
        name = "1f1b" if v == 1 else "interleaved"
        utilization = theory.utilization(name, p, m, chunks=v)
        where = f"F={forward:.3f} B={backward:.3f} p={p} m={m} v={v} allreduce={allreduce}"
        assert bubble == pytest.approx(1 - utilization, abs=1e-12), f"{where}: bubble {bubble}"
        assert step == pytest.approx(m * (forward + backward) / utilization + allreduce, rel=1e-12), (
            f"{where}: step {step}")
