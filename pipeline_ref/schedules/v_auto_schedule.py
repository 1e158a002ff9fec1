"""ZB-V searched from costs under a memory limit: the Zero Bubble paper's V heuristic, as data.

Layer: schedules (pure data: the search plays its own small timeline, no simulator, no processes).

    >>> from pipeline_ref import schedules, simulate
    >>> sched = schedules.build("zbv-auto", 4, 8, forward=1.0, input_grad=1.5, weight_grad=1.0, latency=0.1)
    >>> trace = simulate.simulate(sched, forward=1.0, input_grad=1.5, weight_grad=1.0, latency=0.1)
    >>> max(trace.peak_stashed) <= 2 * 4       # 1F1B's peak: p microbatches of a whole stage
    True

The paper (Qi et al., "Zero Bubble Pipeline Parallelism", arXiv 2401.10241, section 6) gives each rank two
chunks of half a stage in a V, as the hand-made ``zbv`` does (rank r holds virtual stages r and 2p - 1 - r),
and orders their F, I (the paper's B) and W greedily from per-chunk costs under a memory limit. This is a
reading of its code: sail-sg/zero-bubble-pipeline-parallelism at commit 39f2c186,
``megatron/core/pipeline_parallel/zerobubble/scheduler/zbv.py``, ``PipelineGraph.try_v_schedule`` and
``create_schedule`` (what its runtime plays for ``--zero-bubble-v-schedule``; the same function as in
``v_schedule.py`` of its first release, tag zero-bubble-v0.1.0). Its ``v_auto_schedule.py`` is another search,
from building blocks (the later "Pipeline Parallelism with Controllable Memory"), which the runtime does not
call.

An action travels on one leg of the V: down the ranks (F of chunk 0, I of chunk 1: it waits for rank r - 1)
or up (F of chunk 1, I of chunk 0: it waits for rank r + 1); the turns are local. One play:

1. warm-up: microbatch 0 goes down the V; then, from the last rank up, while rank r waits for it to come
   back, ranks 0..r each take one more down-leg F (while rank r keeps room for 2(r + 1) more), and r its
   up-leg F;
2. each rank takes Fs, alternating legs, until it has as many as the rank before it and more up-leg ones;
3. 2m rounds: every rank's next I (up-leg where its gradient has arrived, from the last rank up, then
   down-leg), then every rank's next F (up-leg where its input has arrived, else down-leg). Before each, a
   rank runs deferred Ws while it would wait anyway, one more if the wait would make it idler than the
   idlest rank (always before an up-leg I, before a down-leg I or an F in some variants), and as many as
   it must to stay under the memory limit;
4. the remaining Ws.

A play is repeated with the previous play's idle times "approved" (a rank may idle as long as the idlest
did) while that makes the idlest rank idle less; of four variants the one whose idlest rank idles least is
kept: the paper's cost, the longest time from a rank's first F starting to its last action ending. Beyond
the paper's code, the hand-made ``zbv`` order is timed the same way and kept where it is shorter (the
heuristic misses it on some costs), so ``zbv-auto`` is never longer than ``zbv`` by that cost.

Memory is counted in chunk activations (half a stage's; ``Trace.peak_stashed`` counts these per rank): an F
adds 1, its I frees ``1 - weight_memory`` and its W the rest. The default limit, 2p, is 1F1B's peak (p
microbatches of a whole stage) and the paper's code's. With ``weight_memory = 1`` a chunk's activations are
held from its F to its W, exactly what ``peak_stashed`` counts, so ``max_in_flight`` bounds it.
"""
from __future__ import annotations

from collections import deque
from itertools import product

from pipeline_ref.schedules.auto_schedule import search_inputs
from pipeline_ref.schedules.geometry import Action, Schedule, ScheduleError
from pipeline_ref.schedules.zero_bubble import zbv

FORWARD, INPUT, WEIGHT = 0, 1, 2
DOWN, UP = 0, 1                     # the legs of the V
CHAIN = ((FORWARD, DOWN), (FORWARD, UP), (INPUT, DOWN), (INPUT, UP))   # one microbatch, in order, on a rank


