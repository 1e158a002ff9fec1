"""A whole nn.Module cut by torch's tracer (pipeline_ref/front/split.py): pieces that compose to the module, split
points by name, tied weights kept one Parameter, bad names refused before any rank starts; then one batch of
MPI runs (2-4 ranks, every schedule) whose loss and gradients equal one device in float64."""
import pytest
import torch

from pipeline_ref import models
from pipeline_ref.front import cut, split
from pipeline_ref.models import hf_models
from pipeline_ref.config import ConfigError, RunConfig
from pipeline_ref.preflight import build_model, preflight
from pipeline_ref.launch import launch
from tests.one_device import assert_equals_one_device, reference

pytest.importorskip("transformers")

SMALL = {"blocks": 2, "batch": 4}                 # one-process tests: a short trace


def _float64(factory, **options):
    torch.manual_seed(0)
    module, loss_fn, batch = factory(**options)
    module, batch = models.to_dtype(module, batch, torch.float64)
    return module, loss_fn, batch


@pytest.fixture(scope="module")
def gpt2():
    module, loss_fn, (inputs, targets) = _float64(hf_models.gpt2, **SMALL)
    return module, loss_fn, inputs, targets, split.trace(module, inputs)


def _loss_and_grads(module, run, loss_fn, inputs, targets):
    params = [p for _, p in module.named_parameters()]
    loss = loss_fn(run(inputs), targets)
    return loss, torch.autograd.grad(loss, params)


def _assert_equal(module, pieces, loss_fn, inputs, targets):
    loss, grads = _loss_and_grads(module, module, loss_fn, inputs, targets)
    got, got_grads = _loss_and_grads(module, split.compose(pieces), loss_fn, inputs, targets)
    assert got.item() == pytest.approx(loss.item(), rel=1e-13)
    for (name, _), g, h in zip(module.named_parameters(), grads, got_grads):
        torch.testing.assert_close(h, g, rtol=1e-11, atol=1e-14, msg=lambda m, name=name: f"{name}: {m}")


def test_gpt2_pieces_compose_to_the_module(gpt2):
    module, loss_fn, inputs, targets, pieces = gpt2
    # a piece begins at every block; the embedding (and the masks made before it) is the first
    assert len(pieces) == 6
    _assert_equal(module, pieces, loss_fn, inputs, targets)


def test_pieces_hold_the_modules_own_parameters_and_tied_weights_stay_one(gpt2):
    module, _, _, _, pieces = gpt2
    own = {id(p) for p in module.parameters()}
    assert all(id(p) in own for piece in pieces for p in piece.parameters())
    # torch's front end deep-copies a weight two pieces use; bind() makes it the module's one Parameter again
    wte = module.transformer.wte.weight
    assert any(p is wte for p in pieces[0].parameters()) and any(p is wte for p in pieces[-1].parameters())


def test_boundaries_carry_several_tensors_of_any_dtype(gpt2):
    module, _, inputs, _, pieces = gpt2
    values = (inputs,)
    crossing = []
    for piece in pieces[:-1]:
        values = piece(*values)
        crossing.append({t.dtype for t in values})
    # hidden states (float64, with grad) and the attention mask (bool) or position ids (int64) cross together
    assert {torch.bool, torch.float64} in crossing and any(torch.int64 in dtypes for dtypes in crossing)


@pytest.mark.parametrize("factory", [hf_models.llama, hf_models.skip_net], ids=["llama", "skip_net"])
def test_llama_and_a_skip_connection_compose_to_the_module(factory):
    options = SMALL if factory is hf_models.llama else {"batch": 4}
    module, loss_fn, (inputs, targets) = _float64(factory, **options)
    pieces = split.trace(module, inputs)
    if factory is hf_models.skip_net:
        # every cut between the blocks carries the skip connection beside the running activation (the sum
        # with it is made before `out` is called, so one tensor reaches the last piece)
        assert [len(p.inputs) for p in pieces] == [1, 1, 2, 2, 2, 1]
    _assert_equal(module, pieces, loss_fn, inputs, targets)


def test_split_at_names_where_pieces_begin():
    module, loss_fn, (inputs, targets) = _float64(hf_models.skip_net, batch=4)
    pieces = split.trace(module, inputs, ["out", "blocks.2"])        # any order: sorted by call order
    assert len(pieces) == 3
    assert {id(p) for p in pieces[1].parameters()} == {id(p) for b in module.blocks[2:] for p in b.parameters()}
    assert {id(p) for p in pieces[2].parameters()} == {id(p) for p in module.out.parameters()}
    _assert_equal(module, pieces, loss_fn, inputs, targets)


def test_a_cached_trace_is_bound_to_each_new_module():
    first, loss_fn, (inputs, targets) = _float64(hf_models.skip_net, batch=4, seed=3)
    split.trace(first, inputs, key="skip-test")
    torch.manual_seed(1)
    second, _, _ = hf_models.skip_net(batch=4, seed=3)
    second, _ = models.to_dtype(second, (inputs, targets), torch.float64)
    pieces = split.trace(second, inputs, key="skip-test")
    assert {id(p) for piece in pieces for p in piece.parameters()} == {id(p) for p in second.parameters()}
    _assert_equal(second, pieces, loss_fn, inputs, targets)


