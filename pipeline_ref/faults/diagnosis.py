"""Why a launched run failed, said in one line first: the ranks' own reports read, merged and put cause
first, else their heartbeat files, else what mpiexec printed of a rank that died.

Layer: faults. ``launch.launch`` raises ``LaunchError(failure(...))`` with what this module writes (or
``missing_result(...)``, for a rank that ended without one), and prints ``last_actions`` when it is
interrupted.
"""
from __future__ import annotations

import re
import signal
from pathlib import Path

from pipeline_ref.faults import watchdog

MARK = watchdog.MARK      # the prefix of the ranks' own reports


def output_tail(out: list, err: list, lines: int = 30) -> str:
    text = "".join(out[-lines:]) + "".join(err[-lines:])
    return f"--- last lines the ranks printed ---\n{text}" if text.strip() else ""


def merge_reports(reports: list[str]) -> list[str]:
    """"rank 0: X" and "rank 1: X" become "ranks 0, 1: X" (a refused configuration fails every rank alike),
    in the order the first of each was reported."""
    ranks_by_message: dict[str, list[int]] = {}
    for report in reports:
        head, _, message = report.partition(": ")
        if head.startswith("rank ") and head[5:].isdigit():
            ranks_by_message.setdefault(message, []).append(int(head[5:]))
        else:
            ranks_by_message.setdefault(report, [])
    merged = []
    for message, ranks in ranks_by_message.items():
        ranks = sorted(set(ranks))
        if not ranks:
            merged.append(message)
        else:
            merged.append(f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))}: {message}")
    return merged


def cause_first(report: str) -> int:
    """Which report is the cause: a failure, then a rank stuck on its own work, then one stuck waiting for
    another, then a rank that left because its launcher went."""
    if ": failed while " in report or ": left the run early " in report or " left the run early: " in report:
        return 0
    if ": stuck for " in report:
        return 2 if "waiting for" in report.split(" while ", 1)[-1] else 1
    return 3


def ranks_named(report: str) -> set[int]:
    """The ranks a report is about: "rank 3 (stage 1, replica 1): ..." -> {3}, "ranks 0, 1: ..." -> {0, 1}."""
    head = re.match(r"ranks? ([\d, ]+)", report)
    return {int(r) for r in re.findall(r"\d+", head[1])} if head else set()


def beats(tmp: Path, num_ranks: int, prefix: str) -> list[tuple[int, str]]:
    """(rank, last report) of the ranks whose heartbeat file's last report starts with ``prefix``."""
    beats = [(r, watchdog.read_heartbeat(tmp / f"rank{r}.beat")) for r in range(num_ranks)]
    return [(r, b[0]) for r, b in beats if b and b[0].startswith(prefix)]


def last_actions(folder, num_ranks: int, skip=frozenset()) -> list[str]:
    """One line per rank (but those in ``skip``): its last report, from its heartbeat file in ``folder``."""
    lines = []
    for rank in sorted(set(range(num_ranks)) - set(skip)):
        beat = watchdog.read_heartbeat(Path(folder) / f"rank{rank}.beat")
        if beat is None:
            lines.append(f"rank {rank}: had not started")
        else:
            text, age, watched = beat
            lines.append(f"rank {rank}: {text} ({f'for {age:.1f} s' if watched else 'not watched'})")
    return lines


def returned_early(reports: list[str], tmp: Path) -> list[str]:
    """A rank whose target returned (exit code 0) while another was stuck waiting for it: the cause."""
    for report in reports:
        waited = re.match(r"ranks? (\d+).*: stuck for .* waiting for .* from rank (\d+)", report)
        if waited:
            beat = watchdog.read_heartbeat(tmp / f"rank{waited[2]}.beat")
            if beat and beat[0] in ("saving the result", "finished"):     # its target has returned
                return [f"rank {waited[2]} left the run early: its target returned (exit code 0) while rank "
                        f"{waited[1]} still waited for it"]
    return []


def rank_that_died(out: list, tmp: Path) -> tuple[int, str] | None:
    """(rank, how) of the process MPICH's mpiexec reports as ended badly ("BAD TERMINATION ... PID n"), if
    any."""
    text = "".join(out)
    found = re.search(r"PID (\d+) RUNNING AT .*\n=\s*EXIT CODE: (\d+)", text)
    if not found:
        return None
    pids = {}
    for pid_file in tmp.glob("rank*.pid"):
        try:
            pids[int(pid_file.read_text())] = int(pid_file.stem[4:])
        except ValueError:
            pass
    rank = pids.get(int(found.group(1)))
    if rank is None:
        return None
    by_signal = re.search(r"EXIT STRING: .*\(signal (\d+)\)", text)
    if by_signal:
        number = int(by_signal.group(1))
        try:
            return rank, f"signal {number}, {signal.Signals(number).name}"
        except ValueError:
            return rank, f"signal {number}"
    return rank, f"exit code {found.group(2)}"


def failure(num_ranks, code, timed_out, timeout, out, err, tmp: Path) -> str:
    reports = merge_reports([line.strip()[len(MARK):].strip() for line in err if line.startswith(MARK)])
    reports.sort(key=cause_first)      # stable: among equals, the first reported first
    if not reports:     # MPI_Abort may kill the proxy before it forwards a rank's last stderr line
        reports = merge_reports([f"rank {r}: {text}" for r, text in beats(tmp, num_ranks, "failed while")
                                  + beats(tmp, num_ranks, "left the run")])
    reports = returned_early(reports, tmp) + reports
    named = set().union(*(ranks_named(report) for report in reports))
    died = None if reports else rank_that_died(out, tmp)
    if died is not None:
        rank, how = died
        beat = watchdog.read_heartbeat(tmp / f"rank{rank}.beat")
        reports = [f"rank {rank} died ({how}) while {beat[0] if beat else 'starting'}"]
        named = {rank}
    limit = f"the run on {num_ranks} ranks did not finish within {timeout:.0f} s and was stopped"
    if timed_out:
        reports.insert(0, limit)
    elif code is not None and code < 0 and not reports:
        reports = [f"mpiexec (the MPI launcher) was killed by signal {-code} ({signal.Signals(-code).name})"]
    elif not reports:
        reports = [f"the run on {num_ranks} ranks failed (exit code {code}) and no rank said why"]
    others = last_actions(tmp, num_ranks, skip=frozenset(named))
    body = "".join(f"\n  {r}" for r in reports[1:])
    if others:
        body += f"\n{'what the other ranks were doing' if named else 'what the ranks were doing'}:"
        body += "".join(f"\n  {line}" for line in others)
    return f"{reports[0]}{body}\n{output_tail(out, err)}"


def missing_result(rank: int, num_ranks, code, timeout, out, err, tmp: Path) -> str:
    """Why ``rank`` left no result though mpiexec ended well: a rank that left early said so, and MPI ended
    the others (then, as any failure), or it left in silence (then, its output)."""
    said = any(line.startswith(MARK) for line in err) or beats(tmp, num_ranks, "left the run")
    if said:
        return failure(num_ranks, code, False, timeout, out, err, tmp)
    return f"rank {rank} exited without a result\n" + output_tail(out, err)
