"""Lesson 09, beside the ranks: flushed steps against one stream, the weight versions on a timeline, the reference.

    flushed(p, m, steps)                        # `steps` 1F1B steps, each ending in a flush, as one simulated trace
    versions_row(schedule, stage, p, m, steps)  # "F0:0 F1:0 B0:0 ..." the version each action of a stage uses
    annotate_versions(ax, trace, schedule, m)   # write that version under each box of a plot.gantt chart
    reference_difference(cfg, result)           # largest |pipelined - one-process reference| over every parameter
    sgd_difference(cfg, result)                 # the same against plain per-microbatch SGD (PipeDream on one stage)
    steps_to_pass(p, m, utilization)            # how many steps a stream needs to pass a synchronous utilization

The one-process references run on the device the ranks ran on (``cfg.device``: the lesson's
``PIPELINE_COURSE_DEVICE``), so a GPU run is compared with the same kernels on a GPU.

The ranks themselves run ``pipeline_ref.train.run_many``; nothing here starts MPI.
"""
from __future__ import annotations

from dataclasses import replace

from pipeline_ref import schedules, simulate
from pipeline_ref.models import async_reference
from pipeline_ref.schedules import asynchronous
from pipeline_ref.preflight import build_model
from pipeline_ref.engine.device import choose
from pipeline_ref.sim.trace import Event, Trace, Wait


def flushed(num_stages: int, num_microbatches: int, steps: int, forward: float = 1.0, backward: float = 2.0) -> Trace:
    """``steps`` synchronous 1F1B steps played back to back: each starts only once the previous one has
    drained (the flush before every optimizer step), so its fill and drain repeat every step."""
    one = simulate.simulate(schedules.build("1f1b", num_stages, num_microbatches), forward=forward, backward=backward)
    events = [Event(e.rank, e.op, t * num_microbatches + e.microbatch, e.chunk,
                    t * one.makespan + e.start, t * one.makespan + e.end)
              for t in range(steps) for e in one.events]
    # The idle time too, so this chart hatches it as the simulated stream's charts do.
    waits = [Wait(w.rank, w.what, t * one.makespan + w.start, t * one.makespan + w.end)
             for t in range(steps) for w in one.waits]
    last_end = {rank: max(e.end for e in one.events if e.rank == rank) for rank in range(num_stages)}
    waits += [Wait(rank, "flush", t * one.makespan + end, (t + 1) * one.makespan)      # waiting for the flush
              for t in range(steps - 1) for rank, end in last_end.items() if end < one.makespan]
    return Trace(num_ranks=num_stages, events=events, waits=waits, peak_stashed=one.peak_stashed,
                 meta=replace(one.meta, schedule="1f1b (flush every step)", num_microbatches=steps * num_microbatches))


def version_of(schedule: str, stage: int, num_stages: int, num_microbatches: int, microbatch: int) -> int:
    """The version an action of ``microbatch`` uses on ``stage``: its forward's, for the backward too (stashed);
    "flush": step t runs on version t."""
    if schedule in asynchronous.ASYNCHRONOUS:
        return asynchronous.forward_version(schedule, stage, num_stages, num_microbatches, microbatch)
    return microbatch // num_microbatches


def versions_row(schedule: str, stage: int, num_stages: int, num_microbatches: int, steps: int) -> str:
    """Stage ``stage``'s actions in the stream, each as op, microbatch and ``:version``."""
    actions = schedules.build(schedule, num_stages, num_microbatches, steps=steps)[stage]
    return " ".join(f"{a.op}{a.microbatch}:{version_of(schedule, stage, num_stages, num_microbatches, a.microbatch)}"
                    for a in actions)


def annotate_versions(ax, trace: Trace, schedule: str, num_microbatches: int) -> None:
    """Under each box of a ``plot.gantt`` chart, the weight version that action used (``vK``)."""
    from pipeline_ref.sim.plot import LABEL_GID, LABEL_POINTS
    # Two lines in each box, readable on the site: the microbatch (gantt's label, moved up) over its version.
    for label in ax.texts:
        if label.get_gid() == LABEL_GID:
            x, y = label.get_position()
            label.set_position((x, y - 0.19))
    low = min(e.start for e in trace.events)
    width = max(e.end for e in trace.events) - low or 1.0
    for e in trace.events:
        if e.end - e.start < 0.02 * width:        # as plot.gantt: a label wider than its box is noise
            continue
        version = version_of(schedule, e.rank, trace.num_ranks, num_microbatches, e.microbatch)
        ax.text(e.start + (e.end - e.start) / 2, e.rank + 0.2, f"v{version}", ha="center", va="center",
                fontsize=LABEL_POINTS, color="black", clip_on=True)


def _model_on_device(cfg):
    """``build_model(cfg)`` with its layers and batch moved to the device the ranks ran on."""
    layers, loss_fn, (inputs, targets) = build_model(cfg)
    device = choose(cfg.device)
    return [layer.to(device) for layer in layers], loss_fn, (inputs.to(device), targets.to(device))


def _largest_difference(got: dict, expected: dict) -> float:
    """Over every parameter: the largest |got - expected| (the ranks return theirs on the CPU)."""
    if set(got) != set(expected):
        raise ValueError(f"the run's parameters {sorted(got)} are not the reference's {sorted(expected)}")
    return max((got[n] - expected[n].detach().cpu()).abs().max().item() for n in expected)


def reference_difference(cfg, result) -> float:
    """The largest absolute difference between the run's parameters and ``async_reference``'s (same updates,
    one process, on the ranks' device); ``flush`` for a synchronous schedule."""
    layers, loss_fn, batch = _model_on_device(cfg)
    schedule = cfg.schedule if cfg.schedule in asynchronous.ASYNCHRONOUS else "flush"
    _, expected = async_reference.train(schedule, layers, loss_fn, batch, result.partition, cfg.microbatches,
                                        cfg.steps, cfg.lr)
    return _largest_difference({n: t for ranks in result.params if ranks for n, t in ranks.items()}, expected)


def sgd_difference(cfg, result) -> float:
    """The largest |run - plain per-microbatch SGD on one process| (what PipeDream on one stage must be)."""
    layers, loss_fn, batch = _model_on_device(cfg)
    _, expected = async_reference.per_microbatch_sgd(layers, loss_fn, batch, cfg.microbatches, cfg.steps, cfg.lr)
    return _largest_difference({n: t for ranks in result.params if ranks for n, t in ranks.items()}, expected)


def steps_to_pass(num_stages: int, num_microbatches: int, utilization: float, schedule: str = "pipedream",
                  limit: int = 64) -> tuple[int, float, float]:
    """The fewest steps of an asynchronous stream whose simulated utilization (F = 1, B = 2) is above
    ``utilization``: (steps, its utilization, the utilization one step fewer). A simulation, no timing."""
    previous = 0.0
    for steps in range(1, limit + 1):
        stream = schedules.build(schedule, num_stages, num_microbatches, steps=steps)
        reached = simulate.simulate(stream).utilization
        if reached > utilization:
            return steps, reached, previous
        previous = reached
    raise ValueError(f"{schedule} on {num_stages} stages, m = {num_microbatches}, stays at or below "
                     f"{utilization:.3f} for {limit} steps")
