"""Tests of pipeline_ref.sim.trace on hand-built traces: derived numbers, serialization, exports."""
import csv
import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from tests import trace_json
from pipeline_ref.sim import trace as trace_mod
from pipeline_ref.sim.trace import Event, Trace, TraceMeta, Wait


def one_f_one_b_by_hand() -> Trace:
    """1F1B, 2 stages, 2 microbatches, F = 1, B = 2, drawn on paper:

        rank 0: F0 [0,1] F1 [1,2] .wait. B0 [4,6] .wait. B1 [7,9]
        rank 1: .wait. F0 [1,2] B0 [2,4] F1 [4,5] B1 [5,7]  (idle 7-9)
    """
    events = [Event(0, "F", 0, 0, 0, 1), Event(0, "F", 1, 0, 1, 2), Event(0, "B", 0, 0, 4, 6),
              Event(0, "B", 1, 0, 7, 9),
              Event(1, "F", 0, 0, 1, 2), Event(1, "B", 0, 0, 2, 4), Event(1, "F", 1, 0, 4, 5),
              Event(1, "B", 1, 0, 5, 7)]
    waits = [Wait(1, "recv activation 0 from rank 0", 0, 1), Wait(0, "recv gradient 0 from rank 1", 2, 4),
             Wait(0, "recv gradient 1 from rank 1", 6, 7)]
    return Trace(num_ranks=2, events=events, waits=waits, meta=TraceMeta(source="simulated", schedule="1f1b"))


# --------------------------------------------------------------------------- derived numbers

def test_derived_numbers_by_hand():
    t = one_f_one_b_by_hand()
    assert t.makespan == 9
    assert t.busy(0) == 6 and t.busy(1) == 6
    assert t.waited(0) == 3 and t.waited(1) == 1
    assert t.utilization == pytest.approx(12 / 18)
    assert t.bubble_fraction == pytest.approx(1 / 3)
    assert t.stash_counts() == [2, 1]
    # rank 0 waits twice for gradients between its first and last action; rank 1 only starts late and ends early
    assert t.idle_inside(0) == 3 and t.idle_inside(1) == 0


def test_makespan_ignores_a_common_offset():
    shifted = [Event(e.rank, e.op, e.microbatch, e.chunk, e.start + 100, e.end + 100)
               for e in one_f_one_b_by_hand().events]
    t = Trace(num_ranks=2, events=shifted)
    assert t.makespan == 9 and t.utilization == pytest.approx(2 / 3)


def test_stash_counts_follow_time_not_list_order():
    # gpipe-like on one rank, listed backwards-first: still three forwards held at once
    events = [Event(0, "B", i, 0, 3 + 2 * i, 5 + 2 * i) for i in range(3)] + \
             [Event(0, "F", i, 0, i, i + 1) for i in range(3)]
    assert Trace(num_ranks=1, events=events).stash_counts() == [3]


def test_split_backward_frees_at_w():
    events = [Event(0, "F", 0, 0, 0, 1), Event(0, "F", 1, 0, 1, 2), Event(0, "I", 0, 0, 2, 3),
              Event(0, "I", 1, 0, 3, 4), Event(0, "W", 0, 0, 4, 5), Event(0, "W", 1, 0, 5, 6)]
    assert Trace(num_ranks=1, events=events).stash_counts() == [2]


def test_empty_trace():
    t = Trace(num_ranks=3)
    assert t.makespan == 0 and t.utilization == 0 and t.stash_counts() == [0, 0, 0] and t.idle_inside(1) == 0


def test_a_rank_with_nothing_to_do_counts_in_the_denominator():
    t = Trace(num_ranks=2, events=[Event(0, "F", 0, 0, 0, 2)])
    assert t.utilization == pytest.approx(0.5)


def test_event_name_and_duration():
    assert Event(1, "B", 3, 0, 1.5, 2.0).name == "B3"
    assert Event(1, "F", 3, 1, 1.5, 2.0).name == "F3.1"
    assert Event(1, "F", 3, 1, 1.5, 2.0).duration == 0.5


# --------------------------------------------------------------------------- serialization

def test_dict_round_trip_through_json():
    t = one_f_one_b_by_hand()
    t.peak_stashed, t.peak_stashed_bytes, t.peak_memory_bytes = [2, 1], [2048, 1024], [10, 20]
    data = json.loads(json.dumps(trace_json.to_dict(t)))
    back = trace_json.from_dict(data)
    assert back == t
    assert isinstance(back.events[0], Event) and isinstance(back.waits[0], Wait)
    assert trace_json.from_dict(trace_json.to_dict(Trace(num_ranks=1))) == Trace(num_ranks=1)


# --------------------------------------------------------------------------- Chrome trace

