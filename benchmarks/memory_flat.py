"""A long run stays flat: each rank's resident memory over hundreds of steps of the demo model.

    .venv/bin/python benchmarks/memory_flat.py [--steps 500] [--schedule 1f1b] [--out benchmarks/results/memory_flat]

Trains the demo's model (pipeline_ref/demo.py: MLP depth 8, width 1024) on 2 local ranks for ``--steps``
steps and reads every rank's resident memory (``/proc/self/statm``) after each step (``RunResult.step_rss``).
A buffer or trace that leaked per step or per message would grow it linearly; the table gives, per rank, the
resident memory after warm-up (step 10), at the end, and the growth between them, with the largest step-to-step
rise. Writes results.md and rss.png into ``--out``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline_ref import machine
from pipeline_ref.config import RunConfig
from pipeline_ref.demo import DEMO_MODEL
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
    lines = ["# Resident memory over a long run", "", machine.machine_markdown(info),
             f"{args.schedule}, 2 stages, {args.microbatches} microbatches, demo model {DEMO_MODEL}, "
             f"{args.steps} steps (median step {result.warm_step_seconds * 1e3:.0f} ms).", "",
             f"| rank | after step {WARM} | after step {args.steps} | growth | largest rise between two steps |",
             "|---|---|---|---|---|"]
    mib = 2 ** 20
    for rank in range(2):
        series = [step[rank] for step in rss]
        warm, last = series[WARM - 1], series[-1]
        rise = max(b - a for a, b in zip(series[WARM - 1:], series[WARM:]))
        lines.append(f"| {rank} | {warm / mib:.1f} MiB | {last / mib:.1f} MiB | {(last - warm) / warm:+.2%} "
                     f"| {rise / mib:.2f} MiB |")
    lines += ["", "Growth: (end - after warm-up) / after warm-up. A leak of one 512 KiB message per step would add "
              f"{args.steps * 0.5:.0f} MiB."]
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
