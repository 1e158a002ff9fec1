"""The interactive simulator of lessons 02 and 03 (lessons/lesson_code/simulator_widget.py), driven without a
browser: moving a slider redraws the chart and the utilization line.

    .venv/bin/python -m pytest -q tests/test_lesson_widgets.py
"""
import sys
from pathlib import Path

import pytest

pytest.importorskip("ipywidgets")

LESSONS = Path(__file__).resolve().parents[1] / "lessons"
if str(LESSONS) not in sys.path:
    sys.path.insert(0, str(LESSONS))

from lesson_code import simulator_widget  # noqa: E402
from pipeline_ref import schedules, simulate  # noqa: E402

PNG = b"\x89PNG"


def test_render_draws_the_simulated_step_and_its_utilization():
    png, text = simulator_widget.render("gpipe", 4, 8)
    assert png.startswith(PNG)
    trace = simulate.simulate(schedules.build("gpipe", 4, 8), forward=1.0, backward=2.0)
    assert f"simulated utilization {trace.utilization:.3f}, theory {simulate.theory_utilization('gpipe', 4, 8):.3f}" in text
    assert f"step {trace.makespan:g} cost units" in text and str(trace.peak_stashed) in text


def test_moving_the_sliders_redraws():
    widget = simulator_widget.SimulatorWidget(("naive", "gpipe", "1f1b"), stages=4, microbatches=8)
    first_chart, first_text = bytes(widget.chart.value), widget.summary.value
    assert first_chart.startswith(PNG) and "1f1b, p = 4, m = 8" in first_text
    widget.set(stages=2)
    assert "1f1b, p = 2, m = 8" in widget.summary.value and bytes(widget.chart.value) != first_chart
    widget.microbatches.value = 1          # as a hand on the slider does: the observer redraws
    assert "p = 2, m = 1: simulated utilization 0.500, theory 0.500" in widget.summary.value
    widget.schedule.value = "naive"
    assert widget.summary.value.startswith("<code>naive, p = 2, m = 1")
    assert widget.schedule.options == ("naive", "gpipe", "1f1b")
    assert (widget.stages.min, widget.stages.max, widget.microbatches.max) == (1, 8, 32)
