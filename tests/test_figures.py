"""Lesson figures are readable on the course site: every label at least 9 pt at the size it is shown.

Run: ``.venv/bin/python -m pytest -q tests/test_figures.py`` (fast: no MPI, no notebook, simulated traces).

The conversion. A notebook saves a figure as a PNG at the figure's dpi D, cropped to its tight bounding box
of W inches (plus bbox_inches="tight"'s 0.1 in padding each side), so the PNG is W*D pixels wide, and a label
of f points is f*D/72 PNG pixels tall. The site shows a PNG pixel as one CSS pixel (1/96 in), scaled down to
the 784 px content column (book/site.css: ``img { max-width: 100% }``) when wider. So the label is shown at
    f * D/72 * min(1, 784/(W*D)) CSS px  =  f * (D/96) * min(1, 784/(W*D)) pt     (1 pt = 96/72 CSS px).
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lessons"))   # where the lessons import it from
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from lesson_code import diagrams, l04_data_parallel as l04, l05_balancing as l05  # noqa: E402
from lesson_code import l08_real_transformer as l08, l09_asynchronous as l09  # noqa: E402
from pipeline_ref import schedules, simulate
from pipeline_ref.engine import topology
from pipeline_ref.front import partition
from pipeline_ref.sim import plot  # noqa: E402

COLUMN_PX = 784          # the site's content column
CSS_PX_PER_INCH = 96
MIN_DISPLAYED_PT = 9.0
TIGHT_PAD_INCHES = 0.1   # savefig(bbox_inches="tight")'s default pad_inches


def displayed_points(font_points: float, width_inches: float, dpi: float) -> float:
    """A font of ``font_points`` in a figure saved ``width_inches`` wide at ``dpi``, as the site shows it."""
    return font_points * (dpi / CSS_PX_PER_INCH) * min(1.0, COLUMN_PX / (width_inches * dpi))


def small_labels(fig) -> list[tuple[str, float]]:
    """Every visible, non-empty text of ``fig`` shown under 9 pt: (text, displayed points)."""
    fig.canvas.draw()
    box = fig.get_tightbbox(fig.canvas.get_renderer())
    width = box.width + 2 * TIGHT_PAD_INCHES
    # An axis turned off (ax.axis("off")) keeps its tick and axis labels "visible" but never draws them.
    hidden = {id(t) for ax in fig.axes if not ax.axison
              for t in [*ax.get_xticklabels(which="both"), *ax.get_yticklabels(which="both"),
                        ax.xaxis.label, ax.yaxis.label]}
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and id(t) not in hidden]
    shown = [(t.get_text(), displayed_points(t.get_fontsize(), width, fig.dpi)) for t in texts]
    return [(text, round(points, 1)) for text, points in shown if points < MIN_DISPLAYED_PT]


def test_the_conversion():
    # 784 px at 96 px per inch is 8.17 in: a wider figure is scaled down, a narrower one is not.
    assert displayed_points(9, 784 / 100, 100) == pytest.approx(9 * 100 / 96)
    assert displayed_points(12, 2 * 784 / 100, 100) == pytest.approx(12 * 100 / 96 / 2)


def l08_pieces():
    """Rows and cuts shaped like lesson 08's GPT-2 (8 pieces, two tensors over most cuts)."""
    names = ["transformer.wte, lm_head", "transformer.wpe"] + [f"transformer.h.{i}" for i in range(4)] \
        + ["transformer.ln_f", "lm_head"]
    rows = [{"piece": i, "holds": name, "parameters": 1000 * (i + 1) ** 3} for i, name in enumerate(names)]
    cuts = [{"cut": f"{i} -> {i + 1}", "name": f"t{i}", "shape": (4, 64, 64), "dtype": "float32",
             "gradient back": True} for i in range(7)]
    masks = [{"cut": f"{i} -> {i + 1}", "name": "mask", "shape": (4, 1, 64, 64), "dtype": "bool",
              "gradient back": False} for i in range(5)]
    return rows, cuts + masks, [range(0, 3), range(3, 8)]


def l09_versions():
    """Lesson 09's chart as the lesson draws it: three 11 in panels with each box's weight version."""
    p, m, steps = 3, 3, 3
    traces = {"flush": l09.flushed(p, m, steps),
              "pipedream": simulate.simulate(schedules.build("pipedream", p, m, steps=steps)),
              "pipedream-2bw": simulate.simulate(schedules.build("pipedream-2bw", p, m, steps=steps))}
    fig, axes = plt.subplots(3, 1, figsize=(11, 6.5), sharex=True)
    for ax, (rule, trace) in zip(axes, traces.items()):
        plot.gantt(trace, ax, title=f"{rule}: {steps} steps of {m} (simulated)")
        l09.annotate_versions(ax, trace, rule, m)
    fig.tight_layout()
    return fig, traces


