"""The pipeline's geometry (pipeline_ref.schedules.geometry) and the shape of the package around it. Pure, milliseconds."""
import copy
import pickle

import pytest

from pipeline_ref import schedules
from pipeline_ref.schedules.geometry import (LAYOUTS, Action, Message, Op, Pipeline, Place, Schedule,
                                             ScheduleError)



def test_dependency_follows_the_pipeline():
    pipe = Pipeline(3)
    assert pipe.dependency(Action("F", 4), 0) is None                      # first stage reads the input
    assert pipe.dependency(Action("F", 4), 2) == (1, Action("F", 4))
    assert pipe.dependency(Action("B", 4), 2) is None                      # last stage owns the loss
    assert pipe.dependency(Action("B", 4), 0) == (1, Action("B", 4))
    assert pipe.dependency(Action("I", 4), 1) == (2, Action("B", 4))
    assert pipe.dependency(Action("W", 4), 1) is None                      # local: needs only its own I


def test_receives_and_sends_are_the_two_neighbours():
    pipe = Pipeline(3)
    assert pipe.receives(Action("F", 0), 1) == Place(0, 0) and pipe.sends(Action("F", 0), 1) == Place(2, 0)
    assert pipe.receives(Action("B", 0), 1) == Place(2, 0) and pipe.sends(Action("B", 0), 1) == Place(0, 0)
    assert pipe.sends(Action("F", 0), 2) is None and pipe.sends(Action("I", 0), 0) is None
    assert pipe.sends(Action("W", 0), 1) is None and pipe.receives(Action("W", 0), 1) is None
    assert pipe.loss_rank == 2 and pipe.is_first(0) and pipe.is_last(2) and not pipe.is_last(1)


def test_dependency_across_chunks():
    # 2 ranks x 2 chunks: rank 0 chunk 1 is virtual stage 2, fed by rank 1 chunk 0 (virtual stage 1)
    pipe = Pipeline(2, 2)
    assert pipe.dependency(Action("F", 0, 1), 0) == (1, Action("F", 0, 0))
    assert pipe.dependency(Action("B", 0, 0), 1) == (0, Action("B", 0, 1))
    assert pipe.dependency(Action("B", 0, 1), 1) is None                   # virtual stage 3 is last
    assert pipe.sends(Action("F", 0, 0), 1) == Place(0, 1)                 # round the ranks again
    assert pipe.loss_rank == 1


@pytest.mark.parametrize("layout", LAYOUTS)
def test_virtual_stage_and_place_are_inverse(layout):
    for num_stages in range(1, 5):
        pipe = Pipeline(num_stages, 3, layout)
        seen = set()
        for rank in range(num_stages):
            for chunk in range(3):
                v = pipe.virtual_stage(rank, chunk)
                assert pipe.place(v) == (rank, chunk)
                seen.add(v)
        assert seen == set(range(3 * num_stages))


def test_v_layout_goes_down_and_back_up():
    # 3 ranks x 2 chunks in a V: rank 0 holds stages 0 and 5, rank 2 holds the neighbours 2 and 3
    pipe = Pipeline(3, 2, "v")
    assert [[pipe.virtual_stage(r, c) for c in (0, 1)] for r in range(3)] == [[0, 5], [1, 4], [2, 3]]
    assert pipe.dependency(Action("F", 0, 1), 2) == (2, Action("F", 0, 0))   # same rank
    assert pipe.dependency(Action("F", 0, 1), 1) == (2, Action("F", 0, 1))
    assert pipe.dependency(Action("I", 0, 1), 0) is None                     # stage 5 is last
    assert pipe.dependency(Action("I", 0, 0), 0) == (1, Action("B", 0, 0))
    assert pipe.loss_rank == 0


def test_unknown_layout_is_refused():
    with pytest.raises(ScheduleError, match="unknown layout 'w'"):
        Pipeline(2, 2, "w")


def test_schedule_is_immutable_and_keeps_its_layout_when_sliced_copied_or_pickled():
    sched = schedules.build("zbv", 3, 5)
    assert isinstance(sched, Schedule) and sched.layout == "v"
    for other in (sched[:2], copy.copy(sched), copy.deepcopy(sched), pickle.loads(pickle.dumps(sched))):
        assert other.layout == "v"
    assert sched[:2].pipeline == Pipeline(2, 2, "v")
    with pytest.raises(TypeError):
        sched[0] = ()
    with pytest.raises(AttributeError):
        sched[0].append(Action("F", 0))
    # the same actions laid out otherwise are another schedule; a plain list of lists compares by its actions
    assert sched != Schedule(sched, "interleaved") and sched == [list(actions) for actions in sched]


def test_every_generator_returns_a_schedule():
    for name in schedules.GENERATORS:
        sched = schedules.build(name, 2, 4)
        assert isinstance(sched, Schedule), name
        chunks = {a.chunk for actions in sched for a in actions}
        assert sched.pipeline.num_chunks == len(chunks) == (2 if name in ("interleaved", "zbv", "zbv-auto", "dualpipev") else 1)


def test_an_actions_messages_come_from_the_geometry_and_its_op_says_what_they_carry():
    pipe = Pipeline(num_stages=2, num_chunks=2)         # chunk c of rank r is virtual stage 2c + r
    incoming, outgoing = pipe.messages(Action("F", 3, 1), rank=0)       # virtual stage 2: from 1, on to 3
    assert incoming == Message(Place(1, 0), "activation", 3, 1)
    assert outgoing == Message(Place(1, 1), "activation", 3, 1)         # addressed to the receiver's chunk
    incoming, outgoing = pipe.messages(Action("I", 0, 0), rank=1)       # virtual stage 1: from 2, back to 0
    assert incoming == Message(Place(0, 1), "gradient", 0, 0) and outgoing == Message(Place(0, 0), "gradient", 0, 0)
    assert pipe.messages(Action("W", 0, 0), rank=1) == (None, None)
    assert pipe.messages(Action("F", 0, 0), rank=0)[0] is None and pipe.messages(Action("B", 0, 0), 0)[1] is None
    assert [op.frees for op in Op] == [(), (Op.F,), (), (Op.F, Op.I)]
    assert [op.ends_backward for op in Op] == [False, True, False, True]
    assert Op.I.result == Op.B == "B" and f"{Op.W}" == str(Op.W) == "W"
