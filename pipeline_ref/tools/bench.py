"""The benchmark sweep: schedules x microbatches (x stages) measured on local ranks, beside theory and the
simulator.

    python -m pipeline_ref bench [--out out/bench] [--schedules naive gpipe 1f1b] [--microbatches 1 2 4 8 16]
                                 [--stages 2 [4]] [--steps 2] [--repeats 3]
                                 [--model-depth 8] [--model-width 1024] [--batch 1024] [--gantt 8]
                                 [--min-cpu-share 0.9] [--retries 2] [--quiet-wait 10]

For each pipeline depth it starts that many ranks once (``mpiexec``, one thread
each) and plays every (schedule, microbatches) run once per round, ``--repeats``
alternating rounds inside that one launch (``measure.compare``), since starting
ranks costs seconds. Each run trains ``--steps`` steps; the first warms up and is
reported, not used. A progress line per run goes to stderr. A round during which
another process took part of a rank's core (CPU share, ``machine.ShareMeter``) is
played again, up to ``--retries`` times, once the cores are idle again (waiting up
to ``--quiet-wait`` s). Into ``--out`` (tables and plots: ``bench_report.py``) it writes

    results.csv          one row per run (medians over the rounds, spread, band, flag), every number
    results.md           the same as a markdown table, under the machine it ran on
    utilization_pP.png   measured utilization over the m/(m+p-1) and 1/p curves
    gantt_S_pP_mM.png    measured step above the simulator's prediction from its own costs

Per run: utilization and theory, the calibrated prediction (``simulate.costs_from_trace``)
and its step-time error, per-stage forward/backward time, message latency, the
executor's gaps (time between a rank's actions spent neither computing nor
waiting) and peak stashed activations (count and bytes). Timings mean little
when ranks share cores: it warns when asked for more ranks than free cores.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from statistics import median

from pipeline_ref.sim import simulate, theory
# bench's API
# noqa: F401
from pipeline_ref.tools.bench_report import COLUMNS, markdown_table, write_csv, write_markdown, write_plots
from pipeline_ref.measure import compare
from pipeline_ref.config import ConfigError, RunConfig
from pipeline_ref.preflight import check_config, check_fits, make_schedule
from pipeline_ref.engine.machine import ShareMeter, core_warning, cores, machine_info, wait_until_quiet
from pipeline_ref.results import RunResult
from pipeline_ref.sim.trace import Trace, executor_gaps

SCHEDULES = ("naive", "gpipe", "1f1b")
MICROBATCHES = (1, 2, 4, 8, 16)


def plan(schedule_names, microbatches, stages, steps: int = 2, model_kwargs: dict | None = None,
         dtype: str = "float32") -> list[tuple[int, list[RunConfig]]]:
    """The sweep as (stage count, runs) groups, one launch per group; refuses bad requests before any
    launch."""
    model_kwargs = dict(model_kwargs or {})
    depth, batch = model_kwargs.get("depth", 8), model_kwargs.get("batch", 32)
    groups = []
    for pp in stages:
        configs = [RunConfig(schedule=name, pp=pp, microbatches=m, steps=steps, model="mlp",
                             model_kwargs=model_kwargs,
                             dtype=dtype) for name in schedule_names for m in microbatches]
        for cfg in configs:
            check_config(cfg, cfg.pp)
            check_fits(cfg, depth, batch)
        groups.append((pp, configs))
    return groups


def sweep_rank(comm, configs: list[RunConfig], repeats: int = 1, first: int = 0, total: int | None = None,
               min_cpu_share: float = 0.0, retries: int = 0, quiet_wait: float = 0.0):
    """Rank side: every run ``repeats`` times; rank 0 prints progress and returns [[result per repeat] per
    run].

    CPU share (``machine.ShareMeter``): the time a rank ran over the time it wanted its core.
    Alone on its core a rank is ~1.0, also when it sleeps in a wait; less means another process
    took part of the core, so the run measured the OS scheduler. Such a run (the lowest share over the
    ranks below ``min_cpu_share``) is played again, at most ``retries`` extra times per config,
    after waiting up to ``quiet_wait`` s for the machine to be idle; the ``repeats`` runs
    with the highest shares are kept.
    """
    from mpi4py import MPI
    from pipeline_ref.train import run_rank
    total = total or len(configs)
    results = []
    for i, cfg in enumerate(configs):
        tried = []                          # (cpu share, result) of every run played
        # Every rank sees the same (lowest) share, so all agree on whether to play again.
        while sum(share >= min_cpu_share for share, _ in tried) < repeats and len(tried) < repeats + retries:
            if tried and tried[-1][0] < min_cpu_share and quiet_wait > 0:
                wait_until_quiet(comm, quiet_wait)
            meter = ShareMeter()
            result = run_rank(comm, cfg)
            tried.append((comm.allreduce(meter.share(), op=MPI.MIN), result))
        # The least disturbed runs, in the order they were played.
        kept = sorted(sorted(range(len(tried)), key=lambda k: -tried[k][0])[:repeats])
        runs = [Measured(tried[k][1], tried[k][0], len(tried) - repeats) for k in kept]
        results.append(runs)
        if comm.Get_rank() == 0:
            traces = [r.result.trace for r in runs]
            expected = _theory(theory.utilization, cfg.schedule, cfg.pp, cfg.microbatches)
            print(f"[{first + i + 1:>{len(str(total))}}/{total}] {cfg.schedule} p={cfg.pp} "
                  f"m={cfg.microbatches}  step {median(t.makespan for t in traces) * 1e3:.1f} ms"
                  f"  utilization {median(t.utilization for t in traces):.3f}"
                  + (f" (theory {expected:.3f})" if expected else "")
                  + f"  cpu share {min(r.cpu_share for r in runs):.2f}"
                  + (f" ({len(tried) - repeats} extra run(s))" if len(tried) > repeats else ""),
                  file=sys.stderr, flush=True)
    return results if comm.Get_rank() == 0 else None


def measure(num_ranks: int, configs: list[RunConfig], repeats: int = 1, first: int = 0,
            total: int | None = None,
            timeout: float = 1800, min_cpu_share: float = 0.0, retries: int = 0,
            quiet_wait: float = 0.0) -> list[list["Measured"]]:
    """Start ``num_ranks`` local ranks once and run every config ``repeats`` times: [[result per repeat] per
    config]."""
    from pipeline_ref.launch import launch
    return launch(num_ranks, "pipeline_ref.tools.bench:sweep_rank", configs, repeats, first, total,
                  min_cpu_share,
                  retries, quiet_wait, echo=True, timeout=timeout)[0]


# --------------------------------------------------------------------------- numbers of one run

@dataclass
class Measured:
    """One played run, the lowest rank's CPU share during it, and how many extra runs its config took."""
    result: RunResult
    cpu_share: float | None = None
    retried: int = 0

