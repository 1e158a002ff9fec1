"""Gradescope, emulated: the bundle set up and run in its documented layout and limits; three submissions.

    sudo .venv/bin/python tools/autograder/emulate.py [--memory-mb 768] [--cpus 0.5] [--python PY]
    TORCH_WHEEL=/path/torch-...-cpu.whl  (setup.sh installs that file instead of using the CPU index)

What Gradescope does, in a temporary root standing for /autograder: `setup.sh` once (a venv of its own with
torch's CPU build and requirements.txt; ``--python`` skips it and grades with an existing environment), then
per submission a fresh `source/` from the zip, the files in `submission/`, and `run_autograder`, which writes
`results/results.json`. The submissions: the reference answers (full marks), the stubs (zero), and the answers
with a SyntaxError in one file plus one wrong function (the total less those exercises' points).

Limits: each run goes into a cgroup (v1 or v2, needs root) with a CPU quota (``--cpus``) and a memory limit
(``--memory-mb``), as Gradescope's container has. Peak memory is the largest sum over every process of the
run of its proportional set size (PSS: a page shared by n processes counts 1/n in each), sampled every 0.2 s,
and the cgroup's own peak (which also counts page cache). Without
cgroups the runs are not limited, and the figures say so. Writes tools/autograder/measured.json, which
build.py turns into the settings its README states and `make autograder` prints.

Layer: tools (the Gradescope bundle). Not run by the tests: it takes minutes (installs, grades three times).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
from tools.autograder import build  # noqa: E402

ROOT = HERE.parents[1]
V1 = Path("/sys/fs/cgroup")
# The third submission (tests/test_autograder.py grades it too): the solutions, one file that does not parse,
# one function that returns a wrong value (a later definition of the same name wins). Both are pure exercises,
# so the rank-based tests of the others must keep their points.
SYNTAX_ERROR = ("ex05_balancing.py", "\n\ndef left_unfinished(:\n    pass\n")
WRONG = ("ex09_asynchronous.py", "versions_kept",
         "\n\ndef versions_kept(*args, **kwargs):\n    return None\n")


def broken_submission(folder: Path) -> list[Path]:
    """The solutions with SYNTAX_ERROR and WRONG written in, into ``folder``."""
    folder.mkdir(parents=True)
    for path in sorted((ROOT / "solutions").glob("ex[0-9][0-9]_*.py")):
        text = path.read_text()
        text += SYNTAX_ERROR[1] if path.name == SYNTAX_ERROR[0] else WRONG[2] if path.name == WRONG[0] else ""
        (folder / path.name).write_text(text)
    return sorted(folder.glob("*.py"))


def points_lost(tests: dict[str, float]) -> set[str]:
    """The graded tests the broken submission fails: all of SYNTAX_ERROR's exercise, WRONG's function's."""
    return {key for key in tests if key.startswith("test_" + SYNTAX_ERROR[0].removesuffix(".py"))
            or (key.startswith("test_" + WRONG[0].removesuffix(".py")) and WRONG[1] in key)}


class Limits:
    """A cgroup with a CPU quota and a memory limit (v1: cpu and memory hierarchies; v2: one folder)."""

    def __init__(self, name: str, cpus: float, memory_mb: int):
        self.dirs: list[Path] = []
        period = 100_000
        if (V1 / "cgroup.controllers").exists():            # v2
            path = V1 / name
            path.mkdir()
            (path / "cpu.max").write_text(f"{int(cpus * period)} {period}")
            (path / "memory.max").write_text(str(memory_mb << 20))
            self.dirs, self.memory = [path], path
        else:
            cpu, memory = V1 / "cpu" / name, V1 / "memory" / name
            cpu.mkdir()
            memory.mkdir()
            self.dirs, self.memory = [cpu, memory], memory
            (cpu / "cpu.cfs_period_us").write_text(str(period))
            (cpu / "cpu.cfs_quota_us").write_text(str(int(cpus * period)))
            (memory / "memory.limit_in_bytes").write_text(str(memory_mb << 20))

    def enter_command(self) -> str:
        return " && ".join(f"echo $$ > {d}/cgroup.procs" for d in self.dirs)

    def pids(self) -> list[int]:
        return [int(p) for p in (self.memory / "cgroup.procs").read_text().split()]

    def peak_mb(self) -> float:
        for name in ("memory.max_usage_in_bytes", "memory.peak"):
            if (self.memory / name).exists():
                return int((self.memory / name).read_text()) / 2**20
        return float("nan")

    def oom_kills(self) -> int:
        for name in ("memory.oom_control", "memory.events"):
            if (self.memory / name).exists():
                for line in (self.memory / name).read_text().splitlines():
                    if line.startswith("oom_kill "):
                        return int(line.split()[1])
        return 0

    def remove(self) -> None:
        for d in self.dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)


