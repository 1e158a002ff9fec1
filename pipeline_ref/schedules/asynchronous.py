"""Asynchronous pipelines: PipeDream (weight stashing) and PipeDream-2BW, as a schedule and a rule for
weights.

A synchronous schedule (GPipe, 1F1B, ...) ends every step with a flush: the pipeline drains, every
stage applies the step's gradient, and the next step fills the pipeline again. That fill and drain is
the bubble. PipeDream (Narayanan et al., SOSP 2019) never flushes: one run streams all
``steps x m`` microbatches through one continuous 1F1B,

    stage s of p:   p - s - 1 warm-up forwards,  then  F B F B ...,  then the drain at the very end of the run

and each stage updates its own weights after every backward. The price: a forward meets whatever weights
are current, so the microbatches in flight were started on different versions, and the backward must use
exactly the version its forward used (weight stashing), or the gradient is of no function at all.

    >>> from pipeline_ref.schedules import asynchronous
    >>> # stage 0 of 3: 2 warm-up forwards
    >>> [asynchronous.forward_version("pipedream", 0, 3, 2, j) for j in range(5)]
    [0, 0, 0, 1, 2]
    >>> # m = 2: step t runs on t - 1
    >>> [asynchronous.forward_version("pipedream-2bw", 0, 3, 2, j) for j in range(6)]
    [0, 0, 0, 0, 1, 1]

Both schedules are data like every other (:func:`pipedream` is 1F1B over ``steps x m`` microbatches);
what changes is *when* a stage updates and *which version* each action uses, and that lives in the
stage's weight store (``weight_versions.py``), driven by the rules here:

- ``pipedream``: the forward of microbatch j on stage s uses the version current then, which in this
  order is version max(0, j - (p - s - 1)) (the number of backwards the stage has done); the update
  after each backward uses that microbatch's gradient (of its own mean loss). Stage s holds up to
  p - s versions: one per microbatch in flight.
- ``pipedream-2bw`` (double-buffered weights, Narayanan et al., ICML 2021): gradients are accumulated
  over the m microbatches of a step (their mean), the microbatches of step t run on version t - 1
  (version 0 for t = 0), and the step's gradient is applied to version t:
  W(t+1) = W(t) - lr g(W(t-1)). Every stage holds two versions, provided step t + 1's first forward
  comes after step t - 1's last backward on every stage: m >= p - 1 (checked before any rank starts).

``async_reference.py`` computes the same updates in one process; ``async_run.py`` plays them on the
ranks. No MPI here.
"""
from __future__ import annotations

from pipeline_ref.schedules.classic import one_f_one_b
from pipeline_ref.schedules.geometry import Schedule, ScheduleError

ASYNCHRONOUS = ("pipedream", "pipedream-2bw")


def stream(num_stages: int, num_microbatches: int) -> Schedule:
    """1F1B over ``num_microbatches`` with no flush: warm-up, one forward one backward, drain at the end."""
    return one_f_one_b(num_stages, num_microbatches)


def pipedream(num_stages: int, num_microbatches: int, steps: int = 1) -> Schedule:
    """PipeDream's order for a run of ``steps`` steps of ``num_microbatches``: one stream of steps x m
    microbatches.

    Microbatch j of the stream is microbatch j % m of step j // m."""
    _check_steps(steps)
    return stream(num_stages, steps * num_microbatches)


def pipedream_2bw(num_stages: int, num_microbatches: int, steps: int = 1) -> Schedule:
    """PipeDream-2BW's order: the same stream as PipeDream's (the two differ in their weight rule only)."""
    _check_steps(steps)
    check_2bw(num_stages, num_microbatches)
    return stream(num_stages, steps * num_microbatches)


def _check_steps(steps: int) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ScheduleError(f"steps must be a positive integer, got {steps!r}")


def check_2bw(num_stages: int, num_microbatches: int) -> None:
    """2BW needs m >= p - 1: stage 0 runs step t + 1's first forward after only (t + 1) m - (p - 1) backwards,
    and version t exists once step t - 1's t m backwards are done."""
    if num_microbatches < num_stages - 1:
        raise ScheduleError("pipedream-2bw needs at least num_stages - 1 microbatches per step "
                            f"({num_microbatches} < {num_stages - 1}): with fewer, stage 0 would start step "
                            f"t + 1 before version t exists; raise --microbatches or use pipedream")


