"""Lesson 04, on the ranks and beside them: pipeline x data parallel, its communicators, its memory and speed.

``lesson`` is what the notebook starts on 4 ranks, once: every rank first reports the two communicators
``pipeline_ref.engine.topology.grid`` gives it, then the ranks play the lesson's training runs one after another
(``pipeline_ref.train.run_many``), in the same ``mpiexec``:

    launch(4, "lesson_code.l04_data_parallel:lesson", 2, 2, configs)   # -> rank 0: {"communicators", "runs"}

The other functions run in the notebook: the arithmetic of memory per rank and of a step's time.
"""
from __future__ import annotations

import torch

from lesson_code.common import LESSON_MODEL
from pipeline_ref.config import RunConfig
from pipeline_ref.preflight import build_model
from pipeline_ref.sim.trace import Trace

# The model of the DDP-vs-pipeline comparison (pipeline_ref.models.mlp): 8 equal blocks, 1M parameters each
# (4 MiB in float32), so a replica's all-reduce is large; a block's product on a microbatch of 64 samples
# (64 x 1024 x 1024) takes a few milliseconds, so per-action overheads stay small.
COMPARE_MODEL = LESSON_MODEL
# A small GPT for the float64 correctness checks: exact, and quick.
SMALL_GPT = {"vocab": 32, "dim": 16, "heads": 2, "blocks": 2, "seq_len": 8, "batch": 16}


def communicators(comm, pp: int, dp: int) -> dict:
    """This rank's place in the pp x dp grid and the world ranks in each of its two communicators."""
    from pipeline_ref.engine import topology
    topo = topology.grid(comm, pp, dp)
    world = comm.Get_rank()
    report = {"world rank": world, "stage": topo.stage, "replica": topo.replica,
              "rank in pipeline comm": topo.pipeline.Get_rank(), "pipeline comm": topo.pipeline.allgather(world),
              "rank in data comm": topo.data.Get_rank(), "data comm": topo.data.allgather(world)}
    topo.pipeline.Free()
    topo.data.Free()
    return report


def lesson(comm, pp: int, dp: int, configs: list[RunConfig]):
    """The communicators of a pp x dp grid, then the training runs; rank 0 returns both, the others None."""
    from pipeline_ref import train
    reports = comm.gather(communicators(comm, pp, dp), root=0)
    runs = train.run_many(comm, configs)
    return {"communicators": reports, "runs": runs} if comm.Get_rank() == 0 else None


# ------------------------------------------------------------------------------------------ in the notebook

def parameter_bytes_per_stage(cfg: RunConfig, ranges) -> list[int]:
    """Bytes of the parameters each pipeline stage holds: every replica of a stage holds the same.

    ``ranges`` is a run's ``result.partition``, as (start, stop) pairs. A Parameter used by layers on two
    stages (a tied weight) counts on both: each keeps a copy.
    """
    layers, _, _ = build_model(cfg)
    sizes = []
    for start, stop in ranges:
        unique = {id(p): p for layer in layers[start:stop] for p in layer.parameters()}
        sizes.append(sum(p.numel() * p.element_size() for p in unique.values()))
    return sizes


