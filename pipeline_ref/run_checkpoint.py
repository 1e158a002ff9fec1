"""A run's checkpoint: what one rank of ``train.run_rank`` saves every K steps, and loads to resume.

Part of the run layer (it takes a ``train.RankRun``; ``checkpoint.py`` below it knows files, not runs).

    python -m pipeline_ref run -n 2 --pp 2 --steps 10 --optimizer adamw --save-checkpoint ckpt \
        --checkpoint-every 5
    python -m pipeline_ref run -n 4 --pp 4 --steps 10 --optimizer adamw --resume ckpt

A checkpoint holds the layers by the unsplit model's names with the optimizer's state beside each parameter,
the loss scale, and every world rank's random generators (restored only on the layout that saved them, where
each rank holds the layers it held then: dropout draws the same masks). ``preflight.preflight`` has refused a
damaged or foreign folder before any rank gets here.
"""
from __future__ import annotations

from pipeline_ref.faults import checkpoint, watchdog


def resume(run) -> None:
    """This rank's layers and their optimizer state by name (any stage count), the loss scale, and, on the
    layout that saved them, this rank's random generators; preflight has refused a damaged folder."""
    cfg, world_rank, model = run.cfg, run.place.comm.Get_rank(), run.model
    watchdog.beat(f"loading the checkpoint in {cfg.resume_from}")
    saved = checkpoint.latest(cfg.resume_from)
    checkpoint.load_layers(saved, model.layers, run.update.optimizer, model.state_names)
    if saved.scaler is not None:
        run.update.scaler.load_state(saved.scaler)
    same = saved.layout == checkpoint.layout_of(cfg)
    if same:
        checkpoint.load_rng(saved.folder, world_rank, run.place.device)
    run.first_step = saved.step
    if cfg.verbose and world_rank == 0:
        print((saved.note or f"resuming from {saved.folder} (step {saved.step})")
              + ("" if same else "; random generators not restored: saved on another layout"), flush=True)


def save(run, step: int) -> None:
    """Replica 0's ranks write their layers, every rank its random generators; once all have (a gather of
    their indexes), world rank 0 marks the step complete. A failed write raises here, naming the file."""
    watchdog.beat(f"saving the checkpoint of step {step}")
    cfg, place, model = run.cfg, run.place, run.model
    world_rank = place.comm.Get_rank()
    files = checkpoint.save_layers(cfg.checkpoint_dir, step, model.layers if place.topo.replica == 0 else {},
                                   run.update.optimizer, model.state_names, rng=(world_rank, place.device))
    gathered = place.comm.gather(files, root=0)
    if world_rank == 0:
        checkpoint.commit(cfg.checkpoint_dir, step, checkpoint.describe_run(cfg, run.update.scaler.state(),
                                                                            model.ranges[-1].stop),
                          {file: entry for g in gathered for file, entry in g.items()})
