"""pipeline_ref against torch.distributed.pipelining: same model, schedule, microbatches, ranks and loss scaling.

    .venv/bin/python benchmarks/vs_torch.py [--stages 2] [--microbatches 2 4 8 16] [--repeats 5] \\
        [--depth 8] [--width 1024] [--batch 2048] [--out benchmarks/results/vs_torch]

Both sides run on ranks started by the same ``mpiexec`` (pipeline_ref through
``launch.launch``, torch through ``torch_side.py`` with a gloo process group), one
thread per rank, on the model of utilization.py. For GPipe and 1F1B at each m:

- step time: pipeline_ref plays ``--repeats`` runs of 2 steps and keeps the second
  (warm) step of each (a run another process disturbed is played again); torch plays
  2 warm-up steps then 2 x ``--repeats`` timed ones (a step another process disturbed
  is played again, see torch_side.py). A
  step is timed from the barrier before it to the slowest rank's last action (ours)
  or return from ``schedule.step`` (theirs). The table gives the medians, the best
  steps (least disturbed by other work on the machine) and ours / theirs (< 1:
  pipeline_ref is faster).
- gradients of the first step, compared tensor by tensor: the largest absolute
  difference, and the same relative to the largest gradient entry; once in float32
  (the timed runs) and once in float64 (one step), where both also match the unsplit
  model on one process (``models.reference_step``).

Writes results.md and results.csv into ``--out``. torch's Schedule1F1B refuses m < p.
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
from pathlib import Path
from statistics import median

import torch

from pipeline_ref import bench, machine, models
from pipeline_ref.config import RunConfig, build_model
from pipeline_ref.launch import mpiexec
from pipeline_ref.trace import Trace

HERE = Path(__file__).resolve().parent
SCHEDULES = ("gpipe", "1f1b")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torch(num_ranks: int, runs: list, model: dict, timeout: float = 1800) -> list[dict]:
    """Start torch_side.py on ``num_ranks`` ranks; per run: step times, loss and the whole model's grads."""
    with tempfile.TemporaryDirectory(prefix="vs_torch-") as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
        command = [str(mpiexec()), "-n", str(num_ranks), sys.executable, str(HERE / "torch_side.py"), "--out", tmp,
                   "--runs", json.dumps(runs), "--depth", str(model["depth"]), "--width", str(model["width"]),
                   "--batch", str(model["batch"])]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"torch side failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
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


