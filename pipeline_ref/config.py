"""What one pipelined training run is: ``RunConfig``, the names it may choose, and ``ConfigError``.

Layer: run (package root), a leaf: it imports nothing of the package, so every part of the run that only
names a configuration (results, launch, the tools) stands on it without climbing above the checks.
``preflight.py`` makes every check a run can fail before a rank communicates.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
DEVICES = ("cpu", "cuda", "auto")
PARTITIONS = ("uniform", "parameters", "time")
# the wire of the pipeline's messages: MPI, or torch.distributed (gloo / NCCL)
TRANSPORTS = ("mpi", "torch")


class ConfigError(ValueError):
    """A run that cannot work as asked; raised before any communication."""

    refusal = True      # the rank entry ends a refused run with exit code 2 and this message alone


@dataclass
class RunConfig:
    schedule: str = "1f1b"
    pp: int = 2                       # pipeline stages
    dp: int = 1                       # data-parallel replicas
    microbatches: int = 4
    steps: int = 1
    model: str = "mlp"                # registry name or "pkg.module:factory"
    model_kwargs: dict = field(default_factory=dict)
    dtype: str = "float32"
    device: str = "cpu"
    lr: float = 0.05                  # plain SGD, so a few steps visibly lower the loss
    optimizer: str = "sgd"            # per stage, on its own parameters (optim.py): sgd or adamw
    # mixed precision (precision.py): "bfloat16", or "float16" with loss scaling
    autocast: str | None = None
    # GB per rank: refuse, before training, a run that would not fit (memory_plan)
    memory_budget: float | None = None
    seed: int = 0
    sync_sends: bool = False          # Issend: no send order passes only thanks to eager buffering
    # "torch": torch.distributed (torch_transport.py), gloo on CPU, NCCL on GPUs
    transport: str = "mpi"
    collect_grads: bool = False       # gather the whole model's gradients after the first step
    collect_params: bool = False      # gather every rank's parameters after the last step
    overlap_allreduce: bool = False   # start a stage's gradient all-reduce right after its last backward
    partition: str = "uniform"        # layers -> stages: uniform, parameters, or time (measured)
    split_at: tuple = ()              # a whole nn.Module: a stage begins at each named submodule (else auto)
    checkpoint: bool = False          # activation checkpointing: keep stage inputs, recompute in backward
    chunks: int = 1                   # model chunks per rank, for the interleaved schedule
    stall_timeout: float = 120.0      # seconds without progress before a rank ends the run
    skip_nonfinite: bool = False      # a NaN/inf skips that step on every rank (else it ends the run, named)
    checkpoint_dir: str | None = None # save a checkpoint here (checkpoint.py) every checkpoint_every steps
    checkpoint_every: int = 1
    resume_from: str | None = None    # continue from the newest complete checkpoint in this folder
    verbose: bool = False             # print a progress line per step

    @classmethod
    def from_args(cls, args) -> "RunConfig":
        """The run ``python -m pipeline_ref run`` asks for: its parsed options (``argparse.Namespace``),
        with a progress line per step. The options that name files to write (``--save-grads``,
        ``--save-params``) ask the ranks to collect what those files hold."""
        return cls(schedule=args.schedule, pp=args.pp, dp=args.dp, microbatches=args.microbatches,
                   chunks=args.chunks, steps=args.steps, model=args.model, model_kwargs=args.model_kwargs,
                   dtype=args.dtype, device=args.device, lr=args.lr, optimizer=args.optimizer,
                   autocast=args.autocast, memory_budget=args.memory_budget, seed=args.seed,
                   sync_sends=args.sync_sends, transport=args.transport, partition=args.partition,
                   split_at=args.split_at, checkpoint=args.checkpoint,
                   overlap_allreduce=args.overlap_allreduce,
                   collect_grads=bool(args.save_grads), collect_params=bool(args.save_params),
                   stall_timeout=args.stall_timeout, skip_nonfinite=args.skip_nonfinite_steps,
                   checkpoint_dir=args.save_checkpoint, checkpoint_every=args.checkpoint_every,
                   resume_from=args.resume, verbose=True)

    @property
    def skips_nonfinite(self) -> bool:
        """A NaN/inf skips the step on every rank: asked for, or float16's overflows (precision.py)."""
        return self.skip_nonfinite or self.autocast == "float16"

    @property
    def world_size(self) -> int:
        return self.pp * self.dp
