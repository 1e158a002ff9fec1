"""Unit tests of pipeline_ref.schedules: the generators, the validator, dependencies. Pure, milliseconds."""
import pytest

from pipeline_ref import schedules
from pipeline_ref.schedules import Action, ScheduleError


def acts(text: str) -> list:
    """'F0 B0 F1.1' -> [Action('F', 0), Action('B', 0), Action('F', 1, 1)]: schedules written like the papers."""
    out = []
    for word in text.split():
        number, _, chunk = word[1:].partition(".")
        out.append(Action(word[0], int(number), int(chunk or 0)))
    return out


# --------------------------------------------------------------------------- generators

@pytest.mark.parametrize("name", ["naive", "gpipe", "1f1b"])
def test_every_generator_is_valid_and_complete(name):
    for num_stages in range(1, 7):
        for num_microbatches in range(1, 11):
            sched = schedules.build(name, num_stages, num_microbatches)
            assert len(sched) == num_stages
            schedules.validate(sched)
            schedules.validate(sched, num_microbatches=num_microbatches)
            for actions in sched:
                # each microbatch exactly once forward and once backward, nothing else
                assert sorted(actions) == sorted(acts(" ".join(f"F{i} B{i}" for i in range(num_microbatches))))


def test_naive_by_hand():
    assert schedules.build("naive", 2, 2) == [acts("F0 B0 F1 B1"), acts("F0 B0 F1 B1")]


def test_gpipe_by_hand():
    assert schedules.build("gpipe", 3, 2) == [acts("F0 F1 B0 B1")] * 3


@pytest.mark.parametrize("num_stages, num_microbatches, expected", [
    (2, 3, ["F0 F1 B0 F2 B1 B2",
            "F0 B0 F1 B1 F2 B2"]),
    (3, 4, ["F0 F1 F2 B0 F3 B1 B2 B3",
            "F0 F1 B0 F2 B1 F3 B2 B3",
            "F0 B0 F1 B1 F2 B2 F3 B3"]),
    # fewer microbatches than warmup slots: warmup is capped, no steady state on the first ranks
    (4, 2, ["F0 F1 B0 B1",
            "F0 F1 B0 B1",
            "F0 F1 B0 B1",
            "F0 B0 F1 B1"]),
    (1, 3, ["F0 B0 F1 B1 F2 B2"]),
])
def test_1f1b_by_hand(num_stages, num_microbatches, expected):
    assert schedules.build("1f1b", num_stages, num_microbatches) == [acts(line) for line in expected]


def test_1f1b_stash_bound_from_the_action_order():
    for num_stages in range(1, 7):
        for num_microbatches in range(1, 11):
            for stage, actions in enumerate(schedules.build("1f1b", num_stages, num_microbatches)):
                held = peak = 0
                for a in actions:
                    held += 1 if a.op == "F" else -1
                    peak = max(peak, held)
                assert peak == min(num_stages - stage, num_microbatches)


def test_str_and_describe():
    assert str(Action("F", 3)) == "F3" and str(Action("B", 2, 1)) == "B2.1"
    table = schedules.describe(schedules.build("1f1b", 2, 3))
    assert table.splitlines()[0].split() == ["rank", "0:", "F0", "F1", "B0", "F2", "B1", "B2"]
    assert table.splitlines()[1].startswith("rank 1:")


@pytest.mark.parametrize("name", ["pipedream-3bw", "", "GPipe"])
def test_build_rejects_unknown_names(name):
    with pytest.raises(ScheduleError, match="unknown schedule") as info:
        schedules.build(name, 2, 2)
    assert "1f1b" in str(info.value) and "gpipe" in str(info.value)


@pytest.mark.parametrize("num_stages, num_microbatches, bad", [
    (0, 4, "num_stages"), (-1, 4, "num_stages"), (2.0, 4, "num_stages"),
    (2, 0, "num_microbatches"), (2, -3, "num_microbatches"), (2, "4", "num_microbatches")])
def test_build_rejects_non_positive_counts(num_stages, num_microbatches, bad):
    with pytest.raises(ScheduleError, match=bad):
        schedules.build("gpipe", num_stages, num_microbatches)


def test_a_schedule_error_reaches_whoever_catches_value_errors():
    with pytest.raises(ValueError, match="num_stages"):
        schedules.build("1f1b", 0, 4)
    with pytest.raises(ValueError, match="unknown schedule"):
        schedules.build("2f2b", 2, 4)


# --------------------------------------------------------------------------- validator: one rank's list

@pytest.mark.parametrize("schedule, rank, action, reason", [
    ([acts("B0 F0")], 0, "B0", "before its forward"),
    ([acts("F0 B0 F1 B1"), acts("F0 B1 F1 B0")], 1, "B1", "before its forward"),
    ([acts("F0 F0 B0")], 0, "F0", "runs twice"),
    ([acts("F0 B0 B0")], 0, "B0", "runs twice"),
    ([acts("F0 I0 B0")], 0, "B0", "mixes B"),
    ([acts("F0 W0 I0")], 0, "W0", "before its input gradient"),
    ([[Action("X", 0)]], 0, "X0", "unknown op"),
    ([[Action("F", -1)]], 0, "F-1", "non-negative"),
])
def test_broken_rank_lists_are_rejected_with_rank_action_and_reason(schedule, rank, action, reason):
    with pytest.raises(ScheduleError) as info:
        schedules.validate(schedule)
    message = str(info.value)
    assert f"rank {rank}" in message and action in message and reason in message


