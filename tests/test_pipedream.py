"""PipeDream (weight stashing) and PipeDream-2BW compute exactly what async_reference.py says they do.

One process: the schedule is 1F1B streamed over steps x m microbatches; the Stages with their weight stores,
played in one process in dependency order, use the versions the rules say (stage s's forward of j: version
max(0, j - (p - s - 1)) for PipeDream, t - 1 for step t under 2BW), hold p - s or 2 versions, and end on the
reference's parameters in float64; without stashing they would not. On the ranks (one launch): the same, for
p in 1..4, several m and steps, the MLP, the tiny GPT and a user's factory, with synchronous sends.
"""
import copy

import pytest
import torch
from torch import nn

from pipeline_ref import models, schedules
from pipeline_ref.front import partition
from pipeline_ref.models import async_reference
from pipeline_ref.schedules import asynchronous, replay
from pipeline_ref.async_run import _rule
from pipeline_ref.config import ConfigError, RunConfig
from pipeline_ref.preflight import build_model, preflight
from pipeline_ref.engine.stage import Stage
from pipeline_ref.engine.weight_versions import WeightVersions

ASYNC = ("pipedream", "pipedream-2bw")
MODELS = {"mlp": {"depth": 6, "width": 8, "batch": 12},
          "gpt": {"dim": 16, "heads": 2, "blocks": 2, "seq_len": 8, "batch": 12, "vocab": 32},
          "tests.rank_targets:user_model": {}}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny float64 matrices: torch's intra-op threads only fight over a shared machine's cores (10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(name):
    return build_model(RunConfig(model=name, model_kwargs=MODELS[name], dtype="float64"))


def play_in_process(schedule, layers, loss_fn, batch, num_stages, m, steps, lr):
    """The pipelined run without processes: a Stage with its weight store per stage, the stream's actions
    played in dependency order (replay.py), tensors handed over directly. Returns (per-microbatch losses,
    {name: parameter}, the stores, the partition)."""
    layers = copy.deepcopy(layers)
    ranges = partition.uniform(len(layers), num_stages)
    cfg = RunConfig(schedule=schedule, pp=num_stages, microbatches=m, steps=steps, lr=lr)
    stages = []
    for s, r in enumerate(ranges):
        stage = Stage(nn.Sequential(*layers[r.start:r.stop]), s == 0, s == num_stages - 1, loss_fn, m)
        stage.loss_scale = asynchronous.loss_scale(schedule, m)
        stage.weights = WeightVersions(list(stage.parameters()), *_rule(cfg, s), lr, steps * m)
        stages.append(stage)
    xs, ys = batch[0].tensor_split(m), batch[1].tensor_split(m)
    sent = {}

    def visit(rank, a, dependency):
        stage, last = stages[rank], rank == num_stages - 1
        if a.op == "F":
            x = (xs[a.microbatch % m],) if rank == 0 else sent["F", rank - 1, a.microbatch]
            sent["F", rank, a.microbatch] = stage.forward(a.microbatch, x, ys[a.microbatch % m] if last else None)
        else:
            sent["B", rank, a.microbatch] = stage.backward(a.microbatch, None if last else sent["B", rank + 1, a.microbatch])

    assert replay.replay(schedules.build(schedule, num_stages, m, steps=steps), visit) == []
    for stage in stages:
        stage.weights.finish()
    names = {id(p): n for n, p in nn.Sequential(*layers).named_parameters()}
    params = {names[id(p)]: p.detach().clone() for stage in stages for p in stage.parameters()}
    return ([loss.item() for loss in stages[-1].losses], params, [s.weights for s in stages],
            [(r.start, r.stop) for r in ranges])


def assert_params_equal(got: dict, expected: dict, where: str = "") -> None:
    assert set(got) == set(expected), where
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-12, atol=1e-12, msg=lambda m, n=name: f"{where} {n}: {m}")


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("p, m", [(1, 2), (2, 1), (2, 3), (3, 2), (4, 4), (4, 6)])
def test_the_stream_is_1f1b_over_every_microbatch_of_the_run(p, m, steps):
    stream = schedules.build("pipedream", p, m, steps=steps)
    assert stream == schedules.build("1f1b", p, steps * m)          # no flush: one 1F1B over steps x m
    schedules.validate(stream)
    if m >= p - 1:
        assert schedules.build("pipedream-2bw", p, m, steps=steps) == stream


