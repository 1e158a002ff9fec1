"""The lessons' prose says only what their cells printed, and asks before it shows.

1. **Numbers stay with their outputs.** Every number the markdown of a lesson states as a result (a decimal,
   or a number with a unit of time, size, ratio or percent) must appear in what a code cell of the lesson
   printed before it (or in the cell right after it), or be written as theory, in math (``$...$``). So when a
   re-run changes an output, the prose that quoted the old one fails here, by lesson, cell and number, until
   it is rewritten to the new output. Numbers of time (ms, µs, s), percentages and ratios (1.15x) must be in
   an *output*: a timing is never a configuration. Sizes (MiB, GB) and plain decimals may also come from a
   cell's code (``width=8``, ``16 * 2**20``). Quotes of the seeds in «...», code, links, version numbers
   (``torch 2.4``) and exercise numbers (``6.1 `interleaved` ``) are not results.
2. **Predict, then run.** Every cell that starts MPI ranks (``launch(``, ``measure.compare(``) follows a
   markdown cell holding a ``**Predict.**`` question (ending in ``?``), which the cells below it answer.
3. **Comparisons of measurements are printed.** A sentence that compares (follows, matches, shrinks, grows,
   beats, faster, slower, shorter, longer, less/more than, ...) and speaks of a measurement (measured, this
   run, the runs, timings, throughput, busy time, printed, this machine) needs a printed verdict beside it: a
   line that compares, in the output of the code cell right above or right below the markdown cell (printed
   from the numbers, e.g. ``step_ratio_sentence`` or ``measure``'s verdict). Theory sentences (the comparison
   in math, or a sentence about the formula, simulator or schedule that names no measurement) and questions
   pass. So a sentence that is true of one run and false of the next cannot stay in the prose.

    .venv/bin/python -m pytest -q tests/test_lesson_prose.py
"""
import re
from pathlib import Path

import nbformat
import pytest

LESSONS = Path(__file__).resolve().parents[1] / "lessons"
NOTEBOOKS = sorted(LESSONS.glob("[0-9][0-9]_*.ipynb"))

TIMED_UNITS = r"%|ms|µs|us|s|x|×"                    # results of a run: must be printed by a cell
SIZE_UNITS = r"KiB|MiB|GiB|KB|MB|GB|TB|kB"             # may also be a configuration in a cell's code
NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(?:\s?(" + TIMED_UNITS + "|" + SIZE_UNITS + r")(?![\w/]))?")
VERSION = re.compile(r"(?:torch|PyTorch|Python|version|MPICH|ipywidgets|DeepSpeed|Megatron-LM)\s+v?\d+(?:\.\d+)+")


def prose(markdown: str) -> str:
    """The markdown with what is not a stated result removed: code, math, links, quotes, list numbers."""
    text = re.sub(r"```.*?```", " ", markdown, flags=re.S)
    text = re.sub(r"(?<![\w.])\d+\.\d+(?=\s+`)", " ", text)                    # exercise numbers: "6.1 `interleaved`"
    text = re.sub(r"(?i)exercises?\s+\d+\.\d+", " ", text)                        # "exercise 5.1 asks"
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.S)
    text = re.sub(r"\$\$.*?\$\$", " ", text, flags=re.S)
    text = re.sub(r"\$[^$]+\$", " ", text)
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    text = re.sub(r"«[^»]*»", " ", text)
    text = VERSION.sub(" ", text)
    text = re.sub(r"^\s*#+\s*\d+(\.\d+)*\.?", " ", text, flags=re.M)       # "## 3. Measured"
    text = re.sub(r"^\s*\d+\.\s", " ", text, flags=re.M)                  # numbered lists
    return text


def stated_numbers(markdown: str) -> list[tuple[str, str]]:
    """(number, unit) pairs that read as results: decimals, or any number with a unit."""
    found = []
    for number, unit in NUMBER.findall(prose(markdown)):
        if unit or "." in number:
            found.append((number, unit))
    return found


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"\d+(?:\.\d+)?", text)) | set(re.findall(r"\d+(?:\.\d+)*", text))


def _output_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif out.get("output_type") in ("execute_result", "display_data"):
            parts.append(out.get("data", {}).get("text/plain", ""))
            parts.append(out.get("data", {}).get("text/html", ""))
    return "".join(p if isinstance(p, str) else "".join(p) for p in parts)


