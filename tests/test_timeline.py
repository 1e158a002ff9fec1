"""The text time grid of a trace (pipeline_ref/sim/timeline.py) and `simulate --timeline`. Pure: no ranks."""
import contextlib
import io
import re

import pytest

from pipeline_ref import schedules, simulate
from pipeline_ref.sim.timeline import slot_width, timeline
from pipeline_ref.sim.trace import Event, Trace, TraceMeta

# GPipe, 2 stages, 2 microbatches, F = 1, B = 2, worked out by hand: rank 1 starts F0 when rank 0's F0 ends
# (t = 1), its backwards run 3-5 and 5-7, and rank 0's backwards wait for them (5-7, 7-9).
GPIPE_2x2 = """\
one slot = 1 cost unit (every event starts and ends on a multiple of it); '.' = idle
time   0  1  2  3  4  5  6  7  8
rank 0 F0 F1 .  .  .  B0--- B1---
rank 1 .  F0 F1 B0--- B1--- .  ."""


def _grid(name, stages, microbatches, **options):
    costs = {key: options.pop(key) for key in ("forward", "backward", "latency") if key in options}
    return simulate.simulate(schedules.build(name, stages, microbatches, **options), **costs)


def _labels(row: str) -> list[str]:
    return re.findall(r"[FBIW]\d+(?:\.\d+)?", row)


def test_gpipe_grid_is_the_hand_checked_text():
    assert timeline(_grid("gpipe", 2, 2, forward=1.0, backward=2.0)) == GPIPE_2x2


def test_every_action_once_per_rank_in_order_and_idle_marked():
    sched = schedules.build("interleaved", 2, 4, chunks=2)
    text = timeline(simulate.simulate(sched, forward=0.5, backward=1.0), width=1000)
    assert "one slot = 0.5 cost units" in text
    rows = {int(line.split()[1]): line for line in text.splitlines() if line.startswith("rank ")}
    for rank, actions in enumerate(sched):
        # the grid's labels, left to right, are the rank's actions in the schedule's order, each once
        assert _labels(rows[rank]) == [str(a) for a in actions]
        assert " . " in rows[rank] or rows[rank].endswith(".")          # interleaved 1F1B still idles
    assert "F0.1" in rows[0] and "B3.1" in rows[1]                      # chunks named apart from chunk 0


def test_columns_stay_aligned_with_chunk_labels():
    text = timeline(_grid("interleaved", 2, 4, chunks=2, forward=0.5, backward=1.0), width=1000)
    lines = text.splitlines()[1:]
    ruler, rows = lines[0], lines[1:]
    width = max(len(r) for r in rows)
    assert all(len(r) == width or r.endswith(".") for r in rows)        # only trailing spaces stripped
    # each action's label starts at a slot's column: a multiple of the 5-character pitch after the margin
    margin = ruler.index("0")
    for row in rows:
        for match in re.finditer(r"[FBIW]\d+(?:\.\d+)?", row):
            assert (match.start() - margin) % 5 == 0


def test_a_long_grid_wraps_in_blocks_of_whole_slots():
    trace = _grid("1f1b", 4, 16)
    text = timeline(trace, width=60)
    assert all(len(line) <= 60 for line in text.splitlines())
    blocks = text.split("\n\n")
    assert len(blocks) > 1
    for block in blocks:      # each block: its own time ruler above the four ranks
        assert [line.split()[0] for line in block.splitlines()[-5:]] == ["time"] + ["rank"] * 4
    for rank in range(4):
        row = "".join(line[7:] for b in blocks for line in b.splitlines() if line.startswith(f"rank {rank}"))
        assert len(_labels(row)) == 2 * 16


def test_a_small_latency_falls_back_to_the_shortest_action_and_says_so():
    trace = _grid("1f1b", 2, 2, forward=1.0, backward=2.0, latency=0.1)
    assert slot_width(trace) == (1.0, False)
    assert "the shortest action; starts and ends rounded" in timeline(trace)
    # a latency comparable to the costs stays exact
    assert slot_width(_grid("1f1b", 2, 2, forward=1.0, backward=2.0, latency=0.5)) == (0.5, True)


def test_measured_times_round_to_the_shortest_action():
    trace = Trace(2, [Event(0, "F", 0, 0, 0.00121, 0.00313), Event(1, "F", 0, 0, 0.00352, 0.00617),
                      Event(1, "B", 0, 0, 0.00617, 0.01029), Event(0, "B", 0, 0, 0.01104, 0.01501)],
                  meta=TraceMeta(source="measured"))
    text = timeline(trace)
    assert text.startswith("one slot = 0.00192 s (the shortest action")
    # boundaries to the nearest slot of 1.92 ms from 1.21 ms: rank 1's F0 1.20-2.58 -> slots 1-2, B0 2.58-4.73 -> 3-4
    assert text.splitlines()[2:] == ["rank 0 F0 .  .  .  .  B0---",
                                     "rank 1 .  F0--- B0--- .  ."]
    with pytest.raises(ValueError, match="slot must be positive"):
        timeline(trace, slot=0)


def test_simulate_timeline_flag_prints_the_grid_beside_the_lists():
    from pipeline_ref.__main__ import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["simulate", "--schedule", "gpipe", "--pp", "2", "--microbatches", "2",
                     "--forward", "1", "--backward", "2", "--timeline"]) == 0
    text = out.getvalue()
    assert "rank 0: F0 F1 B0 B1" in text and GPIPE_2x2 in text
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["simulate", "--schedule", "gpipe", "--pp", "2", "--microbatches", "2"])
    assert "one slot" not in out.getvalue()