def test_missing_microbatch_is_named():
    with pytest.raises(ScheduleError, match=r"rank 1: never runs the forward F1"):
        schedules.validate([acts("F0 B0 F1 B1"), acts("F0 B0")])
    # asked for 3 microbatches, the schedule only has 2
    with pytest.raises(ScheduleError, match=r"rank 0: never runs the forward F2"):
        schedules.validate(schedules.build("gpipe", 2, 2), num_microbatches=3)


def test_missing_backward_is_named():
    with pytest.raises(ScheduleError, match=r"rank 0: never completes the backward of 0"):
        schedules.validate([acts("F0")])
    with pytest.raises(ScheduleError, match=r"rank 0: never completes the backward of 0"):
        schedules.validate([acts("F0 I0")])          # a split backward needs its W as well


@pytest.mark.parametrize("schedule", [[], None, "F0 B0"])
def test_not_a_schedule(schedule):
    with pytest.raises(ScheduleError):
        schedules.validate(schedule)


def test_plain_tuples_are_not_actions():
    with pytest.raises(ScheduleError, match="rank 0.*not an Action"):
        schedules.validate([[("F", 0), ("B", 0)]])


# --------------------------------------------------------------------------- validator: deadlocks

def test_cross_rank_deadlock_names_both_ranks():
    with pytest.raises(ScheduleError) as info:
        schedules.validate([acts("F0 B0 F1 B1"), acts("F1 B1 F0 B0")])
    message = str(info.value)
    assert "deadlock" in message
    # rank 0 waits at B0 for rank 1's gradient; rank 1 waits at F1 for rank 0's activation
    assert "rank 0 waits at B0" in message and "from rank 1" in message
    assert "rank 1 waits at F1" in message and "from rank 0" in message


def test_three_rank_deadlock_reaches_the_last_rank():
    # rank 0 wants B0 back before sending F1; rank 1 wants F1 before sending B0; rank 2 starves behind them
    with pytest.raises(ScheduleError, match="deadlock") as info:
        schedules.validate([acts("F0 B0 F1 B1"), acts("F0 F1 B0 B1"), acts("F0 B0 F1 B1")])
    message = str(info.value)
    assert "rank 0 waits at B0" in message and "rank 1 waits at F1" in message
    assert "rank 2 waits at F1 for F1 from rank 1" in message


def test_receives_are_not_ordered():
    # Receives are posted ahead, so rank 2 may take microbatch 1 before 0: no deadlock, just another order.
    schedules.validate([acts("F0 F1 B0 B1"), acts("F0 F1 B1 B0"), acts("F1 B1 F0 B0")])


def test_interleaved_virtual_stages_are_followed():
    # two ranks, two chunks: virtual stages 0 (r0 c0), 1 (r1 c0), 2 (r0 c1), 3 (r1 c1)
    good = [acts("F0 F0.1 B0.1 B0"), acts("F0 F0.1 B0.1 B0")]
    schedules.validate(good)
    # rank 0 starting with chunk 1 waits for rank 1's chunk 0, which waits for rank 0's chunk 0
    with pytest.raises(ScheduleError, match="deadlock"):
        schedules.validate([acts("F0.1 F0 B0.1 B0"), acts("F0 F0.1 B0.1 B0")])


def test_split_backward_is_valid():
    schedules.validate([acts("F0 F1 I0 I1 W0 W1"), acts("F0 I0 F1 I1 W1 W0")])


def test_a_schedule_keeps_its_layout():
    # the same lists under the interleaved layout would mean another pipeline: the layout travels with them
    v = schedules.Schedule([acts("F0 F0.1 I0.1 I0 W0.1 W0")], layout="v")
    schedules.validate(v)
    with pytest.raises(ScheduleError, match=r"unknown layout 'w'; choose one of interleaved, v"):
        schedules.validate(schedules.Schedule([acts("F0 B0")], layout="w"))


def test_counts():
    sched = [acts("F0 F1.1 B1.1 B0")]
    assert schedules.num_chunks(sched) == 2
    assert schedules.Schedule.of(sched).num_microbatches == 2
    assert schedules.Schedule.of([[]]).num_microbatches == 0


def test_microbatch_beyond_the_declared_count_is_refused():
    with pytest.raises(ScheduleError, match=r"rank 0, action F2: microbatch 2 is out of range \(the step has 2"):
        schedules.validate(schedules.build("gpipe", 1, 3), num_microbatches=2)


def test_booleans_are_not_counts():
    with pytest.raises(ScheduleError, match="num_stages must be a positive integer"):
        schedules.build("gpipe", True, 2)