def bytes_per_step(cfg: RunConfig, ranges) -> dict:
    """What one training step of ``models.mlp`` on a pp x dp grid moves, per pipeline cut and per rank.

    Arithmetic from the configuration (``ranges``: the run's ``result.partition``): across each cut of a replica's
    pipeline, m activations forward and m gradients back, microbatch x width values each; through the
    data-parallel all-reduce, each rank's stage gradients, as many bytes as the stage's parameters, of which a
    ring all-reduce over dp ranks sends 2 (dp - 1) / dp per rank (and receives as much).
    """
    itemsize = torch.empty(0, dtype=getattr(torch, cfg.dtype)).element_size()
    microbatch = cfg.model_kwargs["batch"] // cfg.dp // cfg.microbatches
    message = microbatch * cfg.model_kwargs["width"] * itemsize
    gradients = max(parameter_bytes_per_stage(cfg, ranges))
    return {"messages per cut": 2 * cfg.microbatches if cfg.pp > 1 else 0,
            "bytes per cut": 2 * cfg.microbatches * message if cfg.pp > 1 else 0,
            "gradient bytes per rank": gradients if cfg.dp > 1 else 0,
            "all-reduce bytes sent per rank": 2 * (cfg.dp - 1) * gradients // cfg.dp}


def step_time(trace: Trace) -> float:
    """From the barrier to the last thing any rank of the trace did: its last action, or its all-reduce."""
    return max([e.end for e in trace.events] + [w.end for w in trace.waits])


def allreduce_time(trace: Trace) -> float:
    """The longest gradient all-reduce of the step, as the ranks of the trace waited for it."""
    return max((w.end - w.start for w in trace.waits if w.what == "all-reduce gradients"), default=0.0)


def whole_steps(comparison):
    """Each round's step of each layout with its gradient all-reduce, as a ``measure.Timings`` (values in s).

    ``measure.compare`` times a step from its first to its last action; a data-parallel step also waits for its
    all-reduce after that, and here that wait is what the layouts differ by. Each run's trace is its last step,
    the one measured after the warm-up when a run has two steps, so a round gives one whole step per layout.
    """
    from pipeline_ref import measure
    values = {name: [step_time(run.trace) for run in runs] for name, runs in comparison.results.items()}
    return measure.Timings(values, {name: [] for name in values})


def whole_step_verdict(comparison, steps, name: str, baseline: str) -> str:
    """``steps.verdict`` on whole steps, also flagging the contention ``comparison`` saw for either layout."""
    text = steps.verdict(name, baseline, what="step with its all-reduce")
    shared = [f for f in comparison.flags if f.name in (name, baseline) and f.likely_cause == "contention"]
    if shared and "contention" not in text:
        text = text[:-1] + (" and contention." if "flagged:" in text else "; flagged: contention.")
    return text


def split_tied_gradient(model_kwargs: dict) -> dict:
    """On one device: the tiny GPT's tied weight gets two gradients, one through each layer that uses it.

    The embedding (first stage) and the output head (last stage) share the Parameter. Untie a copy (the
    head gets its own Parameter with the same values) and each part of the gradient appears separately;
    their sum is the tied model's gradient. A pipeline holds one copy per stage, so it must add them.
    """
    cfg = RunConfig(model="gpt_tied", model_kwargs=model_kwargs, dtype="float64")
    layers, loss_fn, (inputs, targets) = build_model(cfg)
    model = torch.nn.Sequential(*layers)
    embedding, head = layers[0].token, layers[-1].out
    tied = torch.autograd.grad(loss_fn(model(inputs), targets), embedding.weight)[0]
    head.weight = torch.nn.Parameter(embedding.weight.detach().clone())       # untie: same values
    through_embedding, through_head = torch.autograd.grad(loss_fn(model(inputs), targets),
                                                          [embedding.weight, head.weight])
    return {"tied": tied, "through the embedding (stage 0)": through_embedding,
            "through the head (last stage)": through_head}


# ------------------------------------------------------------------------------------------ pictures

def layout_bars(rows: list[dict]):
    """Memory per rank and throughput of each layout, side by side (rows: name, params, stash, samples/s)."""
    import matplotlib.pyplot as plt
    fig, (memory, speed) = plt.subplots(2, 1, figsize=(7.5, 5.0))   # stacked, under 7.8 in: not shrunk
    names = [r["name"] for r in rows]
    params = [r["parameter bytes"] / 2**20 for r in rows]
    stash = [r["stash bytes"] / 2**20 for r in rows]
    memory.barh(names, params, color="#4C72B0", label="parameters\n(gradients: as much again)")
    memory.barh(names, stash, left=params, color="#DD8452", label="peak stashed activations")
    memory.set_xlabel("MiB on the fullest rank")
    memory.set_xlim(0, 1.9 * max(p + s for p, s in zip(params, stash)))
    memory.invert_yaxis()
    memory.legend(fontsize=9, loc="lower right", frameon=False)
    memory.set_title("memory per rank (measured)", fontsize=10)
    speed.barh(names, [r["samples/s"] for r in rows], color="#55A868")
    speed.set_xlabel("samples per second (4 ranks on 2 cores: indicative)")
    speed.invert_yaxis()
    speed.set_title("throughput (measured)", fontsize=10)
    fig.tight_layout()
    return fig


def mark_allreduce_posted(ax, trace: Trace, overlap: bool):
    """A black tick on each rank's row where its gradient all-reduce was posted.

    With ``overlap_allreduce`` the training loop posts it right after the rank's last backward; without, after the
    executor returns (its last action done and its sends completed), which is where the recorded wait starts.
    """
    for rank in range(trace.num_ranks):
        if overlap:
            at = max(e.end for e in trace.events if e.rank == rank and e.op in ("B", "W"))
        else:
            at = min(w.start for w in trace.waits if w.rank == rank and w.what == "all-reduce gradients")
        ax.plot([at, at], [rank - 0.45, rank + 0.45], color="black", linewidth=2)
    ax.plot([], [], color="black", linewidth=2, label="all-reduce posted")
    handles, labels = ax.get_legend_handles_labels()
    old = ax.get_legend()
    extra = old.legend_handles if old is not None else []
    ax.legend(handles=list(extra) + handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    return ax


# ------------------------------------------------------------------------------ three axes (theory)

def rank_groups(sizes: dict, order: str) -> dict:
    """The world ranks of every group of each parallel axis, for ranks numbered in ``order``.

    ``sizes``: {"tp": 8, "dp": 2, "pp": 4}; ``order``: the axes from fastest- to slowest-varying, as Megatron-LM
    writes it ("tp-dp-pp": tensor-parallel neighbours are consecutive ranks, pipeline stages the farthest
    apart). ``pipeline_ref``'s grid, rank = replica * pp + stage, is "pp-dp". A group of an axis holds the ranks
    that agree on every other axis.
    """
    axes = order.split("-")
    if sorted(axes) != sorted(sizes):
        raise ValueError(f"order {order!r} must name each of {sorted(sizes)} once")
    strides, stride = {}, 1
    for axis in axes:
        strides[axis], stride = stride, stride * sizes[axis]
    world = stride

    def coords(rank):
        return {axis: rank // strides[axis] % sizes[axis] for axis in axes}

    groups = {}
    for axis in axes:
        by_rest: dict[tuple, list[int]] = {}
        for rank in range(world):
            c = coords(rank)
            by_rest.setdefault(tuple(c[a] for a in axes if a != axis), []).append(rank)
        groups[axis] = list(by_rest.values())
    return groups


def nodes_spanned(group: list[int], per_node: int) -> int:
    """How many nodes a group's ranks sit on, with nodes filled in rank order (``mpiexec``/``srun`` by default)."""
    return len({rank // per_node for rank in group})
