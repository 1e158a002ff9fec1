"""Checkpoint and resume: each run kind stopped and resumed equals one that never stopped, at any stage count.

    .venv/bin/python -m pytest -q tests/test_checkpoint.py tests/test_checkpoint_refusals.py

Two launches: a run whose disk fills up during a save (``full_disk``), then one ``run_many`` on 4 ranks of
every pair (never stopped; stopped and resumed): AdamW in float64 (at 2 and at 4 stages, with 2 replicas,
and from the folder the full disk left), a weight tied across stages, a model with dropout (its random
generators), float16 with its loss scale, and a whole Hugging Face GPT-2 at 2 stages resumed at 4, in float64
and under bfloat16 autocast. The exported model is checked against the pipelined one, in-process; damaged
and foreign folders are tests/test_checkpoint_refusals.py's.
"""
import json

import pytest
import torch

from pipeline_ref.faults import checkpoint
from pipeline_ref.config import RunConfig
from pipeline_ref.launch import LaunchError, launch

MLP = {"model": "mlp", "model_kwargs": {"depth": 8, "width": 8, "batch": 16}, "dtype": "float64",
       "optimizer": "adamw", "lr": 0.01}
DROPOUT = {"model": "tests.checkpoint_targets:dropout_mlp", "dtype": "float64"}
FP16 = {"model": "tests.rank_targets:overflow_linear", "model_kwargs": {"overflow_step": 1},
        "autocast": "float16", "lr": 0.01}
TIED = {"model": "gpt_tied", "dtype": "float64", "optimizer": "adamw", "lr": 0.01}   # head weight = embedding
GPT2 = {"model": "hf_gpt2", "model_kwargs": {"blocks": 4, "batch": 8}, "optimizer": "adamw", "lr": 3e-3}


def _cfg(kind: dict, pp: int, steps: int, **options) -> RunConfig:
    return RunConfig(**{"schedule": "1f1b", "pp": pp, "microbatches": 4, "steps": steps,
                        "collect_params": True, "stall_timeout": 60, **kind, **options})


def _params(result) -> dict:
    """Every parameter after the run, by name (a tied or replicated one once)."""
    return {name: value for per_rank in result.params if per_rank for name, value in per_rank.items()}


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory):
    """AdamW saving every 2 steps; at step 4 rank 1's disk is full. (folder, the launch's error)."""
    folder = tmp_path_factory.mktemp("full_disk")
    with pytest.raises(LaunchError) as failed:
        launch(2, "tests.checkpoint_targets:full_disk",
               _cfg(MLP, 2, 5, checkpoint_dir=str(folder), checkpoint_every=2), timeout=120, stall_timeout=60)
    return folder, str(failed.value)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, full_disk):
    folder = {name: str(tmp_path_factory.mktemp(name)) for name in ("adamw", "adamw_dp2", "dropout", "fp16",
                                                                   "fp16_end", "tied", "gpt2", "gpt2_bf16")}
    bf16 = {**GPT2, "autocast": "bfloat16"}
    pairs = {   # name: (never stopped, stopped after 2 steps, resumed)
        "adamw": (_cfg(MLP, 2, 5), _cfg(MLP, 2, 2, checkpoint_dir=folder["adamw"]),
                  _cfg(MLP, 2, 5, resume_from=folder["adamw"])),
        "dropout": (_cfg(DROPOUT, 2, 4), _cfg(DROPOUT, 2, 2, checkpoint_dir=folder["dropout"]),
                    _cfg(DROPOUT, 2, 4, resume_from=folder["dropout"])),
        "fp16": (_cfg(FP16, 2, 4), _cfg(FP16, 2, 2, checkpoint_dir=folder["fp16"]),
                 _cfg(FP16, 2, 4, resume_from=folder["fp16"], checkpoint_dir=folder["fp16_end"],
                      checkpoint_every=4)),
        "tied": (_cfg(TIED, 2, 4), _cfg(TIED, 2, 2, checkpoint_dir=folder["tied"]),
                 _cfg(TIED, 4, 4, resume_from=folder["tied"])),
        "gpt2": (_cfg(GPT2, 2, 4, dtype="float64"),
                 _cfg(GPT2, 2, 2, dtype="float64", checkpoint_dir=folder["gpt2"]),
                 _cfg(GPT2, 4, 4, dtype="float64", resume_from=folder["gpt2"])),
        "gpt2_bf16": (_cfg(bf16, 2, 4), _cfg(bf16, 2, 2, checkpoint_dir=folder["gpt2_bf16"]),
                      _cfg(bf16, 4, 4, resume_from=folder["gpt2_bf16"])),
    }
    configs = [cfg for pair in pairs.values() for cfg in pair]
    configs += [_cfg(MLP, 4, 5, resume_from=folder["adamw"]),               # AdamW 2 -> 4 stages
                _cfg(MLP, 2, 5, dp=2, resume_from=folder["adamw"],          # 1 -> 2 replicas, saved there
                     checkpoint_dir=folder["adamw_dp2"], checkpoint_every=5),
                _cfg(MLP, 2, 5, resume_from=str(full_disk[0]))]             # what the full disk left
    # Ranks 2 and 3 first build and trace GPT-2 in a 4-stage run while 0 and 1 wait: long on a busy machine.
    results = launch(4, "pipeline_ref.train:run_many", configs, timeout=300, stall_timeout=90)[0]
    named = {name: results[3 * k:3 * k + 3] for k, name in enumerate(pairs)}
    named["adamw at 4 stages"], named["adamw with 2 replicas"], named["after the full disk"] = results[-3:]
    return named, folder


