"""``python -m pipeline_ref memory``: bytes per rank before training (``memory_plan.py``), at several pipeline
depths, and the largest model of a given shape that fits a per-rank budget.

    python -m pipeline_ref memory --memory-budget 0.05 --model text_gpt --model-kwargs '{"dim": 128}' --stages
    1 2 4

The search grows one option of the model factory (``--grow blocks``) by doubling, then bisects: more blocks
never need less memory, so the first size that does not fit bounds the answer.
"""
from __future__ import annotations

import json

from pipeline_ref.config import ConfigError, RunConfig
from pipeline_ref.preflight import build_model, make_schedule
from pipeline_ref.engine.memory import Memory
from pipeline_ref.engine.memory import over_budget, table
from pipeline_ref.front.memory_plan import largest_fitting, plan


def add_parser(sub) -> None:
    memory = sub.add_parser("memory",
                            help="bytes per rank before training, and the largest model that fits a budget")
    memory.add_argument("--memory-budget", type=float, required=True, metavar="GB", help="per rank")
    memory.add_argument("--model", default="text_gpt", help="a factory name or pkg.module:factory")
    memory.add_argument("--model-kwargs", type=json.loads, default={}, metavar="JSON",
                        help="the factory's options")
    memory.add_argument("--grow", default="blocks",
                        help="the factory option the search grows (default: blocks)")
    memory.add_argument("--stages", type=int, nargs="+", default=[1, 2, 4])
    memory.add_argument("--schedule", default="1f1b")
    memory.add_argument("--microbatches", type=int, default=4)
    memory.add_argument("--optimizer", default="adamw", choices=["sgd", "adamw"])
    memory.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    memory.add_argument("--checkpoint", action="store_true", help="activation checkpointing")


def main(args) -> int:
    def ranks_for(stages: int, options: dict) -> list[Memory]:
        cfg = RunConfig(schedule=args.schedule, pp=stages, microbatches=args.microbatches, model=args.model,
                        model_kwargs=options, optimizer=args.optimizer, dtype=args.dtype,
                        checkpoint=args.checkpoint)
        layers, loss_fn, batch = build_model(cfg)
        if len(layers) < stages:
            raise ConfigError(f"{stages} stages but the model has {len(layers)} layers")
        schedule = make_schedule(cfg)
        if schedule.splits_backward and args.checkpoint:
            raise ConfigError(f"--checkpoint cannot be combined with {args.schedule}, "
                              f"whose backward is split")
        return plan(layers, loss_fn, batch, schedule, args.microbatches, args.optimizer,
                    dp=1, recompute=args.checkpoint)

    print(f"{args.model}({args.model_kwargs}), {args.schedule}, {args.microbatches} microbatches, "
          f"{args.optimizer}, {args.dtype}; budget {args.memory_budget:g} GB per rank (estimates: "
          "memory_plan.py)")
    refused = {}
    for stages in args.stages:
        try:
            ranks = ranks_for(stages, args.model_kwargs)
        except ConfigError as err:
            print(f"\n{stages} stage(s): {err}")
            refused[stages] = str(err)
            continue
        problem = over_budget(ranks, args.memory_budget)
        print(f"\n{stages} stage(s): " + ("fits" if problem is None else f"does not fit: {problem}"))
        print(table(ranks))
    if args.grow:
        print(f"\nthe largest {args.grow} that fits {args.memory_budget:g} GB per rank:")
        for stages in args.stages:
            if stages in refused and "layers" not in refused[stages]:
                print(f"  {stages} stage(s): not searched ({refused[stages]})")
                continue

            def fits(n: int) -> bool:
                try:
                    return over_budget(ranks_for(stages, {**args.model_kwargs, args.grow: n}),
                                       args.memory_budget) is None
                except ConfigError:
                    return False                # fewer layers than stages: too small, not too big
            best = largest_fitting(fits, start=max(1, stages - 2) if args.grow == "blocks" else 1, limit=512)
            print(f"  {stages} stage(s): {args.grow} = {best if best is not None else 'none fits'}")
    return 0
