"""pipeline_ref against torch.distributed.pipelining under five machine conditions, in alternating rounds.

    .venv/bin/python benchmarks/vs_torch.py [--conditions quiet busy1 busy2 oversubscribed mixed] [--rounds 3]
        [--stages 2] [--runs 1f1b:8 gpipe:1] [--steps 2] [--depth 8] [--width 1024] [--batch 1024]
        [--out benchmarks/results/vs_torch]

Same model (``mlp``: depth x Linear(width) + Tanh), schedule, microbatches, ranks and loss scaling on both
sides; one thread per rank; ranks started by the same ``mpiexec`` (ours through ``launch.launch``, theirs
through ``torch_side.py`` over gloo). Conditions (``machine_load.py``): nothing beside it, one or two busy
processes, 4 ranks on 2 cores, and a mixed load of test runs and small pipeline runs. In each, ``--rounds``
rounds, each one launch per contender in alternating order (A B C, then C B A, ...):

- ours: pipeline_ref as it is (waits that sleep between polls once a message is late, ``message.py``);
- ours, spinning waits: the same with ``PIPELINE_REF_WAIT=spin`` (MPICH's own Wait, which polls without
  sleeping: what pipeline_ref did before), to measure what the waits cost under each load;
- theirs: torch.distributed.pipelining (``torch_side.py --keep-disturbed``: under load nothing is replayed).

A launch plays each run for 1 warm-up step (reported) and ``--steps`` timed steps; a round's value is the
median of its timed steps (ours: first to last action of the step; theirs: ``schedule.step``). The ratio
ours / theirs is taken round by round and printed as a sentence by ``measure.Rounds.verdict``. Beside each
condition: the load average before and after, our ranks' share of the time they wanted a core
(``machine.ShareMeter``), and ``wait_probe.py``: what a waiting rank costs its core, each way of waiting.
Gradients of the first step are compared with torch's (float32, every condition's first round).

Writes results.md, results.csv and probe.json into ``--out``. Its time is 3 x 3 launches and one probe per
condition, mostly starting ranks and, on a loaded machine, waiting for cores (the committed run, on a machine
shared with other jobs: 23 min; benchmarks/README.md, section 7).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import torch

from machine_load import CONDITIONS, load_average, loaded, ranks_for
from pipeline_ref import measure
from pipeline_ref.engine import machine
from pipeline_ref.config import RunConfig
from pipeline_ref.launch import mpiexec

HERE = Path(__file__).resolve().parent
CONTENDERS = ("pipeline_ref", "pipeline_ref, spinning waits", "torch")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torch(num_ranks: int, runs: list, model: dict, timeout: float = 900) -> list[dict]:
    """Start torch_side.py on ``num_ranks`` ranks; per run: step times, loss and the whole model's grads."""
    with tempfile.TemporaryDirectory(prefix="vs_torch-") as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
        command = [str(mpiexec()), "-n", str(num_ranks), sys.executable, str(HERE / "torch_side.py"),
                   "--out", tmp,
                   "--runs", json.dumps(runs), "--depth", str(model["depth"]), "--width", str(model["width"]),
                   "--batch", str(model["batch"]), "--keep-disturbed"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"torch side failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                               f"{done.stderr[-3000:]}")
        per_rank = [torch.load(Path(tmp) / f"torch_rank{r}.pt") for r in range(num_ranks)]
    merged = []
    for parts in zip(*per_rank):
        grads = {name: g for part in parts for name, g in part["grads"].items()}
        loss = next(p["loss"] for p in parts if p["loss"] is not None)
        merged.append(dict(parts[0], grads=grads, loss=loss))
    return merged


def grad_difference(a: dict, b: dict) -> tuple[float, float]:
    """Largest |a - b| over all tensors, and that over the largest |b| entry."""
    if set(a) != set(b):
        raise ValueError(f"different parameters: {sorted(set(a) ^ set(b))}")
    diff = max((a[k].double() - b[k].double()).abs().max().item() for k in a)
    scale = max(b[k].double().abs().max().item() for k in b)
    return diff, diff / scale if scale else diff


def run_probe(timeout: float = 120) -> dict:
    """wait_probe.py on 2 ranks: what each way of waiting costs the waiting rank's core."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    done = subprocess.run([str(mpiexec()), "-n", "2", sys.executable, str(HERE / "wait_probe.py")], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"wait_probe failed ({done.returncode}):\n{done.stdout[-2000:]}\n"
                           f"{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def play(contender: str, ranks: int, runs: list[tuple[str, int]], steps: int, model: dict) -> dict:
    """One launch of a contender: per run, (its timed steps, its first step's gradients, our ranks' share)."""
    if contender == "torch":
        found = run_torch(ranks, [[n, m, "float32", 1, steps] for n, m in runs], model)
        return {(n, m): (f["step_s"], f["grads"], None) for (n, m), f in zip(runs, found)}
    configs = {f"{n} m={m}": RunConfig(schedule=n, pp=ranks, microbatches=m, steps=1 + steps, model="mlp",
                                       model_kwargs=model, collect_grads=True) for n, m in runs}
    env = {"PIPELINE_REF_WAIT": "spin" if "spinning" in contender else "yield"}
    c = measure.compare(configs, num_ranks=ranks, rounds=1, warmup=1, timeout=900, env=env)
    return {(n, m): (c.results[f"{n} m={m}"][0].step_seconds[1:], c.results[f"{n} m={m}"][0].grads,
                     c.shares[f"{n} m={m}"][0]) for n, m in runs}


def measure_condition(condition: str, args, model: dict) -> dict:
    """Every contender ``--rounds`` times under the condition's load, in alternating order."""
    ranks, runs = ranks_for(condition, args.stages), args.runs
    steps = {run: {c: [] for c in CONTENDERS} for run in runs}      # per round, the median timed step
    shares = {run: [] for run in runs}
    grads = {}
    began = time.perf_counter()
    with loaded(condition):
        time.sleep(2 if condition != "quiet" else 0)       # the load is running before we measure
        before = load_average()
        probe = run_probe()
        for index in range(args.rounds):
            for contender in measure.order_of_round(list(CONTENDERS), index):
                print(f"{condition}: round {index + 1}/{args.rounds}, {contender}", file=sys.stderr,
                      flush=True)
                played = play(contender, ranks, runs, args.steps, model)
                for run, (timed, first_grads, share) in played.items():
                    steps[run][contender].append(median(timed))
                    grads.setdefault((run, contender), first_grads)
                    if share is not None and contender == "pipeline_ref":
                        shares[run].append(share)
        after = load_average()
    return {"condition": condition, "ranks": ranks, "load_before": before, "load_after": after,
            "seconds": time.perf_counter() - began, "probe": probe, "steps": steps, "shares": shares,
            "grads": {run: grad_difference(grads[(run, CONTENDERS[0])], grads[(run, CONTENDERS[2])])
                      for run in runs}}


def rows_of(found: dict) -> list[dict]:
    """One row per (condition, run): medians over rounds, ratios round by round, and the verdicts."""
    rows = []
    for run, per_contender in found["steps"].items():
        rounds = measure.Timings(per_contender, {c: [] for c in per_contender})
        ratio, spin = rounds.ratio(*CONTENDERS[::2]), rounds.ratio(*CONTENDERS[1:])
        rows.append({"condition": found["condition"], "ranks": found["ranks"], "schedule": run[0],
                     "microbatches": run[1], "rounds": rounds.rounds,
                     **{f"{key}_step_s": rounds.median(c) for key, c in zip(("ours", "ours_spin", "theirs"),
                                                                           CONTENDERS)},
                     "ratio": ratio.median, "ratio_low": ratio.low, "ratio_high": ratio.high,
                     "spin_ratio": spin.median, "spin_ratio_low": spin.low, "spin_ratio_high": spin.high,
                     "ours_share": min(found["shares"][run], default=None),
                     "max_grad_diff": found["grads"][run][0], "load_before": found["load_before"],
                     "load_after": found["load_after"],
                     "verdict": rounds.verdict(*CONTENDERS[::2], what="step"),
                     "spin_verdict": rounds.verdict(*CONTENDERS[1:], what="step")})
    return rows


def write(rows: list[dict], probes: dict, info: dict, args, out: Path) -> str:
    columns = list(rows[0])
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    (out / "probe.json").write_text(json.dumps(probes, indent=1) + "\n")
    lines = ["# pipeline_ref vs torch.distributed.pipelining, under five machine conditions", "",
             machine.machine_markdown(info),
             f"MLP depth {args.depth}, width {args.width}, global batch {args.batch}; one thread per rank; "
             f"{args.rounds} alternating rounds per condition, each a launch per contender playing 1 warm-up "
             f"and {args.steps} timed steps per run. Step: median over the rounds of each round's median "
             f"timed step; ratio: ours / theirs round by round, median (lowest-highest).", "",
             "| condition | ranks | schedule | m | ours (ms) | ours, spinning waits (ms) | theirs (ms) "
             "| ours / theirs | spinning / theirs | our ranks' share of a core | load avg before / after "
             "| max grad diff |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['condition']} | {r['ranks']} | {r['schedule']} | {r['microbatches']} "
                     f"| {r['ours_step_s'] * 1e3:.1f} | {r['ours_spin_step_s'] * 1e3:.1f} "
                     f"| {r['theirs_step_s'] * 1e3:.1f} "
                     f"| {r['ratio']:.2f} ({r['ratio_low']:.2f}-{r['ratio_high']:.2f}) "
                     f"| {r['spin_ratio']:.2f} ({r['spin_ratio_low']:.2f}-{r['spin_ratio_high']:.2f}) "
                     f"| {r['ours_share'] if r['ours_share'] is None else format(r['ours_share'], '.2f')} "
                     f"| {r['load_before'][0]} / {r['load_after'][0]} | {r['max_grad_diff']:.1e} |")
    lines += ["", "Verdicts, printed from the rounds (measure.Rounds.verdict):", ""]
    lines += [f"- {r['condition']}, {r['schedule']} m={r['microbatches']}: {r['verdict']} "
              f"With spinning waits: {r['spin_verdict']}" for r in rows]
    lines += ["", "What a rank waiting 0.3 s for a 512 KiB message costs its core (wait_probe.py, 2 ranks, "
              "run beside the same load): the waiting rank's CPU time over the wait, and the round trip of a "
              "message there and back when the receiver is already waiting.", "",
              "| condition | MPI Wait: CPU / wall | yielding: CPU / wall | gloo recv: CPU / wall "
              "| round trip, MPI Wait (µs) | round trip, yielding (µs) |", "|---|---|---|---|---|---|"]
    for condition, p in probes.items():
        lines.append(f"| {condition} | {p['MPI Wait']['waiter_cpu_per_wall']:.2f} "
                     f"| {p['yielding wait']['waiter_cpu_per_wall']:.2f} "
                     f"| {p['gloo recv']['waiter_cpu_per_wall']:.3f} "
                     f"| {p['MPI Wait']['round_trip_us']:.0f} | {p['yielding wait']['round_trip_us']:.0f} |")
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    return text


def _run(spec: str) -> tuple[str, int]:
    name, _, m = spec.partition(":")
    return name, int(m)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--runs", type=_run, nargs="+", default=[("1f1b", 8), ("gpipe", 1)],
                        metavar="SCHEDULE:M", help="schedule:microbatches (torch's 1F1B needs m >= ranks)")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per run and launch")
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--out", default=str(HERE / "results" / "vs_torch"))
    args = parser.parse_args()
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps must be at least 1")
    model = {"depth": args.depth, "width": args.width, "batch": args.batch}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info, rows, probes = machine.machine_info(), [], {}
    for condition in args.conditions:
        found = measure_condition(condition, args, model)
        print(f"{condition}: {found['seconds']:.0f} s, load average {found['load_before']} -> "
              f"{found['load_after']}", file=sys.stderr, flush=True)
        rows += rows_of(found)
        probes[condition] = found["probe"]
    info["load_average_after"] = load_average()
    print(write(rows, probes, info, args, out))


if __name__ == "__main__":
    main()
