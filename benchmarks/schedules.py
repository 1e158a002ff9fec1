"""Past 1F1B in real runs: interleaved 1F1B, ZB-H1, ZB-H2 and ZB-V against 1F1B on the same model and ranks.

    .venv/bin/python benchmarks/schedules.py [--repeats 9] [--out benchmarks/results/schedules]

Lesson 06 plays each schedule once; this plays each ``--repeats`` times, in rounds of
every configuration, and keeps each run's second (warm) step. The lesson's model
(``l06_beyond.MEASURE_MODEL``: 8 equal MLP blocks of width 1024, batch 512), 2 ranks with
one thread each, m = 4 and 8. A run during which another process took part of a rank's
core is played again (``bench.sweep_rank``).

For each schedule: the step (median, min-max) and its ratio to 1F1B's, the utilization
measured, the closed form fed the run's own median op times (where one holds), the
calibrated simulation's step error, the median op times and the peak stash.

Then, in this process alone (one thread), what deferring a weight gradient costs on a
CPU: one stage of the same model times ``W`` right after its own ``I``, as ZB-H1's
steady state runs it, and ``W`` after the ``I`` of two other microbatches, as ZB-H2
defers it (``deferred_w``). Writes results.md into ``--out``.
"""
from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from statistics import median

import torch
from torch import nn

from pipeline_ref import models, simulate
from pipeline_ref.engine import machine
from pipeline_ref.tools import bench
from pipeline_ref.config import RunConfig
from pipeline_ref.engine.stage import Stage
from pipeline_ref.sim.trace import Trace

HERE = Path(__file__).resolve().parent
MODEL_KWARGS = models.MEASURE_MLP        # the lessons' model (lesson_code.common.LESSON_MODEL)
SCHEDULES = (("1f1b", 1), ("interleaved", 2), ("zb-h1", 1), ("zb-h2", 1), ("zbv", 1))


def theory(cfg: RunConfig, costs: dict) -> float | None:
    """The closed form with the run's rank-0 median op times, or None where none holds."""
    op = {k: costs[k][0] for k in ("forward", "input_grad", "weight_grad") if k in costs}
    try:
        return simulate.theory_utilization(cfg.schedule, cfg.pp, cfg.microbatches, chunks=cfg.chunks, **op)
    except ValueError:
        return None