@pytest.mark.parametrize("schedule", ASYNC)
@pytest.mark.parametrize("model", ["mlp", "gpt"])
@pytest.mark.parametrize("p, m, steps", [(1, 3, 2), (2, 2, 3), (3, 2, 4), (4, 4, 2)])
def test_in_process_equals_the_reference_with_the_versions_the_rules_say(schedule, model, p, m, steps):
    layers, loss_fn, batch = _model(model)
    losses, params, stores, ranges = play_in_process(schedule, layers, loss_fn, batch, p, m, steps, lr=0.1)
    ref_losses, ref_params = async_reference.train(schedule, layers, loss_fn, batch, ranges, m, steps, lr=0.1)
    assert_params_equal(params, ref_params, f"{schedule} p={p} m={m} steps={steps}")
    assert [sum(losses[t * m:(t + 1) * m]) / m for t in range(steps)] == pytest.approx(ref_losses, rel=1e-12)
    for s, store in enumerate(stores):
        forwards = {j: v for op, j, v in store.log if op == "F"}
        # PipeDream's stage takes whatever is current; that it is this formula is what the order guarantees.
        assert forwards == {j: asynchronous.forward_version(schedule, s, p, m, j) for j in range(steps * m)}
        assert all(v == forwards[j] for op, j, v in store.log if op == "B"), "a backward left its forward's version"
    assert [s.peak for s in stores] == asynchronous.versions_held(schedule, p, m, steps)
    if schedule == "pipedream" and steps * m >= 2 * p - 1:
        assert [s.peak for s in stores] == [p - s for s in range(p)]
    if schedule == "pipedream-2bw" and steps > 1:
        assert [s.peak for s in stores] == [2] * p


def _in_place_updates(monkeypatch):
    """A stage without versions: one set of weights, updated in place after each backward (no stash)."""
    def before_forward(self, j):
        self.stash[j], self.next_forward = self.current, j + 1

    def after_backward(self, j):
        del self.stash[j]
        with torch.no_grad():
            for p in self.params:
                p.data.sub_(self.lr * p.grad)      # what the saved activations' weights see too
                p.grad = None

    monkeypatch.setattr(WeightVersions, "before_forward", before_forward)
    monkeypatch.setattr(WeightVersions, "before_backward", lambda self, j: None)
    monkeypatch.setattr(WeightVersions, "after_backward", after_backward)


@pytest.mark.parametrize("model", ["mlp", "gpt"])
@pytest.mark.parametrize("without", ["versions", "the switch back"])
def test_without_weight_stashing_the_run_is_not_pipedream(model, without, monkeypatch):
    """The equality above can fail. Updating one set of weights in place, a backward runs on weights newer than
    its forward's. Keeping versions but not switching back before the backward goes unnoticed by the MLP (autograd
    saved views of the forward's version, which nothing overwrites) but not by the GPT: LayerNorm's backward reads
    its weight Parameter itself, whatever it holds by then."""
    layers, loss_fn, batch = _model(model)
    if without == "versions":
        _in_place_updates(monkeypatch)
    else:
        monkeypatch.setattr(WeightVersions, "before_backward", lambda self, j: self._load(self.current))
    _, params, _, ranges = play_in_process("pipedream", layers, loss_fn, batch, 3, 3, 2, lr=0.1)
    _, ref_params = async_reference.train("pipedream", layers, loss_fn, batch, ranges, 3, 2, lr=0.1)
    differs = max((params[n] - ref_params[n]).abs().max().item() for n in params)
    if without == "the switch back" and model == "mlp":
        assert differs < 1e-12
    else:
        assert differs > 1e-6