def chunk_of(kind: int, leg: int) -> int:
    """The chunk an action on ``leg`` runs: F goes down in chunk 0; I goes down in chunk 1 (the loss's)."""
    return leg if kind == FORWARD else 1 - leg


class _VPlay:
    """One play of the heuristic: per rank, the order of its actions, when each ends, and its idle time."""

    def __init__(self, p, m, costs, comm, memory, limit, approved=None):
        self.p, self.m, self.costs, self.comm, self.memory, self.limit = p, m, costs, comm, memory, limit
        self.approved = approved or [0.0] * p
        self.count = [[[0] * p for _ in (DOWN, UP)] for _ in range(3)]          # count[kind][leg][rank]
        self.done = [[[[None] * m for _ in range(p)] for _ in (DOWN, UP)] for _ in (FORWARD, INPUT)]
        self.end = [0.0] * p                         # when each rank is next free
        self.held = [0.0] * p                        # memory each rank holds
        self.bubble = [0.0] * p                      # idle time each rank has let in since its first F
        self.pending: list[deque] = [deque() for _ in range(p)]     # legs of the Is whose W is deferred
        self.order: list[list[Action]] = [[] for _ in range(p)]

    def placed(self, kind: int, leg: int, rank: int, i: int) -> bool:
        return i < self.m and self.done[kind][leg][rank][i] is not None

    def inputs_placed(self, rank: int, kind: int, leg: int, i: int) -> bool:
        """Whether the i-th (kind, leg) action of ``rank`` has its inputs placed: the step before it on this
        rank (F down, F up, I down, I up, for one microbatch) and its neighbour's; for a W, its I."""
        if kind == WEIGHT:
            return self.count[INPUT][leg][rank] > i
        step, source = CHAIN.index((kind, leg)), rank - 1 if leg == DOWN else rank + 1
        return ((not step or self.placed(*CHAIN[step - 1], rank, i))
                and (not 0 <= source < self.p or self.placed(kind, leg, source, i)))

    def arrival(self, kind: int, leg: int, rank: int, i: int) -> float | None:
        """When the input of the i-th (kind, leg) action of ``rank`` arrives from its neighbour; None for a
        local one, or if the neighbour has not placed it yet."""
        source = rank - 1 if leg == DOWN else rank + 1
        if not 0 <= source < self.p or not self.placed(kind, leg, source, i):
            return None
        return self.done[kind][leg][source][i] + self.comm

    def put(self, rank: int, kind: int, leg: int) -> None:
        i, cost = self.count[kind][leg][rank], self.costs[kind][rank]
        if i >= self.m:
            raise ScheduleError(f"rank {rank} has no microbatch left for another {'FIW'[kind]}")
        if self.held[rank] + self.memory[kind] > self.limit + 1e-9:
            raise ScheduleError(f"rank {rank} cannot fit its next {'FIW'[kind]} under {self.limit} "
                                f"chunk activations")
        finish = self.end[rank] + cost               # (sums in the paper's order, so ties break as there)
        if not self.inputs_placed(rank, kind, leg, i):
            raise ScheduleError(f"rank {rank}: {'FIW'[kind]}{i}.{chunk_of(kind, leg)} comes before its input")
        if kind != WEIGHT:
            arrival = self.arrival(kind, leg, rank, i)
            finish = finish if arrival is None else max(finish, arrival + cost)
            self.done[kind][leg][rank][i] = finish
        if self.count[FORWARD][DOWN][rank] > 0:
            self.bubble[rank] += finish - (self.end[rank] + cost)
        self.end[rank] = finish
        self.held[rank] += self.memory[kind]
        self.order[rank].append(Action("FIW"[kind], i, chunk_of(kind, leg)))
        if kind == INPUT:
            self.pending[rank].append(leg)
        self.count[kind][leg][rank] += 1

    def put_weight(self, rank: int) -> None:
        """The oldest deferred W of ``rank``."""
        if not self.pending[rank]:
            raise ScheduleError(f"rank {rank} has no deferred W left to free memory with")
        self.put(rank, WEIGHT, self.pending[rank].popleft())

    def allowance(self, rank: int) -> float:
        """How much longer ``rank`` may idle before it is the idlest (by this play or the approved one)."""
        worst = max(max(self.bubble), max(self.approved) - self.approved[rank])
        return worst - self.bubble[rank]

    def fill_wait(self, rank: int, kind: int, leg: int, one_more: bool) -> None:
        """Ws while ``rank`` would wait for its next (kind, leg) input anyway; one more if ``one_more`` and
        the wait would make it idler than allowed."""
        arrival = self.arrival(kind, leg, rank, self.count[kind][leg][rank])
        if arrival is None:
            return
        while self.pending[rank] and arrival >= self.end[rank] + self.costs[WEIGHT][rank]:
            self.put_weight(rank)
        if self.pending[rank] and one_more and arrival - self.end[rank] > self.allowance(rank):
            self.put_weight(rank)

    def make_room(self, rank: int, kind: int) -> None:
        while self.held[rank] + self.memory[kind] > self.limit + 1e-9:
            self.put_weight(rank)

    def warm_up(self) -> None:
        p, count = self.p, self.count[FORWARD]
        for rank in range(p):
            self.put(rank, FORWARD, DOWN)
        self.put(p - 1, FORWARD, UP)                 # the turn of the V: the last rank goes on at once
        for rank in range(p - 2, -1, -1):
            back = self.done[FORWARD][UP][rank + 1][0] + self.comm      # microbatch 0 comes back up
            while (self.held[rank] + self.memory[FORWARD] * (2 + 2 * rank) <= self.limit + 1e-9
                   and self.end[rank] + self.costs[FORWARD][rank] <= back and count[DOWN][rank] < self.m):
                for other in range(rank + 1):
                    self.put(other, FORWARD, DOWN)
            self.put(rank, FORWARD, UP)

    def catch_up(self) -> None:
        """Each rank, from the second on, as many forwards as the rank before it, and more up-leg ones."""
        count, leg, m = self.count[FORWARD], DOWN, self.m
        for rank in range(1, self.p):
            while (count[DOWN][rank] + count[UP][rank] < count[DOWN][rank - 1] + count[UP][rank - 1]
                   or count[UP][rank] <= count[UP][rank - 1] < m):
                for other in range(self.p - 1, rank - 1, -1):
                    if count[leg][other] < m:
                        self.put(other, FORWARD, leg)
                leg = 1 - leg

    def backward_round(self, fill_down: bool) -> None:
        p, count = self.p, self.count[INPUT]
        for rank in range(p):
            self.make_room(rank, INPUT)
        up, down = [], []
        for rank in range(p):
            if count[UP][rank] >= count[DOWN][rank]:
                down.append(rank)
            elif (rank == p - 1 or self.placed(INPUT, UP, rank + 1, count[UP][rank])
                  or count[DOWN][rank] >= self.m):
                up.append(rank)
            else:
                down.append(rank)
        for rank, leg in [(rank, UP) for rank in reversed(up)] + [(rank, DOWN) for rank in down]:
            self.fill_wait(rank, INPUT, leg, one_more=leg == UP or fill_down)
            self.put(rank, INPUT, leg)

    def forward_round(self, fill_forward: bool) -> None:
        p, m, count = self.p, self.m, self.count[FORWARD]
        for rank in range(p):
            if count[UP][rank] >= m:
                continue
            if count[UP][rank] >= count[DOWN][rank]:
                leg = DOWN
            elif rank == p - 1 or self.placed(FORWARD, UP, rank + 1, count[UP][rank]):
                leg = UP
            elif count[DOWN][rank] < m and (rank == 0
                                            or self.placed(FORWARD, DOWN, rank - 1, count[DOWN][rank])):
                leg = DOWN
            else:
                continue
            self.make_room(rank, FORWARD)
            self.fill_wait(rank, FORWARD, leg, one_more=fill_forward)
            self.put(rank, FORWARD, leg)

    def play(self, fill_down: bool, fill_forward: bool) -> "_VPlay":
        self.warm_up()
        self.catch_up()
        for _ in range(2 * self.m):
            self.backward_round(fill_down)
            self.forward_round(fill_forward)
        for rank in range(self.p):
            while self.pending[rank]:
                self.put_weight(rank)
        return self

    @property
    def idlest(self) -> float:
        return max(self.bubble)

    def longest_rank(self) -> float:
        """The paper's cost: the longest time from a rank's first F starting to its last action ending."""
        first = [self.done[FORWARD][DOWN][r][0] - self.costs[FORWARD][r] for r in range(self.p)]
        return max(end - start for end, start in zip(self.end, first))


