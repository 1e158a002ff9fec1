"""Pictures of traces: Gantt charts (measured beside simulated) and utilization curves.

    >>> from pipeline_ref import schedules, simulate

    >>> from pipeline_ref.sim import plot
    >>> trace = simulate.simulate(schedules.build("1f1b", 4, 8))
    >>> ax = plot.gantt(trace, title="1F1B, 4 stages, 8 microbatches")          # doctest: +SKIP
    >>> fig = plot.compare_gantt(measured, trace, path="1f1b.png")               # doctest: +SKIP
    >>> ax = plot.utilization_curve([("gpipe", 8, 0.70)], num_stages=4)          # doctest: +SKIP

One row per rank, rank 0 on top; each box is one action, labelled with its
microbatch and coloured by op (the same colours in every chart of the course);
hatched grey boxes are time spent waiting for a message, white gaps are idle.
matplotlib's pyplot is imported only when a figure is made, so importing this
module is cheap and works without a display (the Agg backend is enough).
"""
from __future__ import annotations

from pipeline_ref.sim.trace import Trace

OP_COLORS = {"F": "#4C72B0", "B": "#DD8452", "I": "#C44E52", "W": "#55A868"}
OP_NAMES = {"F": "forward", "B": "backward", "I": "input grad", "W": "weight grad"}
WAIT_COLOR = "#D9D9D9"
WAIT_HATCH = "///"
# Keyed by the schedules' names (schedules.GENERATORS; a test keeps them in step), distinct from the op
# colours, so a schedule is never mistaken for an op.
SCHEDULE_COLORS = {"naive": "#7F7F7F", "gpipe": "#8172B3", "1f1b": "#DA8BC3", "interleaved": "#937860",
                   "zb-h1": "#64B5CD", "zb-h2": "#2A7F9E", "zbv": "#A6D854", "dualpipev": "#55A868",
                   "pipedream": "#C44E52", "pipedream-2bw": "#DD8452", "zb-auto": "#17BECF",
                   "zbv-auto": "#6B8E23"}
THEORY_COLOR = "black"
SCHEDULE_MARKERS = {"naive": "s", "gpipe": "o", "1f1b": "^", "interleaved": "D", "zb-h1": "v", "zb-h2": "<",
                    "zbv": ">", "dualpipev": "P", "pipedream": "X", "pipedream-2bw": "*",
                    "zb-auto": "d", "zbv-auto": "h"}
EVENT_GID, WAIT_GID = "event", "wait"   # tags on the drawn rectangles, so tests can count them
LABEL_GID = "microbatch"                # tag on the box labels, so annotations can move them
# Lessons draw charts 10-11 in wide; the course site shrinks them to its 784 px column (about 0.7x), and a
# label must stay >= 9 pt there (tests/test_figures.py), so charts write 13 pt.
LABEL_POINTS = 13


def _pyplot():
    import matplotlib.pyplot as plt
    return plt


def _span(trace: Trace) -> tuple[float, float]:
    times = [t for e in trace.events for t in (e.start, e.end)] + [t for w in trace.waits for t in (w.start,
                                                                                                    w.end)]
    return (min(0.0, min(times)), max(times)) if times else (0.0, 1.0)


