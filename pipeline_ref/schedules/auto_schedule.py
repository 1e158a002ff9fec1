"""Zero-bubble schedules searched under a memory limit: the Zero Bubble paper's heuristic (ZB-1p, ZB-2p),
as data.

Layer: schedules (pure data: the search plays its own small timeline, no simulator, no processes).

    >>> from pipeline_ref import schedules, simulate
    >>> sched = schedules.build("zb-auto", 4, 8, max_in_flight=8, forward=1.0, input_grad=2.0)
    >>> max(simulate.simulate(sched, forward=1.0, input_grad=2.0, weight_grad=1.0).peak_stashed) <= 8
    True

Qi et al. 2023 ("Zero Bubble Pipeline Parallelism", section 3.1; their code: sail-sg/zero-bubble-pipeline-
parallelism, ``megatron/core/pipeline_parallel/zerobubble/scheduler/zb.py``, ``Graph.manual_order``) build a
schedule of F, B (our I) and W per stage greedily from profiled costs T_F, T_B, T_W, T_comm and a limit on
the activation memory of each stage:

1. the first microbatch: every stage runs its F; then, going up from the last stage, each stage takes as many
   more forwards as fit in memory and in the time until the first gradient can come back (optionally one
   more), fewer than the stage before it;
2. each further microbatch: every stage that may (optionally holding back a stage that is two forwards
   ahead of the next) runs its next F, then, from the last stage up, its next B; before each, a stage
   runs deferred Ws while it would otherwise wait for its input, or must, to stay under the memory limit;
3. the remaining Ws at the end.

Eight variants of the optional rules are played and the one whose longest stage (first F to last W) is
shortest is kept. ZB-1p is this with a limit of p microbatches per stage (1F1B's peak), ZB-2p with 2p.

Memory is counted in microbatches: a forward adds 1, its B (input gradient) frees ``1 - weight_memory``
and its W the rest. With the default ``weight_memory = 1`` a microbatch is held from its F to its W, which
is exactly what ``Trace.peak_stashed`` counts, so ``max_in_flight`` bounds it.
"""
from __future__ import annotations

from itertools import product

from pipeline_ref.schedules.geometry import Action, Schedule, ScheduleError

FORWARD, BACKWARD, WEIGHT = 0, 1, 2               # the paper's F, B, W; B is the input gradient, our I
NAMES = "FIW"


