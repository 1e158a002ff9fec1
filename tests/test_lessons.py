"""Pure tests of the lessons' own code (lessons/lesson_code): no MPI, milliseconds each.

The notebooks themselves run under nbval (``pytest --nbval-lax --nbval-current-env lessons/``); these tests pin
the arithmetic the notebooks print next to their measurements, so a change in pipeline_ref that breaks a lesson's
theory fails here, by name.
"""
import re
import sys
from pathlib import Path

import matplotlib
import pytest
import torch
from torch import nn

matplotlib.use("Agg")

LESSONS = Path(__file__).resolve().parents[1] / "lessons"
if str(LESSONS) not in sys.path:
    sys.path.insert(0, str(LESSONS))

from lesson_code import common, diagrams  # noqa: E402
from pipeline_ref import models, schedules, simulate
from pipeline_ref.front import partition  # noqa: E402
from pipeline_ref.engine.stage import Stage  # noqa: E402
from pipeline_ref.sim.trace import Event, Trace, Wait  # noqa: E402


@pytest.mark.parametrize("num_stages, microbatches", [(1, 1), (2, 1), (2, 4), (4, 8)])
def test_stash_theory_matches_what_stage_measures(num_stages, microbatches):
    """Lessons 01-03 print common.stash_bytes_theory beside the executor's peak_stashed_bytes."""
    depth, width, batch = 8, 16, 32
    torch.manual_seed(0)
    layers, loss_fn, (inputs, targets) = models.mlp(depth=depth, width=width, batch=batch)
    ranges = partition.uniform(depth, num_stages)
    last = num_stages - 1
    x, t = inputs.tensor_split(microbatches)[0], targets.tensor_split(microbatches)[0]
    for s, r in enumerate(ranges):
        stage = Stage(nn.Sequential(*layers[r.start:r.stop]), s == 0, s == last, loss_fn, microbatches)
        stage.start_step()
        y = stage.forward(0, x, t if s == last else None)
        assert stage.meter.peak_bytes == common.stash_bytes_theory(len(r), batch // microbatches, width,
                                                                   last=s == last)
        x = y


def test_classify_waits_on_a_simulated_trace():
    """With a message latency and no other delay, every simulated wait is for work, and its latency is comm."""
    trace = simulate.simulate(schedules.build("1f1b", 2, 4), forward=1.0, backward=2.0, latency=0.25)
    rows = common.classify_waits(trace)
    assert len(rows) == len(trace.waits) > 0
    assert all(not r["ready before asked"] and r["latency"] == pytest.approx(0.25) for r in rows)


def test_classify_waits_tells_a_ready_message_from_a_late_one():
    # Rank 0 runs F0 (0-1) and F1 (1-2); rank 1 asks for activation 0 at 1.5 (ready since 1.0) and for
    # activation 1 at 1.5 after F0, before rank 0 has finished F1 (at 2.0).
    events = [Event(0, "F", 0, 0, 0.0, 1.0), Event(0, "F", 1, 0, 1.0, 2.0),
              Event(1, "F", 0, 0, 1.5, 1.6), Event(1, "F", 1, 0, 2.1, 2.2)]
    waits = [Wait(1, "recv activation 0 from rank 0", 1.5, 1.5), Wait(1, "recv activation 1 from rank 0", 1.6, 2.1)]
    rows = common.classify_waits(Trace(num_ranks=2, events=events, waits=waits))
    assert [(r["action"], r["ready before asked"]) for r in rows] == [("F0", True), ("F1", False)]
    assert rows[0]["latency"] is None and rows[1]["latency"] == pytest.approx(0.1)


def test_launch_error_summary_drops_the_ranks_output():
    err = RuntimeError("the run on 2 ranks failed:\n  rank 0: stuck\n--- last lines the ranks printed ---\nnoise")
    assert common.launch_error_summary(err) == "the run on 2 ranks failed:\n  rank 0: stuck"


def test_mib():
    assert common.mib(3 * 2**19) == "1.50 MiB"