def gantt(trace: Trace, ax=None, title: str | None = None):
    """Draw ``trace`` as a Gantt chart on ``ax`` (a new figure if None) and return the Axes."""
    from matplotlib.patches import Patch, Rectangle
    if ax is None:
        _, ax = _pyplot().subplots(figsize=(10, 0.55 * trace.num_ranks + 1.4))
    low, high = _span(trace)
    width = high - low or 1.0
    height = 0.8
    for w in trace.waits:
        ax.add_patch(Rectangle((w.start, w.rank - height / 2), w.end - w.start, height, facecolor=WAIT_COLOR,
                               edgecolor="#A0A0A0", hatch=WAIT_HATCH, linewidth=0.3, gid=WAIT_GID))
    for e in trace.events:
        # Later chunks of an interleaved schedule are paler, so chunk 0 and 1 of one microbatch differ.
        ax.add_patch(Rectangle((e.start, e.rank - height / 2), e.duration, height,
                               facecolor=OP_COLORS.get(e.op, "black"), alpha=1.0 / (1 + 0.6 * e.chunk),
                               edgecolor="white", linewidth=0.5, gid=EVENT_GID))
        # A label wider than its box is noise: skip boxes under ~2% of the chart (two digits at 13 pt).
        if e.duration >= 0.02 * width:
            ax.text(e.start + e.duration / 2, e.rank, str(e.microbatch), ha="center", va="center",
                    fontsize=LABEL_POINTS, color="white", clip_on=True, gid=LABEL_GID)
    ax.set_xlim(low, high)
    ax.set_ylim(trace.num_ranks - 0.5, -0.5)   # inverted: rank 0 on top
    ax.set_yticks(range(trace.num_ranks))
    ax.set_yticklabels([f"rank {r}" for r in range(trace.num_ranks)])
    ax.set_xlabel(f"time ({trace.meta.unit})", fontsize=LABEL_POINTS)
    ax.tick_params(labelsize=LABEL_POINTS)
    ops = [op for op in OP_COLORS if any(e.op == op for e in trace.events)]
    handles = [Patch(facecolor=OP_COLORS[op], label=OP_NAMES[op]) for op in ops]
    if trace.waits:
        handles.append(Patch(facecolor=WAIT_COLOR, edgecolor="#A0A0A0", hatch=WAIT_HATCH, label="wait"))
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=LABEL_POINTS,
                  frameon=False)
    if title:
        ax.set_title(title, fontsize=LABEL_POINTS)
    return ax


def compare_gantt(measured: Trace, simulated: Trace, path=None, title: str | None = None):
    """Measured (top) over simulated (bottom) on one time axis; returns the Figure, saved to ``path`` if
    given.

    The axis is shared, so boxes of the same length took the same time: give the
    simulator measured costs (as the demo does), and time_unit="s", so both are in seconds.
    """
    plt = _pyplot()
    rows = measured.num_ranks + simulated.num_ranks
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 0.55 * rows + 2.2),
                                      gridspec_kw={"height_ratios": [max(measured.num_ranks, 1),
                                                                     max(simulated.num_ranks, 1)]})
    gantt(measured, top, title=f"measured (utilization {measured.utilization:.2f})")
    gantt(simulated, bottom, title=f"simulated (utilization {simulated.utilization:.2f})")
    top.set_xlabel("")
    (low_m, high_m), (low_s, high_s) = _span(measured), _span(simulated)
    bottom.set_xlim(min(low_m, low_s), max(high_m, high_s))
    if measured.meta.unit != simulated.meta.unit:
        bottom.set_xlabel(f"time (measured: {measured.meta.unit}, simulated: {simulated.meta.unit})")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def utilization_curve(points, num_stages: int, ax=None, path=None):
    """Measured utilization against theory, for one pipeline depth; returns the Axes.

    points: (schedule name, num_microbatches, utilization) tuples, drawn as markers over
    the GPipe/1F1B curve m / (m + p - 1) and the naive line 1 / p (p = num_stages).
    """
    import numpy as np
    if ax is None:
        _, ax = _pyplot().subplots(figsize=(6, 4))
    p = num_stages
    largest = max([m for _, m, _ in points], default=1)
    m = np.linspace(1, max(16, 1.25 * largest), 200)
    ax.plot(m, m / (m + p - 1), color=THEORY_COLOR, linewidth=1.2,
            label=f"theory GPipe / 1F1B: m/(m+{p}-1)" if p > 1 else "theory: 1")
    ax.axhline(1 / p, color=THEORY_COLOR, linestyle="--", linewidth=1.2, label=f"theory naive: 1/{p}")
    for name in dict.fromkeys(name for name, _, _ in points):   # first-seen order, for a stable legend
        ms = [m_ for n, m_, _ in points if n == name]
        us = [u for n, _, u in points if n == name]
        ax.plot(ms, us, linestyle="none", marker=SCHEDULE_MARKERS.get(name, "o"), markersize=7,
                color=SCHEDULE_COLORS.get(name, "black"), markeredgecolor="black", label=f"{name} (measured)")
    ax.set_xlabel("microbatches per step (m)")
    ax.set_ylabel("utilization")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"{p} stages")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="best")   # "center right" hid the naive marker at the largest m
    if path is not None:
        ax.figure.savefig(path, dpi=120, bbox_inches="tight")
    return ax
