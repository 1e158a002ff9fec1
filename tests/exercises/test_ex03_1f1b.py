"""Graded: exercise 3, the 1F1B schedule as data and the executor that plays it (exercises/ex03_1f1b.py).

    .venv/bin/python -m pytest tests/exercises/test_ex03_1f1b.py                   # your functions
    .venv/bin/python -m pytest tests/exercises/test_ex03_1f1b.py --impl solutions

Your schedule goes through pipeline_ref's validator, its simulator (GPipe's utilization, but stage s
stashes at most min(p - s, m) microbatches), and its executor on 2 and 3 real MPI ranks (gradients must
equal one device's, and the measured stash must match).

Your run_actions plays naive, GPipe and 1F1B on 2 and 3 real MPI ranks (rank side:
rank_checks_pipeline.py) with synchronous sends: the gradients of every rank's layers must equal the
unsplit model's, the actions must be computed in the order given, every send must have completed
when it returns, and every send and receive it posts (recorded on the communicator it gets) must follow the
docstring's rule: the neighbour and the tag, and no rank outside the communicator. An order that deadlocks is stopped after STALL_SECONDS (conftest.py) by the watchdog,
whose message names the blocked rank and the action it could not get past.
"""
import pytest
import torch

from pipeline_ref import models, schedules, simulate
from pipeline_ref.preflight import build_model
from tests.exercises import rank_checks_pipeline as checks

GRID = [(p, m) for p in (1, 2, 3, 4, 5) for m in (1, 2, 3, 4, 5, 8)]


@pytest.fixture
def ex(impl):
    return impl("ex03_1f1b")


def peak_stash(actions) -> int:
    """Most microbatches that ran their forward and not yet their backward, walking one stage's list."""
    held = peak = 0
    for a in actions:
        held += 1 if a.op == "F" else -1
        peak = max(peak, held)
    return peak


@pytest.mark.points(2)
def test_warmup_forwards(ex):
    assert [ex.warmup_forwards(3, s, 5) for s in range(3)] == [2, 1, 0]
    assert [ex.warmup_forwards(4, s, 8) for s in range(4)] == [3, 2, 1, 0]
    assert [ex.warmup_forwards(4, s, 2) for s in range(4)] == [2, 2, 1, 0], "never more than the microbatches"
    assert ex.warmup_forwards(1, 0, 3) == 0


@pytest.mark.points(2)
def test_1f1b_example_table(ex):
    """The docstring's example, 3 stages and 5 microbatches, action for action."""
    expected = ["F0 F1 F2 B0 F3 B1 F4 B2 B3 B4",
                "F0 F1 B0 F2 B1 F3 B2 F4 B3 B4",
                "F0 B0 F1 B1 F2 B2 F3 B3 F4 B4"]
    got = [" ".join(map(str, actions)) for actions in ex.one_f_one_b(3, 5)]
    assert got == expected, ("one_f_one_b(3, 5) gave\n" + "\n".join(got) + "\nexpected\n" + "\n".join(expected))


@pytest.mark.points(3)
def test_1f1b_valid_and_phases(ex):
    """Valid for every size, microbatches in order, one forward / one backward after the first backward."""
    for p, m in GRID:
        sched = ex.one_f_one_b(p, m)
        schedules.validate(sched, m)
        assert len(sched) == p, f"one_f_one_b({p}, {m}) has {len(sched)} stage lists"
        for s, actions in enumerate(sched):
            where = f"one_f_one_b({p}, {m}), stage {s}: {' '.join(map(str, actions))}"
            for op in "FB":
                assert [a.microbatch for a in actions if a.op == op] == list(range(m)), f"{where}: {op} out of order"
            first_b = next(i for i, a in enumerate(actions) if a.op == "B")
            assert first_b == min(p - s, m), f"{where}: {first_b} forwards before the first backward"
            after = "".join(a.op for a in actions[first_b:])
            assert "FF" not in after, f"{where}: two forwards in a row after the warmup"
            assert peak_stash(actions) == min(p - s, m), f"{where}: holds {peak_stash(actions)} microbatches at once"


@pytest.mark.points(3)
def test_1f1b_simulated_bubble_and_memory(ex):
    """Simulated with F = 1, B = 2: GPipe's utilization m / (m + p - 1), with far fewer activations stashed."""
    for p, m in GRID:
        trace = simulate.simulate(ex.one_f_one_b(p, m), forward=1.0, backward=2.0)
        where = f"one_f_one_b({p}, {m}) simulated"
        theory, stash = simulate.theory_utilization("1f1b", p, m), simulate.theory_peak_stashed("1f1b", p, m)
        assert trace.utilization == pytest.approx(theory), (
            f"{where}: utilization {trace.utilization:.4f}, not {theory:.4f}")
        assert trace.makespan == pytest.approx(3.0 * (m + p - 1)), f"{where}: makespan {trace.makespan}, not 3(m+p-1)"
        assert trace.peak_stashed == stash, f"{where}: stashes {trace.peak_stashed} microbatches per stage, not {stash}"


@pytest.mark.mpi
@pytest.mark.points(4)
def test_1f1b_on_real_ranks_equals_one_device(on_ranks, impl_name, assert_equals_one_device):
    """Your schedule through pipeline_ref's executor on 2 and 3 ranks (synchronous sends), float64."""
    runs = checks.schedule_runs(impl_name, "ex03_1f1b:one_f_one_b", checks.ONE_F_ONE_B_CASES)
    for cfg, result in zip(runs, on_ranks("ex03.executor")[0]):
        assert_equals_one_device(cfg, result)
        expected = simulate.theory_peak_stashed("1f1b", cfg.pp, cfg.microbatches)
        assert result.trace.peak_stashed == expected, (
            f"{cfg.pp} stages, {cfg.microbatches} microbatches: measured activations stashed per stage "
            f"{result.trace.peak_stashed}, 1F1B holds {expected}")


