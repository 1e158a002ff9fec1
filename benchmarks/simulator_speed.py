"""How fast the simulator builds and plays a schedule at cluster scale, against the code before issue 30.

    .venv/bin/python benchmarks/simulator_speed.py [--rounds 3] [--stages 64] [--microbatches 1024]
                                                   [--out benchmarks/results/simulator_speed]

Each built-in schedule (and zb-auto, which the old code lacks) is built with ``schedules.build`` and played
with ``simulate.simulate`` (F = 1, B = 2, latency 0.05) at p = ``--stages``, m = ``--microbatches``,
by today's package and by the package as it was at commit ``BASELINE`` (extracted with ``git archive``
into a temporary folder), each in a fresh process, alternating old / new in ``--rounds`` rounds. A
process reports its CPU time (``time.process_time``: its own work, less sensitive than the wall clock
to the other processes sharing the machine) and wall time for the build and the play, and the numbers
the play gives (makespan, utilization, peak stash), which must agree between old and new. The new
trace builds its Event objects on first use, so "+ events" also times reading ``trace.events`` once.
Then p = 128, m = 4096 with the new code alone. Writes results.md and results.json into ``--out`` with
the machine's load.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BASELINE = "65cdc48"                     # the last commit before the simulator's rewrite (issue 30, item 1)
SCHEDULES = (("naive", {}), ("gpipe", {}), ("1f1b", {}), ("interleaved", {"chunks": 2}), ("zb-h1", {}),
             ("zb-h2", {}), ("zbv", {}), ("dualpipev", {}), ("pipedream", {"steps": 2}),
             ("pipedream-2bw", {"steps": 2}), ("zb-auto", {}))
COSTS = {"forward": 1.0, "backward": 2.0, "latency": 0.05}

# Run in a fresh interpreter with the package to time first on sys.path; prints one JSON line.
WORKER = """
import json, sys, time
from pipeline_ref import schedules, simulate
name, p, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
options, costs, events = map(json.loads, sys.argv[4:7])
clock = time.process_time
t0, w0 = clock(), time.perf_counter()
schedule = schedules.build(name, p, m, **options)
t1, w1 = clock(), time.perf_counter()
trace = simulate.simulate(schedule, **costs)
numbers = [trace.makespan, trace.utilization, trace.peak_stashed]
t2, w2 = clock(), time.perf_counter()
count = len(trace.events) if events else None
t3 = clock()
print(json.dumps({"build": t1 - t0, "simulate": t2 - t1, "events": t3 - t2 if events else None,
                  "wall": w2 - w0, "numbers": numbers, "actions": sum(map(len, schedule))}))
