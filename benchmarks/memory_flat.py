"""A long run stays flat: each rank's resident memory over hundreds of steps of the demo model.

    .venv/bin/python benchmarks/memory_flat.py [--steps 500] [--schedule 1f1b] [--out benchmarks/results/memory_flat]

Trains the demo's model (pipeline_ref/tools/demo.py: MLP depth 8, width 1024) on 2 local ranks for ``--steps``
steps and reads every rank's resident memory (``/proc/self/statm``) after each step (``RunResult.step_rss``).
A buffer or trace that leaked per step or per message would grow it linearly; the table gives, per rank, the
median resident memory just after warm-up (steps 10-60) and over the last 50 steps, the growth between them, the
least-squares trend, and the largest step-to-step rise. Writes results.md and rss.png into ``--out``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import linear_regression, median

from pipeline_ref.engine import machine
from pipeline_ref.config import RunConfig
from pipeline_ref.tools.demo import DEMO_MODEL
from pipeline_ref.launch import launch

HERE = Path(__file__).resolve().parent
WARM = 10      # the first steps allocate the receive pool, autograd's caches and the allocator's arenas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--schedule", default="1f1b")
    parser.add_argument("--microbatches", type=int, default=8)
    parser.add_argument("--out", default=str(HERE / "results" / "memory_flat"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine.machine_info()
    cfg = RunConfig(schedule=args.schedule, pp=2, microbatches=args.microbatches, steps=args.steps,
                    model_kwargs=DEMO_MODEL, lr=0.001)
    result = launch(2, "pipeline_ref.train:run_rank", cfg, timeout=3600, stall_timeout=300)[0]
    rss = result.step_rss                       # [step][rank] bytes
    (out / "rss.json").write_text(json.dumps({"steps": args.steps, "schedule": args.schedule, "rss": rss}))
    lines = ["# Resident memory over a long run", "", machine.machine_markdown(info),
             f"{args.schedule}, 2 stages, {args.microbatches} microbatches, demo model {DEMO_MODEL}, "
             f"{args.steps} steps (median step {result.warm_step_seconds * 1e3:.0f} ms).", "",
             f"| rank | median of steps {WARM}-{WARM + 50} | median of the last 50 | growth | trend (least squares) "
             f"| largest rise between two steps |",
             "|---|---|---|---|---|---|"]
    mib = 2 ** 20
    for rank in range(2):
        series = [step[rank] for step in rss]
        early, late = median(series[WARM - 1:WARM + 49]), median(series[-50:])
        rise = max(b - a for a, b in zip(series[WARM - 1:], series[WARM:]))
        xs = range(WARM, len(series) + 1)
        slope = linear_regression(list(xs), series[WARM - 1:]).slope       # bytes per step
        lines.append(f"| {rank} | {early / mib:.1f} MiB | {late / mib:.1f} MiB | {(late - early) / early:+.2%} "
                     f"| {slope * 100 / mib:+.2f} MiB per 100 steps | {rise / mib:.2f} MiB |")
    lines += ["", "Medians of 50 steps, because a single step's resident memory moves by tens of MiB as the allocator "
              "takes and returns arenas (the largest rise column); the trend is the least-squares slope after warm-up. "
              f"A leak of one 512 KiB message per step would add {args.steps * 0.5:.0f} MiB "
              f"({50:.0f} MiB per 100 steps). The raw series is in rss.json."]
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3))
    for rank in range(2):
        ax.plot(range(1, len(rss) + 1), [step[rank] / mib for step in rss], label=f"rank {rank}")
    ax.set_xlabel("step")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_ylim(bottom=0)
    ax.legend()
    ax.set_title(f"{args.schedule}, 2 stages, demo model: resident memory per rank")
    fig.savefig(out / "rss.png", dpi=110, bbox_inches="tight")
    print(text)


if __name__ == "__main__":
    main()