GPT2_CFG = dict(model="hf_gpt2", model_kwargs={"batch": 12}, dtype="float64")


@pytest.mark.parametrize("split_at, pp, match", [
    (("transformer.nope",), 2, r"no submodule of that name; blocks a stage can begin at: transformer.wpe"),
    (("transformer.h.1", "transformer.h.1"), 3, r"names a submodule twice"),
    (("transformer.wte",), 2, r"where the model begins: the first stage would be empty"),
    (("transformer.h",), 2, r"runs 0 times in one step"),
    (("transformer.h.1",), 3, r"names 1 point\(s\), cutting the model into 2 pieces, but --pp 3 needs 3"),
])
def test_bad_split_points_are_refused_before_any_rank_starts(split_at, pp, match):
    with pytest.raises(ConfigError, match=match):
        preflight(RunConfig(pp=pp, split_at=split_at, **GPT2_CFG))


def test_refused_too_many_stages_and_split_at_on_a_list_of_layers():
    with pytest.raises(ConfigError, match=r"--pp 5 x 2 chunks needs 10 pieces"):
        preflight(RunConfig(pp=5, schedule="interleaved", chunks=2, microbatches=5, model="hf_gpt2",
                            model_kwargs={"batch": 10}))
    with pytest.raises(ConfigError, match=r"--split-at cuts a whole nn.Module; this model is a list of layers"):
        preflight(RunConfig(split_at=("0",), model="mlp"))


def test_command_line_split_options():
    from pipeline_ref.__main__ import _parser
    args = _parser().parse_args(["run", "--model", "hf_gpt2", "--split-at", "transformer.h.2,lm_head"])
    assert RunConfig.from_args(args).split_at == ("transformer.h.2", "lm_head")
    assert RunConfig.from_args(_parser().parse_args(["run", "--split", "auto"])).split_at == ()
    with pytest.raises(SystemExit):
        _parser().parse_args(["run", "--split", "auto", "--split-at", "lm_head"])


# ---------------------------------------------------------------------------------------------- MPI: one device

def _cfg(schedule, pp, model="hf_gpt2", chunks=1, dp=1, **extra):
    # microbatches of 3 samples in every run: a trace holds its microbatch's shape, so each rank traces once
    kwargs = {"batch": 12} if model != "hf_llama" else {"batch": 12, "blocks": 2}
    return RunConfig(schedule=schedule, pp=pp, dp=dp, microbatches=4 // dp, chunks=chunks, model=model, model_kwargs=kwargs,
                     dtype="float64", collect_grads=True, stall_timeout=120, **extra)


SKIP = "pipeline_ref.models.hf_models:skip_net"
# Every schedule on 2 and 4 stages (1F1B and ZB-H1 on 3 too); split points by name are the one-process tests'
CONFIGS = ([_cfg(s, pp) for s in ("naive", "gpipe", "1f1b", "zb-h1") for pp in ((2, 3, 4) if "1" in s else (2, 4))]
           + [_cfg("interleaved", pp, chunks=2) for pp in (2, 4)]
           + [_cfg("1f1b", 2, dp=2), _cfg("gpipe", 2, partition="time")]
           + [_cfg(s, pp, SKIP, chunks=v) for s, pp, v in (("1f1b", 3, 1), ("zb-h1", 4, 1), ("interleaved", 2, 2))]
           + [_cfg(s, 2, "hf_llama", chunks=v) for s, v in (("zb-h1", 1), ("interleaved", 2))])


def _id(cfg):
    return (f"{cfg.model.split(':')[-1]}-{cfg.schedule}-pp{cfg.pp}-dp{cfg.dp}-v{cfg.chunks}-{cfg.partition}"
            + ("-at" if cfg.split_at else ""))


@pytest.fixture(scope="module")
def results():
    # import transformers and a trace (torch.export) take seconds on a busy machine: more than the default stall
    ran = launch(4, "pipeline_ref.train:run_many", CONFIGS, timeout=300, stall_timeout=120)[0]
    return {_id(cfg): r for cfg, r in zip(CONFIGS, ran)}


@pytest.mark.mpi
@pytest.mark.parametrize("cfg", CONFIGS, ids=_id)
def test_split_module_equals_one_device(cfg, results):
    assert_equals_one_device(results[_id(cfg)], *reference(cfg))


@pytest.mark.mpi
def test_tied_embedding_is_summed_over_the_ranks_holding_it(results):
    for pp in (2, 3, 4):
        assert results[f"hf_gpt2-1f1b-pp{pp}-dp1-v1-uniform"].tied == [("transformer.wte.weight", [0, pp - 1])]
    # 8 pieces on 4 ranks x 2 chunks, one each: the embedding on rank 0, the head (virtual stage 7) on rank 3
    assert results["hf_gpt2-interleaved-pp4-dp1-v2-uniform"].partition == [(i, i + 1) for i in range(8)]
    assert results["skip_net-1f1b-pp3-dp1-v1-uniform"].tied == []
