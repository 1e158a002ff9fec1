"""The course's main demo: naive, GPipe and 1F1B on local CPU ranks, measured against theory.

    python -m pipeline_ref demo [--out out/demo] [--microbatches 8] [--steps 3] [--rounds 3] [--stages 2 4]
                                [--device cuda]

For each pipeline depth (2, and 4 or 8 when the machine has that many cores, or
GPUs with ``--device cuda``: one rank per GPU) it starts that many ranks once and
trains a compute-heavy MLP whose stages cost the same with each schedule, in
alternating rounds (``measure.compare``: naive GPipe 1F1B, then 1F1B GPipe naive,
...); each run's first step warms up and is reported, not used. It prints the
median step with its spread, the measured utilization beside the closed-form
theory (1/p for naive, m/(m+p-1) for GPipe and 1F1B), the band the schedule
explains with the runs' own costs, and a flag where a step falls outside it or
the machine was busy. For the median round of each schedule it writes the
measured Gantt chart above the simulator's prediction from that run's costs
(``simulate.costs_from_trace``).
"""
from __future__ import annotations

import csv
from pathlib import Path

from statistics import median

from pipeline_ref import measure, schedules
from pipeline_ref.sim import plot, simulate, theory
from pipeline_ref.config import RunConfig
from pipeline_ref.engine.machine import core_warning, cores

SCHEDULES = ("naive", "gpipe", "1f1b")
# Compute-heavy and balanced: 8 equal layers, so the stages of 2 or 4 cost nearly the same
# (only the first skips its input's gradient), and a message (a microbatch of 128 x 1024
# floats, 512 KiB) is cheap next to a stage's matrix products. On one thread a 4-layer
# stage takes ~12-15 ms forward and ~25-30 ms backward per microbatch of 128 rows: long
# enough that the executor's few µs per action and a message's ~0.1 ms stay near 1% of an
# action, so measured utilization is >= 95% of theory (at width 512 and batch 512 the actions
# take 2-3 ms and 1F1B reaches ~0.94 of it). The whole demo on 2 stages takes ~15 s.
DEMO_MODEL = {"depth": 8, "width": 1024, "batch": 1024}


def pipeline_depths(device: str, cores: int, gpus: int) -> list[int]:
    """Depths the machine can run one rank per core (CPU) or per GPU: 2, and 4 and 8 where they fit."""
    units = gpus if device == "cuda" else cores
    return [d for d in (2, 4, 8) if d <= units] or [2]