def test_chrome_trace_one_complete_event_per_action():
    t = one_f_one_b_by_hand()
    doc = json.loads(json.dumps(trace_mod.to_chrome_trace(t)))
    events = doc["traceEvents"]
    actions = [e for e in events if e["ph"] == "X" and e.get("cat") != "wait"]
    assert len(actions) == len(t.events)
    assert sorted((e["tid"], e["name"]) for e in actions) == sorted((e.rank, e.name) for e in t.events)
    assert {e["pid"] for e in events} == {0}
    f0_on_rank1 = next(e for e in actions if e["tid"] == 1 and e["name"] == "F0")
    assert f0_on_rank1["ts"] == pytest.approx(1e6) and f0_on_rank1["dur"] == pytest.approx(1e6)
    assert f0_on_rank1["args"]["microbatch"] == 0 and f0_on_rank1["args"]["chunk"] == 0


def test_chrome_trace_tracks_and_waits():
    t = one_f_one_b_by_hand()
    events = trace_mod.to_chrome_trace(t)["traceEvents"]
    names = {e["tid"]: e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert names == {0: "rank 0", 1: "rank 1"}
    waits = [e for e in events if e.get("cat") == "wait"]
    assert len(waits) == 3 and all(e["ph"] == "X" and e["name"].startswith("wait ") for e in waits)
    assert sorted((e["tid"], e["ts"], e["dur"]) for e in waits) == [(0, 2e6, 2e6), (0, 6e6, 1e6), (1, 0, 1e6)]


def test_chrome_trace_names_chunks(tmp_path):
    t = Trace(num_ranks=1, events=[Event(0, "F", 2, 1, 0, 1)], meta=TraceMeta(device="cpu"))
    path = trace_mod.write_chrome_trace(t, tmp_path / "t.json")
    doc = json.loads(Path(path).read_text())
    (x,) = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert x["name"] == "F2.1" and x["args"]["chunk"] == 1
    assert doc["otherData"] == asdict(TraceMeta(device="cpu"))     # every field, unsaid ones as null


# --------------------------------------------------------------------------- summary and CSV

def test_summary_by_hand(tmp_path):
    t = one_f_one_b_by_hand()
    s = trace_mod.summary(t)
    assert s["makespan"] == 9 and s["utilization"] == pytest.approx(2 / 3)
    assert s["bubble_fraction"] == pytest.approx(1 / 3)
    assert [r["busy"] for r in s["per_rank"]] == [6, 6]
    assert [r["waiting"] for r in s["per_rank"]] == [3, 1]
    assert s["peak_stashed"] == [2, 1]                 # counted from the events when not recorded
    assert s["meta"]["schedule"] == "1f1b"
    t.peak_stashed, t.peak_stashed_bytes = [5, 4], [500, 400]
    s = trace_mod.summary(t)
    assert s["peak_stashed"] == [5, 4] and s["peak_stashed_bytes"] == [500, 400]   # recorded numbers win
    back = json.loads(Path(trace_mod.write_summary_json(t, tmp_path / "s.json")).read_text())
    assert back["makespan"] == 9 and back["per_rank"][0]["waiting"] == 3


def test_summary_is_json_even_with_odd_meta():
    # a caller passing the device as an object rather than its name
    t = Trace(num_ranks=1, events=[Event(0, "F", 0, 0, 0, 1)], meta=TraceMeta(device=Path("/dev/cpu0")))
    assert json.loads(json.dumps(trace_mod.summary(t)))["meta"]["device"] == "/dev/cpu0"


def test_events_csv(tmp_path):
    t = one_f_one_b_by_hand()
    path = trace_mod.write_events_csv(t, tmp_path / "e.csv")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(t.events) + len(t.waits)
    assert sum(r["kind"] == "wait" for r in rows) == 3
    b0 = next(r for r in rows if r["rank"] == "0" and r["name"] == "B0")
    assert (float(b0["start"]), float(b0["end"]), float(b0["duration"])) == (4, 6, 2)
    assert [r["rank"] for r in rows] == sorted(r["rank"] for r in rows)


# --------------------------------------------------------------------------- meta

def test_meta_is_a_typed_record():
    meta = TraceMeta(source="measured", schedule="1f1b", num_stages=2)
    assert Trace(num_ranks=2).meta == TraceMeta() and TraceMeta().source is None
    with pytest.raises(TypeError):
        TraceMeta(colour="red")                   # a misspelt or unknown key is an error, not a new key
    with pytest.raises(TypeError):
        replace(meta, stages=4)
    with pytest.raises(TypeError):
        meta["schedule"]                          # no dict interface
    assert not hasattr(meta, "get")
    assert replace(meta, num_microbatches=8).num_microbatches == 8 and meta.num_microbatches is None


def test_meta_time_unit():
    assert TraceMeta(time_unit="ms", source="measured").unit == "ms"
    assert TraceMeta(source="measured").unit == "s"
    assert TraceMeta(source="simulated").unit == TraceMeta().unit == "cost units"
