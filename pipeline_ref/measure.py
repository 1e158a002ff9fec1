"""The measurement protocol: numbers that hold on any machine (run layer, at the package root).

    from pipeline_ref import measure
    t = measure.alternate({"a": fn_a, "b": fn_b}, rounds=7, warmup=1)           # in this process, no MPI
    c = measure.compare({"1F1B": cfg_a, "ZB-H1": cfg_b}, num_ranks=2, rounds=5, warmup=1)   # launched runs
    print(c.table())
    print(c.verdict("ZB-H1", "1F1B", theory=13 / 15))

What it enforces (DESIGN.md, "Measurement"): things compared run in alternating rounds (A B, then B A, ...:
warm-up, caches and a machine whose load changes touch every contender alike, never one fixed order); warm-up
rounds or steps are measured and reported but not used; each result is the median over rounds with its
spread (lowest, highest); a ratio is taken round by round, so drift that hits both sides cancels. For a
launched run, ``band`` is the step the schedule explains: the simulator fed with that run's own measured
costs. A median outside its band, drift between rounds, contention for cores or too few rounds are
``flags``, and ``verdict`` names them instead of presenting a comparison as a result.

Layer: run. Imports config, launch, machine and the sim layer (simulate, trace); its ranks run train.
"""
from __future__ import annotations

import sys
import time
from statistics import median
from typing import Callable, NamedTuple

from pipeline_ref.engine import machine
from pipeline_ref.schedules import asynchronous
from pipeline_ref.sim.band import Band, band
from pipeline_ref.config import ConfigError, RunConfig
from pipeline_ref.preflight import asynchronous_refusals, check_config, make_schedule
from pipeline_ref.results import RunResult

MIN_ROUNDS = 3          # fewer give no spread worth the name
DRIFT = 0.10            # halves of the rounds this far apart (and not overlapping): the machine changed
MIN_SHARE = 0.9         # a rank that got less of the time it wanted a core shared it with someone
BAND_TOLERANCE = 0.02   # ranks' clocks and the timer: a median this close to its band is inside


class Ratio(NamedTuple):
    """Per-round ratios of two measurements: their median, lowest and highest."""
    median: float
    low: float
    high: float

    @property
    def word(self) -> str:
        """"shorter" only when every round's ratio is below 1, "longer" when all are above."""
        return "shorter" if self.high < 1 else "longer" if self.low > 1 else "not distinguishable"


class Flag(NamedTuple):
    name: str           # which measurement
    what: str           # what was seen, with its numbers
    likely_cause: str   # "drift between rounds", "contention", "too few rounds", ...