def test_diagrams_draw():
    import matplotlib.pyplot as plt
    memberships = [{"world": r, "pipeline": r // 2, "stage": r % 2, "pipeline members": [r - r % 2, r - r % 2 + 1],
                    "data members": [r % 2, r % 2 + 2]} for r in range(4)]
    figures = [diagrams.deadlock_diagram(), diagrams.communicator_grid(memberships),
               diagrams.split_model_diagram(8, partition.uniform(8, 2))]
    schedule = schedules.build("1f1b", 4, 8)
    trace = simulate.simulate(schedule)
    from pipeline_ref.sim import plot
    ax = diagrams.mark_phases(plot.gantt(trace), schedule, trace)
    labels = ax.get_legend_handles_labels()[1]
    assert {"warmup", "steady", "cooldown"} <= set(labels)
    for fig in figures + [ax.figure]:
        plt.close(fig)


def test_gpt2_small_counted_from_its_shape():
    """Lesson 08 counts GPT-2 small from its shape: 124,439,808 parameters (transformers' own count for "gpt2")."""
    from lesson_code import l08_real_transformer as l08
    pieces = l08.gpt2_small_pieces()
    assert sum(c for name, c in pieces if "tied" not in name) == 124_439_808
    assert [name for name, _ in pieces][:3] == ["wte", "wpe", "h.0"] and pieces[0][1] == pieces[-1][1] == 50257 * 768


def test_stage_theory_holds_a_tied_weight_once_per_stage_and_1f1b_in_flight():
    """Lesson 08's formula: 4 P_s (+4 bytes per tensor with AdamW) + min(p - s, m) A_s, a shared name once a stage."""
    from lesson_code import l08_real_transformer as l08
    rows = [{"parameters": {"wte": 100}, "activations": 1}, {"parameters": {"h": 40}, "activations": 10},
            {"parameters": {"ln": 8, "wte": 100}, "activations": 3}]
    one = l08.stage_theory(rows, [range(0, 3)], 4)[0]
    assert one == {"parameters": 148, "gradients": 148, "optimizer": 2 * 148 + 4 * 3, "peak_stashed_bytes": 14}
    two = l08.stage_theory(rows, [range(0, 2), range(2, 3)], 4, optimizer="sgd")
    assert [t["parameters"] for t in two] == [140, 108] and [t["optimizer"] for t in two] == [0, 0]
    assert [t["peak_stashed_bytes"] for t in two] == [2 * 11, 1 * 3]


# ------------------------------------------------------------- the instructor's guide, from the notebooks

def test_instructor_run_live_rows_are_the_notebooks_saved_times():
    """INSTRUCTOR.md's "Run live" rows: book.timings.run_live of each notebook, then advice with no time."""
    from book import course, timings
    text = timings.INSTRUCTOR.read_text()
    lessons = course.lessons()
    assert timings.with_generated_rows(text, lessons) == text, \
        "INSTRUCTOR.md's 'Run live' rows differ from the notebooks: run python -m book.timings --write"
    rows = timings.instructor_rows(text)
    assert set(rows) == {lesson.number for lesson in lessons}
    for number, row in rows.items():
        advice = row.split(". Advice: ", 1)[1] if ". Advice: " in row else ""
        assert not re.search(r"\d+(\.\d+)?\s?(s|ms|min|minutes|seconds)\b", advice), (number, advice)


def test_run_live_counts_code_cells_and_sums_their_saved_times(tmp_path):
    import nbformat
    from book import timings
    nb = nbformat.v4.new_notebook()
    cells = (("import torch", "00:00.000", "00:01.500"),
             ("x = 1\nout = launch(2, 'f')", "00:02.000", "00:06.000"), ("y = 2", None, None))
    for source, began, ended in cells:
        cell = nbformat.v4.new_code_cell(source)
        if began:
            cell.metadata["execution"] = {"iopub.execute_input": f"2026-01-01T10:{began}Z",
                                          "shell.execute_reply": f"2026-01-01T10:{ended}Z"}
        nb.cells.append(cell)
    nb.cells.append(nbformat.v4.new_markdown_cell("text"))
    path = tmp_path / "03_x.ipynb"
    nbformat.write(nb, path)
    assert timings.run_live(path) == (
        "3 code cells (2 timed), 6 s in all, from the execution times saved with the committed outputs; "
        "the slowest: cell 1 (`out = launch(2, 'f')`) 4 s; the other 1 together 2 s")


