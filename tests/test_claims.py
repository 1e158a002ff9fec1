"""The claims the lessons and the README make, checked by code, so that an edit cannot bring a wrong one back.

Each test names where its claim is stated. Pure (the simulator and arithmetic, milliseconds) except the last
two, which play the schedules on 2 real ranks once and compare the bytes each rank held with the count the
lesson prints (lessons/lesson_code/l07_zero_bubble.py: held_bytes).

    .venv/bin/python -m pytest -q tests/test_claims.py
"""
import math
import random
import sys
from pathlib import Path

import pytest

LESSONS = Path(__file__).resolve().parents[1] / "lessons"
if str(LESSONS) not in sys.path:
    sys.path.insert(0, str(LESSONS))

from lesson_code import l06_interleaved, l07_zero_bubble, sizing  # noqa: E402
from pipeline_ref import schedules, simulate  # noqa: E402


def _sim(name, p, m, chunks=1, **costs):
    return simulate.simulate(schedules.build(name, p, m, **schedules.chunk_options(name, chunks)),
                             **costs)


def _random_costs(rng):
    return {k: rng.uniform(0.2, 2.0) for k in ("forward", "input_grad", "weight_grad")}


# ----------------------------------------------------------------------- lesson 07: the synchronous bound

def test_one_stage_per_rank_bound_holds_and_zbv_beats_it():
    """Lesson 07: no schedule with one stage per rank beats (p - 1) F + m (F + I + W); with chunks of 1/v stage
    the bound is (p - 1) F / v + m (F + I + W), and ZB-V (v = 2) goes below the one-stage bound (25.5 < 27)."""
    rng = random.Random(1)
    for _ in range(60):
        c = _random_costs(rng)
        f, i, w = c["forward"], c["input_grad"], c["weight_grad"]
        p, m = rng.randint(2, 5), rng.randint(1, 12)
        one = l07_zero_bubble.synchronous_bound(p, m, f, i, w)
        for name in ("gpipe", "1f1b", "naive"):
            assert _sim(name, p, m, forward=f, backward=i + w).makespan >= one - 1e-9, (name, c, p, m)
        for name in ("zb-h1", "zb-h2"):
            assert _sim(name, p, m, **c).makespan >= one - 1e-9, (name, c, p, m)
        half = {k: v / 2 for k, v in c.items()}             # a ZB-V chunk is half a stage
        assert _sim("zbv", p, m, **half).makespan >= l07_zero_bubble.synchronous_bound(p, m, f, i, w, chunks=2) - 1e-9
        mi = p * rng.randint(1, 3)
        v = rng.randint(2, 3)
        assert (_sim("interleaved", p, mi, chunks=v, forward=f / v, backward=(i + w) / v).makespan
                >= l07_zero_bubble.synchronous_bound(p, mi, f, i, w, chunks=v) - 1e-9)
    zbv = _sim("zbv", 4, 8, forward=0.5, input_grad=0.5, weight_grad=0.5).makespan
    assert zbv == l07_zero_bubble.synchronous_bound(4, 8, 1, 1, 1, chunks=2) == 25.5
    assert zbv < l07_zero_bubble.synchronous_bound(4, 8, 1, 1, 1) == 27


def test_zb_h1_is_on_the_bound_exactly_where_the_lesson_says():
    """Lesson 07: ZB-H1 reaches the bound when I <= W <= F, never when I > W, and not always when W > F
    (F = 1, I = W = 2 simulates to 46 against a bound of 43), m >= p."""
    rng = random.Random(2)
    seen_off_with_w_above_f = False
    for _ in range(200):
        c = _random_costs(rng)
        f, i, w = c["forward"], c["input_grad"], c["weight_grad"]
        p = rng.randint(2, 5)
        m = rng.randint(p, 3 * p)
        step, bound = _sim("zb-h1", p, m, **c).makespan, l07_zero_bubble.synchronous_bound(p, m, f, i, w)
        if i <= w <= f:
            assert step == pytest.approx(bound, abs=1e-9), (c, p, m)
        elif i > w:
            assert step > bound + 1e-9, (c, p, m)
        elif step > bound + 1e-9:
            seen_off_with_w_above_f = True
    assert seen_off_with_w_above_f
    assert _sim("zb-h1", 4, 8, forward=1, input_grad=2, weight_grad=2).makespan == 46
    assert l07_zero_bubble.synchronous_bound(4, 8, 1, 2, 2) == 43


