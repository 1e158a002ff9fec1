"""The bytes a rank holds: one count (``nbytes``) and one record (``Memory``) behind every memory figure:
the stash, weight versions, optimizer state, a rank's report of a run, and the plan made before one.

Layer: engine.

    nbytes([torch.zeros(4, dtype=torch.float64)])     # 32
    Memory(parameters=..., gradients=..., optimizer=..., peak_stashed_bytes=...).total
"""
from __future__ import annotations

from dataclasses import dataclass


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