class _Greedy:
    """One play of the heuristic: per stage, the order of its actions and when each ends."""

    def __init__(self, p, m, costs, comm, memory, limit):
        self.p, self.m, self.costs, self.comm, self.memory, self.limit = p, m, costs, comm, memory, limit
        self.count = [[0] * p for _ in range(3)]     # how many F, B, W each stage has placed
        self.end = [0.0] * p                         # when each stage is next free
        self.held = [0.0] * p                        # memory each stage holds
        self.bubble = [0.0] * p                      # idle time each stage has let in since its first F
        self.done = [[[0.0] * m for _ in range(p)] for _ in range(3)]   # done[kind][stage][microbatch]
        self.order: list[list[Action]] = [[] for _ in range(p)]

    def put(self, stage: int, kind: int) -> None:
        i, cost = self.count[kind][stage], self.costs[kind][stage]
        start = self.end[stage]
        if kind == FORWARD and stage > 0:
            start = max(start, self.done[FORWARD][stage - 1][i] + self.comm)
        if kind == BACKWARD and stage < self.p - 1:
            start = max(start, self.done[BACKWARD][stage + 1][i] + self.comm)
        if self.count[FORWARD][stage] > 0:
            self.bubble[stage] += start - self.end[stage]
        self.end[stage] = self.done[kind][stage][i] = start + cost
        self.held[stage] += self.memory[kind]
        self.order[stage].append(Action(NAMES[kind], i))
        self.count[kind][stage] += 1

    def weights_left(self, stage: int) -> bool:
        return self.count[WEIGHT][stage] < self.count[BACKWARD][stage]

    def make_room(self, stage: int, kind: int) -> None:
        """Deferred Ws until the next ``kind`` fits under the memory limit."""
        while self.held[stage] + self.memory[kind] > self.limit + 1e-9:
            if not self.weights_left(stage):
                raise ScheduleError(f"stage {stage} cannot fit its next {NAMES[kind]} under {self.limit} "
                                    f"microbatches of memory")
            self.put(stage, WEIGHT)

    def fill_wait(self, stage: int, arrival: float, greedy: bool) -> None:
        """Ws while the stage would wait for its input anyway, and one more if that is the better bubble."""
        while self.weights_left(stage) and self.end[stage] + self.costs[WEIGHT][stage] <= arrival:
            self.put(stage, WEIGHT)
        if self.weights_left(stage) and self.end[stage] < arrival:
            if arrival - self.end[stage] > max(self.bubble) - self.bubble[stage] or greedy:
                self.put(stage, WEIGHT)

    def first_microbatch(self, allow_bubble: bool) -> None:
        p, m, costs, comm = self.p, self.m, self.costs, self.comm
        for stage in range(p):
            self.put(stage, FORWARD)
        extra = [0] * p
        back = self.done[FORWARD][p - 1][0] + costs[BACKWARD][p - 1]   # when the first gradient leaves
        for stage in range(p - 2, -1, -1):
            held, busy = self.held[stage], self.end[stage]
            forwards = self.count[FORWARD][stage]
            while forwards + extra[stage] < m and held + self.memory[FORWARD] <= self.limit + 1e-9:
                if (busy + costs[FORWARD][stage] > back + comm) if allow_bubble else (busy >= back + comm):
                    break
                held, busy = held + self.memory[FORWARD], busy + costs[FORWARD][stage]
                extra[stage] += 1
            back = max(busy, back + comm) + costs[BACKWARD][stage]
        for stage in range(1, p):                    # fewer than the stage before, while microbatches remain
            forwards = self.count[FORWARD][stage]
            while extra[stage] > 0 and extra[stage] >= extra[stage - 1] and forwards + extra[stage] < m:
                extra[stage] -= 1
        for stage in range(p):
            for _ in range(extra[stage]):
                self.put(stage, FORWARD)
        for stage in range(p - 1, -1, -1):
            self.put(stage, BACKWARD)

    def wants_forward(self, stage: int, prioritize_b: bool) -> bool:
        """Whether ``stage`` runs its next F now (the paper's rule for holding one back)."""
        count, costs, end = self.count, self.costs, self.end
        if count[FORWARD][stage] >= self.m:
            return False
        ahead = stage + 1 < self.p and count[FORWARD][stage] >= count[FORWARD][stage + 1] + 2
        if not (prioritize_b and ahead):
            return True
        next_plus = end[stage + 1] + costs[FORWARD][stage + 1] + costs[BACKWARD][stage + 1] + self.comm
        if end[stage] >= next_plus:
            return False
        weights, held, room = 0.0, self.held[stage] + self.memory[FORWARD], count[WEIGHT][stage]
        while held > self.limit + 1e-9 and room < count[BACKWARD][stage]:
            weights, held, room = weights + costs[WEIGHT][stage], held + self.memory[WEIGHT], room + 1
        if end[stage] + costs[FORWARD][stage] + weights <= next_plus:
            return True
        return not next_plus - end[stage] <= max(self.bubble) - self.bubble[stage]

    def next_microbatch(self, i: int, prioritize_b: bool, greedy: bool) -> None:
        p = self.p
        wanted = [self.wants_forward(stage, prioritize_b) for stage in range(p)]
        for stage in range(p - 2, -1, -1):           # a stage runs a forward only if the next one does
            wanted[stage] = wanted[stage] and wanted[stage + 1]
        for stage in range(p):
            if wanted[stage]:
                self.make_room(stage, FORWARD)
                if stage > 0:
                    arrival = self.done[FORWARD][stage - 1][self.count[FORWARD][stage]] + self.comm
                    self.fill_wait(stage, arrival, greedy)
                self.put(stage, FORWARD)
        for stage in range(p - 1, -1, -1):
            self.make_room(stage, BACKWARD)
            if stage + 1 < p:
                self.fill_wait(stage, self.done[BACKWARD][stage + 1][i] + self.comm, greedy)
            if stage == 0 and self.count[FORWARD][0] == self.m:
                while self.weights_left(0):
                    self.put(0, WEIGHT)
            self.put(stage, BACKWARD)

    def longest_stage(self) -> float:
        """The paper's cost: the longest time from a stage's first F starting to its last W ending."""
        return max(self.done[WEIGHT][s][self.m - 1] - self.done[FORWARD][s][0] + self.costs[FORWARD][s]
                   for s in range(self.p))


