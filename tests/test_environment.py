"""environment.yml (conda users) lists exactly the packages pyproject.toml installs (pip users)."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def _environment_pip() -> list[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    indent = len(lines[start + 1]) - len(lines[start + 1].lstrip())
    packages = []
    for line in lines[start + 1:]:
        if not line.strip() or len(line) - len(line.lstrip()) < indent:
            break
        packages.append(line.strip()[2:].strip())
    return packages


def test_environment_yml_equals_pyproject():
    assert sorted(_environment_pip()) == sorted(_pyproject())


def test_torch_is_pinned_everywhere():
    # An unpinned torch pulls a multi-GB CUDA build on a CPU machine.
    for packages in (_pyproject(), _environment_pip()):
        assert any(re.fullmatch(r"torch==\d+\.\d+\.\d+", p) for p in packages), packages
