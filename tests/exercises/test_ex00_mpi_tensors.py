"""Graded: exercise 0, tensors of any shape and dtype between MPI ranks (exercises/ex00_mpi_tensors.py).

    .venv/bin/python -m pytest tests/exercises/test_ex00_mpi_tensors.py            # your functions
    .venv/bin/python -m pytest tests/exercises/test_ex00_mpi_tensors.py --impl solutions

Your functions run on real ranks (the rank side is in rank_checks_tensors.py); the ranks start once for all the
tests of this file, and the comparisons happen here.
"""
import pytest
import torch

from tests.exercises import rank_checks_tensors as rank_checks

pytestmark = pytest.mark.mpi


def undelivered(result: dict, function: str) -> str:
    """Why messages did not come, as the receiving rank saw it: another tag came instead, or nothing (blocked)."""
    missing = "; ".join(result["missing"])
    if result.get("why") == "blocked":
        return (f"{function} blocked: {missing} within 5 s, and no message with another tag either: the sender "
                f"was still inside an earlier send, waiting for its receive (a send that must return at once "
                f"may not wait for its request)")
    return f"{function} ignored its tag: {missing}"


def assert_same_tensor(got, expected, what: str) -> None:
    if isinstance(got, dict) and "missing" in got:
        pytest.fail(f"{what}: {undelivered(got, 'the sender')}", pytrace=False)
    assert isinstance(got, torch.Tensor), f"{what}: received a {type(got).__name__}, not a tensor"
    assert got.dtype == expected.dtype, f"{what}: received dtype {got.dtype}, sent {expected.dtype}"
    assert tuple(got.shape) == tuple(expected.shape), (
        f"{what}: received shape {tuple(got.shape)}, sent {tuple(expected.shape)}")
    assert torch.equal(got, expected.detach()), f"{what}: the values differ from those sent"


@pytest.mark.points(2)
def test_send_recv_float32_matrix(on_ranks):
    """send_tensor on rank 0, recv_tensor on rank 1: the same shape, dtype and values arrive."""
    received = on_ranks("ex00.matrix")[1]
    assert_same_tensor(received, rank_checks.payloads()["float32 (3, 7)"], "float32 (3, 7)")


@pytest.mark.points(3)
def test_send_recv_any_dtype_and_shape(on_ranks):
    """Every dtype (bfloat16 and bool too), a 0-d scalar, an empty tensor, a strided view, 4 MB."""
    received = on_ranks("ex00.every_kind")[1]
    if "missing" in received:
        assert_same_tensor(received, None, "every kind of tensor")     # fails, saying which tag never came
    problems = []
    for name, expected in rank_checks.payloads().items():
        try:
            assert_same_tensor(received.get(name), expected, name)
        except AssertionError as err:
            problems.append(str(err))
    assert not problems, "\n".join(problems)


@pytest.mark.points(2)
def test_data_travels_as_raw_bytes(on_ranks):
    """The 4 MB of data go by comm.Send (a buffer), only the small (shape, dtype) is pickled."""
    sent, received = on_ranks("ex00.raw_bytes")[:2]
    nbytes = rank_checks.big().nbytes
    assert sent["buffer_bytes"] >= nbytes, (
        f"send_tensor passed {sent['buffer_bytes']} bytes to comm.Send (or another buffer send) for a tensor "
        f"of {nbytes} bytes: the data must travel as a buffer")
    assert sent["pickled_bytes"] < 10_000, (
        f"send_tensor pickled {sent['pickled_bytes']} bytes with a lowercase send: pickle only the shape "
        f"and dtype, not the data")
    assert_same_tensor(received, rank_checks.big(), "4 MB float32")


@pytest.mark.points(2)
def test_isend_irecv_match_by_tag(on_ranks):
    """Two messages in flight at once; the receiver asks for the second first, by its tag."""
    received = on_ranks("ex00.tags")[1]
    assert "missing" not in received, undelivered(received, "isend_tensor")
    assert_same_tensor(received["B"], rank_checks.big(torch.float64, seed=3), "the message with tag 7")
    assert_same_tensor(received["A"], rank_checks.big(seed=2), "the message with tag 5")


@pytest.mark.points(2)
def test_recv_takes_the_asked_source_and_tag(on_ranks):
    """Ranks 0 and 2 send rank 1 two tensors each (tags 10, 20); rank 1 asks for them in another order."""
    received = on_ranks("ex00.out_of_order")[1]
    assert "missing" not in received, undelivered(received, "send_tensor")
    for (source, tag) in rank_checks.ASKED:
        assert_same_tensor(received["received"][(source, tag)], rank_checks.SENT[(source, tag)],
                           f"rank 1's recv_tensor(source={source}, tag={tag}), asked for in another order than sent "
                           f"(receive exactly the source and tag asked for)")


@pytest.mark.points(2)
def test_irecv_takes_the_asked_source(on_ranks):
    """Ranks 0 and 2 both isend rank 1 with tag 3; rank 0's arrives first, rank 1 asks for rank 2's first."""
    received = on_ranks("ex00.sources")[1]
    assert "missing" not in received, undelivered(received, "isend_tensor")
    for source in (2, 0):
        assert_same_tensor(received[f"from rank {source}"], rank_checks.small(30 + source),
                           f"irecv_tensor(source={source}, tag=3), while both ranks' messages were there")


@pytest.mark.points(3)
def test_isend_does_not_block(on_ranks):
    """Both ranks isend 2 MB to each other before either receives: a blocking send would deadlock here."""
    results = on_ranks("ex00.exchange")
    for rank in (0, 1):
        other = 1 - rank
        assert_same_tensor(results[rank], rank_checks.big(torch.bfloat16, seed=10 + other).t().contiguous(),
                           f"what rank {rank} received (a transposed bfloat16 view sent by rank {other})")
