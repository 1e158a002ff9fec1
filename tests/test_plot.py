"""Smoke tests of pipeline_ref.sim.plot under the Agg backend: figures are drawn, files written, boxes counted."""
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from pipeline_ref import schedules, simulate
from pipeline_ref.sim import plot  # noqa: E402
from pipeline_ref.sim.trace import Event, Trace, TraceMeta  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def boxes(ax, gid):
    return [p for p in ax.patches if p.get_gid() == gid]


def test_gantt_draws_one_box_per_event_and_per_wait():
    trace = simulate.simulate(schedules.build("1f1b", 3, 4), latency=0.2)
    assert trace.waits                                   # latency makes ranks wait
    ax = plot.gantt(trace, title="1f1b")
    assert len(boxes(ax, plot.EVENT_GID)) == len(trace.events)
    assert len(boxes(ax, plot.WAIT_GID)) == len(trace.waits)
    assert len(ax.patches) == len(trace.events) + len(trace.waits)
    assert ax.get_title() == "1f1b"


def test_gantt_layout_and_colours():
    trace = Trace(num_ranks=2, events=[Event(0, "F", 7, 0, 0, 1), Event(1, "B", 7, 0, 1, 3)])
    ax = plot.gantt(trace)
    bottom, top = ax.get_ylim()
    assert bottom > top                                  # inverted: rank 0 on top
    assert [t.get_text() for t in ax.get_yticklabels()] == ["rank 0", "rank 1"]
    f_box, b_box = sorted(boxes(ax, plot.EVENT_GID), key=lambda r: r.get_x())
    assert (f_box.get_x(), f_box.get_width(), b_box.get_x(), b_box.get_width()) == (0, 1, 1, 2)
    assert f_box.get_y() < b_box.get_y()                 # rank 0 row above rank 1 row
    assert matplotlib.colors.to_hex(f_box.get_facecolor()) == plot.OP_COLORS["F"].lower()
    assert matplotlib.colors.to_hex(b_box.get_facecolor()) == plot.OP_COLORS["B"].lower()
    assert [t.get_text() for t in ax.texts] == ["7", "7"]      # labelled with the microbatch
    assert "cost units" in ax.get_xlabel()


def test_gantt_on_given_axes_and_measured_unit():
    fig, ax = plt.subplots()
    trace = Trace(num_ranks=1, events=[Event(0, "F", 0, 0, 0, 0.01)], meta=TraceMeta(source="measured"))
    assert plot.gantt(trace, ax=ax) is ax
    assert ax.get_xlabel() == "time (s)"


def test_compare_gantt_saves_a_png(tmp_path):
    sched = schedules.build("gpipe", 2, 3)
    measured = simulate.simulate(sched, forward=[1.0, 1.3], backward=[2.2, 2.0], latency=0.1, time_unit="s")
    measured.meta = replace(measured.meta, source="measured")
    predicted = simulate.simulate(sched, time_unit="s")
    path = tmp_path / "cmp.png"
    fig = plot.compare_gantt(measured, predicted, path=path, title="gpipe")
    assert path.exists() and path.stat().st_size > 1000
    top, bottom = fig.axes[:2]
    assert top.get_xlim() == bottom.get_xlim()           # shared axis, so lengths compare
    assert top.get_xlim()[1] >= max(measured.makespan, predicted.makespan)
    assert len(boxes(top, plot.EVENT_GID)) == len(measured.events)
    assert len(boxes(bottom, plot.EVENT_GID)) == len(predicted.events)
    assert bottom.get_xlabel() == "time (s)"


def test_compare_gantt_without_path_returns_the_figure(tmp_path):
    trace = simulate.simulate(schedules.build("naive", 2, 2))
    fig = plot.compare_gantt(trace, trace)
    assert isinstance(fig, matplotlib.figure.Figure)
    assert not list(tmp_path.iterdir())


def test_utilization_curve(tmp_path):
    points = [("naive", 4, 0.24), ("gpipe", 4, 0.55), ("gpipe", 8, 0.7), ("1f1b", 8, 0.71)]
    path = tmp_path / "curve.png"
    ax = plot.utilization_curve(points, num_stages=4, path=path)
    assert path.exists() and path.stat().st_size > 1000
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("1/4" in label for label in labels)
    assert {"naive (measured)", "gpipe (measured)", "1f1b (measured)"} <= set(labels)
    theory = next(line for line in ax.get_lines() if "m/(m+" in line.get_label())
    x, y = theory.get_data()
    assert y[0] == pytest.approx(1 / 4) and y[-1] == pytest.approx(x[-1] / (x[-1] + 3))
    gpipe = next(line for line in ax.get_lines() if line.get_label() == "gpipe (measured)")
    assert list(gpipe.get_ydata()) == [0.55, 0.7]
    assert ax.get_xlabel() and ax.get_ylabel() == "utilization"


def test_importing_plot_does_not_import_pyplot():
    code = "import sys, pipeline_ref.sim.plot; sys.exit('matplotlib.pyplot' in sys.modules)"
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0


def test_every_built_in_schedule_has_its_own_colour_and_marker():
    from pipeline_ref import schedules
    from pipeline_ref.sim import plot
    assert set(schedules.GENERATORS) <= set(plot.SCHEDULE_COLORS) == set(plot.SCHEDULE_MARKERS)
    assert len(set(plot.SCHEDULE_COLORS.values())) == len(plot.SCHEDULE_COLORS)