def tree(pid: int) -> list[int]:
    """pid and its descendants, from /proc (where no cgroup lists them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children.get(found[-1], [])
    return found


def memory_mb(pids: list[int]) -> tuple[float, float]:
    """(resident, proportional) memory of the processes, summed. The proportional set size shares each page
    among the processes that map it (torch's libraries are mapped by every rank), so its sum is what the
    processes use together; the resident sums count a shared page once per process."""
    totals = [0, 0]
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                for index, key in enumerate(("Rss:", "Pss:")):
                    if line.startswith(key):
                        totals[index] += int(line.split()[1])
        except OSError:
            continue
    return totals[0] / 1024, totals[1] / 1024


def grade(bundle: Path, root: Path, files: list[Path], python: str, limits: Limits | None) -> dict:
    """One submission graded in a fresh root/source; its score, time and peak memory."""
    shutil.rmtree(root / "source", ignore_errors=True)
    for sub in ("submission", "results"):
        shutil.rmtree(root / sub, ignore_errors=True)
        (root / sub).mkdir(parents=True)
    with zipfile.ZipFile(bundle) as zf:
        zf.extractall(root / "source")
        for info in zf.infolist():
            os.chmod(root / "source" / info.filename, (info.external_attr >> 16) or 0o644)
    for path in files:
        shutil.copy(path, root / "submission" / path.name)
    command = f"exec bash {root / 'source' / 'run_autograder'}"
    if limits is not None:
        command = f"{limits.enter_command()} && {command}"
    env = {**os.environ, "AUTOGRADER_ROOT": str(root), "AUTOGRADER_PYTHON": python}
    started = time.monotonic()
    process = subprocess.Popen(["sh", "-c", command], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.STDOUT)
    peak, peak_rss, most = 0.0, 0.0, 0
    while process.poll() is None:
        pids = limits.pids() if limits is not None else tree(process.pid)
        rss, pss = memory_mb(pids)
        peak_rss = max(peak_rss, rss)
        if pss > peak:
            peak, most = pss, len(pids)
        time.sleep(0.2)
    seconds = time.monotonic() - started
    result = json.loads((root / "results" / "results.json").read_text())
    return {"score": result["score"], "max_score": result["max_score"], "seconds": round(seconds, 1),
            "peak_pss_sum_mb": round(peak, 1), "peak_rss_sum_mb": round(peak_rss, 1),
            "processes_at_peak": most,
            "cgroup_peak_mb": round(limits.peak_mb(), 1) if limits else None,
            "oom_kills": limits.oom_kills() if limits else None, "status": process.returncode}


def submissions(folder: Path) -> dict[str, tuple[list[Path], float]]:
    """name -> (files, the score it must get)."""
    manifest = json.loads(build.contents()["manifest.json"])
    tests = manifest["tests"]
    lost = sum(tests[key] for key in points_lost(tests))
    return {"reference": (sorted((ROOT / "solutions").glob("ex[0-9][0-9]_*.py")), manifest["max_score"]),
            "stubs": (sorted((ROOT / "exercises").glob("ex[0-9][0-9]_*.py")), 0.0),
            "syntax error + wrong function": (broken_submission(folder / "broken"),
                                              manifest["max_score"] - lost)}


def set_up(bundle: Path, root: Path) -> dict:
    """setup.sh as Gradescope runs it (from source/, as root); its time and the size of what it installed."""
    with zipfile.ZipFile(bundle) as zf:
        zf.extractall(root / "source")
    started = time.monotonic()
    subprocess.run(["bash", str(root / "source" / "setup.sh")], check=True, env={**os.environ,
                   "AUTOGRADER_ROOT": str(root)})
    seconds = time.monotonic() - started
    size = sum(f.stat().st_size for f in (root / "venv").rglob("*") if f.is_file() and not f.is_symlink())
    return {"seconds": round(seconds), "venv_mb": round(size / 2**20),
            "torch": "TORCH_WHEEL " + os.environ["TORCH_WHEEL"] if os.environ.get("TORCH_WHEEL")
            else "the CPU index"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memory-mb", type=int, default=build.DEFAULTS["memory_mb"])
    parser.add_argument("--cpus", type=float, default=build.DEFAULTS["cpus"])
    parser.add_argument("--python", help="grade with this interpreter instead of running setup.sh")
    parser.add_argument("--out", type=Path, default=build.MEASURED)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gradescope-"))
    bundle = build.build(work / "autograder.zip")
    setup = None if args.python else set_up(bundle, work / "setup")
    if setup is None and args.out.exists():      # keep the last measured set-up beside the new runs
        previous = json.loads(args.out.read_text())
        setup = previous.get("setup") and {**previous["setup"], "measured": previous["when"]}
    python = args.python or str(work / "setup" / "venv" / "bin" / "python")
    load_before = os.getloadavg()
    runs, threads = {}, []
    graded = submissions(work / "submitted")
    for index, (name, (files, wanted)) in enumerate(graded.items()):
        try:
            limits = Limits(f"gradescope-emulation-{os.getpid()}-{index}", args.cpus, args.memory_mb)
        except OSError as err:
            print(f"no cgroup ({err}): {name} runs without CPU or memory limits")
            limits = None

        def run(name=name, files=files, wanted=wanted, limits=limits, index=index):
            try:
                graded_run = grade(bundle, work / f"run{index}", files, python, limits)
                runs[name] = {**graded_run, "expected": wanted}
            finally:
                if limits is not None:
                    limits.remove()
        threads.append(threading.Thread(target=run))   # the three at once: each has its own quota
        threads[-1].start()
    for thread in threads:
        thread.join()
    runs = {name: runs[name] for name in graded if name in runs}
    limited = all(r["cgroup_peak_mb"] is not None for r in runs.values())
    report(args, setup, runs, load_before, limits_used=limited)
    shutil.rmtree(work, ignore_errors=True)


def report(args, setup: dict | None, runs: dict, load_before, limits_used: bool) -> None:
    peak = max(max(r["peak_pss_sum_mb"], r["cgroup_peak_mb"] or 0) for r in runs.values())
    slowest = max(r["seconds"] for r in runs.values())
    memory_mb = max(build.DEFAULTS["memory_mb"], 256 * -(-int(peak * 1.3) // 256))   # 30 % above, in 256 MB
    how = (f"cgroup limits {args.cpus} CPU and {args.memory_mb} MB per run" if limits_used else
           "no cgroup: runs not limited, times those of a whole core")
    how += "; graded with " + (f"{args.python} (--python)" if args.python else "setup.sh's venv")
    data = {"when": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "how": how,
            "cpus": args.cpus, "memory_limit_mb": args.memory_mb,
            "machine": {"cores": os.cpu_count(), "load_average_before": [round(x, 1) for x in load_before],
                        "load_average_after": [round(x, 1) for x in os.getloadavg()],
                        "note": "the three runs at once, each in its own cgroup; other work shared the "
                                "cores"},
            "setup": setup, "runs": [{"submission": name, **r} for name, r in runs.items()],
            "advice": {"memory_mb": memory_mb, "cpus": args.cpus if slowest < 450 else 1.0, "minutes": 10}}
    args.out.write_text(json.dumps(data, indent=1) + "\n")
    for name, r in runs.items():
        verdict = "as expected" if r["score"] == r["expected"] else f"EXPECTED {r['expected']:g}"
        print(f"{name:>30}: {r['score']:g}/{r['max_score']:g} ({verdict}), {r['seconds']:.0f} s, peak "
              f"{r['peak_pss_sum_mb']:.0f} MB (PSS; RSS {r['peak_rss_sum_mb']:.0f}) over "
              f"{r['processes_at_peak']} processes, cgroup peak {r['cgroup_peak_mb']} MB, "
              f"OOM kills {r['oom_kills']}")
    print(f"wrote {args.out}\n" + "\n".join(build.settings()))
    if any(r["score"] != r["expected"] for r in runs.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
