"""Refuse a damaged or foreign checkpoint before any rank trains: one line saying what is wrong, what to do.

Part of the faults layer, beside ``checkpoint.py``. ``preflight.preflight`` calls :func:`check_resume` for
``--resume`` (once per run: in the parent of ``run -n N`` before it starts any rank, or on each rank that a
bare ``mpiexec`` started, before its first message):

* ``latest`` names a step folder that is missing or has no marker: the newest complete one is used, and the
  note says so;
* a file the marker lists is missing, has another size than was written, or does not load: refused, naming it;
* the checkpoint is of another model (a name only on one side, another shape or dtype), or was saved with
  another optimizer, or in the first format (no index of names): refused, naming the first difference;
* it is at or past ``--steps``: nothing would be left to run.

    from pipeline_ref.faults.checkpoint_check import check_resume
    saved = check_resume(cfg, model)      # model: the factory's list of layers, or its whole module; a Saved
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from pipeline_ref.faults.checkpoint import CheckpointError, Saved, latest, load_file


def expected_state(model) -> dict:
    """{name: [shape, dtype]} of what a checkpoint of ``model`` holds: the unsplit model's state_dict."""
    whole = model if isinstance(model, nn.Module) else nn.Sequential(*model)
    return {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in whole.state_dict().items()}


def _compare_models(folder: Path, saved: dict, wanted: dict) -> None:
    only_saved = [n for n in saved if n not in wanted]
    only_here = [n for n in wanted if n not in saved]
    if only_saved or only_here:
        first = (f"{only_saved[0]!r} is only in the checkpoint" if only_saved
                 else f"{only_here[0]!r} is only in this model")
        raise CheckpointError(f"the checkpoint in {folder} is of another model: {first} ({len(only_saved)} "
                              f"name(s) only there, {len(only_here)} only here); resume with the model it "
                              f"was saved from, or start without --resume")
    for name, (shape, dtype) in wanted.items():
        saved_shape, saved_dtype = saved[name]
        if saved_shape != shape:
            raise CheckpointError(f"the checkpoint in {folder} is of another model: {name!r} has shape "
                                  f"{tuple(saved_shape)} there, {tuple(shape)} here")
        if saved_dtype != dtype:
            raise CheckpointError(f"the checkpoint in {folder} holds {name!r} in {saved_dtype}, this run in "
                                  f"{dtype}: resume with --dtype {saved_dtype}")


def _check_files(folder: Path, files: dict) -> None:
    for file, entry in files.items():
        path = folder / file
        if not path.exists():
            raise CheckpointError(f"{path} is missing, though {folder.name}'s marker lists it: the "
                                  f"checkpoint is damaged; delete {folder} to resume from an earlier step")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise CheckpointError(f"{path} has {size} bytes, {entry['bytes']} were written: the checkpoint "
                                  f"is damaged; delete {folder} to resume from an earlier step")
        load_file(path)          # a file of the right size that is not what we wrote


def check_resume(cfg, model) -> Saved:
    """The checkpoint ``cfg.resume_from`` resumes from; else CheckpointError, in one line."""
    saved = latest(cfg.resume_from)
    folder = saved.folder
    if saved.optimizer != cfg.optimizer:
        kept = "AdamW's moments and step count" if saved.optimizer == "adamw" else "no optimizer state"
        raise CheckpointError(f"the checkpoint in {folder} was saved with --optimizer {saved.optimizer} "
                              f"({kept}), this run asks for {cfg.optimizer}: resume with --optimizer "
                              f"{saved.optimizer}")
    names = {name: entry for f in saved.files.values() for name, entry in f["names"].items()}
    _compare_models(folder, names, expected_state(model))
    _check_files(folder, saved.files)
    if saved.step >= cfg.steps:
        raise CheckpointError(f"the checkpoint in {folder} is at step {saved.step}: --steps {cfg.steps} "
                              f"leaves nothing to run (--steps counts from the start, resumed steps "
                              f"included)")
    return saved
