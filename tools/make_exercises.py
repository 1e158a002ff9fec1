"""Build exercises/exNN_*.py from solutions/exNN_*.py: the student's stubs are the answers with the answers cut out.

    .venv/bin/python tools/make_exercises.py            # rewrite exercises/exNN_*.py   (= make exercises)
    .venv/bin/python tools/make_exercises.py --check    # exit 1, with a diff, if any differs from its solution

A solution marks what the student writes. Everything outside the markers is copied as it is, so the
docstrings, signatures and imports of an exercise cannot drift from its solution's:

    def gpipe(num_stages, num_microbatches):
        \"\"\"GPipe: ...\"\"\"                          <- copied
        # BEGIN EXERCISE 2.3: return one list of Actions per stage, all forwards then all backwards
        # HINT: every stage runs the same list; the executor works out the messages
        forwards = ...                              <- cut: the stub raises instead
        # END EXERCISE

becomes ``raise NotImplementedError("Exercise 2.3: return ... backwards. Hint: every stage ...")``, indented
as the BEGIN line. The task and the hint are one line each (longer hints live in exercises/hints/).
``# BEGIN SOLUTION ONLY`` ... ``# END SOLUTION ONLY`` is cut without a trace: the answer's own helpers,
imports only it needs, notes about the answer. Exercise numbers must run 1, 2, ... in file order,
with the file's own NN (Exercise 2.k in ex02_*.py).
"""
from __future__ import annotations

import argparse
import difflib
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEGIN = re.compile(r"^(?P<indent>\s*)# BEGIN EXERCISE (?P<number>\d+\.\d+): (?P<task>\S.*)$")
HINT = re.compile(r"^\s*# HINT: (?P<hint>\S.*)$")
END = re.compile(r"^\s*# END EXERCISE\s*$")
ONLY_BEGIN = re.compile(r"^\s*# BEGIN SOLUTION ONLY\s*$")
ONLY_END = re.compile(r"^\s*# END SOLUTION ONLY\s*$")
WIDTH = 110             # the raise's string pieces are wrapped to this many columns


class MarkerError(ValueError):
    """A solution's markers are malformed; the message names the file and line."""


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


def stub_raise(indent: str, number: str, task: str, hint: str) -> list[str]:
    """The lines of ``raise NotImplementedError("Exercise N.k: task. Hint: hint.")``, wrapped."""
    message = f"Exercise {number}: {_sentence(task)} Hint: {_sentence(hint)}"
    inner = indent + " " * 4
    room = WIDTH - len(inner) - 3          # the quotes and a closing parenthesis
    pieces, line = [], ""
    for word in message.split(" "):
        candidate = f"{line} {word}" if line else word
        if len(candidate) + 1 > room and line:
            pieces.append(line + " ")
            line = word
        else:
            line = candidate
    pieces.append(line)
    quoted = ['"' + p.replace("\\", "\\\\").replace('"', '\\"') + '"' for p in pieces]
    lines = [f"{indent}raise NotImplementedError("]
    lines += [inner + q for q in quoted]
    lines[-1] += ")"
    return lines


def exercise_source(solution: str, name: str = "<solution>") -> str:
    """The exercise file made from a solution file's text."""
    number = re.match(r"ex(\d\d)_", Path(name).name)
    expected_major = int(number.group(1)) if number else None
    out: list[str] = []
    lines = solution.splitlines()
    i, seen = 0, []
    while i < len(lines):
        line = lines[i]
        where = f"{name}:{i + 1}"
        if ONLY_BEGIN.match(line):
            j = i + 1
            while j < len(lines) and not ONLY_END.match(lines[j]):
                if BEGIN.match(lines[j]) or ONLY_BEGIN.match(lines[j]):
                    raise MarkerError(f"{where}: a SOLUTION ONLY region must not contain other markers")
                j += 1
            if j == len(lines):
                raise MarkerError(f"{where}: # BEGIN SOLUTION ONLY without # END SOLUTION ONLY")
            i = j + 1
            continue
        if ONLY_END.match(line) or END.match(line) or HINT.match(line):
            raise MarkerError(f"{where}: {line.strip()!r} without its BEGIN")
        if "BEGIN EXERCISE" in line and not BEGIN.match(line):
            raise MarkerError(f"{where}: write '# BEGIN EXERCISE N.k: what to do' (one line)")
        begin = BEGIN.match(line)
        if not begin:
            out.append(line)
            i += 1
            continue
        hint = HINT.match(lines[i + 1]) if i + 1 < len(lines) else None
        if not hint:
            raise MarkerError(f"{where}: the line after '# BEGIN EXERCISE' must be '# HINT: one line'")
        j = i + 2
        while j < len(lines) and not END.match(lines[j]):
            if BEGIN.match(lines[j]) or ONLY_BEGIN.match(lines[j]):
                raise MarkerError(f"{name}:{j + 1}: a marker inside exercise {begin['number']}")
            j += 1
        if j == len(lines):
            raise MarkerError(f"{where}: exercise {begin['number']} has no '# END EXERCISE'")
        if j == i + 2:
            raise MarkerError(f"{where}: exercise {begin['number']} holds no code")
        major, minor = (int(x) for x in begin["number"].split("."))
        seen.append((major, minor))
        if expected_major is not None and major != expected_major:
            raise MarkerError(f"{where}: exercise {begin['number']} in a file of exercise {expected_major}")
        if minor != len(seen):
            raise MarkerError(f"{where}: exercise {begin['number']}, expected {major}.{len(seen)} (in file order)")
        out += stub_raise(begin["indent"], begin["number"], begin["task"], hint["hint"])
        i = j + 1
    if not seen:
        raise MarkerError(f"{name}: no '# BEGIN EXERCISE' marker")
    text = "\n".join(out).rstrip("\n") + "\n"
    return re.sub(r"\n{4,}", "\n\n\n", text)     # a cut helper leaves no gap wider than PEP 8's two lines


def pairs(root: Path = ROOT) -> list[tuple[Path, Path]]:
    """(solution, exercise) paths, one per solutions/exNN_*.py."""
    return [(s, root / "exercises" / s.name) for s in sorted((root / "solutions").glob("ex[0-9][0-9]_*.py"))]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if an exercise differs")
    args = parser.parse_args(argv)
    stale = []
    for solution, exercise in pairs():
        made = exercise_source(solution.read_text(), str(solution.relative_to(ROOT)))
        current = exercise.read_text() if exercise.exists() else ""
        if made == current:
            continue
        stale.append(exercise)
        if args.check:
            sys.stdout.writelines(difflib.unified_diff(current.splitlines(True), made.splitlines(True),
                                                       f"{exercise.relative_to(ROOT)} (committed)",
                                                       f"{exercise.relative_to(ROOT)} (from {solution.name})"))
        else:
            exercise.write_text(made)
            print(f"wrote {exercise.relative_to(ROOT)}")
    orphans = sorted({p.name for p in (ROOT / "exercises").glob("ex[0-9][0-9]_*.py")}
                     - {s.name for s, _ in pairs()})
    for orphan in orphans:
        print(f"exercises/{orphan} has no solution (remove it, or add solutions/{orphan})")
    if args.check and (stale or orphans):
        print(f"\n{len(stale)} exercise file(s) differ from their solutions: run `make exercises`")
        return 1
    if not args.check and not stale:
        print("exercises/ is up to date")
    return 1 if orphans else 0


if __name__ == "__main__":
    sys.exit(main())
