"""The pictures the lessons draw with matplotlib (no image files), beside pipeline_ref.sim.plot's Gantt charts."""
from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from pipeline_ref.sim.plot import LABEL_POINTS, OP_COLORS

STAGE_COLORS = ["#2A9D8F", "#8172B3", "#E9C46A", "#64B5CD", "#937860", "#C44E52"]   # not the F/B colours
PIPELINE_COLOR, DATA_COLOR = "#C44E52", "#4C72B0"   # the MPI book's red pipeline and blue data groups


def _arrow(ax, start, end, color="black", style="-|>", dashed=False, text=None, text_offset=(0, 0.12),
           fontsize=12):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=14, color=color, linewidth=1.5,
                                 linestyle="--" if dashed else "-"))
    if text:
        ax.text((start[0] + end[0]) / 2 + text_offset[0], (start[1] + end[1]) / 2 + text_offset[1], text,
                ha="center", va="center", fontsize=fontsize, color=color)


def deadlock_diagram():
    """Three exchanges between two ranks, time running down: a deadlock, its fix, and eager buffering."""
    fig, axes = plt.subplots(1, 3, figsize=(10, 5.0))
    panels = [
        ("both Send first,\nlarge message:\ndeadlock", "blocked"),
        ("Sendrecv, or\nIsend + Irecv + Wait:\nboth move", "fixed"),
        ("both Send first,\nsmall message:\npasses (buffered)", "eager"),
    ]
    for ax, (title, kind) in zip(axes, panels):
        ax.set_xlim(-0.6, 1.6)
        ax.set_ylim(3.2, -0.5)
        ax.axis("off")
        ax.set_title(title, fontsize=12)
        for x, name in ((0, "rank 0"), (1, "rank 1")):
            ax.text(x, -0.3, name, ha="center", fontsize=12, weight="bold")
            ax.plot([x, x], [0, 3], color="#555555", linewidth=1)
        if kind == "blocked":
            for x, dx in ((0, 1), (1, -1)):
                _arrow(ax, (x, 0.5), (x + 0.45 * dx, 0.9), color="#C44E52", dashed=True)
                ax.text(x, 2.0, "Send waits\nfor a Recv\nnever posted", ha="center", fontsize=12,
                        color="#C44E52", bbox=dict(facecolor="white", edgecolor="#C44E52"))
        elif kind == "fixed":
            _arrow(ax, (0, 0.5), (1, 1.3), color=OP_COLORS["F"], text="0 → 1", text_offset=(0, -0.25))
            _arrow(ax, (1, 0.5), (0, 1.3), color=OP_COLORS["B"], text="1 → 0", text_offset=(0, 0.35))
            for x in (0, 1):
                ax.text(x, 2.2, "Wait: done", ha="center", fontsize=12,
                        bbox=dict(facecolor="white", edgecolor="#555555"))
        else:
            ax.add_patch(FancyBboxPatch((0.3, 0.95), 0.4, 0.5, boxstyle="round,pad=0.02", facecolor="#EEEEEE",
                                        edgecolor="#888888"))
            ax.text(0.5, 1.2, "MPI's\nbuffers", ha="center", va="center", fontsize=12)
            _arrow(ax, (0, 0.5), (0.32, 1.05), color=OP_COLORS["F"])
            _arrow(ax, (1, 0.5), (0.68, 1.05), color=OP_COLORS["B"])
            _arrow(ax, (0.35, 1.4), (1, 2.2), color=OP_COLORS["F"], dashed=True)
            _arrow(ax, (0.65, 1.4), (0, 2.2), color=OP_COLORS["B"], dashed=True)
            for x in (0, 1):
                ax.text(x, 2.6, "Recv: done", ha="center", fontsize=12,
                        bbox=dict(facecolor="white", edgecolor="#555555"))
    fig.tight_layout()
    return fig