def test_every_lesson_plan_says_what_load_does():
    from book import timings
    text = timings.INSTRUCTOR.read_text()
    sections = timings.LESSON_HEADING.split(text)[1:]
    for number, section in zip(sections[0::2], sections[1::2]):
        row = re.search(r"^\| \*\*Under load\*\* \| \S.* \|$", section, re.M)
        assert row, f"lesson {number}: no Under load row"


def test_lesson_04s_2x2_step_all_reduces_more_bytes_than_its_pipeline_sends():
    """Lesson 04 section 8 and README's "Across nodes": 2 MiB across the cut against 16 MiB of gradients."""
    from lesson_code import l04_data_parallel as l04
    from pipeline_ref.config import RunConfig
    cfg = RunConfig(pp=2, dp=2, microbatches=4, model="mlp", model_kwargs=l04.COMPARE_MODEL, steps=2)
    moved = l04.bytes_per_step(cfg, [(0, 4), (4, 8)])
    assert moved["messages per cut"] == 8 and moved["bytes per cut"] == 8 * 64 * 1024 * 4
    assert moved["gradient bytes per rank"] == 4 * (1024 * 1024 + 1024) * 4
    assert moved["all-reduce bytes sent per rank"] == moved["gradient bytes per rank"]     # a ring of 2 ranks
    assert moved["all-reduce bytes sent per rank"] > 7 * moved["bytes per cut"]
    readme = (LESSONS.parent / "README.md").read_text()
    across = readme[readme.index("## Across nodes"):readme.index("## From Python")]
    for nbytes in (moved["bytes per cut"], moved["gradient bytes per rank"]):
        assert f"{round(nbytes / 2**20)} MiB" in across


def test_megatron_order_puts_the_pipeline_across_nodes_without_tensor_parallelism():
    from lesson_code import l04_data_parallel as l04
    groups = l04.rank_groups({"dp": 16, "pp": 4}, "dp-pp")          # Megatron's tp-cp-ep-dp-pp with tp = 1
    assert {l04.nodes_spanned(g, 8) for g in groups["pp"]} == {4}
    ours = l04.rank_groups({"pp": 4, "dp": 16}, "pp-dp")
    assert {l04.nodes_spanned(g, 8) for g in ours["pp"]} == {1}
    assert {l04.nodes_spanned(g, 8) for g in ours["dp"]} == {8}


@pytest.mark.parametrize("num_stages", [2, 3, 4])
def test_lesson_05s_formula_bounds_a_1f1b_step_under_the_old_bound(num_stages):
    """Lesson 08 section 3: sum_s t_s + (m - 1) max_s t_s (lesson 05) is what a 1F1B step of unequal
    stages takes at most in the simulator; (m + p - 1) max_s t_s only a bound, reached with equal stages."""
    import random
    rng = random.Random(num_stages)
    for m in (1, 2, 4, 8):
        forward = [rng.uniform(0.5, 3) for _ in range(num_stages)]
        backward = [rng.uniform(0.5, 4) for _ in range(num_stages)]
        stage = [f + b for f, b in zip(forward, backward)]
        schedule = schedules.build("1f1b", num_stages, m)
        step = simulate.simulate(schedule, forward=forward, backward=backward).makespan
        formula, bound = sum(stage) + (m - 1) * max(stage), (m + num_stages - 1) * max(stage)
        assert step <= formula + 1e-9 and formula < bound
        equal = simulate.simulate(schedules.build("1f1b", num_stages, m), forward=1.0, backward=2.0).makespan
        assert equal == pytest.approx((m + num_stages - 1) * 3.0)


def test_against_theory_says_only_what_every_round_shows():
    from pipeline_ref.measure import Ratio
    assert common.against_theory(Ratio(0.80, 0.72, 0.91), 0.625).endswith("above it in every round")
    assert common.against_theory(Ratio(0.50, 0.45, 0.55), 0.625).endswith("below it in every round")
    inside = common.against_theory(Ratio(0.79, 0.68, 0.93), 0.75)
    assert inside.endswith("theory's value lies within the rounds' spread")


def test_median_round_is_the_run_with_the_median_step():
    from types import SimpleNamespace
    runs = [SimpleNamespace(trace=SimpleNamespace(makespan=s)) for s in (0.3, 0.1, 0.2, 0.5)]
    assert common.median_round(runs).trace.makespan == 0.2           # lower median of an even count
    assert common.median_round(runs[:3]).trace.makespan == 0.2
