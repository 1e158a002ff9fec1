"""The planner (step_model.py, planner.py, plan_cli.py) and its check against published runs
(benchmarks/published_runs.py, whose committed table this recomputes: it is arithmetic, so deterministic).

    .venv/bin/python -m pytest -q tests/test_planner.py
"""
import csv
import importlib.util
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline_ref.sim import cluster, step_model, theory
from pipeline_ref.tools import planner

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("published_runs", ROOT / "benchmarks" / "published_runs.py")
published_runs = importlib.util.module_from_spec(_spec)
sys.modules["published_runs"] = published_runs      # its dataclasses look their module up by name
_spec.loader.exec_module(published_runs)

GPT3 = cluster.MODELS["gpt3-175b"]


def plan(**changes) -> step_model.Plan:
    base = step_model.Plan(GPT3, "a100-80gb", tp=8, pp=8, dp=1, microbatch=1, num_microbatches=64,
                           recompute="full")
    return replace(base, **changes)


def test_one_stage_has_no_bubble_and_more_stages_the_closed_forms():
    alone = step_model.estimate(plan(model=cluster.MODELS["megatron-1.7b"], tp=1, pp=1, recompute="none"))
    assert alone.fits and alone.bubble == 0.0
    for schedule, chunks in (("1f1b", 1), ("interleaved", 2), ("interleaved", 4)):
        e = step_model.estimate(plan(schedule=schedule, chunks=chunks))
        closed = theory.bubble(schedule, 8, 64, chunks=chunks)
        # Messages on the fill and drain add a little to the closed form's bubble, never take any away.
        assert closed <= e.bubble <= closed + 0.01, (schedule, chunks, e.bubble, closed)


def test_step_time_is_the_sum_of_its_parts():
    e = step_model.estimate(plan(dp=4))
    busy = e.step_seconds - sum(e.parts[k] for k in ("bubble", "dp", "optimizer"))
    fwd, bwd, _ = e.stage_costs
    assert busy == pytest.approx(64 * max(f + b for f, b in zip(fwd, bwd)))
    assert e.parts["dp"] > 0 and e.parts["recompute"] > 0 and e.parts["tp_comm"] > 0
    assert step_model.estimate(plan(dp=4, overlap_dp=True)).parts["dp"] == 0.0


def test_memory_grows_with_what_a_gpu_keeps():
    base = step_model.memory_bytes(plan(recompute="none"))
    assert step_model.memory_bytes(plan(recompute="none", microbatch=2, num_microbatches=32)) > base
    assert step_model.memory_bytes(plan(recompute="full")) < base
    assert step_model.memory_bytes(plan(recompute="none", pp=16)) < base
    assert step_model.memory_bytes(plan(recompute="none", schedule="gpipe")) > base
    assert step_model.memory_bytes(plan(recompute="none", distributed_optimizer=True, dp=8)) < \
        step_model.memory_bytes(plan(recompute="none", dp=8))
    # The seed's numbers: GPT-3's weights alone are 350 GB in 16 bits; 1 stage of 8-way tensor parallelism
    # cannot hold its weights, gradients and Adam state in 80 GB.
    assert 2 * GPT3.num_parameters() / 1e9 == pytest.approx(349, rel=0.01)
    assert not step_model.estimate(plan(pp=1, num_microbatches=8)).fits


@pytest.mark.parametrize("changes,reason", [({"tp": 16}, "spans more than a node"),
                                            ({"tp": 5}, "heads do not split"),
                                            ({"pp": 128}, "layers cannot fill"),
                                            ({"schedule": "interleaved", "chunks": 2, "num_microbatches": 12},
                                             "multiple of stages"),
                                            ({"schedule": "zb-h1"}, "no recomputation")])
def test_a_plan_that_cannot_run_says_why(changes, reason):
    e = step_model.estimate(plan(**changes))
    assert not e.fits and reason in e.problem


def test_the_simulator_agrees_with_the_closed_form_on_a_finalist():
    e = step_model.estimate(plan(dp=2, num_microbatches=16))
    replayed = step_model.simulate_estimate(e)
    assert replayed.simulated
    # The replay sees the last stage's logits only on that stage, the closed form on every stage: close, not
    # equal.
    assert replayed.step_seconds == pytest.approx(e.step_seconds, rel=0.05)
    assert replayed.step_seconds <= e.step_seconds * (1 + 1e-9)