def communicator_grid(memberships):
    """Ranks as boxes on a pipelines x stages grid, linked by the communicators ``split_grid`` reported."""
    stages = 1 + max(m["stage"] for m in memberships)
    pipelines = 1 + max(m["pipeline"] for m in memberships)
    where = {m["world"]: (m["stage"], m["pipeline"]) for m in memberships}
    fig, ax = plt.subplots(figsize=(2.0 * stages + 1.5, 1.3 * pipelines + 1.2))
    drawn = set()
    for m in memberships:
        for key, color, dy in (("pipeline members", PIPELINE_COLOR, -0.08), ("data members", DATA_COLOR, 0.0)):
            group = tuple(m[key])
            if (key, group) in drawn:
                continue
            drawn.add((key, group))
            xs = [where[r][0] for r in group]
            ys = [where[r][1] + dy for r in group]
            ax.plot(xs, ys, color=color, linewidth=6, alpha=0.5, solid_capstyle="round", zorder=1)
    for rank, (x, y) in where.items():
        ax.add_patch(FancyBboxPatch((x - 0.22, y - 0.22), 0.44, 0.44, boxstyle="round,pad=0.02",
                                    facecolor="white", edgecolor="black", zorder=2))
        ax.text(x, y, f"rank {rank}", ha="center", va="center", fontsize=9, zorder=3)
    ax.plot([], [], color=PIPELINE_COLOR, linewidth=6, alpha=0.5, label="pipeline communicator (Send/Recv)")
    ax.plot([], [], color=DATA_COLOR, linewidth=6, alpha=0.5, label="data communicator (Allreduce)")
    ax.set_xlim(-0.6, stages - 0.4)
    ax.set_ylim(pipelines - 0.4, -0.6)
    ax.set_xticks(range(stages), [f"stage {s}" for s in range(stages)])
    ax.set_yticks(range(pipelines), [f"pipeline {p}" for p in range(pipelines)])
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize=9, frameon=False)
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    fig.tight_layout()
    return fig


def split_model_diagram(num_layers: int, ranges):
    """The layers of a model as boxes, coloured by the rank that owns them, with the messages between ranks."""
    fig, ax = plt.subplots(figsize=(0.8 * num_layers + 1.0, 2.8))   # under 7.8 in: not shrunk on the site
    owner = {i: s for s, r in enumerate(ranges) for i in r}
    for i in range(num_layers):
        ax.add_patch(FancyBboxPatch((i + 0.1, 0.0), 0.8, 1.0, boxstyle="round,pad=0.02",
                                    facecolor=STAGE_COLORS[owner[i] % len(STAGE_COLORS)], alpha=0.85,
                                    edgecolor="black"))
        ax.text(i + 0.5, 0.5, f"layer\n{i}", ha="center", va="center", fontsize=10, color="white")
    for s, r in enumerate(ranges):
        ax.text((r.start + r.stop) / 2, -0.35, f"rank {s}", ha="center", fontsize=10, weight="bold",
                color=STAGE_COLORS[s % len(STAGE_COLORS)])
        if s + 1 < len(ranges):
            x = r.stop
            _arrow(ax, (x - 0.35, 1.35), (x + 0.35, 1.35), color=OP_COLORS["F"], text="activation",
                   text_offset=(0, 0.22), fontsize=10)
            _arrow(ax, (x + 0.35, -0.75), (x - 0.35, -0.75), color=OP_COLORS["B"], text="gradient",
                   text_offset=(0, -0.22), fontsize=10)
    ax.text(-0.2, 0.5, "input", ha="right", va="center", fontsize=10)
    ax.text(num_layers + 0.1, 0.5, "loss", ha="left", va="center", fontsize=10)
    ax.set_xlim(-0.9, num_layers + 0.7)
    ax.set_ylim(-1.2, 1.9)
    ax.axis("off")
    fig.tight_layout()
    return fig


def mark_phases(ax, schedule, trace):
    """Under each rank's row of a Gantt chart of ``trace``, bars for 1F1B's warmup, steady state and cooldown."""
    colors = {"warmup": "#8172B3", "steady": "#55A868", "cooldown": "#937860"}
    num_stages = len(schedule)
    for rank, actions in enumerate(schedule):
        m = sum(a.op == "F" for a in actions)
        warmup = min(num_stages - rank - 1, m)
        phases = {"warmup": actions[:warmup], "steady": actions[warmup:warmup + 2 * (m - warmup)],
                  "cooldown": actions[warmup + 2 * (m - warmup):]}
        events = {(e.op, e.microbatch): e for e in trace.events if e.rank == rank}
        for name, part in phases.items():
            if not part:
                continue
            start = events[(part[0].op, part[0].microbatch)].start
            end = events[(part[-1].op, part[-1].microbatch)].end
            ax.plot([start, end], [rank + 0.47, rank + 0.47], color=colors[name], linewidth=4,
                    solid_capstyle="butt", clip_on=False)
    for name, color in colors.items():
        ax.plot([], [], color=color, linewidth=4, label=name)
    handles, labels = ax.get_legend_handles_labels()
    old = ax.get_legend()
    extra = old.legend_handles if old is not None else []
    ax.legend(handles=list(extra) + handles, loc="upper left", bbox_to_anchor=(1.0, 1.0),
              fontsize=LABEL_POINTS, frameon=False)   # the size of the Gantt chart's own legend
    return ax
