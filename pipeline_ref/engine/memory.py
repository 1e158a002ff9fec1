"""The bytes a rank holds: one count (``nbytes``) and one record (``Memory``) behind every memory figure:
the stash, weight versions, optimizer state, a rank's report of a run, and the plan made before one
(``front/memory_plan.py``, which adds up its parts here: ``optimizer_bytes``, ``peak_activation_bytes``,
and says whether the ranks fit a budget: ``over_budget``, ``table``).

Layer: engine.

    nbytes([torch.zeros(4, dtype=torch.float64)])     # 32
    Memory(parameters=..., gradients=..., optimizer=..., peak_stashed_bytes=...).total
"""
from __future__ import annotations

from dataclasses import dataclass

from pipeline_ref.schedules.geometry import Op

GB = 1e9


def nbytes(tensors) -> int:
    """The bytes of ``tensors`` (any iterable of them), as stored: elements x element size."""
    return sum(t.numel() * t.element_size() for t in tensors)


@dataclass(frozen=True)
class Memory:
    """Bytes one pipeline rank held: accounted from its tensors (CPU and GPU), and the device's peak (GPU)."""
    parameters: int
    gradients: int
    optimizer: int                      # optimizer state (plain SGD keeps none)
    peak_stashed_bytes: int             # activations autograd kept between F and B, at the peak
    device_peak: int | None = None      # torch.cuda.max_memory_allocated, GPU runs only

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.peak_stashed_bytes


def optimizer_bytes(name: str, params: list) -> int:
    """The state optimizer ``name`` keeps for ``params``."""
    if name == "sgd":
        return 0
    if name == "adamw":        # exp_avg and exp_avg_sq per parameter, a float32 step counter per tensor
        return 2 * nbytes(params) + 4 * len(params)
    raise ValueError(f"unknown optimizer {name!r}")


def peak_activation_bytes(actions, chunk_bytes: dict[int, int]) -> int:
    """Play one rank's actions: + a chunk's bytes at its F, - at its B (or W, which ends a split backward)."""
    held = peak = 0
    for action in actions:
        if action.op == "F":
            held += chunk_bytes[action.chunk]
            peak = max(peak, held)
        elif Op(action.op).ends_backward:
            held -= chunk_bytes[action.chunk]
    return peak


def over_budget(ranks: list[Memory], budget_gb: float) -> str | None:
    """None if every rank fits ``budget_gb``; else a sentence naming the worst rank and by how much it is
    over."""
    worst = max(range(len(ranks)), key=lambda r: ranks[r].total)
    need = ranks[worst]
    if need.total <= budget_gb * GB:
        return None
    return (f"rank {worst} would hold {need.total / GB:.3f} GB (parameters {need.parameters / GB:.3f}, "
            f"gradients {need.gradients / GB:.3f}, optimizer {need.optimizer / GB:.3f}, activations "
            f"{need.peak_stashed_bytes / GB:.3f}), {(need.total - budget_gb * GB) / GB:.3f} GB over the "
            f"budget of {budget_gb:g} GB per rank")


def table(ranks: list[Memory]) -> str:
    lines = [f"{'rank':<6}{'parameters':>12}{'gradients':>12}{'optimizer':>12}{'activations':>13}"
             f"{'total':>10}  (MB)"]
    for r, b in enumerate(ranks):
        lines.append(f"{r:<6}{b.parameters / 1e6:>12.1f}{b.gradients / 1e6:>12.1f}{b.optimizer / 1e6:>12.1f}"
                     f"{b.peak_stashed_bytes / 1e6:>13.1f}{b.total / 1e6:>10.1f}")
    return "\n".join(lines)
