"""Small helpers the lesson notebooks share (no MPI here)."""
from __future__ import annotations

from statistics import median

from pipeline_ref.engine.machine import cores  # noqa: F401  (the notebooks import it from here)
from lesson_code.device import sized

# The model the timing demos train (pipeline_ref.models.mlp): 8 equal blocks, so 2 or 4 stages cost the same, and
# a stage's matrix products (microbatch x width x width per block) outweigh its message (microbatch x width floats).
# On a CPU width 512: smaller than the demo's model (pipeline_ref/tools/demo.py), so that a notebook runs in well under
# a minute on 2 cores. Sized for the course's device (lesson_code/device.py: PIPELINE_COURSE_DEVICE).
TIMING_MODEL = sized("timing")


# The model the lessons past 03 measure on: on a CPU pipeline_ref.models.MEASURE_MLP, the one
# benchmarks/schedules.py measures.
LESSON_MODEL = sized("lesson")


def stash_bytes_theory(blocks: int, microbatch: int, width: int, last: bool, itemsize: int = 4) -> int:
    """Bytes autograd keeps for one microbatch on a stage of ``blocks`` blocks of ``models.mlp``.

    Each block Linear -> Tanh saves Linear's input and Tanh's output, and a block's output is the next
    block's input: a stage keeps blocks + 1 tensors of microbatch x width. The last stage's loss (MSE) also
    keeps the targets.
    """
    return (blocks + 1 + (1 if last else 0)) * microbatch * width * itemsize


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.2f} MiB"


def launch_error_summary(err: Exception) -> str:
    """A LaunchError's message without the tail of the ranks' output that follows it."""
    return str(err).split("\n--- last lines")[0]


def classify_waits(trace) -> list[dict]:
    """Each receive a rank waited on in ``trace``, and whether its message was ready before it was asked for.

    A wait ends when the message is there (``simulate.receipts`` pairs each wait with the action that produced
    its message). If that action had ended before the wait began, the rank only waited for the transfer
    ("ready before asked"); otherwise it first waited for the other rank's computation (a dependency: the
    bubble, or a slower neighbour), then for the transfer; ``latency`` is then the time from the producer's end
    to the wait's end, the message's latency as this rank saw it (None otherwise). Both ranks time from the same
    barrier, so their clocks agree to within microseconds.
    """
    from pipeline_ref.sim.simulate import receipts
    rows = []
    for r in receipts(trace):
        ready = r.produced <= r.wait.start
        rows.append({"rank": r.wait.rank, "action": str(r.action), "wait": r.wait.end - r.wait.start,
                     "ready before asked": ready, "latency": None if ready else max(0.0, r.wait.end - r.produced)})
    return rows


def op_costs(trace) -> dict:
    """Median duration of each op kind per rank in a (measured) trace: {"F": [...], "B": [...], ...}."""
    out = {}
    for op in ("F", "B", "I", "W"):
        per_rank = [[e.duration for e in trace.events if e.rank == r and e.op == op] for r in range(trace.num_ranks)]
        if any(per_rank):
            out[op] = [median(d) if d else 0.0 for d in per_rank]
    return out


def calibrated(schedule, measured):
    """The simulator's prediction of ``schedule`` with each rank's measured median F, B (or I and W) and latency.

    For a schedule with several chunks per rank a "stage" in the simulator is a chunk: its measured costs are
    per chunk already.
    """
    from pipeline_ref import simulate
    costs = op_costs(measured)
    latency = simulate.costs_from_trace(measured)["latency"]
    zero = [0.0] * measured.num_ranks
    return simulate.simulate(schedule, forward=costs["F"], backward=costs.get("B", zero), latency=latency,
                             input_grad=costs.get("I"), weight_grad=costs.get("W"), time_unit="s")


def step_ratio_sentence(steps: dict, baseline: str) -> str:
    """One sentence of a run's measured steps against ``baseline``'s: what the prose under a table may quote.

    ``steps`` maps a name to its step in seconds. Printed by the cell, so the sentence and the table come from
    the same run (tests/test_lesson_prose.py checks that the prose quotes only numbers the cells print).
    """
    base = steps[baseline]
    parts = []
    for name, step in steps.items():
        if name == baseline:
            continue
        ratio = step / base
        word = "shorter" if ratio < 1 else "longer" if ratio > 1 else "as long"
        parts.append(f"{name} {ratio:.2f} ({word})")
    return f"this run's step against {baseline}'s ({base * 1e3:.1f} ms): " + ", ".join(parts)


def against_theory(ratio, theory: float) -> str:
    """Where a ratio measured over rounds (``measure``'s Ratio: median, low, high) lies against theory's.

    Said only as far as every round agrees: "above" or "below" when all rounds are on one side, otherwise that
    theory's value lies inside the rounds' spread. So the sentence holds for whatever the rounds measured.
    """
    where = ("above it in every round" if ratio.low > theory else "below it in every round"
             if ratio.high < theory else "theory's value lies within the rounds' spread")
    return f"{ratio.median:.2f} ({ratio.low:.2f}-{ratio.high:.2f} over the rounds), theory {theory:.2f}: {where}"


def median_round(results):
    """Of one configuration's RunResults (one per round, ``measure.compare``), the one with the median last step:
    the round a lesson draws its timeline from, so the chart shows a typical round, not the best or the worst."""
    ranked = sorted(results, key=lambda r: r.trace.makespan)
    return ranked[(len(ranked) - 1) // 2]


def benchmark_table(path) -> list[dict]:
    """The first markdown table of a committed benchmark result (e.g. benchmarks/results/schedules/results.md),
    one dict per row keyed by the header: so a lesson prints the numbers it quotes from a benchmark."""
    from pathlib import Path
    rows, header = [], None
    for line in Path(path).read_text().splitlines():
        if not line.startswith("|"):
            if header is not None:
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif not all(set(c) <= set("-: ") for c in cells):
            rows.append(dict(zip(header, cells)))
    return rows