def _nan_as_text(losses: list) -> list:
    return [x if x == x else "nan" for x in losses]      # a skipped float16 step's loss is NaN in both runs


def _assert_resumed_equals(straight, first, resumed):
    """Bit for bit: each layer does the same arithmetic in the same order whichever rank holds it, so this
    holds at another stage count too (2 -> 4), and under autocast."""
    assert resumed.first_step == 2 and len(resumed.losses) == len(straight.losses) - 2
    assert _nan_as_text(first.losses + resumed.losses) == _nan_as_text(straight.losses)
    resumed_params = _params(resumed)
    assert resumed_params.keys() == _params(straight).keys()
    for name, value in _params(straight).items():
        assert torch.equal(resumed_params[name], value), name


@pytest.mark.mpi
@pytest.mark.parametrize("name", ["adamw", "dropout", "fp16"])
def test_a_resumed_run_equals_one_that_never_stopped(runs, name):
    _assert_resumed_equals(*runs[0][name])


@pytest.mark.mpi
def test_adamw_resumes_at_another_number_of_stages(runs):
    straight, first = runs[0]["adamw"][:2]
    _assert_resumed_equals(straight, first, runs[0]["adamw at 4 stages"])


@pytest.mark.mpi
def test_adamw_resumes_with_data_parallel_replicas(runs):
    straight, resumed = runs[0]["adamw"][0], runs[0]["adamw with 2 replicas"]
    assert resumed.first_step == 2
    # Two replicas average the gradients of their halves of the batch: equal sums, added in another order.
    assert resumed.losses == pytest.approx(straight.losses[2:], rel=1e-12)
    for key, value in _params(straight).items():
        torch.testing.assert_close(_params(resumed)[key], value, rtol=1e-10, atol=1e-12)
    files = checkpoint.latest(runs[1]["adamw_dp2"]).files     # replica 0's layers, every rank's rng
    assert sorted(files) == sorted([checkpoint.layer_file(i) for i in range(8)]
                                   + [checkpoint.rng_file(r) for r in range(4)])


@pytest.mark.mpi
def test_float16_resumes_with_its_loss_scale(runs):
    _, folder = runs
    # Step 1 overflowed (1e6 x inputs): scale halved, good steps reset; two good steps later still halved.
    assert checkpoint.latest(folder["fp16"]).scaler == {"scale": 2.0 ** 15, "good_steps": 0}
    assert checkpoint.latest(folder["fp16_end"]).scaler == {"scale": 2.0 ** 15, "good_steps": 2}
    assert runs[0]["fp16"][0].skipped_steps == [1]


@pytest.mark.mpi
def test_a_weight_tied_across_stages_resumes_at_4_stages(runs):
    """Each holder of the tied weight keeps its copy, with its AdamW state, in its own layer's file."""
    _assert_resumed_equals(*runs[0]["tied"])
    assert runs[0]["tied"][2].tied                      # the 4-stage run holds the weight on two ranks


@pytest.mark.mpi
@pytest.mark.parametrize("name", ["gpt2", "gpt2_bf16"])
def test_a_whole_gpt2_saved_at_2_stages_resumes_at_4(runs, name):
    _assert_resumed_equals(*runs[0][name])
    names = {n for entry in checkpoint.latest(runs[1][name]).files.values() for n in entry["names"]}
    assert "transformer.h.0.attn.c_attn.weight" in names and "lm_head.weight" in names   # the module's own


@pytest.mark.mpi
def test_a_full_disk_names_rank_and_file_and_leaves_the_previous_checkpoint(runs, full_disk):
    folder, error = full_disk
    head = error.partition("\n")[0]
    assert head.startswith("rank 1: failed while saving the checkpoint of step 4: pipeline_ref.faults.checkpoint."
                           f"CheckpointError: could not write {folder}/step-000004/layer-"), head
    assert "No space left on device" in head
    assert checkpoint.latest(folder).step == 2
    assert not list((folder / "step-000004").glob(".*tmp*")), "a temporary file was left behind"
    straight, resumed = runs[0]["adamw"][0], runs[0]["after the full disk"]
    assert resumed.first_step == 2 and resumed.losses == straight.losses[2:]


