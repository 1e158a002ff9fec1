"""The benchmark sweep (pipeline_ref.tools.bench): its plan, numbers, tables and files. Never asserts a timing.

Pure tests use synthetic results made by the simulator; one small real run (2 ranks, a tiny
model, two microbatch counts) checks that the command writes its files.
    .venv/bin/python -m pytest -q tests/test_bench.py
"""
import argparse
import csv

import pytest

from pipeline_ref import measure, schedules, simulate
from pipeline_ref.engine import machine
from pipeline_ref.tools import bench
from pipeline_ref.results import RunResult
from pipeline_ref.config import ConfigError, RunConfig
from pipeline_ref.sim.trace import Event, Trace, Wait, executor_gaps


def test_plan_is_one_group_per_depth_with_every_schedule_and_microbatch_count():
    groups = bench.plan(["naive", "1f1b"], [1, 2, 4], [2, 4], steps=3, model_kwargs={"depth": 8, "batch": 16})
    assert [depth for depth, _ in groups] == [2, 4]
    for depth, configs in groups:
        assert [(c.schedule, c.microbatches) for c in configs] == [
            ("naive", 1), ("naive", 2), ("naive", 4), ("1f1b", 1), ("1f1b", 2), ("1f1b", 4)]
        assert all(c.pp == depth and c.dp == 1 and c.steps == 3 and c.model == "mlp" for c in configs)


@pytest.mark.parametrize("ask, message", [
    (dict(schedule_names=["zigzag"]), "unknown schedule"),
    (dict(microbatches=[3]), "does not split"),                 # a batch of 16 in 3 microbatches
    (dict(stages=[16]), "only 8 layers"),
])
def test_plan_refuses_a_bad_sweep_before_any_launch(ask, message):
    options = dict(schedule_names=["gpipe"], microbatches=[2], stages=[2], model_kwargs={"depth": 8, "batch": 16})
    with pytest.raises(ConfigError, match=message):
        bench.plan(**{**options, **ask})


def test_more_ranks_than_free_cores_warns():
    assert machine.core_warning(2, 2) is None
    assert "4 ranks on 2 free core(s)" in machine.core_warning(4, 2)


def _result(schedule="gpipe", pp=2, m=4, forward=1.0, backward=2.0, latency=0.0) -> bench.Measured:
    """What a sweep returns for a run, with a simulated trace standing in for a measured one."""
    trace = simulate.simulate(schedules.build(schedule, pp, m), forward, backward, latency, time_unit="s")
    trace.peak_stashed_bytes = [1024 * n for n in trace.peak_stashed]
    result = RunResult(config=RunConfig(schedule=schedule, pp=pp, microbatches=m), losses=[1.0], trace=trace,
                       step_seconds=[trace.makespan], step_utilization=[trace.utilization], memory=[])
    return bench.Measured(result, cpu_share=1.0)


def test_numbers_of_a_run_beside_theory_and_the_calibrated_prediction():
    numbers, measured, predicted = bench.run_numbers(_result("1f1b", 2, 4, forward=0.01, backward=0.02))
    assert numbers["measured"] == pytest.approx(4 / 5) and numbers["theory"] == pytest.approx(4 / 5)
    assert numbers["ratio"] == pytest.approx(1.0)
    assert numbers["prediction_error"] == pytest.approx(0.0)      # a simulated run is its own best prediction
    assert numbers["forward_ms"] == [10.0, 10.0] and numbers["backward_ms"] == [20.0, 20.0]
    assert numbers["peak_stashed"] == [2, 1] == numbers["theory_peak_stashed"]
    assert numbers["peak_stashed_bytes"] == [2048, 1024]
    assert predicted.makespan == pytest.approx(measured.makespan)


def test_a_split_backward_counts_its_i_and_w_as_the_backward():
    numbers, _, _ = bench.run_numbers(_result("zb-h1", 2, 4, forward=0.01, backward=0.02))   # I = W = 10 ms
    assert numbers["backward_ms"] == [20.0, 20.0]


def test_summary_takes_medians_over_repeats_and_the_median_step_for_lists():
    runs = [_result(forward=f, backward=2 * f) for f in (1.0, 3.0, 2.0)]
    row, trace, _ = bench.summarize(runs)
    assert row["repeats"] == 3
    assert row["step_s"] == pytest.approx(trace.makespan) == pytest.approx(2.0 * 3 * 5)   # (m + p - 1)(F + B)
    assert row["forward_ms"] == [2000.0, 2000.0]
    assert row["measured_min"] <= row["measured"] <= row["measured_max"]


def _comparison(steps_per_round: dict) -> "measure.Comparison":
    """A measure.Comparison whose runs' traces the simulator made; each run reports a warm-up step then ``s``."""
    results = {}
    for name, steps in steps_per_round.items():
        runs = [_result("1f1b", 2, 4, forward=0.01, backward=0.02).result for _ in steps]
        for run, step in zip(runs, steps):
            run.step_seconds = [0.5, step]
        results[name] = runs
    configs = {name: runs[0].config for name, runs in results.items()}
    return measure.Comparison(configs, results, {n: [1.0] * len(v) for n, v in steps_per_round.items()},
                              warmup=1, free_cores=2)