def main(args) -> int:
    import torch
    device = getattr(args, "device", "cpu")
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    if device == "cuda" and gpus == 0:
        print("error: --device cuda, but torch sees no GPU", flush=True)
        return 2
    rounds, steps = getattr(args, "rounds", 3), args.steps
    if rounds < 1 or steps < 2:
        print(f"error: the demo needs --rounds >= 1 and --steps >= 2 (the first step warms up), got "
              f"--rounds {rounds} --steps {steps}", flush=True)
        return 2
    depths = args.stages or pipeline_depths(device, cores(), gpus)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, notes = [], []
    for depth in depths:
        if device == "cuda":
            warning = (f"{depth} ranks share {gpus} GPU(s): correct, but not a speed measurement"
                       if depth > gpus else None)
        else:
            warning = core_warning(depth, cores())
        if warning:
            print(f"warning: {warning}")
        where = f"{depth} ranks, one GPU each" if device == "cuda" else f"{depth} local CPU ranks"
        print(f"\n== {depth} stages: starting {where}, {rounds} alternating round(s) ==", flush=True)
        configs = {name: RunConfig(schedule=name, pp=depth, microbatches=args.microbatches, steps=steps,
                                   model="mlp", model_kwargs=DEMO_MODEL, device=device) for name in SCHEDULES}
        comparison = measure.compare(configs, num_ranks=depth, rounds=rounds, warmup=1, progress=True)
        rows += [_row(comparison, name, depth, out) for name in SCHEDULES]
        notes += [f"{depth} stages: {comparison.verdict('1f1b', 'gpipe', theory=1.0)}"]
        notes += [f"{depth} stages, {f.name}: {f.what} (likely: {f.likely_cause})" for f in comparison.flags]
    _print_table(rows)
    print("\n".join(notes))
    with open(out / "utilization.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for depth in depths:
        points = [(r["schedule"], r["microbatches"], r["measured"]) for r in rows if r["stages"] == depth]
        plot.utilization_curve(points, depth, path=out / f"utilization_p{depth}.png")
    print(f"\nGantt charts (measured above, simulated from measured costs below), utilization "
          f"curves and utilization.csv are in {out}/")
    return 0


def _row(comparison, name: str, depth: int, out: Path) -> dict:
    """One schedule's numbers over the rounds; its Gantt chart from the round with the median step."""
    import matplotlib.pyplot as plt
    runs, steps = comparison.results[name], comparison.values[name]
    result = runs[sorted(range(len(steps)), key=steps.__getitem__)[len(steps) // 2]]
    cfg, measured = result.config, result.trace
    predicted = simulate.simulate(schedules.build(name, depth, cfg.microbatches),
                                  **simulate.costs_from_trace(measured), time_unit="s")
    chart = out / f"{name}_p{depth}_m{cfg.microbatches}.png"
    plt.close(plot.compare_gantt(measured, predicted, path=chart,
                                 title=f"{name}, {depth} stages, {cfg.microbatches} microbatches"))
    low, high = comparison.spread(name)
    explained = comparison.band(name)
    return {"schedule": name, "stages": depth, "microbatches": cfg.microbatches, "rounds": comparison.rounds,
            "measured": median(r.trace.utilization for r in runs),
            "theory": theory.utilization(name, depth, cfg.microbatches), "simulated": predicted.utilization,
            "warmup_step_s": median(comparison.warmup[name]), "step_s": comparison.median(name),
            "step_min_s": low, "step_max_s": high, "band_low_s": explained.low, "band_high_s": explained.high,
            "band_predicted_s": explained.predicted,
            "prediction_error": simulate.prediction_error(measured, predicted)["makespan_error"],
            "flag": "; ".join(comparison.causes(name)), "peak_stashed": measured.peak_stashed,
            "chart": str(chart)}


def _print_table(rows) -> None:
    print("\nschedule  stages   m  utilization  theory  ratio  warm-up (s)  step (s): median (min-max)  "
          "band (s): low-high (predicted)  flag")
    for r in rows:
        spread = f"{r['step_s']:.3f} ({r['step_min_s']:.3f}-{r['step_max_s']:.3f})"
        explained = f"{r['band_low_s']:.3f}-{r['band_high_s']:.3f} ({r['band_predicted_s']:.3f})"
        print(f"{r['schedule']:<8}  {r['stages']:>6}  {r['microbatches']:>2}  {r['measured']:>11.3f}  "
              f"{r['theory']:>6.3f}  {r['measured'] / r['theory']:>5.3f}  {r['warmup_step_s']:>11.3f}  "
              f"{spread:>26}  {explained:>30}  {r['flag'] or '-'}")
    print("utilization: median over the rounds; theory: naive 1/p, GPipe and 1F1B m/(m+p-1) (equal stages, "
          "free messages);\nstep: the median over the rounds of each run's steps after its first (warm-up); "
          "band: the step the schedule explains,\nthe simulator played with the runs' own per-rank op times "
          "and message latency (lowest, highest and median over the rounds)")


def add_parser(sub) -> None:
    """The ``demo`` subcommand and its options (``python -m pipeline_ref demo --help``)."""
    demo = sub.add_parser("demo", help="naive, GPipe and 1F1B measured against theory, with Gantt charts")
    demo.add_argument("--out", default="out/demo", help="folder for the plots and tables")
    demo.add_argument("--microbatches", type=int, default=8)
    demo.add_argument("--steps", type=int, default=3,
                      help="steps per run; the first warms up (reported, not used)")
    demo.add_argument("--rounds", type=int, default=3,
                      help="alternating rounds of the schedules (medians, spread)")
    demo.add_argument("--stages", type=int, nargs="*",
                      help="pipeline depths (default: 2, and 4, 8 where they fit)")
    demo.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="cuda: one rank per GPU")
