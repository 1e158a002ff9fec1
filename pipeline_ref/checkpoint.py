"""Checkpoints a crash cannot spoil, saved per layer so that any number of stages can load them.

    python -m pipeline_ref run ... --steps 100 --save-checkpoint ckpt --checkpoint-every 10
    python -m pipeline_ref run ... --steps 100 --resume ckpt          # on 2, 4 or any number of stages

Layout, as DeepSpeed's pipeline checkpoints are (one file per layer, not per rank):

    ckpt/step-000010/layer-000.pt ... layer-NNN.pt     {"params": state_dict, "optimizer": its state}
    ckpt/step-000010/complete.json                    written last: {"step": 10, "num_layers": ..., ...}
    ckpt/latest                                       "step-000010", replaced atomically

Every file is written to a temporary name and ``os.replace``d into place, so a file is whole or absent.
A step's folder counts only once ``complete.json`` is there, and that is written by world rank 0 after
every rank has written its layers (a barrier), so a crash mid-write leaves the previous checkpoint as
the one that loads. Each layer is written by replica 0's rank that holds it; a tied weight is in the
files of both layers that use it (equal copies). Resuming loads each rank's own layers and continues
from the saved step: with the same data every step, the losses and parameters are those of a run that
never stopped (tests/test_checkpoint.py).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

LATEST = "latest"


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def step_folder(directory, step: int) -> Path:
    return Path(directory) / f"step-{step:06d}"


def save_layers(directory, step: int, layers: dict, optimizer_state: dict | None = None) -> None:
    """Write ``layers`` ({global layer index: module}) of one rank into step ``step``'s folder."""
    folder = step_folder(directory, step)
    folder.mkdir(parents=True, exist_ok=True)
    for index, layer in layers.items():
        state = {"params": {k: v.detach().cpu() for k, v in layer.state_dict().items()},
                 "optimizer": (optimizer_state or {}).get(index, {})}
        _atomic(folder / f"layer-{index:03d}.pt", lambda tmp: torch.save(state, tmp))


def commit(directory, step: int, meta: dict) -> None:
    """Mark step ``step`` complete (after every rank's ``save_layers``), then point ``latest`` at it."""
    folder = step_folder(directory, step)
    _atomic(folder / "complete.json", lambda tmp: tmp.write_text(json.dumps({"step": step, **meta})))
    _atomic(Path(directory) / LATEST, lambda tmp: tmp.write_text(folder.name))


def latest(directory) -> tuple[Path, dict]:
    """The newest complete checkpoint in ``directory``: (its folder, its complete.json). Raises ValueError if none."""
    directory = Path(directory)
    named = directory / LATEST
    candidates = [directory / named.read_text().strip()] if named.exists() else []
    candidates += sorted(directory.glob("step-*"), reverse=True)     # if "latest" is missing or points too far
    for folder in candidates:
        marker = folder / "complete.json"
        if marker.exists():
            return folder, json.loads(marker.read_text())
    raise ValueError(f"no complete checkpoint in {directory} (a step folder counts once its complete.json is written)")


def load_layers(directory, layers, indices) -> tuple[int, dict]:
    """Load the layers ``indices`` of ``layers`` in place from the newest checkpoint; return (its step, optimizer states)."""
    folder, meta = latest(directory)
    if meta["num_layers"] != len(layers):
        raise ValueError(f"the checkpoint in {folder} has {meta['num_layers']} layers, the model {len(layers)}: "
                         f"not the same model")
    optimizer = {}
    for index in indices:
        state = torch.load(folder / f"layer-{index:03d}.pt", weights_only=False)
        layers[index].load_state_dict(state["params"])
        optimizer[index] = state["optimizer"]
    return meta["step"], optimizer
