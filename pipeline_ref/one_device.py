"""The ground truth of a whole run: the same configuration trained on one process, no pipeline, no messages.

    from pipeline_ref import one_device
    from pipeline_ref.config import RunConfig
    cfg = RunConfig(model="text_gpt", steps=200, optimizer="adamw", lr=3e-3, autocast="bfloat16")
    curve = one_device.train(cfg)               # losses per step, parameters after the last step
    one_device.validation_loss(curve.layers, cfg, batches=8)

Everything a pipelined run does per step is done here in one place, in the same order: the same seeded model
and data (``preflight.build_model``), the batch cut into the same ``m`` microbatches whose losses are scaled
by
``1/m`` and accumulated (so float64 agrees with a pipeline to rounding), the same optimizer (``optim.py``),
the same autocast and loss scale, and the same skip of a step whose gradients are not finite. A pipelined
run's losses should equal ``train(cfg).losses`` step for step: ``tests/test_real_training.py`` checks it.
(``models.reference_step`` is one step of this, for gradients alone.) It runs on ``cfg.device``, as the ranks
do, so a GPU run has a GPU reference.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline_ref.engine import optim, precision
from pipeline_ref.models import batches
from pipeline_ref.config import RunConfig
from pipeline_ref.preflight import build_model
from pipeline_ref.faults.finite import nonfinite


@dataclass
class Curve:
    losses: list[float]          # the training loss of each step, before its update (as RunResult.losses)
    skipped_steps: list[int]     # steps skipped for a non-finite gradient (float16 overflow)
    layers: list                 # the model after the last step
    scales: list[float]          # the loss scale each step used (1.0 without float16)


def _as_module(layers) -> nn.Module:
    """A list of layers in sequence, or a factory's whole ``nn.Module`` (a Hugging Face model) as it is."""
    return layers if isinstance(layers, nn.Module) else nn.Sequential(*layers)


def train(cfg: RunConfig) -> Curve:
    layers, loss_fn, batch = build_model(cfg)
    device = torch.device(cfg.device)                 # cfg.device: "cpu", or "cuda" (the current GPU)
    model = _as_module(layers).to(device)
    params = list({id(p): p for p in model.parameters()}.values())      # a tied weight once
    optimizer = optim.make(cfg.optimizer, params, cfg.lr)
    scaler, autocast = precision.scaler_for(cfg.autocast), precision.autocast(cfg.autocast, device)
    losses, skipped, scales = [], [], []
    for step in range(cfg.steps):
        inputs, targets = batch.at(step) if isinstance(batch, batches.PerStep) else batch
        inputs, targets = inputs.to(device), targets.to(device)
        for p in params:
            p.grad = None
        scales.append(scaler.scale)
        step_losses = []
        for x, y in zip(inputs.tensor_split(cfg.microbatches), targets.tensor_split(cfg.microbatches)):
            with autocast():
                loss = loss_fn(model(x), y)
            step_losses.append(loss.detach())
            (loss * (scaler.scale / cfg.microbatches)).backward()
        losses.append(torch.stack(step_losses).mean().item())
        skip = cfg.skips_nonfinite and nonfinite([*step_losses, *(p.grad for p in params)]) is not None
        if skip:
            skipped.append(step)
        else:
            scaler.unscale(params)
            optimizer.step()
        scaler.update(skipped=skip)
    return Curve(losses, skipped, layers, scales)


@torch.no_grad()
def validation_loss(layers: list, cfg: RunConfig, batches: int = 8) -> float:
    """Mean loss of ``layers`` over the first ``batches`` validation batches of the run's data
    (``text_data``)."""
    _, loss_fn, batch = build_model(cfg)
    source = getattr(batch, "source", None)
    if not hasattr(source, "validation"):
        raise ValueError(f"model {cfg.model!r} has no validation data (text_data.Batches has)")
    device = torch.device(cfg.device)
    model = _as_module(layers).to(device).eval()
    autocast = precision.autocast(cfg.autocast, device)
    total = 0.0
    for index in range(batches):
        x, y = source.validation(index)
        x, y = x.to(device), y.to(device)
        with autocast():
            total += loss_fn(model(x), y).item()
    return total / batches