@pytest.mark.mpi
def test_export_of_a_trained_gpt2_loads_offline_with_the_pipelined_logits(runs, tmp_path):
    from transformers import AutoModelForCausalLM
    from pipeline_ref.front import split
    from pipeline_ref.models import hf_models
    from pipeline_ref.__main__ import main
    saved = runs[1]["gpt2"]                  # float64, AdamW, saved after step 2 by 2 stages
    assert main(["export", saved, "--out", str(tmp_path)]) == 0
    exported = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True, dtype=torch.float64)
    for name, value in _params(runs[0]["gpt2"][1]).items():        # the weights the run ended with
        assert torch.equal(exported.state_dict()[name], value), name
    # The pipelined model: the module cut into pieces as the ranks cut it, each piece loaded by name.
    torch.manual_seed(0)
    module, _, (inputs, _) = hf_models.gpt2(**GPT2["model_kwargs"])
    module, sample = module.double(), inputs[:2]
    pieces = split.trace(module, sample)
    checkpoint.load_layers(checkpoint.latest(saved), dict(enumerate(pieces)), keep=set(module.state_dict()))
    pipelined = split.compose(pieces)(sample).logits
    assert torch.equal(exported(sample).logits, pipelined)          # float64, bit for bit
    fresh = hf_models.gpt2(**GPT2["model_kwargs"])[0].double()     # the factory's own model loads it too
    fresh.load_state_dict(torch.load(tmp_path / "state_dict.pt"))
    assert torch.equal(fresh(sample).logits, exported(sample).logits)


def test_pieces_cut_at_other_points_load_by_name(tmp_path):
    """--split-at's pieces follow the stage count: 2 pieces saved, 4 others loaded, by the module's names."""
    from pipeline_ref.front import split
    from pipeline_ref.models import hf_models
    torch.manual_seed(0)
    trained, _, (inputs, _) = hf_models.gpt2(**GPT2["model_kwargs"])
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(torch.randn_like(p))          # not what the factory makes
    two = split.trace(trained, inputs[:2], ["transformer.h.2"])
    files = checkpoint.save_layers(tmp_path, 1, dict(enumerate(two)), keep=set(trained.state_dict()))
    checkpoint.commit(tmp_path, 1, checkpoint.describe_run(_cfg(GPT2, 2, 2), None, 2), files)
    torch.manual_seed(0)
    fresh = hf_models.gpt2(**GPT2["model_kwargs"])[0]
    four = split.trace(fresh, inputs[:2], ["transformer.h.1", "transformer.h.2", "transformer.h.3"])
    checkpoint.load_layers(checkpoint.latest(tmp_path), dict(enumerate(four)), keep=set(fresh.state_dict()))
    for name, value in trained.state_dict().items():          # the pieces hold the module's own Parameters
        assert torch.equal(fresh.state_dict()[name], value), name


def test_export_of_a_list_of_layers_loads_into_the_factorys_layers(tmp_path):
    from pipeline_ref import models
    from pipeline_ref.__main__ import main
    layers = models.mlp(depth=3, width=4, batch=8)[0]
    with torch.no_grad():
        layers[1][0].weight.add_(1.0)           # trained: not what the factory makes
    cfg = RunConfig(model="mlp", model_kwargs={"depth": 3, "width": 4, "batch": 8})
    checkpoint.commit(tmp_path, 1, checkpoint.describe_run(cfg, None, 3),
                      checkpoint.save_layers(tmp_path, 1, dict(enumerate(layers))))
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "out")]) == 0
    fresh = torch.nn.Sequential(*models.mlp(depth=3, width=4, batch=8)[0])
    fresh.load_state_dict(torch.load(tmp_path / "out" / "state_dict.pt"))
    trained = torch.nn.Sequential(*layers).state_dict()
    assert fresh.state_dict().keys() == trained.keys()
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, trained[name]), name
    (checkpoint.step_folder(tmp_path, 1) / "layer-002.pt").write_bytes(b"not a checkpoint")
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "again")]) == 2      # refused in one line


def test_an_unfinished_step_never_loads(tmp_path):
    layers = [torch.nn.Linear(2, 2) for _ in range(2)]
    files = checkpoint.save_layers(tmp_path, 1, dict(enumerate(layers)))
    checkpoint.commit(tmp_path, 1, checkpoint.describe_run(RunConfig(), None, 2), files)
    weights = {k: v.clone() for k, v in layers[0].state_dict().items()}
    # A crash while step 2 was written: its layers (one half-written, under a temporary name), no marker.
    with torch.no_grad():
        layers[0].weight.add_(1.0)
    checkpoint.save_layers(tmp_path, 2, {0: layers[0]})
    (checkpoint.step_folder(tmp_path, 2) / ".layer-001.pt.tmp-123").write_bytes(b"half")
    (tmp_path / checkpoint.LATEST).write_text("step-000002")         # even if the pointer had moved on
    saved = checkpoint.latest(tmp_path)
    assert saved.folder.name == "step-000001" and saved.step == 1
    assert saved.note.endswith("names step-000002, which has no complete.json (a save cut short): resuming "
                               "from step-000001, the newest complete checkpoint")
    (tmp_path / checkpoint.LATEST).unlink()                          # even without the pointer
    assert checkpoint.latest(tmp_path).folder.name == "step-000001"
    checkpoint.load_layers(saved, {0: layers[0]})
    assert torch.equal(layers[0].weight, weights["weight"])
    assert json.loads((saved.folder / "complete.json").read_text())["format"] == checkpoint.FORMAT