def test_rank_returns_fitting_plans_fastest_first_and_says_why_the_others_lost():
    space = planner.Space(GPT3, "a100-80gb", num_gpus=64, global_batch=64)
    found = planner.search(space)
    ranked = planner.rank(space, finalists=2)
    assert ranked and all(e.fits for e in ranked)
    assert len(ranked) == sum(e.fits for e in found)
    times = [e.step_seconds for e in ranked]
    assert times[2:] == sorted(times[2:]) and times[:2] == sorted(times[:2])
    assert all(e.plan.num_gpus == 64 and e.plan.global_batch == 64 for e in found)
    reasons = planner.why_lost(found, ranked[0])
    assert sum(reasons.values()) == len(found) - 1 and reasons["does not fit"] > 0


def test_a_bad_space_is_refused_before_any_search():
    with pytest.raises(ValueError, match="unknown device"):
        planner.Space(GPT3, "tpu", 8, 8)
    with pytest.raises(ValueError, match="not whole nodes"):
        planner.Space(GPT3, "h100", 12, 12)
    with pytest.raises(ValueError, match="unknown schedule"):
        planner.Space(GPT3, "h100", 8, 8, schedules=("1f1b", "pipedream"))


def test_the_plan_command(capsys):
    from pipeline_ref.__main__ import main
    assert main(["plan", "--model", "gpt3-175b", "--gpus", "64", "--device", "h100", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "GPT-3 175B" in out and "why the others lost" in out and out.count("tp=") == 3
    assert main(["plan", "--model", "nonesuch", "--gpus", "8"]) == 2
    assert "neither a preset" in capsys.readouterr().err


def test_a_hugging_face_config_becomes_a_shape(tmp_path):
    from pipeline_ref.tools import plan_cli
    path = tmp_path / "config.json"
    path.write_text('{"model_type": "llama", "num_hidden_layers": 80, "hidden_size": 8192, '
                    '"num_attention_heads": 64, "num_key_value_heads": 8, "intermediate_size": 28672, '
                    '"vocab_size": 128256, "max_position_embeddings": 8192, "hidden_act": "silu", '
                    '"tie_word_embeddings": false}')
    shape = plan_cli.from_hf_config(str(path))
    assert shape.num_parameters() == cluster.MODELS["llama3-70b"].num_parameters()
    assert plan_cli.from_hf_config(str(tmp_path)).num_parameters() == shape.num_parameters()     # its folder
    gpt2 = plan_cli.from_hf_config({"model_type": "gpt2", "n_layer": 12, "n_embd": 768, "n_head": 12,
                                    "n_positions": 1024, "vocab_size": 50257})
    assert (gpt2.num_layers, gpt2.hidden, gpt2.heads, gpt2.seq_len, gpt2.ffn) == (12, 768, 12, 1024, 3072)
    assert gpt2.num_parameters() / 1e6 == pytest.approx(124.4, rel=0.01)      # GPT-2 small's 124M


def test_published_table_recomputes_to_the_committed_one():
    efficiency, rows = published_runs.table()
    assert efficiency == step_model.EFFICIENCY
    committed = list(csv.DictReader(open(ROOT / "benchmarks" / "results" / "planner" / "results.csv")))
    assert [{k: str(r.get(k, "")) for k in published_runs.COLUMNS} for r in rows] == committed
    calibrated = next(r for r in rows if r["run"] == published_runs.CALIBRATION_ROW)
    assert abs(calibrated["error"]) < 1e-3
    for row in rows:        # every published configuration fits the model's memory
        assert row["rank"] != "", f"{row['run']}: its published configuration does not fit the model"


def test_published_runs_transcription_agrees_with_its_own_columns():
    for run in published_runs.RUNS:
        assert published_runs.transcription_problem(run) == "", run.name
        assert run.source and run.microbatch > 0
    slipped = replace(published_runs.RUNS[0], aggregate_pflops=44.0)     # a misplaced decimal point
    assert "aggregate" in published_runs.transcription_problem(slipped)
    wrong_peak = replace(published_runs.RUNS[2], percent_of_peak=45)
    assert "peak" in published_runs.transcription_problem(wrong_peak)
    other_shape = replace(published_runs.RUNS[3], shape=(64, 6144, 40))
    assert "heads" in published_runs.transcription_problem(other_shape)


def test_the_exact_published_plan_is_the_sources_microbatch_and_virtual_stages():
    for run in published_runs.RUNS:
        space = published_runs.space(run)
        exact = [p for p in planner.plans(space) if published_runs.is_published(run, p, exact=True)]
        assert exact and {(p.microbatch, p.chunks) for p in exact} == {(run.microbatch, run.chunks)}, run.name
        assert {p.recompute for p in exact} <= ({"full"} if run.era == "2021" else {"none", "full"})


def test_the_docstring_example_holds():
    import doctest
    result = doctest.testmod(planner)
    assert result.attempted > 0 and result.failed == 0, result