def row(cfg: RunConfig, runs: list[bench.Measured]) -> dict:
    numbers = [bench.run_numbers(r) for r in runs]
    traces = [r.result.trace for r in runs]
    middle = sorted(range(len(runs)), key=lambda k: traces[k].makespan)[len(runs) // 2]
    costs = simulate.costs_from_trace(traces[middle])
    return {"schedule": cfg.schedule, "m": cfg.microbatches,
            "step_s": median(t.makespan for t in traces),
            "step_min_s": min(t.makespan for t in traces), "step_max_s": max(t.makespan for t in traces),
            "utilization": median(t.utilization for t in traces), "theory": theory(cfg, costs),
            "prediction_error": median(n["prediction_error"] for n, _, _ in numbers),
            "op_ms": {k: [1e3 * c for c in v] for k, v in costs.items() if k != "latency"},
            "peak_stashed": traces[middle].peak_stashed, "peak_bytes": traces[middle].peak_stashed_bytes,
            "cpu_share": min(r.cpu_share for r in runs)}


def deferred_w(repeats: int = 16, others: int = 2, blocks: int = 4, rows: int = 128) -> dict:
    """Median time (s) of a W run right after its own I, and of a W run after ``others`` other I's.

    One stage of ``blocks`` MLP blocks (a p = 2 stage of the benchmark's model) holds
    ``others + 1`` microbatches of ``rows``; each repeat runs their forwards, then
    I0 W0 (hot), then the other I's, then W1 (deferred), on a fresh copy of the stage.
    """
    torch.set_num_threads(1)                      # as on a rank
    torch.manual_seed(0)
    layers, loss_fn, (x, _) = models.mlp(depth=blocks, width=MODEL_KWARGS["width"], batch=rows * (others + 2))
    inputs = x.tensor_split(others + 2)
    grad = torch.randn(rows, MODEL_KWARGS["width"])

    def timed(run) -> float:
        start = time.perf_counter()
        run()
        return time.perf_counter() - start

    hot, deferred = [], []
    for _ in range(repeats + 1):                  # the first repeat warms up and is dropped
        stage = Stage(nn.Sequential(*copy.deepcopy(layers)), is_first=True, loss_fn=loss_fn,
                      num_microbatches=len(inputs), split_backward=True)
        for i, x_i in enumerate(inputs):
            stage.forward(i, x_i)
        stage.backward_input(0, (grad,))
        hot.append(timed(lambda: stage.backward_weight(0)))
        for i in range(1, len(inputs)):
            stage.backward_input(i, (grad,))
        deferred.append(timed(lambda: stage.backward_weight(1)))
    return {"hot_s": median(hot[1:]), "deferred_s": median(deferred[1:]), "repeats": repeats, "others": others,
            "deferred_slower": sum(d > h for h, d in zip(hot[1:], deferred[1:]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--microbatches", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--out", default=str(HERE / "results" / "schedules"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine.machine_info()
    configs = [RunConfig(schedule=name, pp=2, microbatches=m, chunks=chunks, steps=2, model="mlp",
                         model_kwargs=MODEL_KWARGS)
               for m in args.microbatches for name, chunks in SCHEDULES]
    # Round-robin: every config once per round, so a slow spell of the machine hits all schedules alike,
    # and each step can be compared with 1F1B's of the same round (the paired ratio).
    played = bench.measure(2, configs * args.repeats, 1, timeout=3600, min_cpu_share=0.97, retries=8,
                           quiet_wait=600)
    results = [[played[k * len(configs) + i][0] for k in range(args.repeats)] for i in range(len(configs))]
    rows = [row(cfg, runs) for cfg, runs in zip(configs, results)]
    for r, runs in zip(rows, results):
        base = next(b for cfg, b in zip(configs, results) if cfg.schedule == "1f1b" and cfg.microbatches == r["m"])
        r["paired"] = median(a.result.trace.makespan / b.result.trace.makespan
                             for a, b in zip(runs, base))
    info["load_average_after"] = machine.machine_info()["load_average"]

    names = {"forward": "F", "backward": "B", "input_grad": "I", "weight_grad": "W"}
    lines = ["# Past 1F1B: interleaved, ZB-H1, ZB-H2 and ZB-V in real runs", "",
             machine.machine_markdown(info),
             f"Model `mlp` with {MODEL_KWARGS}, 2 ranks (one thread each), interleaved and ZB-V with 2 chunks per rank; "
             f"each cell is over {args.repeats} runs, each run's second step, played in {args.repeats} rounds of "
             f"every configuration.", "",
             "| m | schedule | step: median (min-max) | ÷ 1F1B, same round (median) | utilization | closed form (rank 0's op times) "
             "| calibrated simulation: step error | median op times, rank 0 / rank 1 (ms) | peak stashed (MiB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ops = ", ".join(f"{names[k]} {v[0]:.1f} / {v[1]:.1f}" for k, v in r["op_ms"].items() if any(v))
        stash = ", ".join(f"{n} ({b / 2**20:.1f})" for n, b in zip(r["peak_stashed"], r["peak_bytes"]))
        lines.append(f"| {r['m']} | {r['schedule']} | {1e3 * r['step_s']:.1f} ms ({1e3 * r['step_min_s']:.1f}-"
                     f"{1e3 * r['step_max_s']:.1f}) | {r['paired']:.3f} | {r['utilization']:.3f} "
                     f"| {'n/a' if r['theory'] is None else format(r['theory'], '.3f')} "
                     f"| {100 * r['prediction_error']:+.1f}% | {ops} | {stash} |")
    lines += ["", "Closed forms: 1F1B m/(m+p-1); interleaved vm/(vm+p-1); ZB-H1 only for W <= min(F, I); ZB-H2 only "
              "for F = I = W; ZB-V only for F = I = W and m >= 2p - 1 (n/a: the run's op times are outside the range where the formula holds). Lowest CPU "
              f"share of any kept run: {min(r['cpu_share'] for r in rows):.2f}."]
    cost = deferred_w()
    lines += ["", "## What deferring W costs here", "",
              f"One stage of 4 blocks, microbatches of 128 rows, one thread, {cost['repeats']} repeats: W right after "
              f"its own I {1e3 * cost['hot_s']:.1f} ms (median); W after the I of {cost['others']} other microbatches "
              f"{1e3 * cost['deferred_s']:.1f} ms, {cost['deferred_s'] / cost['hot_s']:.2f}x; the deferred W was the "
              f"slower of the pair in {cost['deferred_slower']} of {cost['repeats']} repeats."]
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
