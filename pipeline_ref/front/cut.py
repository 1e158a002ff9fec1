"""A run's model cut into stages, the same on every rank: a list of layers partitioned, or a whole module
traced.

    c = cut.cut(comm, cfg, model, sample_microbatch, pipeline, device)    # in train.set_up
    c.layers[i] for i in c.ranges[v]        # the pieces (or layers) virtual stage v holds
    c.chunk(*those)                         # its module: nn.Sequential of layers, split.Chain of pieces
    c.names, c.tied                         # parameter names as on one device; weights held by several ranks

A list of layers is grouped by ``partition.choose``. A whole ``nn.Module`` is traced by
``split.trace`` (``torch.distributed.pipelining``'s front end): cut at ``cfg.split_at`` (one piece per
stage), or at every block, the blocks then grouped by parameters, or by measured time with
``--partition time`` (``piece_costs``, profiled on world rank 0 and broadcast, as for layers). Either way
``partition.tied_groups`` finds the weights that stages on two ranks share.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from pipeline_ref.faults.watchdog import beat
from pipeline_ref.front import partition, profiling, split


def check_sizes(cfg, num_layers: int | None, batch_size: int, chunks: int = 1, split_backward: bool = False,
                target_size: int | None = None) -> None:
    """ValueError unless run ``cfg`` fits these sizes: enough layers for the stages (``num_layers`` None: a
    whole module, whose pieces :func:`num_pieces` counts), a batch the microbatches divide.

    ``target_size``: the targets' first dimension when it is not the batch's (targets flattened per
    token, (B*T,) for inputs (B, T)): it must split into the same number of equal microbatches, which
    then pair up with the inputs' in order, as torch.distributed.pipelining splits them.
    """
    if num_layers is not None and cfg.pp * chunks > num_layers:
        pieces = f"--pp {cfg.pp} stages" + (f" x {chunks} chunks" if chunks > 1 else "")
        raise ValueError(f"{pieces} but the model has only {num_layers} layers; every "
                         f"{'chunk' if chunks > 1 else 'stage'} needs at least one")
    if split_backward and cfg.checkpoint:
        raise ValueError(f"--checkpoint cannot be combined with schedule {cfg.schedule!r}, whose backward "
                         f"is split into I and W (it would recompute the forward twice)")
    pieces = cfg.dp * cfg.microbatches
    if batch_size % pieces:
        raise ValueError(f"the global batch of {batch_size} samples does not split into {cfg.dp} "
                         f"replica(s) x {cfg.microbatches} equal microbatches; choose --microbatches "
                         f"(and --dp) so that their product divides {batch_size}")
    if target_size is not None and target_size != batch_size and target_size % pieces:
        raise ValueError(f"the targets' first dimension ({target_size}) does not split into {cfg.dp} "
                         f"replica(s) x {cfg.microbatches} equal microbatches as the inputs' ({batch_size}) "
                         "do; give targets whose first dimension is the batch (e.g. "
                         f"targets.view({batch_size}, -1)) or a multiple of it in the inputs' order (per "
                         "token: (batch * tokens,))")


def num_pieces(cfg, model, batch, chunks: int = 1, split_backward: bool = False) -> int:
    """Layers in a list, or the pieces a whole module will be cut into, once :func:`check_sizes` holds for
    them and ``batch`` (inputs, targets); ValueError for what cannot be cut."""
    inputs, targets = batch
    pieces = cfg.pp * chunks
    if not split.is_whole_module(model):
        if cfg.split_at:
            raise ValueError("--split-at cuts a whole nn.Module; this model is a list of layers (see "
                             "--partition)")
        check_sizes(cfg, len(model), inputs.shape[0], chunks, split_backward, targets.shape[0])
        return len(model)
    check_sizes(cfg, None, inputs.shape[0], chunks, split_backward, targets.shape[0])
    count = split.count_pieces(model, inputs[:1], cfg.split_at)
    wanted = f"--pp {cfg.pp}" + (f" x {chunks} chunks" if chunks > 1 else "")
    if cfg.split_at and count != pieces:
        raise ValueError(f"--split-at names {count - 1} point(s), cutting the model into {count} pieces, but "
                         f"{wanted} needs {pieces}: name {pieces - 1}")
    if count < pieces:
        names = ", ".join(split.blocks(model, split.record_calls(model, inputs[:1])))
        raise ValueError(f"{wanted} needs {pieces} pieces, but --split auto cuts this model into at most "
                         f"{count}: a stage can begin at {names}; use fewer stages or a model with more "
                         "blocks")
    return count


def piece_costs(pieces, sample, repeats: int = 3) -> list[float]:
    """Median seconds of forward + backward of each piece on what the pieces before it produce."""
    return profiling.layer_costs(pieces, split.as_args(sample), repeats)


@dataclass
class Cut:
    """How one run's model becomes stages: the pieces (or layers), one range of them per virtual stage."""
    layers: list
    ranges: list
    costs: list | None               # measured seconds per piece ("time"), else None
    names: dict                      # id(Parameter) -> the name the one-device model gives it
    tied: list                       # (name, pipeline ranks holding a copy)
    # pieces -> one chunk's module (nn.Sequential for layers, Chain for pieces)
    chunk: type
    loss_fn: object                  # the loss the last stage applies to its chunk's output


def cut(comm, cfg, model, loss_fn, sample, pipe, device: torch.device) -> Cut:
    """The run's stages, the same on every rank: layers partitioned, or a whole module traced and grouped."""
    n = pipe.num_virtual_stages
    if not split.is_whole_module(model):
        names = {id(p): name for name, p in nn.Sequential(*model).named_parameters()}
        ranges, costs = partition.choose(comm, cfg.partition, model, sample, num_pieces=n)
        return Cut(model, ranges, costs, names, partition.tied_groups(model, ranges, pipe, names),
                   nn.Sequential, loss_fn)
    beat("tracing the model (torch.export) and cutting it into pieces")
    key = (cfg.model, repr(sorted(cfg.model_kwargs.items())), cfg.dtype, cfg.seed)
    pieces = split.trace(model, sample.cpu(), list(cfg.split_at) or None, key=key)   # traced on the CPU ...
    if device.type != "cpu":     # ... then ops that make tensors (arange, ones) are pointed at the device,
        from torch.distributed.pipelining._IR import _modify_graph_op_device   # as torch's build_stage does
        for piece in pieces:
            _modify_graph_op_device(piece.graph_module, device)
    if cfg.split_at:
        ranges, costs = [range(i, i + 1) for i in range(len(pieces))], None
    else:   # blocks grouped by parameters (the memory they hold), or by measured time
        method = "time" if cfg.partition == "time" else "parameters"
        ranges, costs = partition.choose(comm, method, pieces, sample, num_pieces=n, profile=piece_costs)
    names = {id(p): name for name, p in model.named_parameters()}
    return Cut(pieces, ranges, costs, names, partition.tied_groups(pieces, ranges, pipe, names), split.Chain,
               split.loss_of(pieces, loss_fn))