def _theory(function, name: str, pp: int, m: int):
    try:
        return function(name, pp, m)
    except ValueError:      # a user's own generator, or ZB-H1 with m < p: no closed form
        return None


def run_numbers(run: Measured) -> tuple[dict, Trace, Trace]:
    """(numbers, measured trace, calibrated prediction) of one run's result."""
    cfg, measured = run.result.config, run.result.trace
    costs, zero = simulate.costs_from_trace(measured), [0.0] * measured.num_ranks
    predicted = simulate.simulate(make_schedule(cfg), **costs, time_unit="s")
    gaps = executor_gaps(measured)
    expected = _theory(theory.utilization, cfg.schedule, cfg.pp, cfg.microbatches)
    numbers = {"schedule": cfg.schedule, "stages": cfg.pp, "microbatches": cfg.microbatches,
               "step_s": measured.makespan, "measured": measured.utilization, "theory": expected,
               "ratio": measured.utilization / expected if expected else None,
               "predicted": predicted.utilization,
               "prediction_error": simulate.prediction_error(measured, predicted)["makespan_error"],
               "forward_ms": [round(c * 1e3, 3) for c in costs["forward"]],
               # a split backward (zero bubble) has no B: its I + W is the backward's cost
               "backward_ms": [round((b + i + w) * 1e3, 3) for b, i, w in
                               zip(costs["backward"], costs.get("input_grad", zero),
                                   costs.get("weight_grad", zero))],
               "comm_us": costs["latency"] * 1e6, "gaps": gaps["fraction"],
               "gap_per_action_us": gaps["per_action_s"] * 1e6,
               "peak_stashed": measured.peak_stashed or measured.stash_counts(),
               "theory_peak_stashed": _theory(theory.peak_stashed, cfg.schedule, cfg.pp, cfg.microbatches),
               "peak_stashed_bytes": measured.peak_stashed_bytes,
               "cpu_share": run.cpu_share, "retried": run.retried}
    return numbers, measured, predicted