def lesson_04_grid(num_stages: int, title: str):
    """One of lesson 04's two grids, as its notebook cell draws them: each in a figure of its own."""
    return topology.draw(topology.Grid(num_stages, 2), title=title).figure


def memberships(num_stages: int, num_pipelines: int) -> list[dict]:
    """What lesson 00's ``split_grid`` reports, without MPI (world rank: pipeline * num_stages + stage)."""
    return [{"world": pipe * num_stages + stage, "stage": stage, "pipeline": pipe,
             "pipeline members": [pipe * num_stages + s for s in range(num_stages)],
             "data members": [q * num_stages + stage for q in range(num_pipelines)]}
            for pipe in range(num_pipelines) for stage in range(num_stages)]


def lesson_04_layouts() -> list[dict]:
    """Rows shaped like lesson 04's layout comparison (made-up sizes: only the drawing is checked)."""
    return [{"name": name, "parameter bytes": params * 2**20, "stash bytes": stash * 2**20,
             "samples/s": speed}
            for name, params, stash, speed in [("pp=4", 10, 6, 300), ("pp=2 x dp=2", 20, 4, 400),
                                               ("dp=4", 40, 2, 500)]]


def lesson_05_layers():
    """Lesson 05's chart for a five-layer model whose head costs most, cut by the three partitioners."""
    names = ["embedding", "block 0", "block 1", "block 2", "head"]
    params, costs = [100, 400, 400, 400, 800], [0.1, 1.0, 1.0, 1.0, 3.0]
    splits = {"uniform": partition.uniform(5, 2), "parameters": partition.by_cost(params, 2),
              "time": partition.by_cost(costs, 2)}
    return l05.layer_bars(names, params, costs, splits)


def lesson_03_phases():
    """Lesson 03's 1F1B chart (10 in wide) with its warmup, steady and cooldown bars."""
    fig, ax = plt.subplots(figsize=(10, 3))
    schedule = schedules.build("1f1b", 4, 8)
    trace = simulate.simulate(schedule, forward=1.0, backward=2.0)
    diagrams.mark_phases(plot.gantt(trace, ax, title="simulated 1F1B"), schedule, trace)
    fig.tight_layout()
    return fig


SIMULATED = simulate.simulate(schedules.build("1f1b", 4, 8))
FIGURES = {
    "l08 draw_pieces": lambda: l08.draw_pieces(*l08_pieces()),
    "l09 versions": lambda: l09_versions()[0],
    "plot.gantt": lambda: plot.gantt(SIMULATED).figure,
    "plot.compare_gantt": lambda: plot.compare_gantt(SIMULATED, SIMULATED),
    "plot.utilization_curve": lambda: plot.utilization_curve([("gpipe", 4, 0.6)], num_stages=4).figure,
    "diagrams.deadlock_diagram": diagrams.deadlock_diagram,
    "diagrams.split_model_diagram": lambda: diagrams.split_model_diagram(8, partition.uniform(8, 2)),
    "diagrams.communicator_grid": lambda: diagrams.communicator_grid(memberships(2, 2)),
    "diagrams.mark_phases": lesson_03_phases,
    "topology.draw 2x2": lambda: topology.draw(topology.Grid(2, 2)).figure,
    "topology.draw 4x2": lambda: topology.draw(topology.Grid(4, 2)).figure,
    "topology.draw lesson 04, 2 x 2": lambda: lesson_04_grid(2, "pp = 2 x dp = 2 (this lesson's 4 ranks)"),
    "topology.draw lesson 04, 4 x 2": lambda: lesson_04_grid(
        4, "pp = 4 x dp = 2: rows are pipelines, columns data groups"),
    "l04 layout_bars": lambda: l04.layout_bars(lesson_04_layouts()),
    "l05 layer_bars": lesson_05_layers,
}


@pytest.mark.parametrize("make", [pytest.param(*(f.values if hasattr(f, "values") else (f,)),
                                               marks=getattr(f, "marks", ()), id=name)
                                  for name, f in FIGURES.items()])
def test_labels_are_readable_on_the_site(make):
    fig = make()
    try:
        assert small_labels(fig) == []
    finally:
        plt.close(fig)


def test_every_panel_of_lesson_09_hatches_its_idle_time():
    # The flushed panel is built, not simulated: it must carry the waits as the simulated ones do.
    fig, traces = l09_versions()
    plt.close(fig)
    assert all(trace.waits for trace in traces.values())