@pytest.fixture(scope="module")
def one_device():
    """(loss, {name: grad}) of the executor checks' model, unsplit, on the whole batch."""
    layers, loss_fn, (inputs, targets) = build_model(checks.EXECUTOR_MODEL)
    return models.reference_step(layers, loss_fn, inputs, targets)


def assert_played_like_one_device(per_rank, name: str, one_device) -> None:
    loss, grads = one_device
    for p, m in checks.RUN_ACTIONS_CASES[name]:
        where = f"run_actions, {name} on {p} stages, {m} microbatches"
        results = [per_rank[rank][(p, m)] for rank in range(p)]
        for rank, result in enumerate(results):
            assert result["played"] == result["actions"], (
                f"{where}, rank {rank}: computed {' '.join(result['played'])}; the schedule says "
                f"{' '.join(result['actions'])} (play the actions in the order given, each once)")
            assert result["unfinished_sends"] == 0, (
                f"{where}, rank {rank}: returned with {result['unfinished_sends']} send(s) not completed; wait for "
                f"every send's request before returning (its buffer is in use until then)")
            assert not result["left_in_stash"], f"{where}, rank {rank}: microbatches {result['left_in_stash']} got no B"
        losses = results[-1]["losses"]
        assert len(losses) == m and sum(losses) / m == pytest.approx(loss, rel=1e-12), (
            f"{where}: the last stage's losses {losses}, whose mean should be the one-device loss {loss}")
        got = {n: g for result in results for n, g in result["grads"].items()}
        assert set(got) == set(grads), f"{where}: gradients of {sorted(got)}, expected {sorted(grads)}"
        for n, grad in grads.items():
            assert got[n] is not None, f"{where}: {n} has no gradient (its B never ran, or got no gradient)"
            torch.testing.assert_close(got[n], grad, rtol=1e-10, atol=1e-12,
                                       msg=lambda msg, n=n: f"{where}, {n}: not the one-device gradient: {msg}")


@pytest.mark.mpi
@pytest.mark.points(2)
def test_run_actions_naive(on_ranks, one_device):
    """The naive schedule (F i B i, one microbatch at a time) on 2 and 3 ranks, synchronous sends."""
    assert_played_like_one_device(on_ranks("ex03.run_naive"), "naive", one_device)


@pytest.mark.mpi
@pytest.mark.points(2)
def test_run_actions_gpipe(on_ranks, one_device):
    """GPipe (every forward, then every backward) on 2 and 3 ranks, synchronous sends."""
    assert_played_like_one_device(on_ranks("ex03.run_gpipe"), "gpipe", one_device)


@pytest.mark.mpi
@pytest.mark.points(4)
def test_run_actions_1f1b_does_not_deadlock(on_ranks, one_device):
    """1F1B on 2 and 3 ranks, synchronous sends: a rank that blocks on a send while its neighbour sends to it
    deadlocks here (the watchdog names the blocked rank and action)."""
    assert_played_like_one_device(on_ranks("ex03.run_1f1b"), "1f1b", one_device)


def documented_messages(actions: list[str], rank: int, num_stages: int) -> list[tuple[str, int, int]]:
    """The module docstring's rule: F i receives from rank - 1 and sends to rank + 1 with tag 2 i (ACTIVATION),
    B i receives from rank + 1 and sends to rank - 1 with tag 2 i + 1 (GRADIENT); no message past either end."""
    expected = []
    for action in actions:
        op, i = action[0], int(action[1:])
        if op == "F":
            expected += [("recv", rank - 1, 2 * i)] * (rank > 0) + [("send", rank + 1, 2 * i)] * (rank < num_stages - 1)
        else:
            expected += ([("recv", rank + 1, 2 * i + 1)] * (rank < num_stages - 1)
                         + [("send", rank - 1, 2 * i + 1)] * (rank > 0))
    return expected


def show(messages) -> str:
    return ", ".join(f"{kind} {'to' if kind == 'send' else 'from'} {peer} tag {tag}" for kind, peer, tag in messages)


@pytest.mark.mpi
@pytest.mark.points(2)
def test_run_actions_messages_follow_the_tag_rule(on_ranks):
    """Every send and receive your run_actions posted (recorded on the communicator you got), against the rule:
    the right neighbour, the right tag, none to or from a rank outside the communicator (MPICH would let a
    receive from rank -1 pass as MPI_PROC_NULL; Open MPI would wait for it forever)."""
    for name in ("naive", "gpipe", "1f1b"):
        per_rank = on_ranks(f"ex03.run_{name}")
        for p, m in checks.RUN_ACTIONS_CASES[name]:
            for rank in range(p):
                result = per_rank[rank][(p, m)]
                where = f"run_actions, {name} on {p} stages, {m} microbatches, rank {rank}"
                outside = [(kind, peer, tag) for kind, peer, tag in result["messages"] if not 0 <= peer < p]
                assert not outside, (f"{where}: posted {show(outside)}: a rank outside the communicator of {p} ranks "
                                     f"(0 to {p - 1}); post no message past the first or the last stage")
                expected = documented_messages(result["actions"], rank, p)
                assert sorted(result["messages"]) == sorted(expected), (
                    f"{where}: posted {show(sorted(result['messages']))}\nthe rule (2 * microbatch + ACTIVATION or "
                    f"GRADIENT, from and to the neighbours) gives {show(sorted(expected))}")
