"""The demo: the pipeline depths it picks, and its rows (warm-up, median step with spread, band, flag).

Pure: the runs are the simulator's traces standing in for measured ones; `make demo` is the real run.
    .venv/bin/python -m pytest -q tests/test_demo.py
"""
import pytest

from pipeline_ref import measure, schedules, simulate
from pipeline_ref.tools import demo
from pipeline_ref.config import RunConfig
from pipeline_ref.tools.demo import pipeline_depths
from pipeline_ref.results import RunResult


def test_depths_fit_the_cores_or_gpus():
    assert pipeline_depths("cpu", cores=2, gpus=0) == [2]
    assert pipeline_depths("cpu", cores=6, gpus=0) == [2, 4]
    assert pipeline_depths("cuda", cores=2, gpus=8) == [2, 4, 8]
    assert pipeline_depths("cuda", cores=64, gpus=1) == [2]      # two ranks share the one GPU


def _runs(schedule: str, steps: list[float]) -> list[RunResult]:
    trace = simulate.simulate(schedules.build(schedule, 2, 8), 0.01, 0.02, time_unit="s")
    cfg = RunConfig(schedule=schedule, pp=2, microbatches=8, steps=2)
    return [RunResult(config=cfg, losses=[1.0], trace=trace, step_seconds=[0.9, step],
                      step_utilization=[trace.utilization] * 2, memory=[]) for step in steps]


def test_a_row_holds_the_protocols_numbers_and_the_table_shows_them(tmp_path, capsys):
    span = 0.27                     # (m + p - 1)(F + B) of the simulated runs
    results = {"gpipe": _runs("gpipe", [span] * 3), "1f1b": _runs("1f1b", [span * 1.5, span * 1.6, span * 1.4])}
    configs = {name: runs[0].config for name, runs in results.items()}
    c = measure.Comparison(configs, results, {name: [1.0] * 3 for name in results}, warmup=1, free_cores=2)
    gpipe, f1b = demo._row(c, "gpipe", 2, tmp_path), demo._row(c, "1f1b", 2, tmp_path)
    assert (tmp_path / "1f1b_p2_m8.png").exists()
    assert gpipe["warmup_step_s"] == 0.9 and gpipe["step_s"] == pytest.approx(span) and gpipe["flag"] == ""
    assert (f1b["step_min_s"], f1b["step_max_s"]) == pytest.approx((span * 1.4, span * 1.6))
    assert f1b["band_high_s"] == pytest.approx(span) and "do not explain" in f1b["flag"]
    assert f1b["theory"] == pytest.approx(8 / 9) and f1b["rounds"] == 3
    demo._print_table([gpipe, f1b])
    lines = capsys.readouterr().out.splitlines()
    assert "band (s)" in lines[1] and lines[2].startswith("gpipe") and lines[2].endswith("-")
    assert "0.405 (0.378-0.432)" in lines[3] and "0.270-0.270 (0.270)" in lines[3] and "do not explain" in lines[3]
