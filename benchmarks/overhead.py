"""The executor's own cost: time per action spent outside the model's compute, on the demo model.

    .venv/bin/python benchmarks/overhead.py [--repeats 3] [--out benchmarks/results/overhead]

Parts 1 and 2 are added up per action and compared with the step time:

1. Inside an action (one process, no MPI): ``Stage.forward`` + ``Stage.backward``
   (detach, saved-tensor hooks that count stashed bytes, the stash, the loss
   scaling) against the same module's bare forward + ``autograd.backward`` on the
   same microbatch, interleaved so both see the same machine. On a tiny MLP the
   difference is the bookkeeping's fixed cost in µs; on the demo model it is lost
   in the noise of a ~40 ms forward + backward.
2. Between actions (a real run, 2 ranks, naive / GPipe / 1F1B, m = 8; on the demo
   model, then on the same model at width 64, whose 32 KiB messages cost MPI little
   to copy, so that what remains is the executor's own work): the time
   between a rank's first and last action spent neither computing nor blocked on
   a receive (posting receives, starting sends, ``Test``, bookkeeping), from the
   trace (``trace.executor_gaps``). Also shown: the measured step against the
   simulator with the run's own compute times and free messages, whose difference
   is everything that is not compute (messages, executor, jitter).
3. What those gaps are made of: each call the executor makes between actions
   (posting a receive, starting a send, ``progress``, ``watchdog.beat``), timed
   on the ranks of one warm 1F1B run by wrapping the methods.
4. The single costs those gaps are explained by (one process): the non-finite check
   of one activation, element-wise and by ``finite.nonfinite``; one 512 KiB copy;
   a heartbeat report and an f-string in a loop and right after matrix products.

Writes results.md into ``--out``.
"""
from __future__ import annotations

import argparse
import mmap
import tempfile
import time
from pathlib import Path
from statistics import median, quantiles

import torch
from torch import nn

from pipeline_ref import models, schedules, simulate
from pipeline_ref.engine import machine
from pipeline_ref.tools import bench
from pipeline_ref.config import RunConfig
from pipeline_ref.tools.demo import DEMO_MODEL
from pipeline_ref.engine.stage import Stage
from pipeline_ref.sim.trace import executor_gaps

HERE = Path(__file__).resolve().parent


