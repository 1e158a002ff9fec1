"""What staleness costs: validation loss against steps and against time for 1F1B (flush), PipeDream and 2BW.

    .venv/bin/python benchmarks/staleness.py [--steps 150] [--out benchmarks/results/staleness]

The model is the real-text GPT (``--model text_gpt``: bytes of the standard library's source, a new batch each
step), untied (PipeDream keeps weight versions per stage, so a Parameter on two stages is refused), trained with
plain SGD at one learning rate for every schedule, m = 4 microbatches per step.

- Loss against steps comes from ``pipeline_ref.models.async_reference`` (one process, float32): the schedules' exact
  semantics, which tests/test_pipedream.py proves equal to the pipelined runs (float64, real text included;
  ``--check`` repeats that here on a few steps). A synchronous schedule computes the same for every p, and so
  does 2BW (its delay is one step whatever the depth); PipeDream's staleness grows with p (stage s runs
  p - s - 1 microbatches behind), so it is computed for p = 2 and p = 4, beside per-microbatch SGD (PipeDream
  on one stage: the same updates without staleness).
- Time per step: measured on the ranks where the machine has a core per rank (p = 2 here), and simulated from
  per-layer forward and backward costs measured on this machine where it has not (p = 4 on 2 cores), labelled
  so; the simulation is shown beside the measurement at p = 2.
- Weight-version memory per stage: the versions each stage held at most (measured at p = 2: the trace's
  ``meta.weight_versions``; for p = 4 the count the rules give, which the tests check) times its parameters' bytes.

Writes results.md, results.json and staleness.png to ``--out``.
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from statistics import median

import torch

from pipeline_ref import models, schedules, simulate
from pipeline_ref.engine import machine
from pipeline_ref.front import partition
from pipeline_ref.models import async_reference
from pipeline_ref.schedules import asynchronous
from pipeline_ref.config import RunConfig
from pipeline_ref.launch import launch

HERE = Path(__file__).resolve().parent
MODEL = {"dim": 64, "heads": 4, "blocks": 4, "seq_len": 64, "batch": 16, "tie_weights": False}
M, LR, VALIDATION_BATCHES = 4, 0.3, 8
SMOOTH = 5                # evaluations in the running mean a target is read from (the curves are noisy)
CURVES = [("flush", 1), ("pipedream-2bw", 1), ("pipedream", 1), ("pipedream", 2), ("pipedream", 4)]
LABELS = {"flush": "1F1B (flush; any p)", "pipedream-2bw": "PipeDream-2BW (any p)", "pipedream": "PipeDream"}


def _model():
    torch.manual_seed(0)
    return models.load_factory("text_gpt")(**MODEL)


def loss_curve(schedule: str, p: int, steps: int, every: int) -> tuple[list[float], dict]:
    """Validation loss after steps every, 2 every, ... of the one-process reference run."""
    layers, loss_fn, data = _model()
    ranges = [(r.start, r.stop) for r in partition.uniform(len(layers), p)]
    validation = [data.validation(i) for i in range(VALIDATION_BATCHES)]
    model = torch.nn.Sequential(*copy.deepcopy(layers))
    curve = []

    def after_step(t, weights):
        if (t + 1) % every == 0:
            with torch.no_grad():
                curve.append(sum(loss_fn(torch.func.functional_call(model, weights, (x,)), y).item()
                                 for x, y in validation) / len(validation))

    async_reference.train(schedule, layers, loss_fn, data, ranges, M, steps, LR, after_step=after_step)
    return curve, {"partition": ranges}


def layer_times(repeats: int = 20) -> tuple[list[float], list[float]]:
    """Median seconds of each layer's forward and backward on one microbatch, in this process (one thread)."""
    layers, loss_fn, data = _model()
    x, y = data(0)
    x, y = x[: MODEL["batch"] // M], y[: MODEL["batch"] // M]
    forward, backward = [], []
    for index, layer in enumerate(layers):
        f, b = [], []
        for attempt in range(repeats + 1):
            inp = x.detach().requires_grad_(x.is_floating_point())
            start = time.perf_counter()
            out = layer(inp)
            loss = loss_fn(out, y) if index == len(layers) - 1 else out.square().mean()
            middle = time.perf_counter()
            loss.backward()
            if attempt:
                f.append(middle - start)
                b.append(time.perf_counter() - middle)
        forward.append(median(f))
        backward.append(median(b))
        with torch.no_grad():
            x = layer(x)
    return forward, backward


def simulated_step(schedule: str, p: int, forward: list[float], backward: list[float], steps: int) -> float:
    """Seconds per step the simulator predicts from per-layer costs (uniform partition, messages free)."""
    ranges = partition.uniform(len(forward), p)
    f = [sum(forward[r.start:r.stop]) for r in ranges]
    b = [sum(backward[r.start:r.stop]) for r in ranges]
    if schedule == "flush":
        return simulate.simulate(schedules.build("1f1b", p, M), forward=f, backward=b).makespan
    return simulate.simulate(asynchronous.stream(p, steps * M), forward=f, backward=b).makespan / steps


def measured(steps: int) -> dict:
    """Seconds per warm step, and weight versions, of 1F1B, PipeDream and 2BW on 2 ranks (float32)."""
    configs = [RunConfig(schedule=s, pp=2, microbatches=M, steps=steps, model="text_gpt", model_kwargs=MODEL,
                         lr=LR, stall_timeout=120) for s in ("1f1b", "pipedream", "pipedream-2bw")]
    runs = launch(2, "pipeline_ref.train:run_many", configs, timeout=1800)[0]
    out = {}
    for cfg, r in zip(configs, runs):
        out["flush" if cfg.schedule == "1f1b" else cfg.schedule] = {
            "step_seconds": median(r.step_seconds[1:]), "weight_versions": r.trace.meta.weight_versions,
            "weight_version_bytes": r.trace.meta.weight_version_bytes, "losses": r.losses}
    return out


def check(steps: int = 3) -> float:
    """The pipelined runs (2 ranks, float64, real text) against the reference: the largest parameter difference."""
    kw = dict(MODEL, dim=32, heads=2, blocks=2, seq_len=32, batch=8, max_bytes=200_000)
    worst = 0.0
    configs = [RunConfig(schedule=s, pp=2, microbatches=M, steps=steps, model="text_gpt", model_kwargs=kw, lr=LR,
                         dtype="float64", collect_params=True, sync_sends=True) for s in asynchronous.ASYNCHRONOUS]
    for cfg, r in zip(configs, launch(2, "pipeline_ref.train:run_many", configs, timeout=600)[0]):
        torch.manual_seed(0)
        layers, loss_fn, data = models.load_factory("text_gpt")(**kw)
        _, ref = async_reference.train(cfg.schedule, [l.double() for l in layers], loss_fn, data, r.partition, M,
                                       steps, LR)
        got = {k: v for ranks in r.params if ranks for k, v in ranks.items()}
        worst = max([worst] + [(got[k] - ref[k]).abs().max().item() for k in ref])
    return worst


def smoothed(curve: list[float]) -> list[float]:
    """Running mean of the last SMOOTH evaluations (fewer at the start)."""
    return [sum(curve[max(0, k - SMOOTH + 1):k + 1]) / len(curve[max(0, k - SMOOTH + 1):k + 1]) for k in range(len(curve))]


def first_reaching(curve: list[float], every: int, target: float) -> int | None:
    """The first step (counted from 1) whose smoothed validation loss is at or below ``target``."""
    return next(((k + 1) * every for k, loss in enumerate(smoothed(curve)) if loss <= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--every", type=int, default=5, help="validation loss every this many steps")
    parser.add_argument("--timed-steps", type=int, default=20, help="steps of each measured run on the ranks")
    parser.add_argument("--check", action="store_true", help="first, the runs against the reference (float64)")
    parser.add_argument("--out", default=str(HERE / "results" / "staleness"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine.machine_info()
    torch.set_num_threads(1)
    began = time.time()
    worst = check() if args.check else None
    timed = measured(args.timed_steps)
    forward, backward = layer_times()
    layers = _model()[0]
    curves, rows = {}, []
    for schedule, p in CURVES:
        curves[schedule, p] = loss_curve(schedule, p, args.steps, args.every)[0]
    for schedule, p in [("flush", 2), ("flush", 4), ("pipedream-2bw", 2), ("pipedream-2bw", 4), ("pipedream", 1),
                        ("pipedream", 2), ("pipedream", 4)]:
        curve = curves[schedule, 1 if schedule != "pipedream" else p]
        ranges = partition.uniform(len(layers), p)
        stage_bytes = [sum(q.numel() * q.element_size() for layer in layers[r.start:r.stop] for q in layer.parameters())
                       for r in ranges]
        held = ([1] * p if schedule == "flush" else asynchronous.versions_held(schedule, p, M, args.steps))
        sim = simulated_step(schedule, p, forward, backward, args.steps)
        meas = timed[schedule]["step_seconds"] if p == 2 else None
        if p == 2 and schedule != "flush":
            assert timed[schedule]["weight_versions"] == asynchronous.versions_held(schedule, 2, M, args.timed_steps)
        rows.append({"schedule": schedule, "p": p, "curve": curve, "simulated_step_s": sim, "measured_step_s": meas,
                     "versions": held, "version_mib": [round(h * b / 2 ** 20, 3) for h, b in zip(held, stage_bytes)]})
    baseline = {"flush": curves["flush", 1], "pipedream-2bw": curves["flush", 1], "pipedream": curves["pipedream", 1]}
    target = max(min(smoothed(curves["flush", 1])), min(smoothed(curves["pipedream", 1]))) + 0.02
    for row in rows:
        step = first_reaching(row["curve"], args.every, target)
        seconds = row["measured_step_s"] or row["simulated_step_s"]
        third = row["curve"][-max(1, len(row["curve"]) // 3):]
        row.update(steps_to_target=step, seconds_to_target=step * seconds if step else None,
                   last_third_mean=sum(third) / len(third),
                   baseline_steps=first_reaching(baseline[row["schedule"]], args.every, target))
    info["load_average_after"] = [round(x, 2) for x in __import__("os").getloadavg()]
    info["wall_s"] = round(time.time() - began)
    (out / "results.json").write_text(json.dumps({"machine": info, "model": MODEL, "microbatches": M, "lr": LR,
                                                  "steps": args.steps, "every": args.every, "target": target,
                                                  "check_max_difference": worst, "layer_forward_s": forward,
                                                  "layer_backward_s": backward, "rows": rows}, indent=1))
    _write(out, rows, info, args, target, worst)
    _plot(out, rows, args.every)


def _write(out: Path, rows: list, info: dict, args, target: float, worst) -> None:
    last = lambda row: row["curve"][-1]
    lines = [f"# What staleness costs (text_gpt untied, SGD lr {LR}, m = {M}, {args.steps} steps)", "",
             machine.machine_markdown(info), "",
             "Validation loss from the one-process reference (the schedules' exact semantics; the float64 tests prove "
             "the pipelined runs equal to it" + (f"; here, on real text, to {worst:.1e}" if worst is not None else "")
             + "). Time per step measured on 2 ranks (p = 2) or simulated from per-layer costs measured here "
             "(p = 4: the machine has fewer cores than ranks).", "",
             f"Target: validation loss {target:.3f}, read off a running mean of {SMOOTH} evaluations. 'Without staleness' is the same updates on fresh weights: "
             "1F1B for 2BW (one SGD step per step), per-microbatch SGD (PipeDream on one stage) for PipeDream.", "",
             "| schedule | p | val loss, mean of the last third | val loss at step "
             f"{args.steps // 3} / {2 * args.steps // 3} / {args.steps} | steps to target (without staleness) | "
             "s per step (measured / simulated) | s to target | weight versions per stage | their MiB per stage |",
             "|---|---|---|---|---|---|---|---|---|"]
    k = args.every
    marks = [max(k, k * round(s / k)) for s in (args.steps / 3, 2 * args.steps / 3, args.steps)]
    lines[-2] = lines[-2].replace(f"{args.steps // 3} / {2 * args.steps // 3} / {args.steps}", " / ".join(map(str, marks)))
    for row in rows:
        c = row["curve"]
        at = " / ".join(f"{c[min(len(c), s // k) - 1]:.3f}" for s in marks)
        meas = f"{row['measured_step_s'] * 1e3:.1f} ms" if row["measured_step_s"] else "-"
        name = {"flush": "1f1b", "pipedream": "pipedream" if row["p"] > 1 else "per-microbatch SGD (pipedream, p = 1)"}
        lines.append(f"| {name.get(row['schedule'], row['schedule'])} | {row['p']} | {row['last_third_mean']:.3f} | {at} | {row['steps_to_target']} "
                     f"({row['baseline_steps']}) | {meas} / {row['simulated_step_s'] * 1e3:.1f} ms | "
                     + (f"{row['seconds_to_target']:.2f}" if row["seconds_to_target"] else "not reached")
                     + f" | {row['versions']} | {row['version_mib']} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _plot(out: Path, rows: list, every: int) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(12, 4.5))
    for row in rows:
        if row["schedule"] != "pipedream" and row["p"] == 4:
            continue                                   # the same curve against steps as at p = 2
        steps = [(k + 1) * every for k in range(len(row["curve"]))]
        label = (f"{LABELS[row['schedule']]}" + (f", p = {row['p']}" if row["schedule"] == "pipedream" else ""))
        if row["schedule"] == "pipedream" and row["p"] == 1:
            label = "per-microbatch SGD (PipeDream, p = 1)"
        by_step.plot(steps, row["curve"], label=label)
    for row in rows:
        if row["p"] == 1:
            continue
        seconds = row["measured_step_s"] or row["simulated_step_s"]
        how = "measured" if row["measured_step_s"] else "simulated"
        steps = [(k + 1) * every * seconds for k in range(len(row["curve"]))]
        by_time.plot(steps, row["curve"], linestyle="-" if row["p"] == 2 else "--",
                     label=f"{row['schedule'].replace('flush', '1f1b')}, p = {row['p']} ({how} time)")
    by_step.set(xlabel="step", ylabel="validation loss (nats per byte)", title="against steps (exact semantics)")
    by_time.set(xlabel="seconds", ylabel="validation loss (nats per byte)", title="against time")
    for ax in (by_step, by_time):
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "staleness.png", dpi=110)


if __name__ == "__main__":
    main()