class Rounds:
    """Named measurements, one value per round (seconds), and what the protocol reads from them."""

    def __init__(self, values: dict[str, list[float]], warmup: dict[str, list[float]]):
        self.values, self.warmup = values, warmup

    @property
    def rounds(self) -> int:
        return min(len(v) for v in self.values.values())

    def median(self, name: str) -> float:
        return median(self.values[name])

    def spread(self, name: str) -> tuple[float, float]:
        return min(self.values[name]), max(self.values[name])

    def ratio(self, name: str, baseline: str) -> Ratio:
        """``name`` over ``baseline`` round by round (both ran in that round, next to each other)."""
        ratios = [a / b for a, b in zip(self.values[name], self.values[baseline])]
        return Ratio(median(ratios), min(ratios), max(ratios))

    def drift(self, name: str) -> float | None:
        """How far the later rounds moved from the earlier ones (relative), when they did; else None."""
        values = self.values[name]
        if len(values) < MIN_ROUNDS:
            return None
        half = (len(values) + 1) // 2
        first, last = values[:half], values[-half:]
        moved = (median(last) - median(first)) / median(values)
        # Noise moves the halves' medians too; drift moves one half past the other.
        apart = min(last) > max(values[:len(values) // 2]) or max(last) < min(values[:len(values) // 2])
        return moved if abs(moved) > DRIFT and apart else None

    @property
    def flags(self) -> list[Flag]:
        flags = []
        for name in self.values:
            if len(self.values[name]) < MIN_ROUNDS:
                flags.append(Flag(name, f"{len(self.values[name])} round(s), {MIN_ROUNDS} give a spread",
                                  "too few rounds"))
            moved = self.drift(name)
            if moved is not None:
                flags.append(Flag(name, f"the later rounds {moved:+.0%} from the earlier ones",
                                  "drift between rounds"))
        return flags

    def causes(self, *names: str) -> list[str]:
        return list(dict.fromkeys(f.likely_cause for f in self.flags if f.name in names))

    quantity = "time"

    def verdict(self, name: str, baseline: str, theory: float | None = None, what: str | None = None) -> str:
        """One sentence from the numbers: the ratio with its spread, its direction, theory, and any flag."""
        r, what = self.ratio(name, baseline), what or self.quantity
        rounds = f"{self.rounds} round{'s' if self.rounds != 1 else ''}"
        text = (f"{name}'s {what} is {r.median:.2f} of {baseline}'s ({r.low:.2f}-{r.high:.2f} "
                f"over {rounds}): {r.word}")
        if theory is not None:
            text += f"; theory {theory:.2f}"
        causes = self.causes(name, baseline)
        return text + (f"; flagged: {' and '.join(causes)}" if causes else "") + "."


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.1f}"


class Timings(Rounds):
    """Callables timed in this process in alternating rounds (``alternate``)."""

    def table(self) -> str:
        lines = [f"{'name':<16} {'warm-up (ms)':>12} {'median (ms)':>11} {'spread (ms)':>15}  flag"]
        for name in self.values:
            low, high = self.spread(name)
            warm = " ".join(_ms(w) for w in self.warmup[name]) or "-"
            lines.append(f"{name:<16} {warm:>12} {_ms(self.median(name)):>11} "
                         f"{_ms(low) + '-' + _ms(high):>15}  {', '.join(self.causes(name)) or '-'}")
        return "\n".join(lines)


def order_of_round(names: list, round_index: int) -> list:
    """A B in even rounds, B A in odd ones: a slow start or a slow end touches every name alike."""
    return names if round_index % 2 == 0 else names[::-1]


def alternate(functions: dict[str, Callable[[], object]], rounds: int = 7, warmup: int = 1) -> Timings:
    """Time each callable once per round, in alternating order; ``warmup`` rounds first, reported apart."""
    if not functions or rounds < 1 or warmup < 0:
        raise ValueError(f"alternate needs callables, rounds >= 1 and warmup >= 0 (got {len(functions)} "
                         f"callables, rounds={rounds}, warmup={warmup})")
    names = list(functions)
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in range(warmup + rounds):
        for name in order_of_round(names, index):
            start = time.perf_counter()
            functions[name]()
            times[name].append(time.perf_counter() - start)
    return Timings({n: t[warmup:] for n, t in times.items()}, {n: t[:warmup] for n, t in times.items()})


class Comparison(Rounds):
    """Launched runs compared in alternating rounds (``compare``): steps, warm-up steps, bands and flags.

    ``results[name]``: one RunResult per round; ``shares[name]``: per round, the lowest rank's share of
    the time it wanted a core (``machine.ShareMeter``). A round's value is the median of its steps after
    the first ``warmup`` (``RunResult.step_seconds``: first action to last, so a data-parallel all-reduce
    after the last action is in neither the step nor its band); the warm-up steps are in ``warmup[name]``,
    round after round.
    """
    quantity = "step"

    def __init__(self, configs: dict[str, RunConfig], results: dict[str, list[RunResult]],
                 shares: dict[str, list[float]], warmup: int = 1, num_ranks: int | None = None,
                 free_cores: int | None = None, replayed: int = 0):
        for name, runs in results.items():
            if any(len(r.step_seconds) <= warmup for r in runs):
                raise ValueError(f"{name}: a run needs more than {warmup} step(s) (one past the warm-up)")
        used = {n: [median(r.step_seconds[warmup:]) for r in runs] for n, runs in results.items()}
        warm = {n: [s for r in runs for s in r.step_seconds[:warmup]] for n, runs in results.items()}
        super().__init__(used, warm)
        self.configs, self.results, self.shares = configs, results, shares
        self.num_ranks = num_ranks or max(c.world_size for c in configs.values())
        self.free_cores = free_cores if free_cores is not None else machine.cores()
        self.replayed = replayed            # rounds played again because a rank shared its core
        self._bands: dict[str, Band] = {}

    def band(self, name: str) -> Band:
        if name not in self._bands:
            self._bands[name] = band(make_schedule(self.configs[name]), [r.trace for r in self.results[name]])
        return self._bands[name]

    @property
    def flags(self) -> list[Flag]:
        flags = super().flags
        for name in self.values:
            share = min(self.shares[name])
            if self.num_ranks > self.free_cores:
                flags.append(Flag(name, f"{self.num_ranks} ranks on {self.free_cores} free core(s)",
                                  "contention"))
            elif share < MIN_SHARE:
                flags.append(Flag(name, f"a rank had {share:.2f} of the time it wanted a core", "contention"))
        for name in self.values:
            low, high, _ = self.band(name)
            step = self.median(name)
            if not low * (1 - BAND_TOLERANCE) <= step <= high * (1 + BAND_TOLERANCE):
                seen = [f.likely_cause for f in flags if f.name == name]
                cause = seen[0] if seen else ("time the schedule and the measured costs do not explain "
                                              "(uneven op times within a step)")
                flags.append(Flag(name, f"median step {_ms(step)} ms outside its band "
                                        f"{_ms(low)}-{_ms(high)} ms", cause))
        return flags

    def table(self) -> str:
        """Per config: warm-up step, median step, spread, band (predicted), flag; times in ms."""
        lines = [f"{'config':<14} {'warm-up':>9} {'median':>8} {'spread':>13} {'band (predicted)':>22}  flag"]
        for name in self.values:
            (low, high), b = self.spread(name), self.band(name)
            warm = median(self.warmup[name]) if self.warmup[name] else None
            spread, explained = f"{_ms(low)}-{_ms(high)}", f"{_ms(b.low)}-{_ms(b.high)} ({_ms(b.predicted)})"
            lines.append(f"{name:<14} {_ms(warm):>9} {_ms(self.median(name)):>8} {spread:>13} "
                         f"{explained:>22}  {', '.join(self.causes(name)) or '-'}")
        lines.append(f"(ms; {self.rounds} alternating round(s) on {self.num_ranks} rank(s); warm-up: median "
                     f"of the steps not used; band: the schedule played with the runs' own costs)")
        return "\n".join(lines)


# --------------------------------------------------------------------------- launched runs: playing them

def rounds_rank(comm, named: list[tuple[str, RunConfig]], rounds: int, progress: bool = False,
                min_share: float = MIN_SHARE, retries: int = 0, quiet_wait: float = 0.0):
    """Rank side of ``compare``: every config once per round, alternating; rank 0 returns what was played.

    Each run takes the first ``world_size`` ranks of ``comm`` (the others sleep: ``machine.wait_quietly``).
    A round in which a rank's share fell below ``min_share`` is played again, at most ``retries`` times in
    all, after waiting up to ``quiet_wait`` s for idle cores. Returns ([(round, name, RunResult, share)],
    rounds played again) on world rank 0, None elsewhere.
    """
    from mpi4py import MPI
    from pipeline_ref.faults import watchdog
    from pipeline_ref.train import run_rank
    kept, replayed, index = [], 0, 0
    while index < rounds:
        played = []
        for name, cfg in order_of_round(named, index):
            watchdog.beat(f"waiting for {name} in round {index + 1}", watched=False)
            machine.wait_quietly(comm)
            sub = comm.Split(0 if comm.Get_rank() < cfg.world_size else MPI.UNDEFINED, comm.Get_rank())
            result, share = None, 1.0
            if sub != MPI.COMM_NULL:
                meter = machine.ShareMeter()
                result = run_rank(sub, cfg)
                share = meter.share()
                sub.Free()
            machine.wait_quietly(comm)       # the ranks left out sleep until the run is over
            played.append((index, name, result, comm.allreduce(share, op=MPI.MIN)))
            if progress and comm.Get_rank() == 0:
                print(f"round {index + 1}/{rounds} {name}: step {_ms(median(result.step_seconds))} ms, "
                      f"share {played[-1][3]:.2f}", file=sys.stderr, flush=True)
        if min(p[3] for p in played) < min_share and replayed < retries:
            replayed += 1                    # every rank saw the same shares: all play it again
            if quiet_wait > 0:
                machine.wait_until_quiet(comm, quiet_wait)
            continue
        kept += played
        index += 1
    return (kept, replayed) if comm.Get_rank() == 0 else None


def compare(configs: dict[str, RunConfig], num_ranks: int | None = None, rounds: int = 5, warmup: int = 1,
            timeout: float = 900, progress: bool = False, min_share: float = MIN_SHARE, retries: int = 0,
            quiet_wait: float = 0.0, **launch_options) -> Comparison:
    """Play the configs in ONE launch of ``num_ranks`` ranks, in ``rounds`` alternating rounds.

    Each round runs every config for its ``cfg.steps`` steps; the first ``warmup`` of them are reported,
    not used. Bad requests raise ConfigError before any rank starts. ``progress`` prints a line per run
    to stderr; ``launch_options`` go to ``launch.launch`` (e.g. ``stall_timeout``).
    """
    from pipeline_ref.launch import launch
    if not isinstance(configs, dict) or not configs:
        raise ConfigError("compare takes a dict of names to RunConfigs, at least one")
    if rounds < 1 or warmup < 0:
        raise ConfigError(f"compare needs rounds >= 1 and warmup >= 0, got rounds={rounds}, warmup={warmup}")
    num_ranks = num_ranks or max(c.world_size for c in configs.values())
    for name, cfg in configs.items():
        check_config(cfg)
        make_schedule(cfg)
        try:      # what an asynchronous schedule refuses, known before any model is built
            asynchronous.check_asynchronous_run(cfg.schedule, cfg.pp, cfg.microbatches, cfg.dp,
                                                **asynchronous_refusals(cfg))
        except ValueError as err:
            raise ConfigError(f"{name}: {err}") from None
        if cfg.steps <= warmup:
            raise ConfigError(f"{name}: steps={cfg.steps} leaves no step after {warmup} warm-up step(s); "
                              f"give steps={warmup + 1} or more")
        if cfg.world_size > num_ranks:
            raise ConfigError(f"{name} needs {cfg.world_size} ranks (pp x dp), compare was given {num_ranks}")
    played, replayed = launch(num_ranks, "pipeline_ref.measure:rounds_rank", list(configs.items()), rounds,
                              progress, min_share, retries, quiet_wait, timeout=timeout, echo=progress,
                              **launch_options)[0]
    results = {name: [p[2] for p in played if p[1] == name] for name in configs}
    shares = {name: [p[3] for p in played if p[1] == name] for name in configs}
    return Comparison(configs, results, shares, warmup, num_ranks, replayed=replayed)