def _replayed(p, m, costs, comm, memory, limit, fill_down, fill_forward) -> _VPlay:
    """A play, then plays that approve the previous one's idle times, while the idlest rank idles less."""
    best = _VPlay(p, m, costs, comm, memory, limit).play(fill_down, fill_forward)
    while True:
        try:
            again = _VPlay(p, m, costs, comm, memory, limit, best.bubble).play(fill_down, fill_forward)
        except ScheduleError:
            return best
        if not again.idlest < best.idlest:
            return best
        best = again


def _timed(schedule, p, m, costs, comm, memory, limit) -> _VPlay:
    """A given order (the hand-made ZB-V) played on the same timeline, under the same memory limit."""
    run, position, moved = _VPlay(p, m, costs, comm, memory, limit), [0] * p, True
    while moved:
        moved = False
        for rank, actions in enumerate(schedule):
            while position[rank] < len(actions):
                kind, (_, i, chunk) = "FIW".index(actions[position[rank]].op), actions[position[rank]]
                leg = chunk if kind == FORWARD else 1 - chunk
                if run.count[kind][leg][rank] != i or not run.inputs_placed(rank, kind, leg, i):
                    break
                run.put(rank, kind, leg)
                position[rank], moved = position[rank] + 1, True
    if position != [len(actions) for actions in schedule]:
        raise ScheduleError("the hand-made ZB-V order does not play")     # never: zbv is validated
    return run


