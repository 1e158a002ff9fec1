"""The trained model out of the pipeline in one piece: ``python -m pipeline_ref export CHECKPOINT --out DIR``.

Part of the tools (above the run): it rebuilds the model with the factory the run named (its complete.json
keeps the factory, its arguments, dtype and seed), loads every layer file into it by name, and writes

    DIR/state_dict.pt     the unsplit model's state_dict, which the factory's own model loads:
                              layers, loss_fn, batch = factory(**kwargs)
                              state = torch.load("DIR/state_dict.pt")
                              nn.Sequential(*layers).load_state_dict(state)     # a list of layers
                              module.load_state_dict(state)                     # a whole module
    DIR/config.json, DIR/model.safetensors    for a Hugging Face model (``save_pretrained``), which
                              AutoModelForCausalLM.from_pretrained("DIR", local_files_only=True) loads

The optimizer's state stays behind: an exported model is for evaluation or sharing; to train on, resume the
checkpoint itself.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from pipeline_ref.faults import checkpoint
from pipeline_ref.config import ConfigError, RunConfig
from pipeline_ref.preflight import build_model


def add_parser(sub) -> None:
    export = sub.add_parser("export", help="write a checkpoint's whole model: a state_dict, and a Hugging "
                                           "Face folder for a Hugging Face model")
    export.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="a --save-checkpoint folder (its newest complete step is exported)")
    export.add_argument("--out", required=True, metavar="DIR", help="folder to write the model into")


def unsplit(model) -> nn.Module:
    """A factory's model as one module: its whole module, or ``nn.Sequential`` of its layers (the names a
    checkpoint keeps)."""
    whole = isinstance(model, nn.Module) and not isinstance(model, (nn.Sequential, nn.ModuleList))
    return model if whole else nn.Sequential(*model)


def load_model(directory):
    """The unsplit model of the newest complete checkpoint in ``directory``: (module, checkpoint.Saved).

    ``module`` is the factory's whole module, or ``nn.Sequential`` of its layers, in the run's dtype.
    """
    saved = checkpoint.latest(directory)
    if not isinstance(saved.model_kwargs, dict):
        raise checkpoint.CheckpointError(f"the checkpoint in {saved.folder} keeps its model's arguments only "
                                         f"as text ({saved.model_kwargs!r}): they cannot rebuild the model")
    cfg = RunConfig(model=saved.model, model_kwargs=saved.model_kwargs, dtype=saved.dtype, seed=saved.seed)
    whole = unsplit(build_model(cfg)[0])
    wanted = whole.state_dict()
    tensors, _ = checkpoint.read_state(saved, list(wanted))
    # The checkpoint's tensors are memory-mapped from its files: copied into the model's own
    whole.load_state_dict({k: v.clone() for k, v in tensors.items()}, strict=True)
    return whole, saved


def export(directory, out) -> list[Path]:
    """Write the model of the newest complete checkpoint in ``directory`` into ``out``; the files written."""
    whole, saved = load_model(directory)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().clone() for k, v in whole.state_dict().items()}, out / "state_dict.pt")
    written = [out / "state_dict.pt"]
    if hasattr(whole, "save_pretrained"):           # a transformers PreTrainedModel: its own folder format
        whole.save_pretrained(out)
        written += sorted(p for p in out.iterdir() if p.name != "state_dict.pt")
    (out / "exported_from.json").write_text(json.dumps(
        {"checkpoint": str(saved.folder.resolve()), "step": saved.step, "model": saved.model,
         "model_kwargs": saved.model_kwargs, "dtype": saved.dtype}, indent=1, default=repr))
    return written


def main(args) -> int:
    try:
        written = export(args.checkpoint, args.out)
    except checkpoint.CheckpointError as err:
        raise ConfigError(str(err)) from None
    print(f"exported the model of {args.checkpoint} -> " + ", ".join(str(p) for p in written))
    return 0
