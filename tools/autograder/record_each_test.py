"""A pytest plugin of the Gradescope bundle: the --grade-json file rewritten after every graded test.

tests/exercises/grading_plugin.py writes the scores once, when pytest ends. Under a time limit that ends
pytest first (run_autograder's, or Gradescope's), the tests already finished would then score 0; with this
plugin their records are on disk as each one finishes, and gradescope.py's results step keeps their points.

    PYTHONPATH=. python -m pytest tests/exercises -p record_each_test --grade-json results/pytest.json

Layer: tools (the Gradescope bundle); it reads the records grading_plugin keeps in pytest's stash.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from tests.exercises import grading_plugin


class _Recorder:
    def __init__(self, config):
        self.config = config

    def pytest_runtest_logfinish(self, nodeid, location):
        path = self.config.getoption("grade_json")
        records = list(self.config.stash.get(grading_plugin._RECORDS, {}).values())
        if not path or not records:
            return
        data = {"score": sum(r["score"] for r in records), "max_score": sum(r["max_score"] for r in records),
                "tests": records, "partial": True}
        # Written beside and renamed: a kill mid-write leaves the previous whole file, never half of one.
        part = Path(f"{path}.part")
        part.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(part, path)


def pytest_configure(config):
    config.pluginmanager.register(_Recorder(config), "record-each-test")