def test_rows_of_a_comparison_carry_warm_up_spread_band_and_flag(tmp_path):
    span = 0.15                 # (m + p - 1)(F + B) of the simulated 1f1b runs
    c = _comparison({"inside": [span, span * 1.01, span * 0.99], "outside": [span * 2] * 3})
    (inside, _, _), (outside, _, _) = bench.comparison_rows(c)
    assert inside["warmup_step_s"] == 0.5 and inside["step_s"] == pytest.approx(span)
    assert (inside["step_min_s"], inside["step_max_s"]) == pytest.approx((span * 0.99, span * 1.01))
    assert inside["band_low_s"] <= inside["band_predicted_s"] <= inside["band_high_s"]
    assert inside["flag"] == "" and "do not explain" in outside["flag"]
    table = bench.markdown_table([inside, outside]).splitlines()
    assert "| 500.0 | 150.0 (148.5-151.5) | 150.0-150.0 (150.0) | - |" in table[2]
    assert "| 300.0 (300.0-300.0) |" in table[3] and "do not explain" in table[3]
    with open(bench.write_csv([inside, outside], tmp_path / "r.csv")) as f:
        read = list(csv.DictReader(f))
    assert float(read[1]["band_high_s"]) == pytest.approx(span) and read[1]["flag"] == outside["flag"]


def test_executor_gaps_count_time_neither_computing_nor_waiting():
    events = [Event(0, "F", 0, 0, 0.0, 1.0), Event(0, "F", 1, 0, 1.1, 2.0), Event(0, "B", 0, 0, 3.0, 4.0)]
    waits = [Wait(0, "recv gradient 0 from rank 1", 2.0, 2.9)]           # 0.1 + 0.1 of gaps, 0.9 waiting
    gaps = executor_gaps(Trace(num_ranks=1, events=events, waits=waits))
    assert gaps["fraction"] == pytest.approx(0.2 / 4.0)
    assert gaps["per_action_s"] == pytest.approx(0.1)


def test_csv_and_markdown_hold_every_run(tmp_path):
    rows = [bench.summarize([_result(s, 2, m)])[0] for s in ("naive", "1f1b") for m in (1, 8)]
    with open(bench.write_csv(rows, tmp_path / "r.csv")) as f:
        read = list(csv.DictReader(f))
    assert tuple(read[0]) == bench.COLUMNS
    assert [(r["schedule"], r["microbatches"]) for r in read] == [("naive", "1"), ("naive", "8"), ("1f1b", "1"),
                                                                   ("1f1b", "8")]
    assert float(read[3]["theory"]) == pytest.approx(8 / 9)
    table = bench.markdown_table(rows).splitlines()
    assert len(table) == 2 + len(rows)
    assert all(line.count("|") == table[0].count("|") for line in table)
    assert table[-1].startswith("| 1f1b | 2 | 8 |") and "0.889" in table[-1]
    info = {"cpu": "Test CPU", "cores": 2, "cpu_count": 2, "platform": "x", "python": "3", "torch": "t",
            "mpi4py": "m", "mpich": "5", "date": "today", "load_average": [0.1, 0.1, 0.1]}
    text = bench.write_markdown(rows, tmp_path / "r.md", info, note="a note").read_text()
    assert "Test CPU, 2 free core(s)" in text and "a note" in text and table[-1] in text


def test_the_command_line_options():
    parser = argparse.ArgumentParser()
    bench.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench"])
    assert (args.schedules, args.microbatches, args.stages, args.gantt) == (["naive", "gpipe", "1f1b"],
                                                                            [1, 2, 4, 8, 16], None, None)
    args = parser.parse_args(["bench", "--stages", "2", "4", "--model-width", "64", "--gantt", "8"])
    assert (args.stages, args.model_width, args.gantt) == ([2, 4], 64, [8])


@pytest.mark.mpi
def test_a_small_real_sweep_writes_its_files(tmp_path, capsys):
    from pipeline_ref.__main__ import main
    out = tmp_path / "bench"
    assert main(["bench", "--out", str(out), "--schedules", "gpipe", "--microbatches", "1", "2", "--stages", "2",
                 "--repeats", "1", "--retries", "0", "--steps", "2",
                 "--model-depth", "2", "--model-width", "8", "--batch", "4"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"results.csv", "results.md", "utilization_p2.png", "gantt_gpipe_p2_m1.png",
            "gantt_gpipe_p2_m2.png"} <= names
    with open(out / "results.csv") as f:
        assert [(r["schedule"], r["microbatches"]) for r in csv.DictReader(f)] == [("gpipe", "1"), ("gpipe", "2")]
    captured = capsys.readouterr()
    assert "round 1/1 gpipe m=1: step" in captured.err and "round 1/1 gpipe m=2: step" in captured.err
    assert "| gpipe | 2 | 2 |" in captured.out and "too few rounds" in captured.out
