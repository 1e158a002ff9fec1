"""Stage balancing in real runs: the step each partitioner gives on a deliberately unbalanced model.

    .venv/bin/python benchmarks/balancing.py [--repeats 5] [--out benchmarks/results/balancing]

The model is the one ``tests/test_balancing.py`` runs (``tests.rank_targets:unbalanced_mlp``):
a first layer as costly as six of the six others. On 2 stages the uniform split
puts it with three more layers on stage 0 (about 9 units against 3); the time
partitioner profiles every layer and cuts after it (about 6 against 6); the
parameter partitioner counts weights, and the heavy layer has six times as many.
Each partition runs 1F1B at m = 4 and 8 on 2 ranks (one thread each), every run
``--repeats`` times, and each run's second (warm) step is kept; a run during which
another process took part of a rank's core is played again (``bench.sweep_rank``).

The test asserts only what does not depend on the machine's load (the split the
profile chose, and that the simulator played with the profiled costs prefers
it); the wall-clock steps are measured here, where timings belong.
Writes results.md into ``--out``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from statistics import median

from pipeline_ref import schedules, simulate
from pipeline_ref.engine import machine
from pipeline_ref.front import partition
from pipeline_ref.tools import bench
from pipeline_ref.config import RunConfig
from pipeline_ref.sim.trace import Trace

HERE = Path(__file__).resolve().parent
MODEL = "tests.rank_targets:unbalanced_mlp"
MODEL_KWARGS = {"batch": 1024}      # the test's model with 4x its batch: longer actions, less relative jitter
PARTITIONS = ("uniform", "parameters", "time")


def slowest_stage(trace: Trace) -> float:
    """The slowest rank's median forward plus median backward: the pace the pipeline runs at."""
    def med(rank, op):
        return median(e.duration for e in trace.events if e.rank == rank and e.op == op)
    return max(med(r, "F") + med(r, "B") for r in range(trace.num_ranks))


def row(cfg: RunConfig, runs: list[dict]) -> dict:
    traces = [r.result.trace for r in runs]
    profiled = next((r.result.layer_costs for r in runs if r.result.layer_costs), None)
    # What the simulator predicts for this split, fed the time partitioner's profile: filled in by main().
    return {"partition": cfg.partition, "m": cfg.microbatches, "split": runs[0].result.partition,
            "step_s": median(t.makespan for t in traces), "step_min_s": min(t.makespan for t in traces),
            "step_max_s": max(t.makespan for t in traces), "slowest_stage_s": median(map(slowest_stage, traces)),
            "utilization": median(t.utilization for t in traces), "profile": profiled,
            "cpu_share": min(r.cpu_share for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--microbatches", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--out", default=str(HERE / "results" / "balancing"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine.machine_info()
    configs = [RunConfig(schedule="1f1b", pp=2, microbatches=m, steps=2, model=MODEL, model_kwargs=MODEL_KWARGS,
                         partition=p)
               for m in args.microbatches for p in PARTITIONS]
    results = bench.measure(2, configs, args.repeats, timeout=3600, min_cpu_share=0.97, retries=8, quiet_wait=600)
    rows = [row(cfg, runs) for cfg, runs in zip(configs, results)]
    profile = next(r["profile"] for r in rows if r["profile"] and r["m"] == configs[0].microbatches)
    info["load_average_after"] = machine.machine_info()["load_average"]

    lines = ["# Stage balancing: uniform, parameters and time partitions in real runs", "",
             machine.machine_markdown(info),
             f"Model `{MODEL}` with {MODEL_KWARGS} (7 layers, the first as costly as six others), 1F1B on 2 ranks, one thread each; "
             f"each cell is over {args.repeats} runs, each run's second step.", "",
             "Profiled forward + backward per layer (rank 0, one microbatch of m = "
             f"{configs[0].microbatches}): " + ", ".join(f"{1e3 * c:.2f}" for c in profile) + " ms.", "",
             "| m | partition | split (layers per stage) | predicted slowest stage (profile) | simulated step "
             "(profile) | measured slowest stage F + B | measured step: median (min-max) | ÷ uniform | "
             "utilization |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ranges = [range(a, b) for a, b in r["split"]]
        scale = configs[0].microbatches / r["m"]          # the profile was of one m = 4 microbatch
        stage = [c * scale for c in partition.stage_costs(profile, ranges)]
        simulated = simulate.simulate(schedules.build("1f1b", 2, r["m"]), forward=[c / 3 for c in stage],
                                      backward=[2 * c / 3 for c in stage]).makespan
        base = next(u for u in rows if u["m"] == r["m"] and u["partition"] == "uniform")
        lines.append(f"| {r['m']} | {r['partition']} | {[len(x) for x in ranges]} | {1e3 * max(stage):.1f} ms "
                     f"| {1e3 * simulated:.1f} ms | {1e3 * r['slowest_stage_s']:.1f} ms "
                     f"| {1e3 * r['step_s']:.1f} ms ({1e3 * r['step_min_s']:.1f}-{1e3 * r['step_max_s']:.1f}) "
                     f"| {r['step_s'] / base['step_s']:.3f} | {r['utilization']:.3f} |")
    lines += ["", "Predicted and simulated columns use the time partitioner's own profile (forward : backward taken "
              "as 1 : 2); the measured ones come from the runs' traces. Lowest CPU share of any kept run: "
              f"{min(r['cpu_share'] for r in rows):.2f}."]
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
