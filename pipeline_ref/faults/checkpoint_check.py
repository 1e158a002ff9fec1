"""Refuse a damaged or foreign checkpoint before any rank trains: one line saying what is wrong, what to do.

Part of the faults layer, beside ``checkpoint.py`` (whose ``check_whole`` checks the files and the names
against the model's). ``preflight.preflight`` calls :func:`check_resume` for
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

from torch import nn

from pipeline_ref.faults.checkpoint import CheckpointError, Saved, check_whole, latest


def expected_state(model) -> dict:
    """{name: [shape, dtype]} of what a checkpoint of ``model`` holds: the unsplit model's state_dict."""
    whole = model if isinstance(model, nn.Module) else nn.Sequential(*model)
    return {k: [list(v.shape), str(v.dtype).removeprefix("torch.")] for k, v in whole.state_dict().items()}


def check_resume(cfg, model) -> Saved:
    """The checkpoint ``cfg.resume_from`` resumes from; else CheckpointError, in one line."""
    wanted = expected_state(model)
    saved = latest(cfg.resume_from)
    folder = saved.folder
    if saved.optimizer != cfg.optimizer:
        kept = "AdamW's moments and step count" if saved.optimizer == "adamw" else "no optimizer state"
        raise CheckpointError(f"the checkpoint in {folder} was saved with --optimizer {saved.optimizer} "
                              f"({kept}), this run asks for {cfg.optimizer}: resume with --optimizer "
                              f"{saved.optimizer}")
    check_whole(saved, wanted)
    if saved.step >= cfg.steps:
        raise CheckpointError(f"the checkpoint in {folder} is at step {saved.step}: --steps {cfg.steps} "
                              f"leaves nothing to run (--steps counts from the start, resumed steps "
                              f"included)")
    return saved
