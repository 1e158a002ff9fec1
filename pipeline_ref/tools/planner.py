"""The planner: which pipeline, tensor, data and context parallel sizes, schedule, microbatches and
recomputation train a model fastest on a cluster, among those that fit its memory.

Layer: tools (enumerates configurations and ranks them by ``step_model.estimate``; replays the best few in
the simulator). The command line is ``plan_cli.py``:

    python -m pipeline_ref plan --model gpt3-175b --gpus 1024 --device a100-80gb --global-batch 1536

    >>> from pipeline_ref.sim import cluster

    >>> from pipeline_ref.tools import planner
    >>> space = planner.current_space(cluster.MODELS["gpt3-175b"], "a100-80gb", num_gpus=64, global_batch=64)
    >>> best = planner.rank(space)[0]
    >>> best.plan.tp, best.plan.pp, best.plan.recompute, best.fits
    (4, 16, 'none', True)
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline_ref.sim import cluster
from pipeline_ref.sim.step_model import EFFICIENCY, Estimate, Plan, estimate, simulate_estimate

SCHEDULES = ("gpipe", "1f1b", "interleaved", "zb-h1")
RECOMPUTE = ("none", "selective", "full")
__all__ = ["EFFICIENCY", "Estimate", "Plan", "Space", "current_space", "estimate", "plans", "rank", "search",
           "why_lost"]


@dataclass(frozen=True)
class Space:
    """Every configuration the planner tries for a model on ``num_gpus`` GPUs at a fixed global batch.

    The options default to today's Megatron-LM (sequence parallelism, selective recomputation); a run of
    2021 is searched with ``recompute=("none", "full")`` and ``sequence_parallel=False``."""
    model: cluster.Transformer
    device: str
    num_gpus: int
    global_batch: int
    gpus_per_node: int = 8
    precision: str = "bf16"
    schedules: tuple = SCHEDULES
    recompute: tuple = RECOMPUTE
    microbatches: tuple = (1, 2, 4, 8)
    chunks: tuple = (2, 3, 4, 5, 6, 8)
    context_parallel: tuple = (1,)
    sequence_parallel: bool = True
    distributed_optimizer: bool = False
    overlap_dp: bool = False
    flash_attention: bool = False

    def __post_init__(self):
        if self.device not in cluster.DEVICES:
            raise ValueError(f"unknown device {self.device!r}; known: {', '.join(cluster.DEVICES)}")
        for what in ("num_gpus", "global_batch", "gpus_per_node"):
            value = getattr(self, what)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{what} must be a positive integer, got {value!r}")
        if self.num_gpus > self.gpus_per_node and self.num_gpus % self.gpus_per_node:
            raise ValueError(f"{self.num_gpus} GPUs are not whole nodes of {self.gpus_per_node}")
        unknown = set(self.schedules) - set(SCHEDULES) | set(self.recompute) - set(RECOMPUTE)
        if unknown:
            raise ValueError(f"unknown schedule or recomputation {sorted(unknown)}; schedules: "
                             f"{', '.join(SCHEDULES)}; recompute: {', '.join(RECOMPUTE)}")


def current_space(model: cluster.Transformer, device: str, num_gpus: int, global_batch: int,
                  **options) -> Space:
    """The search with today's kernels, as ``python -m pipeline_ref plan`` runs it: flash attention (no
    attention scores kept, so selective recomputation has nothing left to save) and full recomputation as the
    one alternative; ``options`` override any field of Space."""
    today = {"recompute": ("none", "full"), "flash_attention": True}
    return Space(model, device, num_gpus, global_batch, **{**today, **options})


def plans(space: Space):
    """Every plan of the space whose sizes multiply to its GPUs and batch (refusals included)."""
    divisors = [d for d in range(1, space.num_gpus + 1) if space.num_gpus % d == 0]
    common = dict(gpus_per_node=space.gpus_per_node, precision=space.precision,
                  distributed_optimizer=space.distributed_optimizer, overlap_dp=space.overlap_dp,
                  flash_attention=space.flash_attention)
    for tp in (d for d in divisors if d <= space.gpus_per_node):
        for cp in space.context_parallel:
            for pp in (d for d in divisors if space.num_gpus % (tp * cp * d) == 0):
                dp = space.num_gpus // (tp * cp * pp)
                for b in space.microbatches:
                    if space.global_batch % (dp * b):
                        continue
                    m = space.global_batch // (dp * b)
                    for schedule, chunks in _schedules(space, pp):
                        for recompute in space.recompute:
                            yield Plan(space.model, space.device, tp, pp, dp, b, m, schedule, chunks,
                                       recompute, cp, sequence_parallel=space.sequence_parallel and tp > 1,
                                       **common)


def _schedules(space: Space, pp: int):
    for name in space.schedules:
        if name == "interleaved":
            if pp > 1:
                yield from ((name, v) for v in space.chunks)
        elif pp > 1 or name == "1f1b":       # one stage: every schedule is the same; keep one
            yield name, 1


def search(space: Space, efficiency: float = EFFICIENCY) -> list[Estimate]:
    """Every plan's closed-form estimate, the fitting ones first, fastest first."""
    found = [estimate(plan, efficiency) for plan in plans(space)]
    return sorted(found, key=lambda e: (not e.fits, e.step_seconds))


def rank(space: Space, efficiency: float = EFFICIENCY, finalists: int = 5,
         found: list[Estimate] | None = None) -> list[Estimate]:
    """The plans that fit, fastest first; the best ``finalists`` by the closed form are replayed in the
    simulator and re-ranked by its step time. ``found``: ``search(space, efficiency)``, if already made."""
    fitting = [e for e in (found if found is not None else search(space, efficiency)) if e.fits]
    head = sorted((simulate_estimate(e) for e in fitting[:finalists]), key=lambda e: e.step_seconds)
    return head + fitting[finalists:]


def why_lost(found: list[Estimate], best: Estimate) -> dict:
    """How many plans lost, by reason: does not fit / cannot run, or the part of the step (bubble,
    messages, recomputation, compute) that grew most against the best plan's."""
    reasons: dict[str, int] = {}
    for e in found:
        if e.plan == best.plan:
            continue
        if e.problem and not e.fits:
            key = "does not fit" if e.memory_bytes else "cannot run"
        else:
            grew = {"bubble": e.parts["bubble"] - best.parts["bubble"],
                    "messages": sum(e.parts[k] - best.parts[k] for k in ("tp_comm", "dp")),
                    "recomputation": e.parts["recompute"] - best.parts["recompute"],
                    "compute and optimizer": sum(e.parts[k] - best.parts[k]
                                                 for k in ("compute", "optimizer"))}
            key = max(grew, key=grew.get)
        reasons[key] = reasons.get(key, 0) + 1
    return reasons
