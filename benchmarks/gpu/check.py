"""The Python half of benchmarks/gpu/run.sh: is there a GPU, and the timing sweep on it.

    .venv/bin/python benchmarks/gpu/check.py preflight              # prints the results folder, or stops (exit 3)
    .venv/bin/python benchmarks/gpu/check.py sweep --out DIR         # GPipe / 1F1B at p = 2 on one or two GPUs
    .venv/bin/python benchmarks/gpu/check.py sweep --out DIR --device cpu --quick   # the same code on a CPU

``preflight`` makes no CUDA call beyond asking torch whether it sees a device: without one it says
why (a CPU build of torch, no driver, CUDA_VISIBLE_DEVICES empty) and exits 3, before anything
would touch a GPU. ``sweep`` starts two ranks once (one per GPU, or both on the one GPU, each
message staged through pinned host memory over MPI) and measures:

* GPipe and 1F1B at p = 2 for m = 2, 4, 8, 16 on an MLP sized for a GPU: step time and
  utilization from the executor's CUDA-event timings (median of the warm steps), beside m/(m+p-1);
* each rank's peak memory in the step (``torch.cuda.max_memory_allocated``);
* the staging cost per message: device -> pinned host copy on the copy stream (CUDA events) and a
  whole staged message rank 0 -> rank 1 (copy, MPI, copy back), by message size.

It writes results.md (one table per part, the device named) and three plots into ``--out``. It
reads the GPU's name and driver (``nvidia-smi --query-gpu``) and changes no setting.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
NO_CUDA = 3     # run.sh's exit code for "no GPU here": stopped before the first CUDA call

# Compute-bound on a GPU (a 4-layer stage of 2048 x 2048 matrices on a microbatch of >= 128 rows),
# yet small enough (~130 MiB of float32 weights) that two ranks share one GPU comfortably.
GPU_MODEL = {"depth": 8, "width": 2048, "batch": 2048}
CPU_MODEL = {"depth": 4, "width": 64, "batch": 64}
MICROBATCHES = (2, 4, 8, 16)
SIZES = (4 << 10, 256 << 10, 4 << 20, 32 << 20)         # message bytes: a small boundary to a large one


def device_slug(name: str) -> str:
    """'NVIDIA H200' -> 'nvidia-h200': the results folder's name."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown"


def preflight() -> int:
    import torch
    if not torch.cuda.is_available():
        if not torch.version.cuda:
            why = (f"torch {torch.__version__} is a CPU build; install the CUDA build of the pinned version, e.g. "
                   f"`.venv/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128`")
        else:
            why = (f"torch {torch.__version__} is built for CUDA {torch.version.cuda} but sees no device (no driver, "
                   f"or CUDA_VISIBLE_DEVICES={__import__('os').environ.get('CUDA_VISIBLE_DEVICES', '(unset)')!r})")
        print(f"no CUDA device: {why}.\nStopped before the first CUDA call; nothing ran on a GPU.", file=sys.stderr)
        return NO_CUDA
    name = torch.cuda.get_device_name(0)
    print(f"found {torch.cuda.device_count()} GPU(s): {name}; torch {torch.__version__}, CUDA {torch.version.cuda}",
          file=sys.stderr)
    print(ROOT / "benchmarks" / "results" / f"gpu-{device_slug(name)}")
    return 0