def play(num_stages: int, num_microbatches: int, max_in_flight: float | None = None, forward=1.0,
         input_grad=1.0, weight_grad=1.0, latency: float = 0.0,
         weight_memory: float = 1.0) -> tuple[Schedule, float]:
    """(schedule, its longest rank): the best of the heuristic's four variants. Costs are per chunk (half a
    stage): one number, or one per rank; ``max_in_flight`` is in chunk activations (default 2p)."""
    p, m = num_stages, num_microbatches
    limit = 2 * p if max_in_flight is None else max_in_flight
    if not limit >= 2:
        raise ScheduleError(f"max_in_flight must be at least 2 chunk activations (one microbatch on both "
                            f"chunks), got {max_in_flight!r}")
    costs, memory = search_inputs(p, forward, input_grad, weight_grad, latency, weight_memory)
    best, refusals = None, []
    for fill_down, fill_forward in product((True, False), repeat=2):
        try:
            run = _replayed(p, m, costs, float(latency), memory, float(limit), fill_down, fill_forward)
        except ScheduleError as refused:
            refusals.append(str(refused))
            continue
        if best is None or run.idlest < best.idlest:
            best = run
    try:                    # the hand-made order where it is shorter: the heuristic does not always find it
        hand = _timed(zbv(p, m), p, m, costs, float(latency), memory, float(limit))
        best = hand if best is None or hand.idlest < best.idlest else best
    except ScheduleError as refused:
        refusals.append(str(refused))
    if best is None:
        raise ScheduleError(f"no ZB-V schedule of {p} ranks and {m} microbatches fits "
                            f"max_in_flight={limit}: " + refusals[0])
    return Schedule(best.order, layout="v"), best.longest_rank()


def zbv_auto(num_stages: int, num_microbatches: int, max_in_flight: float | None = None, forward=1.0,
             input_grad=1.0, weight_grad=1.0, latency: float = 0.0, weight_memory: float = 1.0) -> Schedule:
    """The searched ZB-V schedule; ``max_in_flight`` (chunk activations per rank) defaults to 2p, 1F1B's."""
    return play(num_stages, num_microbatches, max_in_flight, forward, input_grad, weight_grad, latency,
                weight_memory)[0]