"""


def run_one(package_root: Path, name: str, p: int, m: int, options: dict, events: bool) -> dict | None:
    env = {**os.environ, "PYTHONPATH": str(package_root), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", WORKER, name, str(p), str(m), json.dumps(options),
                           json.dumps(COSTS), json.dumps(events)],
                          cwd=package_root, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        if "unknown schedule" in done.stderr:
            return None
        raise RuntimeError(f"{name} failed under {package_root}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def baseline_package(folder: Path) -> Path:
    """The pipeline_ref package as it was at BASELINE, extracted into ``folder``."""
    archive = subprocess.run(["git", "archive", BASELINE, "pipeline_ref"], cwd=ROOT, capture_output=True,
                             check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def measure(rounds: int, p: int, m: int, old_root: Path) -> list[dict]:
    rows = []
    for name, options in SCHEDULES:
        old, new = [], []
        for _ in range(rounds):                   # alternating, so a busy spell hits both
            result = run_one(old_root, name, p, m, options, events=False)
            if result is not None:
                old.append(result)
            new.append(run_one(ROOT, name, p, m, options, events=True))
        rows.append(summarize(name, old, new))
        print(rows[-1], flush=True)
    return rows


def summarize(name: str, old: list[dict], new: list[dict]) -> dict:
    def total(runs):
        return median(r["build"] + r["simulate"] for r in runs) if runs else None
    row = {"schedule": name, "actions": new[0]["actions"], "old_s": total(old), "new_s": total(new),
           "new_build_s": median(r["build"] for r in new),
           "new_simulate_s": median(r["simulate"] for r in new),
           "new_events_s": median(r["events"] for r in new) if new[0]["events"] is not None else None,
           "old_wall_s": median(r["wall"] for r in old) if old else None,
           "new_wall_s": median(r["wall"] for r in new)}
    row["speedup"] = row["old_s"] / row["new_s"] if old else None
    row["same_numbers"] = all(r["numbers"] == new[0]["numbers"] for r in old + new) if old else None
    return row


def markdown(rows: list[dict], large: list[dict], info: dict, args) -> str:
    from pipeline_ref.engine.machine import machine_markdown

    def seconds(x):
        return "-" if x is None else f"{x:.3f}"
    lines = ["# Simulator speed (issue 30, item 1)", "",
             f"`schedules.build` + `simulate.simulate` (F = 1, B = 2, latency 0.05) at p = {args.stages}, "
             f"m = {args.microbatches}: CPU seconds of one process, median of {args.rounds} alternating "
             "rounds. "
             f"Old: the package at commit {BASELINE}. New: this commit. Written by "
             "`benchmarks/simulator_speed.py`.", "",
             "| schedule | actions | old (s) | new (s) | speed-up | new: build | new: play | + events | "
             "same makespan, utilization, stash |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        speedup = "-" if r["speedup"] is None else f"{r['speedup']:.1f}x"
        same = {None: "(new only)", True: "yes", False: "**NO**"}[r["same_numbers"]]
        lines.append(f"| {r['schedule']} | {r['actions']} | {seconds(r['old_s'])} | {seconds(r['new_s'])} | "
                     f"{speedup} | {seconds(r['new_build_s'])} | {seconds(r['new_simulate_s'])} | "
                     f"{seconds(r['new_events_s'])} | {same} |")
    measured = [r["speedup"] for r in rows if r["speedup"] is not None]
    lines += ["", f"Speed-up over the {len(measured)} schedules both versions have: "
              f"{min(measured):.1f}x to {max(measured):.1f}x.", "",
              "## p = 128, m = 4096 (new code only)", "",
              "| schedule | actions | build + play (CPU s) | wall (s) |", "|---|---|---|---|"]
    for r in large:
        lines.append(f"| {r['schedule']} | {r['actions']} | {r['new_s']:.2f} | {r['new_wall_s']:.2f} |")
    lines += ["", machine_markdown(info), ""]           # with the load average before and after the run
    return "\n".join(lines)


def main() -> None:
    from pipeline_ref.engine.machine import machine_info
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stages", type=int, default=64)
    parser.add_argument("--microbatches", type=int, default=1024)
    parser.add_argument("--large", default="1f1b,zbv",
                        help="schedules to play at p = 128, m = 4096 ('' for none)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "simulator_speed")
    args = parser.parse_args()
    info = machine_info()                         # its load average is the one before the run
    with tempfile.TemporaryDirectory() as folder:
        rows = measure(args.rounds, args.stages, args.microbatches, baseline_package(Path(folder)))
    large = []
    for name, options in SCHEDULES:
        if name in args.large.split(","):
            # events left unbuilt: 10^6-10^7 Event objects would need gigabytes
            large.append(summarize(name, [], [run_one(ROOT, name, 128, 4096, options, events=False)]))
            print(large[-1], flush=True)
    info["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"rows": rows, "large": large, "machine": info,
                                                       "baseline": BASELINE, "costs": COSTS}, indent=2))
    (args.out / "results.md").write_text(markdown(rows, large, info, args))
    print(markdown(rows, large, info, args))


if __name__ == "__main__":
    main()