def step_time(run: bench.Measured) -> float:
    """Barrier to the slowest rank's last action: the same span torch's step() is timed over."""
    return max(e.end for e in run.result.trace.events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stages", type=int, default=2)
    parser.add_argument("--microbatches", type=int, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=2048)
    parser.add_argument("--grad-microbatches", type=int, default=4, help="m of the float64 gradient check")
    parser.add_argument("--out", default=str(HERE / "results" / "vs_torch"))
    args = parser.parse_args()
    p, model = args.stages, {"depth": args.depth, "width": args.width, "batch": args.batch}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine.machine_info()
    warning = machine.core_warning(p, machine.cores())
    if warning:
        print(f"warning: {warning}", file=sys.stderr)

    timed = [(name, m) for name in SCHEDULES for m in args.microbatches if not (name == "1f1b" and m < p)]
    checks = [(name, args.grad_microbatches) for name in SCHEDULES]
    ours_configs = ([RunConfig(schedule=n, pp=p, microbatches=m, steps=2, model_kwargs=model, collect_grads=True)
                     for n, m in timed] +
                    [RunConfig(schedule=n, pp=p, microbatches=m, steps=1, model_kwargs=model, dtype="float64",
                               collect_grads=True) for n, m in checks])
    print(f"pipeline_ref: {len(timed)} timed runs x {args.repeats} repeats, then {len(checks)} float64 checks",
          file=sys.stderr, flush=True)
    # A run during which another process took part of a rank's core is played again (bench.sweep_rank).
    ours = (bench.measure(p, ours_configs[:len(timed)], args.repeats, timeout=7200, min_cpu_share=0.97, retries=4,
                          quiet_wait=600)
            + bench.measure(p, ours_configs[len(timed):]))
    print("torch.distributed.pipelining: the same runs", file=sys.stderr, flush=True)
    theirs = run_torch(p, [[n, m, "float32", 2, 2 * args.repeats] for n, m in timed] +
                       [[n, m, "float64", 0, 1] for n, m in checks], model)

    rows = []
    for cfg, runs, their in zip(ours_configs, ours, theirs):
        assert (cfg.schedule, cfg.microbatches, cfg.dtype) == (their["schedule"], their["microbatches"], their["dtype"])
        mine = runs[0].result
        diff, relative = grad_difference(mine.grads, their["grads"])
        row = {"schedule": cfg.schedule, "stages": p, "microbatches": cfg.microbatches, "dtype": cfg.dtype,
               "max_grad_diff": diff, "max_grad_diff_relative": relative,
               "loss_diff": abs(mine.losses[0] - their["loss"]), "ours_vs_one_device": None}
        if cfg.dtype == "float32":          # the timed runs: medians, and the best (least disturbed) step
            ours_steps = [step_time(r) for r in runs]
            row.update(ours_step_s=median(ours_steps), theirs_step_s=median(their["step_s"]),
                       ours_best_s=min(ours_steps), theirs_best_s=min(their["step_s"]),
                       ours_cpu_share=min(r.cpu_share for r in runs), theirs_replayed=their["replayed"])
            row["ratio"] = row["ours_step_s"] / row["theirs_step_s"]
            row["best_ratio"] = row["ours_best_s"] / row["theirs_best_s"]
        else:          # both against the unsplit model, one process, whole batch
            layers, loss_fn, (x, y) = build_model(cfg)
            _, reference = models.reference_step(layers, loss_fn, x, y)
            row["ours_vs_one_device"] = grad_difference(mine.grads, reference)[0]
            row["theirs_vs_one_device"] = grad_difference(their["grads"], reference)[0]
        rows.append(row)

    columns = ["schedule", "stages", "microbatches", "dtype", "ours_step_s", "theirs_step_s", "ratio",
               "ours_best_s", "theirs_best_s", "best_ratio", "ours_cpu_share", "theirs_replayed",
               "max_grad_diff", "max_grad_diff_relative", "loss_diff", "ours_vs_one_device", "theirs_vs_one_device"]
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["# pipeline_ref vs torch.distributed.pipelining", "", machine.machine_markdown(info),
             f"MLP depth {model['depth']}, width {model['width']}, global batch {model['batch']}; {p} stages, one "
             f"thread per rank, both started by the same mpiexec (theirs over gloo, ours over MPICH). Step time: "
             f"median (and best) of {args.repeats} warm steps for ours, {2 * args.repeats} for theirs.", "",
             "| schedule | m | dtype | ours (ms) | theirs (ms) | ours / theirs | best: ours / theirs (ms) "
             "| best ratio | max grad diff | relative | loss diff | vs one device: ours / theirs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        one = (f"{r['ours_vs_one_device']:.1e} / {r['theirs_vs_one_device']:.1e}"
               if r["ours_vs_one_device"] is not None else "-")
        timing = (f"{r['ours_step_s'] * 1e3:.1f} | {r['theirs_step_s'] * 1e3:.1f} | {r['ratio']:.3f} "
                  f"| {r['ours_best_s'] * 1e3:.1f} / {r['theirs_best_s'] * 1e3:.1f} | {r['best_ratio']:.3f}"
                  if r["dtype"] == "float32" else "- | - | - | - | -")
        lines.append(f"| {r['schedule']} | {r['microbatches']} | {r['dtype']} | {timing} | {r['max_grad_diff']:.1e} "
                     f"| {r['max_grad_diff_relative']:.1e} | {r['loss_diff']:.1e} | {one} |")
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