def check_asynchronous_run(schedule: str, num_stages: int, num_microbatches: int, dp: int = 1,
                           layers=None, **features) -> None:
    """Refuse what an asynchronous run does not do, before any rank starts (raises ScheduleError).

    ``features``: the run's other options by name (True where asked for): each stage updates on its own
    after every backward, so anything that assumes one step boundary for all stages is refused.
    ``layers``: the model (a list of layers, or a whole module), whose tied weights are refused too.
    """
    if schedule not in ASYNCHRONOUS:
        return
    if dp != 1:
        raise ScheduleError(f"{schedule} runs one pipeline (--dp 1): data-parallel replicas would have to "
                            f"all-reduce after every backward of every stage")
    asked = sorted(name for name, on in features.items() if on)
    if asked:
        raise ScheduleError(f"{schedule} updates each stage on its own, after its backwards, with SGD (no "
                            "step boundary shared by all stages), so it cannot be combined with "
                            f"{', '.join(asked)}")
    if schedule == "pipedream-2bw":
        check_2bw(num_stages, num_microbatches)
    shared = shared_parameters(layers) if layers is not None and num_stages > 1 else []
    if shared:
        raise ScheduleError(f"{schedule} keeps weight versions per stage, and layers of this model share a "
                            f"Parameter ({shared[0]}): two stages would update it at different times; untie "
                            f"it, or use a schedule with a flush")


def shared_parameters(layers) -> list[str]:
    """Names of Parameters that more than one layer holds (tied weights), as nn.Sequential(*layers) names
    them.

    ``layers``: a list of modules, or a whole module (then: Parameters it holds under more than one name)."""
    if not isinstance(layers, (list, tuple)):
        seen: set[int] = set()
        named = layers.named_parameters(remove_duplicate=False)
        return [n for n, p in named if id(p) in seen or seen.add(id(p))]
    owner: dict[int, int] = {}
    shared = []
    for index, layer in enumerate(layers):
        for name, p in layer.named_parameters():
            if owner.setdefault(id(p), index) != index:
                shared.append(f"{index}.{name}")
    return shared


def forward_version(schedule: str, stage: int, num_stages: int, num_microbatches: int,
                    microbatch: int) -> int:
    """The weight version (number of updates applied on that stage) the forward of stream microbatch j
    uses."""
    if schedule == "pipedream":
        return max(0, microbatch - (num_stages - stage - 1))
    if schedule == "pipedream-2bw":
        return max(0, microbatch // num_microbatches - 1)
    raise ValueError(f"no weight versions for schedule {schedule!r}; asynchronous ones: "
                     f"{', '.join(ASYNCHRONOUS)}")


def updates_after(schedule: str, num_microbatches: int, microbatch: int) -> bool:
    """Whether a stage updates its weights right after the backward of stream microbatch j."""
    return schedule == "pipedream" or (microbatch + 1) % num_microbatches == 0


def loss_scale(schedule: str, num_microbatches: int) -> float:
    """PipeDream steps on each microbatch's own mean loss; 2BW on the step's mean, accumulated over m."""
    return 1.0 if schedule == "pipedream" else 1.0 / num_microbatches


def versions_held(schedule: str, num_stages: int, num_microbatches: int, steps: int) -> list[int]:
    """Most weight versions stage s holds at once, for a run long enough to reach the steady state.

    PipeDream: p - s, one per microbatch in flight (the last stage keeps one: its backward follows its
    forward). 2BW: 2 (once a second version exists, steps >= 2), however deep the pipeline.
    """
    n = steps * num_microbatches
    if schedule == "pipedream":
        # In flight at F_j: microbatches j - w .. j (w = p - s - 1 warm-up forwards), on versions j - 2w .. j
        # - w.
        return [min(num_stages - s, max(1, n - (num_stages - s - 1))) for s in range(num_stages)]
    return [1 if steps == 1 else 2] * num_stages