def _per_stage(name: str, cost, p: int) -> list[float]:
    costs = [float(cost)] * p if isinstance(cost, (int, float)) else [float(c) for c in cost]
    if len(costs) != p or any(c < 0 for c in costs):
        raise ScheduleError(f"{name}: give one non-negative cost, or one per stage ({p}), got {cost!r}")
    return costs


def search_inputs(p: int, forward, input_grad, weight_grad, latency: float, weight_memory: float):
    """(costs, memory) as both searches read them: F, I, W costs per stage (one number or one per stage), and
    what an F, an I and a W add to a stage's activations (W keeps ``weight_memory`` of them after the I)."""
    if not 0 <= weight_memory <= 1 or latency < 0:
        raise ScheduleError(f"weight_memory must be in [0, 1] and latency >= 0, got {weight_memory}, "
                            f"{latency}")
    costs = [_per_stage(n, c, p) for n, c in (("forward", forward), ("input_grad", input_grad),
                                               ("weight_grad", weight_grad))]
    return costs, (1.0, -(1.0 - weight_memory), -weight_memory)


def play(num_stages: int, num_microbatches: int, max_in_flight: float, forward=1.0, input_grad=1.0,
         weight_grad=1.0, latency: float = 0.0, weight_memory: float = 1.0) -> tuple[Schedule, float]:
    """(schedule, its longest stage): the best of the heuristic's eight variants."""
    p, m = num_stages, num_microbatches
    if not max_in_flight >= 1:
        raise ScheduleError(f"max_in_flight must be at least 1 microbatch, got {max_in_flight!r}")
    costs, memory = search_inputs(p, forward, input_grad, weight_grad, latency, weight_memory)
    best, refusals = None, []
    for allow_bubble, prioritize_b, greedy in product((True, False), repeat=3):
        run = _Greedy(p, m, costs, float(latency), memory, float(max_in_flight))
        try:
            run.first_microbatch(allow_bubble)
            for i in range(1, m):
                run.next_microbatch(i, prioritize_b, greedy)
        except ScheduleError as refused:
            refusals.append(str(refused))
            continue
        for stage in range(p):
            while run.count[WEIGHT][stage] < m:
                run.put(stage, WEIGHT)
        if best is None or run.longest_stage() < best.longest_stage():
            best = run
    if best is None:
        raise ScheduleError(f"no schedule of {p} stages and {m} microbatches fits "
                            f"max_in_flight={max_in_flight}: " + refusals[0])
    return Schedule(best.order), best.longest_stage()


def zb_auto(num_stages: int, num_microbatches: int, max_in_flight: float | None = None, forward=1.0,
            input_grad=1.0, weight_grad=1.0, latency: float = 0.0, weight_memory: float = 1.0) -> Schedule:
    """The searched schedule; ``max_in_flight`` defaults to 2p (ZB-2p); p is ZB-1p."""
    limit = 2 * num_stages if max_in_flight is None else max_in_flight
    return play(num_stages, num_microbatches, limit, forward, input_grad, weight_grad, latency,
                weight_memory)[0]
