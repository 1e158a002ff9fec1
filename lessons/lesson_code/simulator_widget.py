"""An interactive simulator for lessons 02 and 03: sliders for stages and microbatches, a schedule menu, and the
simulated Gantt chart with its utilization, redrawn on every change.

    widget = simulator_widget.SimulatorWidget(("naive", "gpipe", "1f1b"), stages=4, microbatches=8)
    widget            # the last expression of a cell: Jupyter shows the sliders and the chart
    widget.set(stages=2, microbatches=4, schedule="gpipe")      # what moving the sliders does

The chart is ``pipeline_ref.sim.plot.gantt`` of ``pipeline_ref.sim.simulate.simulate`` (forward 1, backward 2 cost units),
drawn into a PNG and shown in an ``ipywidgets.Image``, so everything, the redraw included, runs without a
browser (tests/test_lessons.py moves the sliders). On GitHub, where widgets do not run, the lesson's static
charts above it say the same.
"""
from __future__ import annotations

import io

import ipywidgets as widgets
from matplotlib.figure import Figure

from pipeline_ref import schedules, simulate
from pipeline_ref.sim import plot

FORWARD, BACKWARD = 1.0, 2.0


def render(schedule: str, stages: int, microbatches: int) -> tuple[bytes, str]:
    """The simulated step of ``schedule`` as a PNG, and one line: simulated utilization beside the theory."""
    trace = simulate.simulate(schedules.build(schedule, stages, microbatches), forward=FORWARD, backward=BACKWARD)
    theory = simulate.theory_utilization(schedule, stages, microbatches)
    # A Figure, not pyplot: nothing is drawn into the notebook behind the widget's back.
    fig = Figure(figsize=(9, 0.45 * stages + 1.4))
    ax = fig.add_subplot()
    plot.gantt(trace, ax, title=f"simulated {schedule}, {stages} stages, {microbatches} microbatches")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    summary = (f"{schedule}, p = {stages}, m = {microbatches}: simulated utilization {trace.utilization:.3f}, "
               f"theory {theory:.3f}; step {trace.makespan:g} cost units (F = {FORWARD:g}, B = {BACKWARD:g}); "
               f"peak stashed per stage {trace.peak_stashed}")
    return buffer.getvalue(), summary


class SimulatorWidget(widgets.VBox):
    """Sliders and a menu above the simulated chart; every change redraws it (``update``)."""

    def __init__(self, names=("naive", "gpipe", "1f1b"), stages: int = 4, microbatches: int = 8,
                 max_stages: int = 8, max_microbatches: int = 32):
        self.schedule = widgets.Dropdown(options=list(names), value=names[-1], description="schedule")
        self.stages = widgets.IntSlider(value=stages, min=1, max=max_stages, description="stages p")
        self.microbatches = widgets.IntSlider(value=microbatches, min=1, max=max_microbatches,
                                              description="microbatches m")
        self.chart = widgets.Image(format="png")
        self.summary = widgets.HTML()
        super().__init__([widgets.HBox([self.schedule, self.stages, self.microbatches]), self.summary, self.chart])
        for control in (self.schedule, self.stages, self.microbatches):
            control.observe(self.update, names="value")
        self.update()

    def update(self, change=None) -> None:
        """Redraw for the controls' current values (the sliders call this on every change)."""
        self.chart.value, text = render(self.schedule.value, self.stages.value, self.microbatches.value)
        self.summary.value = f"<code>{text}</code>"

    def set(self, stages: int | None = None, microbatches: int | None = None, schedule: str | None = None) -> None:
        """Move the controls from code, as a student moves them by hand."""
        if schedule is not None:
            self.schedule.value = schedule
        if stages is not None:
            self.stages.value = stages
        if microbatches is not None:
            self.microbatches.value = microbatches
