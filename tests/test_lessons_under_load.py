"""tools/lessons_under_load.py: its verdict checks on printed lines, and its busy process dies with it.

Pure tests of the checks (no notebook runs), and one subprocess (about a second) for the busy process.

    .venv/bin/python -m pytest -q tests/test_lessons_under_load.py
"""
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))

import lessons_under_load as tool  # noqa: E402


def statuses(line):
    return [(c.kind, c.status) for c in tool.check_line(0, line)]


@pytest.mark.parametrize("line, expected", [
    ("zb-h1's step is 0.87 of 1f1b's (0.85-0.89 over 5 rounds): shorter; theory 0.87.", "agrees"),
    ("zb-h1's step is 1.02 of 1f1b's (0.95-1.10 over 5 rounds): not distinguishable.", "agrees"),
    ("zb-h1's step is 1.20 of 1f1b's (1.05-1.30 over 3 rounds): longer; theory 0.87.", "agrees"),
    ("zb-h1's step is 0.97 of 1f1b's (0.85-1.02 over 5 rounds): shorter; theory 0.87.", "DISAGREES"),
    ("zb-h1's step is 0.97 of 1f1b's (0.85-0.96 over 5 rounds): shorter.", "DISAGREES"),  # not in its spread
    ("zb-h1's step is 0.97 of 1f1b's (0.85-1.02 over 5 rounds): not distinguishable; flagged: contention.",
     "flagged"),
    ("I + W of zb-h1's median time on rank 0 is 1.43 of B of 1f1b's (1.15-1.51 over 5 rounds): longer.",
     "agrees"),
    ("  both 2x2, overlap's step with its all-reduce is 1.07 of both 2x2's (0.81-1.08 over 3 rounds): longer.",
     "DISAGREES"),
])
def test_measure_verdicts_are_checked_against_their_spread(line, expected):
    assert statuses(line) == [("measure.verdict", expected)]


def test_single_ratios_profiles_and_bands_are_checked():
    assert statuses("this run's step against 1f1b's (757.0 ms): gpipe 1.11 (longer), v=2 0.67 (shorter)") == \
        [("step_ratio_sentence", "agrees")] * 2
    assert statuses("this run's step against 1f1b's (757.0 ms): gpipe 0.91 (longer)") == \
        [("step_ratio_sentence", "DISAGREES")]
    within = "layers [1, 2, 3]: 5.8 to 6.2 ms, -3% to +4% of their median 6.0 ms: within +-20%"
    assert statuses(within) == [("profiling.Consistency", "agrees")]
    assert statuses(within.replace(": within", ": NOT within")) == [("profiling.Consistency", "DISAGREES")]
    assert statuses("layers [1, 2]: -38% to +2% of their median 9.9 ms: NOT within +-20%") == \
        [("profiling.Consistency", "agrees")]
    band = ("uniform: predicted 640 ms, measured median 668 ms, band 558-1409 ms: "
            "the prediction is inside the band")
    assert statuses(band) == [("prediction in its band", "agrees")]
    outside = band.replace("predicted 640", "predicted 289")
    assert statuses(outside) == [("prediction in its band", "DISAGREES")]
    assert statuses(band.replace("predicted 640", "predicted 289").replace("inside", "outside")
                    + "; flagged: contention") == [("prediction in its band", "flagged")]
    assert statuses("config  warm-up  median  spread  band  flag") == []      # a table is no verdict


def test_only_printed_output_of_code_cells_is_read():
    verdict = "zb-h1's step is 0.97 of 1f1b's (0.85-1.02 over 5 rounds): shorter."
    printed = nbformat.v4.new_output("stream", name="stdout", text="a\n" + verdict)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(verdict),
                                         nbformat.v4.new_code_cell("print(...)", outputs=[printed])])
    assert [(c.cell, c.status) for c in tool.check_outputs(nb)] == [(1, "DISAGREES")]
    measuring = nbformat.v4.new_code_cell("measure.compare(configs)")
    assert tool.measures(nbformat.v4.new_notebook(cells=[measuring]))
    assert not tool.measures(nb)


def test_the_busy_process_stops_when_its_parent_does():
    # A parent that starts the busy loop and exits at once (as a killed script would): its child must follow.
    script = (f"import sys\nsys.path.insert(0, {str(TOOLS)!r})\n"
              "import lessons_under_load as t\nprint(t.start_busy().pid)")
    parent = subprocess.run([sys.executable, "-c", script],
                            capture_output=True, text=True, timeout=60, check=True)
    pid = int(parent.stdout.split()[-1])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists() and \
            Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
        time.sleep(0.1)
    alive = Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    assert not alive, f"the busy process {pid} outlived its parent"