def inside_action(width: int, microbatch: int, layers: int, iterations: int) -> dict:
    """Median seconds of one F + B pair: bare autograd vs pipeline_ref's Stage (a middle stage)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    module = nn.Sequential(*models.mlp(depth=layers, width=width, batch=microbatch)[0])
    x = torch.randn(microbatch, width)
    grad = torch.ones(microbatch, width)
    stage = Stage(module)

    def bare():
        leaf = x.detach().requires_grad_(True)
        torch.autograd.backward(module(leaf), grad)
        return leaf.grad

    def pipelined():
        stage.forward(0, x)
        return stage.backward(0, (grad,))

    times = {"bare": [], "stage": []}
    for i in range(iterations + 3):
        for name, fn in (("bare", bare), ("stage", pipelined)) if i % 2 else (("stage", pipelined), ("bare", bare)):
            module.zero_grad(set_to_none=True)
            began = time.perf_counter()
            fn()
            if i >= 3:                      # the first iterations warm up the allocator
                times[name].append(time.perf_counter() - began)
    # Per iteration, Stage minus bare (the two ran back to back): its median, and half its interquartile range.
    extra = [s_ - b_ for s_, b_ in zip(times["stage"], times["bare"])]
    low, _, high = quantiles(extra, n=4)
    return {"width": width, "microbatch": microbatch, "bare_s": median(times["bare"]),
            "stage_s": median(times["stage"]), "per_action_s": median(extra) / 2, "spread_s": (high - low) / 4}


SMALL_MESSAGES = {**DEMO_MODEL, "width": 64}     # the same run with 32 KiB messages instead of 512 KiB


def between_actions(repeats: int, model: dict) -> list[dict]:
    configs = [RunConfig(schedule=name, pp=2, microbatches=8, steps=2, model_kwargs=model)
               for name in ("naive", "gpipe", "1f1b")]
    rows = []
    # A run during which another process took part of a rank's core is played again (bench.sweep_rank).
    for cfg, runs in zip(configs, bench.measure(2, configs, repeats, timeout=3600, min_cpu_share=0.97, retries=6,
                                                quiet_wait=600)):
        per_run = []
        for result in runs:
            numbers, measured, _ = bench.run_numbers(result)
            costs = simulate.costs_from_trace(measured)
            compute_only = simulate.simulate(schedules.build(cfg.schedule, 2, 8), costs["forward"],
                                             costs["backward"], latency=0.0)
            gaps = executor_gaps(measured)
            per_run.append({"step_s": measured.makespan, "gap_fraction": gaps["fraction"],
                            "gap_per_action_s": gaps["per_action_s"], "compute_only_s": compute_only.makespan,
                            "action_s": median(e.duration for e in measured.events), "comm_s": costs["latency"]})
        rows.append({"schedule": cfg.schedule, "actions_per_rank": 2 * cfg.microbatches,
                     **{k: median(r[k] for r in per_run) for k in per_run[0]}})
    return rows


def calls_rank(comm, cfg: RunConfig) -> list[dict] | None:
    """Rank side of part 3: time every call the executor makes between actions, over one warm run."""
    from pipeline_ref import train
    from pipeline_ref.engine import executor, message
    spent, calls = {}, {}

    def timed(owner, name, label):
        function = getattr(owner, name)

        def wrapper(*args, **kwargs):
            began = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - began
                calls[label] = calls.get(label, 0) + 1
        setattr(owner, name, wrapper)

    for owner, name, label in ((message.Messenger, "irecv", "post a receive (a pooled buffer, Irecv)"),
                               (message.Messenger, "isend", "start a send (Isend)"),
                               (message.Messenger, "progress", "progress (Test the pending sends)"),
                               (message.Messenger, "release", "give a buffer back to the pool"),
                               (executor.watchdog, "beat", "watchdog.beat")):
        timed(owner, name, label)
    train.run_rank(comm, cfg)               # warm-up run, not counted
    spent.clear()
    calls.clear()
    train.run_rank(comm, cfg)
    return comm.gather({label: (spent[label] / calls[label], calls[label]) for label in spent}, root=0)


def cold_costs(iterations: int = 200) -> list[tuple[str, float]]:
    """Part 4, one process: the single costs the gaps are explained by, in median seconds.

    A check of one demo activation (element-wise against finite.nonfinite's sum), one
    copy of a 512 KiB message, and a heartbeat report and an f-string timed alone in a
    loop and right after a demo stage's matrix products (4 MiB of weights a layer), when
    the caches hold the weights instead of the interpreter's state.
    """
    from pipeline_ref.faults import watchdog
    from pipeline_ref.faults.finite import nonfinite
    torch.set_num_threads(1)
    width, rows = DEMO_MODEL["width"], DEMO_MODEL["batch"] // 8
    x, copy = torch.randn(rows, width), torch.empty(rows, width)
    weights = [torch.randn(width, width) for _ in range(DEMO_MODEL["depth"] // 2)]
    board = Path(tempfile.mkdtemp(prefix="overhead-")) / "rank0.beat"
    board.write_bytes(bytes(watchdog.HEARTBEAT_BYTES))
    with board.open("r+b") as f:
        watchdog._board = mmap.mmap(f.fileno(), watchdog.HEARTBEAT_BYTES)

    def compute():
        y = x
        for w in weights:
            y = y @ w

    def timed(fn, cold: bool) -> float:
        times = []
        for i in range(iterations):
            if cold:
                compute()
            began = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - began)
        return median(times)

    rows_out = []
    for cold in (False, True):
        when = "right after a stage's matrix products" if cold else "in a loop"
        rows_out += [(f"torch.isfinite(t).all() of one {rows} x {width} float32 activation, {when}",
                      timed(lambda i: bool(torch.isfinite(x).all()), cold)),
                     (f"finite.nonfinite([t]) of the same activation, {when}", timed(lambda i: nonfinite([x]), cold)),
                     (f"a copy of its 512 KiB (one message's bytes), {when}", timed(lambda i: copy.copy_(x), cold)),
                     (f"watchdog.beat, {when}", timed(lambda i: watchdog.beat(f"F{i} of step 0: computing"), cold)),
                     (f"one f-string, {when}", timed(lambda i: f"F{i} of step 0: computing", cold))]
    watchdog._board = None
    return rows_out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "results" / "overhead"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine.machine_info()
    m, stage_layers = 8, DEMO_MODEL["depth"] // 2
    inside = [inside_action(8, 16, stage_layers, 2000),
              inside_action(DEMO_MODEL["width"], DEMO_MODEL["batch"] // m, stage_layers, 60)]
    fixed = inside[0]["per_action_s"]            # the bookkeeping's cost, measured where compute is ~0
    between = between_actions(args.repeats, DEMO_MODEL)
    small = between_actions(args.repeats, SMALL_MESSAGES)
    cold = cold_costs()
    from pipeline_ref.launch import launch  # part 3: ranks import this file, so it must be on their path
    calls = launch(2, "overhead:calls_rank", RunConfig(schedule="1f1b", pp=2, microbatches=m, steps=2,
                                                        model_kwargs=DEMO_MODEL),
                   env={"PYTHONPATH": str(HERE)}, timeout=600)[0]

    lines = ["# Executor overhead", "", machine.machine_markdown(info),
             f"Demo model: MLP depth {DEMO_MODEL['depth']}, width {DEMO_MODEL['width']}, global batch "
             f"{DEMO_MODEL['batch']}; 2 stages of {stage_layers} layers, m = {m} (microbatch "
             f"{DEMO_MODEL['batch'] // m}), one thread per rank.", "",
             "## 1. Inside an action: Stage.forward + Stage.backward vs bare autograd (one process)", "",
             "| model | microbatch | bare F + B | Stage F + B | Stage's extra per action (± half IQR) |",
             "|---|---|---|---|---|"]
    for row, name in zip(inside, ("tiny MLP (width 8)", f"demo stage (width {DEMO_MODEL['width']})")):
        lines.append(f"| {name} | {row['microbatch']} | {row['bare_s'] * 1e6:.0f} µs | {row['stage_s'] * 1e6:.0f} µs "
                     f"| {row['per_action_s'] * 1e6:+.1f} ± {row['spread_s'] * 1e6:.1f} µs |")
    lines += ["", "## 2. Between actions: a real run on 2 ranks (median of "
              f"{args.repeats} runs)", "",
              "| schedule | step | median action | gaps per action | gaps, worst rank | bookkeeping (part 1, "
              "tiny-MLP cost x actions) | executor total | median message latency | step vs compute-only "
              "simulation |", "|---|---|---|---|---|---|---|---|---|"]
    for r in between:
        bookkeeping = max(fixed, 0.0) * r["actions_per_rank"] / r["step_s"]
        lines.append(f"| {r['schedule']} | {r['step_s'] * 1e3:.1f} ms | {r['action_s'] * 1e3:.1f} ms "
                     f"| {r['gap_per_action_s'] * 1e6:.0f} µs | {r['gap_fraction']:.2%} | {bookkeeping:.2%} "
                     f"| {r['gap_fraction'] + bookkeeping:.2%} | {r['comm_s'] * 1e6:.0f} µs "
                     f"| {r['step_s'] / r['compute_only_s'] - 1:+.2%} |")
    lines += ["", f"The same runs with width {SMALL_MESSAGES['width']} (messages of 32 KiB instead of 512 KiB: "
              "what is left is the executor's own work and MPI's per-call cost, not the copying of message data):",
              "", "| schedule | step | median action | gaps per action | gaps, worst rank |", "|---|---|---|---|---|"]
    for r in small:
        lines.append(f"| {r['schedule']} | {r['step_s'] * 1e3:.1f} ms | {r['action_s'] * 1e3:.2f} ms "
                     f"| {r['gap_per_action_s'] * 1e6:.0f} µs | {r['gap_fraction']:.2%} |")
    lines += ["", "Executor total = gaps (worst rank) + bookkeeping, as a share of the step; target < 2%. "
              "The last column is everything that is not compute: messages, the executor, and jitter "
              "(the simulation uses each op's median time).", "",
              f"## 3. What the gaps are made of: the executor's calls between actions (1F1B, m = {m}, one warm "
              "run; messages of 512 KiB)", "", "| call | rank 0: µs per call (calls) | rank 1: µs per call (calls) |",
              "|---|---|---|"]
    for label in calls[0]:
        lines.append(f"| {label} | " + " | ".join(f"{c[label][0] * 1e6:.1f} ({c[label][1]})" if label in c else "-"
                                                for c in calls) + " |")
    lines += ["", "## 4. Single costs behind the gaps (one process, medians of 200)", "", "| what | µs |", "|---|---|"]
    lines += [f"| {label} | {seconds * 1e6:.1f} |" for label, seconds in cold]
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
