"""Shared pytest set-up. The pytest process never imports mpi4py: ranks are started through launch.py."""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Ranks import test helpers as `tests.rank_targets`; they start in the repository root.
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# The graded tests' options (--impl, --grade-json), points and score table: a plugin, because pytest
# takes command-line options only from plugins and the conftest files it reads before collecting.
pytest_plugins = ["tests.exercises.grading_plugin"]