def summarize(runs: list[Measured]) -> tuple[dict, Trace, Trace]:
    """One row for the repeats of a run: medians of the numbers, lists and traces from the median-step
    repeat."""
    measured = [run_numbers(r) for r in runs]
    order = sorted(range(len(measured)), key=lambda i: measured[i][0]["step_s"])
    row, trace, predicted = measured[order[len(order) // 2]]
    row = dict(row, repeats=len(runs), retried=max(n["retried"] for n, _, _ in measured))
    for key in ("step_s", "measured", "ratio", "predicted", "prediction_error", "comm_us", "gaps",
                "gap_per_action_us", "cpu_share"):
        values = [n[key] for n, _, _ in measured if n[key] is not None]
        row[key] = median(values) if values else None
    row["measured_min"] = min(n["measured"] for n, _, _ in measured)
    row["measured_max"] = max(n["measured"] for n, _, _ in measured)
    return row, trace, predicted


def comparison_rows(comparison: "measure.Comparison") -> list[tuple[dict, Trace, Trace]]:
    """Per config of a measure.Comparison: summarize's row over its rounds, with the protocol's columns
    (warm-up step, median step over the rounds and its spread, the band, the flags' likely causes)."""
    rows = []
    for name in comparison.values:
        runs = [Measured(result, share, comparison.replayed)
                for result, share in zip(comparison.results[name], comparison.shares[name])]
        row, trace, predicted = summarize(runs)
        (low, high), explained, warm = comparison.spread(name), comparison.band(name), comparison.warmup[name]
        row.update(step_s=comparison.median(name), step_min_s=low, step_max_s=high,
                   warmup_step_s=median(warm) if warm else None, band_low_s=explained.low,
                   band_high_s=explained.high, band_predicted_s=explained.predicted,
                   flag="; ".join(comparison.causes(name)))
        rows.append((row, trace, predicted))
    return rows


# --------------------------------------------------------------------------- command line

def add_parser(sub) -> None:
    from pipeline_ref.tools.demo import DEMO_MODEL
    p = sub.add_parser("bench",
                       help="sweep schedules x microbatches (x stages), measured vs theory, tables and plots")
    p.add_argument("--out", default="out/bench", help="folder for results.csv, results.md and the plots")
    p.add_argument("--schedules", nargs="+", default=list(SCHEDULES))
    p.add_argument("--microbatches", type=int, nargs="+", default=list(MICROBATCHES))
    p.add_argument("--stages", type=int, nargs="+",
                   help="pipeline depths (default: 2, and 4 with 4+ free cores)")
    p.add_argument("--steps", type=int, default=2,
                   help="steps per run; the first warms up (reported, not used)")
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds; the table shows medians")
    p.add_argument("--model-depth", type=int, default=DEMO_MODEL["depth"], help="layers of the MLP")
    p.add_argument("--model-width", type=int, default=DEMO_MODEL["width"], help="width of the MLP")
    p.add_argument("--batch", type=int, default=DEMO_MODEL["batch"],
                   help="global batch (split into microbatches)")
    p.add_argument("--gantt", type=int, nargs="*", metavar="M",
                   help="Gantt charts only for these microbatch counts")
    p.add_argument("--min-cpu-share", type=float, default=0.9,
                   help="play a run again if a rank got less of its core than this (another process ran)")
    p.add_argument("--retries", type=int, default=2, help="rounds played again for that, in all")
    p.add_argument("--quiet-wait", type=float, default=10,
                   help="seconds to wait for idle cores before such a run")
    p.add_argument("--timeout", type=float, default=1800, help="seconds one launch may take")


def run_sweep(args) -> tuple[list[dict], dict]:
    """Plan, measure and write everything; returns (rows, {(schedule, p, m): (measured, predicted)})."""
    free = cores()
    if args.repeats < 1:
        raise ConfigError(f"--repeats must be at least 1, got {args.repeats}")
    model = {"depth": args.model_depth, "width": args.model_width, "batch": args.batch}
    groups = plan(args.schedules, args.microbatches, args.stages or ([2, 4] if free >= 4 else [2]),
                  args.steps, model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    total, done, rows, traces = sum(len(c) for _, c in groups), 0, [], {}
    for depth, configs in groups:
        warning = core_warning(depth, free)
        if warning:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        print(f"starting {depth} local ranks for runs {done + 1}-{done + len(configs)} of {total} "
              f"({args.repeats} alternating round(s))", file=sys.stderr, flush=True)
        retries = 0 if warning else args.retries        # sharing cores is the norm then: don't retry
        comparison = compare({f"{c.schedule} m={c.microbatches}": c for c in configs}, num_ranks=depth,
                             rounds=args.repeats, warmup=1, timeout=args.timeout, progress=True,
                             min_share=args.min_cpu_share, retries=retries, quiet_wait=args.quiet_wait)
        for row, measured, predicted in comparison_rows(comparison):
            rows.append(row)
            traces[(row["schedule"], row["stages"], row["microbatches"])] = (measured, predicted)
        done += len(configs)
    if hasattr(os, "getloadavg"):       # other work on the machine during the sweep shows here
        info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    write_csv(rows, out / "results.csv")
    note = (f"MLP depth {model['depth']}, width {model['width']}, global batch {model['batch']}, float32, "
            f"one thread per rank; {args.steps} step(s) per run (the first warms up), {args.repeats} "
            f"alternating round(s).")
    write_markdown(rows, out / "results.md", info, note)
    write_plots(rows, traces, out, args.gantt)
    return rows, traces


def main(args) -> int:
    rows, _ = run_sweep(args)
    print(markdown_table(rows))
    print(f"results.csv, results.md, utilization curves and Gantt charts are in {args.out}/")
    return 0
