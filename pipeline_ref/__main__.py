"""The command line of pipeline_ref.

    python -m pipeline_ref demo [--out DIR]                     naive / GPipe / 1F1B measured vs theory, Gantt
                                                                charts
    python -m pipeline_ref run --schedule 1f1b --pp 4 --microbatches 8 -n 4 [--steps N] [--dtype float64]
                               [--device cpu|cuda|auto] [--model pkg.module:factory] [--save-grads FILE]
                               [--trace FILE] [--save-params FILE]
    python -m pipeline_ref simulate --schedule 1f1b --pp 4 --microbatches 8 [--plot FILE] [--timeline]
    python -m pipeline_ref doctor [--json]                      what this machine offers the course, what
                                                                fails
    python -m pipeline_ref memory --memory-budget GB [--model text_gpt]   bytes per rank; the largest model
                                                                          that fits
    python -m pipeline_ref plan --model gpt3-175b --gpus 1024 --device h100   configurations ranked by
                                                                              predicted speed

``run`` starts its own ranks with ``-n N``; without it, it expects to be one of
the ranks started by ``mpiexec``/``srun`` (e.g. ``mpiexec -n 4 python -m mpi4py
-m pipeline_ref run ...`` on a cluster).
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys

from pipeline_ref.config import DEVICES, DTYPES, PARTITIONS, TRANSPORTS, RunConfig
from pipeline_ref.faults import watchdog
from pipeline_ref.preflight import AUTOCAST, OPTIMIZERS, preflight
from pipeline_ref.results import print_report, theory_note
from pipeline_ref.schedules import GENERATORS

# command -> module of pipeline_ref/tools/ that adds its parser and runs it (add_parser, main)
TOOLS = {"demo": "demo", "bench": "bench", "doctor": "doctor", "memory": "memory_cli", "export": "export",
         "plan": "plan_cli"}


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--schedule", default="1f1b",
                   help=f"one of {', '.join(GENERATORS)}, or your own generator as pkg.module:function")
    p.add_argument("--pp", type=int, default=2, help="pipeline stages")
    p.add_argument("--dp", type=int, default=1, help="data-parallel replicas")
    p.add_argument("--microbatches", type=int, default=4)
    p.add_argument("--chunks", type=int, default=1, help="model chunks per rank (interleaved schedule)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline_ref", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    _add_run_parser(sub)
    for module in TOOLS.values():         # each tool owns its options
        importlib.import_module(f"pipeline_ref.tools.{module}").add_parser(sub)
    _add_simulate_parser(sub)
    return parser


def _add_run_parser(sub) -> None:
    """``run``: what to train and how; then what to keep of it."""
    run = sub.add_parser("run", help="train with a pipeline schedule on MPI ranks")
    _add_run_options(run)
    run.add_argument("-n", "--ranks", type=int, help="start this many local ranks (else: run under mpiexec)")
    run.add_argument("--steps", type=int, default=4, help="training steps (the first warms up; the report is "
                     "the median of the others)")
    run.add_argument("--model", default="mlp",
                     help="'mlp', 'gpt', 'gpt_tied', 'text_gpt' (real text) or pkg.module:factory")
    run.add_argument("--dtype", default="float32", choices=list(DTYPES))
    run.add_argument("--device", default="cpu", choices=list(DEVICES))
    run.add_argument("--model-kwargs", type=json.loads, default={}, metavar="JSON",
                     help='the model factory\'s options, e.g. \'{"blocks": 8, "dim": 128}\'')
    run.add_argument("--memory-budget", type=float, metavar="GB", help="per rank: refuse, before any rank "
                     "starts, a run that would not fit (python -m pipeline_ref memory plans one)")
    run.add_argument("--lr", type=float, default=0.05)
    run.add_argument("--optimizer", default="sgd", choices=list(OPTIMIZERS),
                     help="each stage's own optimizer")
    run.add_argument("--autocast", choices=list(AUTOCAST), help="mixed precision: float32 master weights, "
                     "layers in bfloat16, or float16 with dynamic loss scaling (an overflow skips the step "
                     "everywhere)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--sync-sends", action="store_true", help="synchronous sends (no eager buffering)")
    run.add_argument("--transport", default="mpi", choices=list(TRANSPORTS),
                     help="the wire of the pipeline's messages: MPI, or torch.distributed (gloo on CPU, NCCL "
                          "on GPUs)")
    run.add_argument("--partition", default="uniform", choices=list(PARTITIONS),
                     help="layers -> stages: equal layer counts, equal parameters, or equal measured time")
    split = run.add_mutually_exclusive_group()     # a factory returning a whole nn.Module (split.py)
    split.add_argument("--split", choices=["auto"], help="cut a whole nn.Module at its blocks, grouped by "
                       "parameters (--partition time: by measured time); the default for such a model")
    split.add_argument("--split-at", metavar="NAME,...", type=lambda s: tuple(n for n in s.split(",") if n),
                       default=(),
                       help="cut a whole nn.Module so that a stage begins at each named submodule")
    run.add_argument("--checkpoint", action="store_true",
                     help="activation checkpointing: stash only stage inputs, recompute in the backward")
    run.add_argument("--overlap-allreduce", action="store_true",
                     help="start a stage's gradient all-reduce right after its last backward")
    _add_run_keep_options(run)


def _add_run_keep_options(run) -> None:
    """``run``: checkpoints, what to save, time limits."""
    run.add_argument("--save-checkpoint", metavar="DIR",
                     help="save per-layer checkpoints here (atomic, any stages)")
    run.add_argument("--checkpoint-every", type=int, default=1, metavar="K",
                     help="with --save-checkpoint: every K steps")
    run.add_argument("--resume", metavar="DIR", help="continue from the newest complete checkpoint in DIR "
                     "(--steps counts from the start)")
    run.add_argument("--skip-nonfinite-steps", action="store_true",
                     help="a NaN/inf skips that step on every rank (agreed by an all-reduce) instead of "
                          "ending the run")
    run.add_argument("--save-grads", metavar="FILE", help="torch.save the whole model's first-step gradients")
    run.add_argument("--save-params", metavar="FILE",
                     help="torch.save every parameter after the run, keyed as "
                     "named_parameters() names them (compare with async_reference.py, or your own run)")
    run.add_argument("--trace", metavar="FILE", help="write the last step's trace (Chrome/Perfetto JSON)")
    run.add_argument("--timeout", type=float, default=600, help="seconds the whole run may take (with -n)")
    run.add_argument("--stall-timeout", type=float, default=None,
                     help="seconds without progress on a rank before the run ends, named (default: 20 on "
                          "cpu, 120 on cuda, where a first step pays for CUDA's start; see "
                          "watchdog.STALL_SECONDS)")


def _add_simulate_parser(sub) -> None:
    simulate = sub.add_parser("simulate", help="play a schedule without processes")
    _add_run_options(simulate)
    simulate.add_argument("--forward", type=float, default=1.0, help="cost of a forward")
    simulate.add_argument("--backward", type=float, default=2.0, help="cost of a backward")
    simulate.add_argument("--latency", type=float, default=0.0, help="latency of one message")
    simulate.add_argument("--plot", metavar="FILE", help="save a Gantt chart")
    simulate.add_argument("--timeline", action="store_true",
                          help="also print the schedule as a time grid (a column per time slot, '.' idle)")


def _run(args) -> int:
    if args.stall_timeout is None:
        args.stall_timeout = watchdog.STALL_SECONDS.get(args.device, watchdog.STALL_SECONDS["cuda"])
    cfg = RunConfig.from_args(args)
    if args.ranks is None:
        # A rank that mpiexec/srun started: watched from here on, its own preflight included (the ranks -n
        # starts are watched from their entry, faults/_rank.py).
        from mpi4py import MPI
        watchdog.start(MPI.COMM_WORLD.Get_rank(), cfg.stall_timeout)
    # Every check, before any rank starts or communicates: here, once, for the ranks -n starts; under
    # mpiexec, on each rank.
    prepared = preflight(cfg, args.ranks if args.ranks is not None else _mpi_world_size())
    if args.ranks is not None:
        from pipeline_ref.launch import handed_on, launch
        checked = handed_on(prepared)           # None: each rank prepares for itself
        result = launch(args.ranks, "pipeline_ref.train:run_rank", cfg, checked,
                        timeout=args.timeout, stall_timeout=args.stall_timeout, echo=True)[0]
    else:
        from pipeline_ref.train import run_under_mpiexec
        result = run_under_mpiexec(cfg, prepared)
    if result is not None:                      # world rank 0
        print_report(result, save_params=args.save_params, save_grads=args.save_grads, trace_file=args.trace)
    return 0


def _mpi_world_size() -> int:
    from mpi4py import MPI
    return MPI.COMM_WORLD.Get_size()


def _simulate(args) -> int:
    from pipeline_ref import schedules
    from pipeline_ref.sim import simulate
    options = schedules.chunk_options(args.schedule, args.chunks)
    schedule = schedules.build(args.schedule, args.pp, args.microbatches, **options)
    # A chunk (interleaved: v per rank; ZB-V: 2) is that fraction of a stage; the zero-bubble schedules split
    # the backward into two halves.
    scale = 1.0 / schedule.num_chunks
    trace = simulate.simulate(schedule, forward=args.forward * scale, backward=args.backward * scale,
                              latency=args.latency)
    print(schedules.describe(schedule))
    if args.timeline:
        import shutil
        from pipeline_ref.sim.timeline import timeline
        print(timeline(trace, width=shutil.get_terminal_size((100, 24)).columns))
    theory = theory_note(args.schedule, args.pp, args.microbatches, args.chunks, forward=args.forward,
                         input_grad=args.backward / 2, weight_grad=args.backward / 2)
    print(f"utilization {trace.utilization:.4f}{theory.replace('theory', 'closed form, no communication:')}; "
          f"makespan {trace.makespan:g}; peak stashed per stage {trace.peak_stashed}")
    if args.plot:
        from pipeline_ref.sim import plot
        axes = plot.gantt(trace,
                          title=f"{args.schedule}, {args.pp} stages, {args.microbatches} microbatches "
                                "(simulated)")
        axes.figure.savefig(args.plot, dpi=120, bbox_inches="tight")
        print(f"Gantt chart -> {args.plot}")
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "simulate":
            return _simulate(args)
        # a tool around the library, loaded only when asked for
        return importlib.import_module(f"pipeline_ref.tools.{TOOLS[args.command]}").main(args)
    except Exception as err:
        if getattr(err, "refusal", False):      # a ConfigError or TransportError: the request, refused
            print(f"error: {err}", file=sys.stderr)
            return 2
        from pipeline_ref.launch import LaunchError
        from pipeline_ref.schedules import ScheduleError
        if isinstance(err, (LaunchError, ScheduleError)):
            print(f"error: {err}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
