"""Models and rank targets of the checkpoint tests (tests/test_checkpoint.py), as tests.checkpoint_targets.

    dropout_mlp      a model that draws random numbers every step: a resume restores each rank's generators
    full_disk        a run whose checkpoint writer raises ENOSPC on one rank part way through a save
"""
import errno
import os

from torch import nn


def dropout_mlp(depth: int = 6, width: int = 8, batch: int = 16, p: float = 0.25):
    """``models.mlp`` with a Dropout after every layer but the last: each step draws masks on every rank."""
    from pipeline_ref import models
    layers, loss_fn, data = models.mlp(depth=depth, width=width, batch=batch)
    layers = [nn.Sequential(layer, nn.Dropout(p)) for layer in layers[:-1]] + layers[-1:]
    return layers, loss_fn, data


def full_disk(comm, cfg, failing_rank: int = 1, failing_step: int = 4):
    """``train.run_rank``, but on ``failing_rank`` the save of step ``failing_step`` finds the disk full: its
    first file is half written, then the write raises ENOSPC (as ``torch.save`` does when the disk fills)."""
    import torch
    from pipeline_ref import train
    save = torch.save

    def writer(obj, path, *args, **kwargs):
        if comm.Get_rank() == failing_rank and f"step-{failing_step:06d}" in str(path):
            with open(path, "wb") as f:
                f.write(b"PK\x03\x04 half a file")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return save(obj, path, *args, **kwargs)
    torch.save = writer
    return train.run_rank(comm, cfg)