def gpu_info() -> dict:
    """What the GPU is, read only: torch's view, and nvidia-smi's query (which changes nothing)."""
    import torch
    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "gpus": torch.cuda.device_count()}
    if torch.cuda.is_available():
        info["name"] = torch.cuda.get_device_name(0)
        info["memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2 ** 30, 1)
    try:
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = query.stdout.strip() or query.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as err:
        info["nvidia_smi"] = f"not available ({type(err).__name__})"
    return info


def staging_rank(comm, sizes, repeats: int, device_kind: str):
    """Rank 0 sends ``repeats`` messages of each size to rank 1 through the Messenger (staged on a GPU)."""
    import torch
    from pipeline_ref.engine.device import for_rank
    from pipeline_ref.engine.message import Messenger, TensorSpec
    from pipeline_ref.engine.mpi_transport import MPITransport
    device = for_rank(device_kind, comm)
    messenger = Messenger(MPITransport(comm), device)
    rows = []
    for size in sizes:
        spec = (TensorSpec((size // 4,), torch.float32),)
        payload = torch.ones(size // 4, device=device)
        copy_ms = None
        if device.type == "cuda" and comm.Get_rank() == 0:
            stager, times = messenger.staging, []
            for _ in range(repeats):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                done, _ = stager.to_host(payload)
                done.synchronize()
                torch.cuda.current_stream().wait_event(done)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            copy_ms = median(times)
        comm.Barrier()
        began = time.perf_counter()
        for tag in range(repeats):
            if comm.Get_rank() == 0:
                messenger.isend((payload,), 1, tag)
                messenger.finish_sends()
            else:
                received = messenger.irecv(spec, 0, tag).wait()
                if device.type == "cuda":
                    torch.cuda.current_stream(device).synchronize()   # the copy to the device is part of it
                assert bool((received[0] == 1).all())
        comm.Barrier()
        rows.append({"bytes": size, "copy_ms": copy_ms, "message_ms": (time.perf_counter() - began) / repeats * 1e3})
    return rows if comm.Get_rank() == 0 else None


def sweep(out: Path, device: str, quick: bool) -> int:
    from pipeline_ref.engine import machine
    from pipeline_ref.sim import theory
    from pipeline_ref.config import RunConfig
    from pipeline_ref.launch import launch
    out.mkdir(parents=True, exist_ok=True)
    model, steps = (CPU_MODEL, 3) if quick else (GPU_MODEL, 6)
    micro = MICROBATCHES[:2] if quick else MICROBATCHES
    sizes, repeats = (SIZES[:2], 3) if quick else (SIZES, 20)
    configs = [RunConfig(schedule=s, pp=2, microbatches=m, steps=steps, model="mlp", model_kwargs=model,
                         device=device, stall_timeout=120) for s in ("gpipe", "1f1b") for m in micro]
    print(f"sweep: {len(configs)} runs on 2 ranks ({device}), then staging cost for {len(sizes)} sizes", flush=True)
    results = launch(2, "pipeline_ref.train:run_many", configs, timeout=300, echo=False)[0]
    staging = launch(2, "check:staging_rank", list(sizes), repeats, device, env={"PYTHONPATH": str(HERE)},
                     timeout=180)[0]
    info = {**gpu_info(), **machine.machine_info()}
    rows = []
    for cfg, r in zip(configs, results):
        peaks = [m.device_peak for m in r.memory]
        rows.append({"schedule": cfg.schedule, "m": cfg.microbatches, "step_ms": r.warm_step_seconds * 1e3,
                     "utilization": r.warm_utilization,
                     "theory": theory.utilization(cfg.schedule, cfg.pp, cfg.microbatches),
                     "peak_mib": [None if p is None else p / 2 ** 20 for p in peaks]})
    (out / "results.json").write_text(json.dumps({"machine": info, "runs": rows, "staging": staging}, indent=1))
    (out / "results.md").write_text(_markdown(info, rows, staging, model, steps, device))
    _plots(out, rows, staging)
    print(f"sweep: results.md, results.json and plots -> {out}", flush=True)
    return 0


def _markdown(info, rows, staging, model, steps, device) -> str:
    shared = device == "cuda" and info.get("gpus", 0) < 2
    lines = [f"# GPU check: {info.get('name', device)}", "",
             f"Device: {info.get('name', device)} ({info.get('memory_gib', '?')} GiB), {info.get('gpus', 0)} GPU(s); "
             f"nvidia-smi: {info['nvidia_smi']}; torch {info['torch']}, CUDA {info['cuda']}; "
             f"host {info['cpu']}, {info['cores']} free core(s); {info['date']}.", "",
             f"MLP depth {model['depth']}, width {model['width']}, global batch {model['batch']}, float32; 2 stages; "
             f"{steps} steps per run, the median of steps 2-{steps} reported; actions timed with "
             f"{'CUDA events' if device == 'cuda' else 'the host clock (a CPU check of this script)'}."
             + (" **Both ranks share one GPU**: their kernels take turns, so the utilization measures the sharing, "
                "not the schedule; the numbers prove the path works, not a speed-up." if shared else ""), "",
             "## GPipe and 1F1B at p = 2", "",
             "| schedule | m | step | utilization | theory m/(m+p-1) | peak memory rank 0 | rank 1 |", "|---|---|---|---|---|---|---|"]
    mib = lambda v: "n/a" if v is None else f"{v:.0f} MiB"
    for r in rows:
        lines.append(f"| {r['schedule']} | {r['m']} | {r['step_ms']:.2f} ms | {r['utilization']:.3f} | {r['theory']:.3f} "
                     f"| {mib(r['peak_mib'][0])} | {mib(r['peak_mib'][1])} |")
    lines += ["", "## Staging cost per message (MPI without CUDA support: device -> pinned host -> MPI -> device)", "",
              "| message | device -> host copy (CUDA events) | whole message, rank 0 -> rank 1 |", "|---|---|---|"]
    for s in staging:
        copy = "n/a (CPU)" if s["copy_ms"] is None else f"{s['copy_ms']:.3f} ms"
        lines.append(f"| {s['bytes'] / 2 ** 10:.0f} KiB | {copy} | {s['message_ms']:.3f} ms |")
    lines += ["", "Plots: step_time.png, peak_memory.png, staging.png. Written by benchmarks/gpu/run.sh.", ""]
    return "\n".join(lines)


def _plots(out: Path, rows, staging) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    for name, key, label in (("step_time", "step_ms", "step (ms)"), ("peak_memory", "peak_mib", "peak memory (MiB)")):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for schedule in ("gpipe", "1f1b"):
            mine = [r for r in rows if r["schedule"] == schedule]
            for rank in ((0, 1) if key == "peak_mib" else (None,)):
                ys = [r[key][rank] if rank is not None else r[key] for r in mine]
                if None not in ys:
                    ax.plot([r["m"] for r in mine], ys, marker="o",
                            label=schedule + (f" rank {rank}" if rank is not None else ""))
        ax.set_xlabel("microbatches m")
        ax.set_ylabel(label)
        ax.set_xscale("log", base=2)
        if ax.lines:
            ax.legend()
        fig.savefig(out / f"{name}.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    kib = [s["bytes"] / 2 ** 10 for s in staging]
    ax.plot(kib, [s["message_ms"] for s in staging], marker="o", label="whole staged message")
    if staging[0]["copy_ms"] is not None:
        ax.plot(kib, [s["copy_ms"] for s in staging], marker="o", label="device -> host copy")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("message (KiB)")
    ax.set_ylabel("ms per message")
    ax.legend()
    fig.savefig(out / "staging.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("preflight", help="is there a GPU? prints the results folder, else exits 3")
    sweep_parser = sub.add_parser("sweep", help="GPipe/1F1B at p = 2, peak memory, staging cost")
    sweep_parser.add_argument("--out", type=Path, required=True)
    sweep_parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    sweep_parser.add_argument("--quick", action="store_true", help="tiny sizes (a check of the code on a CPU)")
    args = parser.parse_args(argv)
    if args.command == "preflight":
        return preflight()
    return sweep(args.out, args.device, args.quick)


if __name__ == "__main__":
    sys.exit(main())