@pytest.mark.parametrize("model", ["mlp", "gpt"])
def test_on_one_stage_pipedream_is_per_microbatch_sgd_and_2bw_is_one_step_late(model):
    layers, loss_fn, batch = _model(model)
    losses, params = async_reference.train("pipedream", layers, loss_fn, batch, [(0, len(layers))], 3, 2, lr=0.1)
    sgd_losses, sgd_params = async_reference.per_microbatch_sgd(layers, loss_fn, batch, 3, 2, lr=0.1)
    assert_params_equal(params, {n: p.detach() for n, p in sgd_params.items()})
    assert losses == pytest.approx(sgd_losses, rel=1e-12)
    # 2BW: W1 = W0 - lr g(W0) is the synchronous step; W2 = W1 - lr g(W0) repeats it (same batch, stale weights).
    _, grads = models.reference_step(copy.deepcopy(layers), loss_fn, *batch)
    w0 = dict(nn.Sequential(*layers).named_parameters())
    for steps in (1, 2):
        _, w = async_reference.train("pipedream-2bw", layers, loss_fn, batch, [(0, len(layers))], 3, steps, lr=0.1)
        assert_params_equal(w, {n: w0[n].detach() - steps * 0.1 * grads[n] for n in grads}, f"2BW, {steps} steps")
    _, w = async_reference.train("flush", layers, loss_fn, batch, [(0, len(layers))], 3, 1, lr=0.1)
    assert_params_equal(w, {n: w0[n].detach() - 0.1 * grads[n] for n in grads}, "flush")


def test_refused_before_any_rank_starts():
    with pytest.raises(ConfigError, match=r"pipedream runs one pipeline \(--dp 1\)"):
        preflight(RunConfig(schedule="pipedream", pp=2, dp=2))
    with pytest.raises(ConfigError, match=r"pipedream-2bw needs at least num_stages - 1 microbatches per step \(2 < 3\)"):
        preflight(RunConfig(schedule="pipedream-2bw", pp=4, microbatches=2))
    with pytest.raises(ConfigError, match=r"cannot be combined with --overlap-allreduce, --save-grads"):
        preflight(RunConfig(schedule="pipedream", overlap_allreduce=True, collect_grads=True))
    with pytest.raises(ConfigError, match=r"share a Parameter \(\d+\.out\.weight\).*untie it"):
        preflight(RunConfig(schedule="pipedream", pp=2, model="gpt_tied", model_kwargs=MODELS["gpt"]))
    preflight(RunConfig(schedule="pipedream", pp=1, model="gpt_tied", model_kwargs=MODELS["gpt"]))   # one stage: fine


def _cfg(schedule, p, m, steps, model="mlp"):
    return RunConfig(schedule=schedule, pp=p, microbatches=m, steps=steps, model=model, model_kwargs=MODELS[model],
                     dtype="float64", lr=0.1, collect_params=True, sync_sends=True, stall_timeout=60)


CONFIGS = ([_cfg(s, p, m, k) for s in ASYNC for p, m, k in ((1, 3, 2), (2, 2, 3), (3, 3, 2), (4, 3, 3), (4, 6, 2))]
           + [_cfg(s, p, m, k, "gpt") for s in ASYNC for p, m, k in ((2, 2, 2), (4, 4, 2))]
           + [_cfg(s, 2, 4, 2, "tests.rank_targets:user_model") for s in ASYNC])


@pytest.fixture(scope="module")
def runs():
    from pipeline_ref.launch import launch
    return launch(4, "pipeline_ref.train:run_many", CONFIGS, timeout=240)[0]


@pytest.mark.mpi
def test_on_the_ranks_equals_the_reference(runs):
    for cfg, result in zip(CONFIGS, runs):
        where = f"{cfg.schedule} {cfg.model} p={cfg.pp} m={cfg.microbatches} steps={cfg.steps}"
        layers, loss_fn, batch = build_model(cfg)
        losses, params = async_reference.train(cfg.schedule, layers, loss_fn, batch, result.partition,
                                               cfg.microbatches, cfg.steps, cfg.lr)
        got = {n: t for ranks in result.params if ranks for n, t in ranks.items()}
        assert_params_equal(got, params, where)
        assert result.losses == pytest.approx(losses, rel=1e-12), where
        assert result.trace.meta.weight_versions == asynchronous.versions_held(
            cfg.schedule, cfg.pp, cfg.microbatches, cfg.steps), where
        assert len(result.step_seconds) == cfg.steps and min(result.step_seconds) > 0, where
        if cfg.pp == 1 and cfg.schedule == "pipedream":
            _, sgd = async_reference.per_microbatch_sgd(layers, loss_fn, batch, cfg.microbatches, cfg.steps, cfg.lr)
            assert_params_equal(got, {n: p.detach() for n, p in sgd.items()}, where + " (plain SGD)")
