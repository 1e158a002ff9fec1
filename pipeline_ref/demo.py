"""The course's main demo: naive, GPipe and 1F1B on local CPU ranks, measured against theory.

    python -m pipeline_ref demo [--out out/demo] [--microbatches 8] [--steps 3] [--stages 2 4] [--device cuda]

For each pipeline depth (2, and 4 or 8 when the machine has that many cores, or
GPUs with ``--device cuda``: one rank per GPU) it starts that
many ranks once, trains a compute-heavy MLP whose stages cost the same for a few
steps with each schedule, and takes the last step's trace. It prints measured
utilization beside the closed-form theory (1/p for naive, m/(m+p-1) for GPipe and
1F1B) and writes, for each run, the measured Gantt chart above the one the
simulator predicts from the measured per-stage costs and message latency
(``simulate.costs_from_trace``), with how close that prediction came.
"""
from __future__ import annotations

import csv
from pathlib import Path

from . import plot, schedules, simulate, theory
from .config import RunConfig
from .launch import launch
from .machine import core_warning, cores

SCHEDULES = ("naive", "gpipe", "1f1b")
# Compute-heavy and balanced: 8 equal layers, so the stages of 2 or 4 cost nearly the same
# (only the first skips its input's gradient), and a message (a microbatch of 128 x 1024
# floats, 512 KiB) is cheap next to a stage's matrix products. On one thread a 4-layer
# stage takes ~12-15 ms forward and ~25-30 ms backward per microbatch of 128 rows: long
# enough that the executor's few µs per action and a message's ~0.1 ms stay near 1% of an
# action, so measured utilization is >= 95% of theory. (Width 512 / batch 512 gave 2-3 ms
# actions and ~0.94 of theory for 1F1B.) The whole demo on 2 stages takes ~15 s.
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
    depths = args.stages or pipeline_depths(device, cores(), gpus)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for depth in depths:
        warning = (f"{depth} ranks share {gpus} GPU(s): correct, but not a speed measurement"
                   if device == "cuda" and depth > gpus else None if device == "cuda" else core_warning(depth, cores()))
        if warning:
            print(f"warning: {warning}")
        where = f"{depth} ranks, one GPU each" if device == "cuda" else f"{depth} local CPU ranks"
        print(f"\n== {depth} stages: starting {where} ==", flush=True)
        configs = [RunConfig(schedule=name, pp=depth, microbatches=args.microbatches, steps=args.steps,
                             model="mlp", model_kwargs=DEMO_MODEL, device=device, verbose=True)
                   for name in SCHEDULES]
        results = launch(depth, "pipeline_ref.train:run_many", configs, echo=True, timeout=900)[0]
        for cfg, result in zip(configs, results):
            measured = result.trace
            predicted = simulate.simulate(schedules.build(cfg.schedule, depth, cfg.microbatches),
                                          **simulate.costs_from_trace(measured), time_unit="s")
            error = simulate.prediction_error(measured, predicted)
            chart = out / f"{cfg.schedule}_p{depth}_m{cfg.microbatches}.png"
            plot.compare_gantt(measured, predicted, path=chart,
                               title=f"{cfg.schedule}, {depth} stages, {cfg.microbatches} microbatches")
            rows.append({"schedule": cfg.schedule, "stages": depth, "microbatches": cfg.microbatches,
                         "measured": measured.utilization,
                         "theory": theory.utilization(cfg.schedule, depth, cfg.microbatches),
                         "simulated": predicted.utilization, "step_s": measured.makespan,
                         "predicted_step_s": predicted.makespan, "prediction_error": error["makespan_error"],
                         "peak_stashed": measured.peak_stashed, "chart": str(chart)})
    _print_table(rows)
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


def _print_table(rows) -> None:
    print("\nschedule  stages  microbatches  measured  theory  measured/theory  step (s)  predicted (s)  "
          "error  peak stashed per stage")
    for r in rows:
        print(f"{r['schedule']:<8}  {r['stages']:>6}  {r['microbatches']:>12}  {r['measured']:>8.3f}  "
              f"{r['theory']:>6.3f}  {r['measured'] / r['theory']:>15.3f}  {r['step_s']:>8.3f}  "
              f"{r['predicted_step_s']:>13.3f}  {r['prediction_error']:>+5.1%}  {r['peak_stashed']}")
    print("theory: naive 1/p; GPipe and 1F1B m/(m+p-1) (p stages, m microbatches, equal stages, free messages)")
    print("predicted: the simulator played with this run's median forward/backward time per stage and median "
          "message latency;\nerror: (predicted - measured) / measured step time")
