"""Mixed precision in a pipeline: autocast inside each stage, float32 master weights, and a loss scale that
every rank keeps equal.

    run --autocast bfloat16     each stage's layers (and its loss) under torch.autocast(bfloat16); parameters,
                                gradients and the optimizer stay float32. bfloat16 has float32's range: no
                                scaling.
    run --autocast float16      the same in float16, whose largest number is 65504 and whose smallest normal
                                is
                                6e-5: small gradients underflow to zero unless the loss is scaled up first.

Dynamic loss scaling, as torch.amp.GradScaler and DeepSpeed's DynamicLossScaler do it: the last stage
multiplies its loss by ``scale`` (with the 1/m of the microbatch mean), every gradient of the step is
``scale`` times too large, and is divided by ``scale`` before the update. If anything overflowed (an inf or
NaN in an activation, a boundary gradient or a weight gradient, on any rank) the step is skipped and the scale
halved; after
``growth_interval`` good steps in a row it doubles. In a pipeline the overflow appears on one stage while the
others saw nothing, and each stage's optimizer would decide alone: the decision is therefore reduced over
every rank of the run (pipeline and data parallel), the same reduction as ``--skip-nonfinite-steps``
(``train.train_step``), so all ranks skip together and their scales stay equal without ever being sent.
"""
from __future__ import annotations

import contextlib

import torch

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast(name: str | None, device: torch.device):
    """A factory of contexts to run a stage's layers in: ``torch.autocast`` for ``name``, or nothing."""
    if name is None:
        return contextlib.nullcontext
    dtype = DTYPES[name]
    return lambda: torch.autocast(device.type, dtype=dtype)


class LossScaler:
    """The dynamic loss scale of a float16 run; identical on every rank because every rank sees the same
    skips."""

    def __init__(self, scale: float = 2.0 ** 16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000):
        self.scale, self.growth_factor, self.backoff_factor = scale, growth_factor, backoff_factor
        self.growth_interval, self.good_steps = growth_interval, 0

    def unscale(self, params) -> None:
        """Gradients back to their true size, before the optimizer sees them."""
        with torch.no_grad():
            for p in params:
                if p.grad is not None:
                    p.grad.div_(self.scale)

    def update(self, skipped: bool) -> None:
        if skipped:
            self.scale *= self.backoff_factor
            self.good_steps = 0
        else:
            self.good_steps += 1
            if self.good_steps == self.growth_interval:
                self.scale *= self.growth_factor
                self.good_steps = 0

    def state(self) -> dict:
        """What a checkpoint keeps, so a resumed run goes on with this scale, not 2^16 again."""
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state(self, state: dict) -> None:
        self.scale, self.good_steps = float(state["scale"]), int(state["good_steps"])

    def __repr__(self) -> str:
        return f"LossScaler(scale={self.scale:g}, good steps {self.good_steps}/{self.growth_interval})"


class NoScaler:
    """bfloat16, float32 and float64 runs: the scale is 1, nothing to undo."""
    scale = 1.0

    def unscale(self, params) -> None:
        pass

    def update(self, skipped: bool) -> None:
        pass

    def state(self) -> None:
        return None

    def load_state(self, state) -> None:
        pass


def scaler_for(name: str | None):
    return LossScaler() if name == "float16" else NoScaler()