def test_zb_h2_is_shorter_than_zb_h1_exactly_where_zb_h1_misses_the_bound():
    """README's schedule table and lesson 07: from m = 2p - 1 on, ZB-H2 is strictly shorter than ZB-H1 exactly
    when ZB-H1 misses the bound, which it always does when I > W and sometimes when W > F; with
    p <= m < 2p - 1 ZB-H2 is never slower. (Not "only when I > W": with I <= W it also wins, e.g. below.)"""
    rng = random.Random(3)
    for _ in range(200):
        c = _random_costs(rng)
        p = rng.randint(2, 5)
        m = rng.randint(p, 3 * p)
        h1, h2 = _sim("zb-h1", p, m, **c).makespan, _sim("zb-h2", p, m, **c).makespan
        bound = l07_zero_bubble.synchronous_bound(p, m, c["forward"], c["input_grad"], c["weight_grad"])
        assert bound - 1e-9 <= h2 <= h1 + 1e-9, (c, p, m)
        if m >= 2 * p - 1:
            assert (h2 < h1 - 1e-9) == (h1 > bound + 1e-9), (c, p, m)
    costs = {"forward": 0.5, "input_grad": 1.0, "weight_grad": 1.5}      # I <= W, W > F
    assert _sim("zb-h2", 4, 8, **costs).makespan < _sim("zb-h1", 4, 8, **costs).makespan


def test_zero_bubble_loses_the_stagger_not_the_last_stage():
    """Lesson 07, what goes wrong: with equal costs the last stage ends at the same time in 1F1B and ZB-H1;
    1F1B's stages end one backward apart (the last first), so the last stage's all-reduce can hide behind
    the others' work, while every ZB-H1 stage ends at once."""
    for p, m in ((2, 4), (4, 8), (5, 7)):
        one = l07_zero_bubble.rank_ends(_sim("1f1b", p, m, forward=1, backward=2))
        zb = l07_zero_bubble.rank_ends(_sim("zb-h1", p, m, forward=1, input_grad=1, weight_grad=1))
        assert one[-1] == zb[-1]
        assert [one[s] - one[-1] for s in range(p)] == [2 * (p - 1 - s) for s in range(p)]
        assert max(zb) - min(zb) == 0


# ----------------------------------------------------------------------- lesson 06: messages, bubbles

@pytest.mark.parametrize("p", [2, 3, 4, 6])
@pytest.mark.parametrize("v", [2, 3, 4])
def test_interleaved_sends_vp_minus_1_over_p_minus_1_times_the_messages(p, v):
    """Lesson 06 and the README: interleaving multiplies 1F1B's messages by (v p - 1) / (p - 1), not v;
    ZB-V sends exactly twice 1F1B's."""
    for m in (p, 2 * p):
        ratio = (l06_interleaved.count_messages(schedules.build("interleaved", p, m, chunks=v))
                 / l06_interleaved.count_messages(schedules.build("1f1b", p, m)))
        assert ratio == pytest.approx(l06_interleaved.message_factor(p, v)) == pytest.approx((v * p - 1) / (p - 1))
        assert ratio > v
        assert l06_interleaved.count_messages(schedules.build("zbv", p, m)) == 2 * 2 * m * (p - 1)


@pytest.mark.parametrize("p, m, v", [(2, 4, 1), (4, 8, 1), (8, 32, 1), (4, 8, 2), (4, 12, 3), (8, 16, 2)])
def test_bubble_conventions_are_the_same_idle_time(p, m, v):
    """Lesson 06: (p - 1) / (v m + p - 1) of the step and (p - 1) / (v m) of the ideal time (Megatron, the
    Ultra-Scale Playbook) are one idle time over two denominators; the simulator agrees with both."""
    f, b = 1.0 / v, 2.0 / v
    trace = _sim("interleaved" if v > 1 else "1f1b", p, m, chunks=v, forward=f, backward=b)
    ideal = v * m * (f + b)
    idle = trace.makespan - trace.busy(0)
    conventions = l06_interleaved.bubble_conventions(p, m, chunks=v)
    assert idle / trace.makespan == pytest.approx(conventions["of the step"], abs=1e-12)
    assert idle / ideal == pytest.approx(conventions["of the ideal time"], abs=1e-12)


def test_gpipe_rule_of_thumb_leaves_11_to_18_percent():
    """Lesson 02: at GPipe's m = 4p the formula's bubble (p - 1) / (5p - 1) runs from 1/9 (p = 2) towards 1/5."""
    bubbles = [simulate.theory_bubble("gpipe", p, 4 * p) for p in range(2, 9)]
    assert bubbles == sorted(bubbles)
    assert round(bubbles[0], 3) == 0.111 and round(bubbles[-1], 3) == 0.179
    assert all(b < 0.2 for b in bubbles)


# ----------------------------------------------------------------------- lessons 01 and 04: memory arithmetic

def test_gpt3_needs_48_stages_of_whole_layers_on_80_gb():
    """Lesson 01: GPT-3's 175B parameters, 350 GB in 16 bits; with gradients and Adam 16 bytes each, 2.8 TB:
    35 GPUs' worth of 80 GB, but whole layers of 29 GB fit two to a GPU, so 48 stages."""
    state = sizing.training_bytes(175e9)
    assert state["weights"] == 350e9 and sum(state.values()) == 2800e9
    layers = sizing.gpt3_layers()
    assert sum(layers[:-1]) == pytest.approx(175e9, rel=0.01)           # the head is the embedding's copy
    assert math.ceil(sum(state.values()) / 80e9) == 35
    assert len(sizing.fewest_stages([16 * n for n in layers], 80e9)) == 48
    assert len(sizing.fewest_stages([2 * n for n in layers], 80e9)) == 5
    with pytest.raises(ValueError, match="no pipeline can hold it"):
        sizing.fewest_stages([16 * n for n in layers], 20e9)