def unsupported_numbers(nb) -> list[str]:
    """Each stated number of the notebook's markdown that no nearby cell printed (or, for sizes, set)."""
    problems = []
    outputs, sources = "", ""
    cells = nb.cells
    for index, cell in enumerate(cells):
        if cell.cell_type == "code":
            outputs += "\n" + _output_text(cell)
            sources += "\n" + cell.source
            continue
        if cell.cell_type != "markdown":
            continue
        following = next((c for c in cells[index + 1:] if c.cell_type == "code"), None)
        near_out = outputs + ("\n" + _output_text(following) if following is not None else "")
        near_src = sources + ("\n" + following.source if following is not None else "")
        out_tokens, src_tokens = _tokens(near_out), _tokens(near_src)
        for number, unit in stated_numbers(cell.source):
            if unit == "%":
                ok = re.search(rf"(?<![\d.]){re.escape(number)}\s?%", near_out) is not None
            elif unit and re.fullmatch(TIMED_UNITS, unit):
                ok = number in out_tokens
            else:
                ok = number in out_tokens or number in src_tokens
            if not ok:
                problems.append(f"cell {index}: {number}{(' ' + unit) if unit else ''} is printed by no cell "
                                f"before it (print it from a cell, or write it as theory in $...$)")
    return problems


STARTS_RANKS = re.compile(r"\blaunch\(|\bmeasure\.compare\(")     # both start MPI ranks


def missing_predictions(nb) -> list[str]:
    problems = []
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code" or not STARTS_RANKS.search(cell.source):
            continue
        before = next((nb.cells[j] for j in range(index - 1, -1, -1) if nb.cells[j].cell_type == "markdown"), None)
        question = re.search(r"\*\*Predict\.\*\*([^\n]*(?:\n(?!\n)[^\n]*)*)", before.source) if before else None
        if question is None or "?" not in question.group(1):
            problems.append(f"cell {index} starts ranks without a **Predict.** question before it")
    return problems


# ------------------------------------------------------------- 3. comparisons of measurements are printed

# A comparison word in a sentence about a measurement states a result: which run was shorter, whether the
# measured points follow the curve. Its truth changes with the machine's load, so code prints it from the
# numbers (a verdict line in the output of the code cell right above or right below), or the prose leaves it.
COMPARISON = re.compile(
    r"\b(follow(?:s|ed)?(?!\s+from)|match(?:es|ed)?|agree(?:s|d)?|shrink(?:s)?|shrank|grow(?:s)?|grew|"
    r"beat(?:s)?|win(?:s)?|won|faster|slower|shorter|longer|higher|lower|closer|farther|exceed(?:s|ed)?|"
    r"outperform(?:s|ed)?|(?:less|more|fewer|larger|smaller) than)\b", re.I)
MEASURED = re.compile(r"\b(measur\w*|this run|these runs|(?:one|each|the) runs?|timings?|throughput|"
                      r"samples/s|this machine|this launch|printed|busy time)\b", re.I)
# a printed verdict: a line of output that compares (step_ratio_sentence, measure's verdict, a flag)
VERDICT = re.compile(COMPARISON.pattern + r"|\b(within|flagged|FLAG|as long as|equal|differs?)\b", re.I)


def sentences(markdown: str) -> list[str]:
    """The markdown's sentences, code and math removed, questions (the **Predict.** ones) dropped."""
    text = re.sub(r"```.*?```", " ", markdown, flags=re.S)
    text = re.sub(r"\$\$.*?\$\$", " ", text, flags=re.S)
    text = re.sub(r"\$[^$]+\$", " <math> ", text)
    text = re.sub(r"`[^`]*`", " <code> ", text)
    text = re.sub(r"«[^»]*»|\*«[^»]*»\*", " ", text)
    text = re.sub(r"^\s*(#+|[-*]|\d+\.)\s+", "\n\n", text, flags=re.M)          # headings and list items
    found = []
    for block in re.split(r"\n\s*\n", text):
        for sentence in re.split(r"(?<=[.!?:])\s+(?=[A-Z(*\"])", " ".join(block.split())):
            if sentence and not sentence.rstrip("*) ").endswith("?"):
                found.append(sentence.strip())
    return found


