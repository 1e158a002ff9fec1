"""The simulator's inner loop: when each action of a compiled schedule starts, given its costs.

Layer: sim (no processes). ``simulate.simulate`` is the interface; this module is its engine, kept
apart so that the loop can be read (and timed: ``benchmarks/simulator_speed.py``) on its own.

An action starts when its rank is free and the message it needs has arrived (its producer's end plus
the message's latency). A rank runs until it needs a message not yet sent and then waits on it (each
message has exactly one reader); sending that message puts the rank back on the stack. So every action
is looked at once, where the validator's sweep (``replay.sweep``) revisits every blocked rank on
every pass; the times are the same, since an action's start depends only on its rank's previous action
and on its message, never on the order the ranks are looked at in.

Overlapped pairs (DualPipe's F&B): the forward of a pair costs nothing and sends nothing, the backward
after it costs the pair and, through one more row of cost 0 right after it, sends the forward's message
at the pair's end. ``play`` takes those rows out of what it returns.
"""
from __future__ import annotations

from itertools import chain

import numpy as np

from pipeline_ref.schedules.replay import Plan


def rows_of(plan: Plan, costs: list[np.ndarray], latencies: list[np.ndarray], pairs: dict) -> list:
    """Per rank, an iterator over (needed, latency, cost, made), one per action, with the pairs' extra rows.

    ``needed`` -1 becomes a message that has always arrived, ``made`` -1 one that nobody reads, so the
    loop needs no test for either. ``pairs``: {(rank, F's index): the pair's cost}.
    """
    always, nobody = plan.num_messages, plan.num_messages + 1
    rows = []
    for rank, (needs, makes) in enumerate(zip(plan.needs, plan.makes)):
        needs = np.where(needs < 0, always, needs).tolist()
        makes = np.where(makes < 0, nobody, makes).tolist()
        row = zip(needs, latencies[rank].tolist(), costs[rank].tolist(), makes)
        mine = sorted(index for r, index in pairs if r == rank)
        if not mine:
            rows.append(row)
            continue
        row = list(row)
        for index in reversed(mine):               # from the end, so earlier indices stay put
            needed, latency, _, made = row[index]
            row[index] = (needed, latency, 0.0, nobody)
            row.insert(index + 2, (always, 0.0, 0.0, made))
            after = row[index + 1]
            row[index + 1] = (after[0], after[1], pairs[rank, index], after[3])
        rows.append(iter(row))
    return rows


def play(plan: Plan, rows: list, pairs: dict) -> tuple[list[int], list[list[float]], list[list]]:
    """(position, starts, waits): per rank, how many actions it played, when each started, and its waits.

    ``waits[rank]``: (from, until) of each receive the rank sat blocked on, in order; the action it
    preceded is the first of the rank's to start at or after ``until`` (before any pair is split).
    """
    always = plan.num_messages
    ended: list[float | None] = [None] * (plan.num_messages + 2)   # when each message left; None: not yet
    ended[always] = float("-inf")
    blocked = bytearray(plan.num_messages + 2)     # its reader waits on this message
    reader = np.zeros(plan.num_messages + 2, np.int64)
    for rank, needs in enumerate(plan.needs):      # each message has one reader
        reader[needs[needs >= 0]] = rank
    readers = reader.tolist()
    free = [0.0] * len(rows)
    starts: list[list[float]] = [[] for _ in rows]
    waits: list[list] = [[] for _ in rows]
    actions = rows                                 # iterators: each rank's place, kept across its runs
    pending: list[tuple | None] = [None] * len(rows)   # the action a rank stopped at
    pushes, waiters = [s.append for s in starts], [w.append for w in waits]
    runnable = list(range(len(rows) - 1, -1, -1))
    wake = runnable.append
    while runnable:
        rank = runnable.pop()
        now, push, wait = free[rank], pushes[rank], waiters[rank]
        resumed, pending[rank] = pending[rank], None   # woken by the message it stopped for: play it first
        for needed, latency, cost, made in (chain((resumed,), actions[rank]) if resumed else actions[rank]):
            arrival = ended[needed]
            if arrival is None:
                blocked[needed] = 1
                pending[rank] = (needed, latency, cost, made)
                break
            arrival += latency
            if arrival > now:
                wait((now, arrival))
                now = arrival
            push(now)
            now += cost
            ended[made] = now
            if blocked[made]:
                wake(readers[made])
        free[rank] = now
    for rank in {rank for rank, _ in pairs}:       # take the pairs' extra rows back out
        for k, index in reversed(list(enumerate(sorted(i for r, i in pairs if r == rank)))):
            if len(starts[rank]) > index + 2 + k:
                del starts[rank][index + 2 + k]
    return [len(s) for s in starts], starts, waits