def test_fewest_stages_is_optimal():
    """Greedy filling gives the fewest contiguous stages: against every cut of small random models."""
    import itertools
    rng = random.Random(4)
    for _ in range(100):
        sizes = [rng.randint(1, 9) for _ in range(rng.randint(1, 8))]
        cap = rng.randint(9, 20)
        best = min(k + 1 for k in range(len(sizes)) for cuts in itertools.combinations(range(1, len(sizes)), k)
                   if all(sum(s) <= cap for s in (sizes[a:b] for a, b in zip((0,) + cuts, cuts + (len(sizes),)))))
        stages = sizing.fewest_stages(sizes, cap)
        assert len(stages) == best and [i for s in stages for i in s] == list(range(len(sizes)))


def test_decision_guide_shards_what_ddp_replicates():
    """Lesson 04: replicated data parallelism holds 16 bytes per parameter on every GPU; ZeRO-1/2/3 shard the
    optimizer state, then the gradients, then the weights (ZeRO-3 = FSDP: 16 / N), so a model that DDP cannot
    hold can still train data-parallel."""
    rows = {r["option"]: r["bytes per GPU"] for r in sizing.decision_guide(1e9, gpus=8)}
    assert rows["DDP"] == 16e9 and rows["DDP, 8-bit Adam"] == 10e9
    assert rows["ZeRO-1"] == pytest.approx(4e9 + 12e9 / 8)
    assert rows["ZeRO-2"] == pytest.approx(2e9 + 14e9 / 8)
    assert rows["ZeRO-3 / FSDP"] == rows["pipeline, 8 stages"] == 2e9
    assert [sizing.first_that_fits(n, 8) for n in (1.3e9, 7e9, 13e9, 30e9)] == [
        "DDP", "DDP, 8-bit Adam", "ZeRO-1", "ZeRO-3 / FSDP"]
    assert sizing.first_that_fits(70e9, 8).startswith("none on 8 GPUs")


# ----------------------------------------------------------------------- lesson 07: bytes held, on real ranks

HELD_MODEL = {"depth": 8, "width": 16, "batch": 32}
HELD_SCHEDULES = ["naive", "gpipe", "1f1b", "interleaved", "zb-h1", "zb-h2", "zbv"]


@pytest.fixture(scope="module")
def held_runs():
    from pipeline_ref.config import RunConfig
    from pipeline_ref.launch import launch
    configs = [RunConfig(schedule=name, pp=2, microbatches=4, steps=1, model="mlp", model_kwargs=HELD_MODEL,
                         chunks=2 if name == "interleaved" else 1) for name in HELD_SCHEDULES]
    runs = launch(2, "pipeline_ref.train:run_many", configs, timeout=120)[0]
    return {cfg.schedule: run.trace for cfg, run in zip(configs, runs)}


@pytest.mark.mpi
@pytest.mark.parametrize("name", HELD_SCHEDULES)
def test_peak_bytes_held_are_what_lesson_07_counts(name, held_runs):
    """Lessons 06-07's memory tables: the trace's peak stashed bytes per rank equal the replayed count; for a split
    backward that includes the module outputs kept from F for W and the output gradients held from I to W."""
    schedule = schedules.build(name, 2, 4, **schedules.chunk_options(name, 2))
    sizes = l07_zero_bubble.mlp_held_sizes(schedule, HELD_MODEL["depth"], HELD_MODEL["batch"] // 4,
                                           HELD_MODEL["width"])
    assert held_runs[name].peak_stashed_bytes == l07_zero_bubble.held_bytes(schedule, sizes)


def test_megatron_layout_keeps_tensor_parallel_groups_inside_a_node():
    """Lesson 04: in Megatron's order (tp fastest, then dp, then pp) each tensor-parallel group of 8 sits on one
    node of 8 and each pipeline spans pp nodes; pipeline_ref's grid (pp fastest) keeps a pipeline inside a node."""
    from lesson_code import l04_data_parallel as l04
    groups = l04.rank_groups({"tp": 8, "dp": 2, "pp": 4}, "tp-dp-pp")
    assert groups["tp"][0] == list(range(8)) and groups["pp"][0] == [0, 16, 32, 48] and groups["dp"][0] == [0, 8]
    assert {len(groups[a]) for a in groups} == {8, 16, 32}
    assert all(l04.nodes_spanned(g, 8) == 1 for g in groups["tp"])
    assert all(l04.nodes_spanned(g, 8) == 4 for g in groups["pp"])
    ours = l04.rank_groups({"pp": 4, "dp": 16}, "pp-dp")
    assert ours["pp"][1] == [4, 5, 6, 7] and all(l04.nodes_spanned(g, 8) == 1 for g in ours["pp"])
    assert sorted(r for g in groups["tp"] for r in g) == list(range(64))
    with pytest.raises(ValueError, match="must name each of"):
        l04.rank_groups({"tp": 2, "pp": 2}, "tp-dp")