def unprinted_comparisons(nb) -> list[str]:
    """Each sentence of the markdown that compares a measured quantity with no printed verdict beside it."""
    problems, cells = [], nb.cells
    for index, cell in enumerate(cells):
        if cell.cell_type != "markdown":
            continue
        above = next((c for c in reversed(cells[:index]) if c.cell_type == "code"), None)
        below = next((c for c in cells[index + 1:] if c.cell_type == "code"), None)
        printed = "\n".join(_output_text(c) for c in (above, below) if c is not None)
        if VERDICT.search(printed):
            continue
        for sentence in sentences(cell.source):
            if COMPARISON.search(sentence) and MEASURED.search(sentence):
                problems.append(f"cell {index}: {sentence!r} compares a measurement that no cell beside "
                                f"it prints a verdict on (print the comparison from the numbers, or say only "
                                f"what holds for any output)")
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_prose_quotes_only_what_the_cells_printed(path):
    problems = unsupported_numbers(nbformat.read(path, as_version=4))
    assert not problems, f"{path.name}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_comparisons_of_measurements_are_printed(path):
    problems = unprinted_comparisons(nbformat.read(path, as_version=4))
    assert not problems, f"{path.name}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_measured_demo_asks_first(path):
    problems = missing_predictions(nbformat.read(path, as_version=4))
    assert not problems, f"{path.name}:\n  " + "\n  ".join(problems)


# --------------------------------------------------------------------------------- the checks themselves

def _notebook(*cells):
    nb = nbformat.v4.new_notebook()
    for kind, source, printed in cells:
        if kind == "md":
            nb.cells.append(nbformat.v4.new_markdown_cell(source))
        else:
            cell = nbformat.v4.new_code_cell(source)
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=printed)] if printed else []
            nb.cells.append(cell)
    return nb


def test_a_changed_output_fails_the_prose_that_quoted_it():
    run = ("code", "print(step)", "step 57.0 ms, utilization 0.822, 11% slower\n")
    prose_cell = ("md", "The step took 57.0 ms at utilization 0.822, 11% slower than GPipe.", "")
    assert unsupported_numbers(_notebook(run, prose_cell)) == []
    rerun = ("code", "print(step)", "step 63.2 ms, utilization 0.794, 9% slower\n")
    problems = unsupported_numbers(_notebook(rerun, prose_cell))
    assert [p.split(": ")[1].split(" is")[0] for p in problems] == ["57.0 ms", "0.822", "11 %"]


def test_theory_config_and_quotes_are_not_results():
    cells = (("code", "width = 8\nrun(width=8)", "done\n"),
             ("md", "In theory $(p-1)/(m+p-1) = 0.111$; the lecture says «2 GPUs of 80 GB»; messages of width 8 "
                    "are 2 KiB in `x.numpy()`; see [03](03_1f1b.ipynb); removed in torch 2.4.\n\n## 2. Next", ""))
    problems = unsupported_numbers(_notebook(*cells))
    assert [p.split(": ")[1].split(" is")[0] for p in problems] == ["2 KiB"]
    # a timing in a cell's code is not a measurement
    assert unsupported_numbers(_notebook(("code", "launch(timeout=240)", "ok\n"), ("md", "It took 240 ms.", "")))


def test_a_demo_without_a_question_is_found():
    asked = _notebook(("md", "**Predict.** Which rank waits longest?", ""), ("code", "launch(2, 'x')", "ok"))
    told = _notebook(("md", "Now we run it.", ""), ("code", "launch(2, 'x')", "ok"))
    assert missing_predictions(asked) == []
    assert missing_predictions(told) == ["cell 1 starts ranks without a **Predict.** question before it"]
    compared = _notebook(("md", "Now we compare.", ""), ("code", "c = measure.compare(configs)", "ok"))
    assert missing_predictions(compared) == ["cell 1 starts ranks without a **Predict.** question before it"]


def test_a_comparison_of_a_measurement_needs_a_printed_verdict():
    table = ("code", "print(table)", "  m  step (ms)  measured  theory\n  8      312.5     0.665   0.889\n")
    planted = ("md", "The measured points follow the curve and stay below it. Next, memory.", "")
    problems = unprinted_comparisons(_notebook(table, planted))
    assert len(problems) == 1                                    # the second sentence compares nothing
    assert problems[0].startswith("cell 1: 'The measured points follow the curve and stay below it.' "
                                  "compares a measurement")
    verdict = ("code", "print(sentence)", "this run's step against m=1's (287.3 ms): m=8 1.09 (longer)\n")
    assert unprinted_comparisons(_notebook(table, planted, verdict)) == []       # the verdict right below
    assert unprinted_comparisons(_notebook(verdict, planted)) == []              # or right above


def test_theory_and_questions_may_compare():
    table = ("code", "print(table)", "  m  step (ms)\n  8      312.5\n")
    theory = ("md", "The simulator's step is shorter with more microbatches, and $u_8 > u_4$ in the "
                    "formula. **Predict.** Will the measured step be longer than the formula's? Parameter "
                    "bytes follow from each run's partition.", "")
    assert unprinted_comparisons(_notebook(table, theory)) == []
