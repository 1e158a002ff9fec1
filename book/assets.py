"""The front-end files the site and the slides serve themselves: MathJax 3 and reveal.js, from npm.

Both are pinned in book/package.json and installed with npm into out/npm (once; again when package.json
changes). The site and the decks then carry their own copies, so a page renders its math and a deck runs
offline, with nothing fetched from a CDN at view time.

    .venv/bin/python -m book.assets        # installs them, prints where
"""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_JSON = ROOT / "book" / "package.json"
NPM_DIR = ROOT / "out" / "npm"

# What a page loads of MathJax: the combined TeX -> CommonHTML component, the fonts it asks for and the parts it
# may load later (TeX extensions on first use, the context menu, its accessibility helpers).
MATHJAX_PARTS = ["tex-chtml.js", "input", "output/chtml", "ui", "a11y", "sre", "adaptors"]
# Of reveal.js: the script, its style sheets and themes (with their fonts), and the speaker-notes plugin.
REVEAL_PARTS = ["dist/reveal.js", "dist/reveal.css", "dist/reset.css", "dist/theme", "plugin/notes"]


def node_modules() -> Path:
    """out/npm/node_modules with the pinned packages, installed by npm if missing or out of date."""
    wanted = json.loads(PACKAGE_JSON.read_text())["dependencies"]
    modules = NPM_DIR / "node_modules"
    if all(_installed_version(modules / name) == version for name, version in wanted.items()):
        return modules
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed once, to install MathJax and reveal.js (book/package.json) into "
                           "out/npm: install Node.js (Debian: apt-get install nodejs npm) and run again")
    NPM_DIR.mkdir(parents=True, exist_ok=True)
    shutil.copy2(PACKAGE_JSON, NPM_DIR / "package.json")
    # No lockfile: both packages are pinned exactly and have no dependencies of their own.
    done = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--no-package-lock", "--loglevel=error"],
                          cwd=NPM_DIR, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"npm install in {NPM_DIR} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    for name, version in wanted.items():
        if _installed_version(modules / name) != version:
            raise RuntimeError(f"npm did not install {name}@{version} into {modules}")
    return modules


def missing() -> str | None:
    """Why the front-end files cannot be had here (no npm and no earlier install), or None when they can."""
    wanted = json.loads(PACKAGE_JSON.read_text())["dependencies"]
    modules = NPM_DIR / "node_modules"
    if shutil.which("npm") or all(_installed_version(modules / n) == v for n, v in wanted.items()):
        return None
    return ("npm is not installed, and MathJax and reveal.js (book/package.json) are not in out/npm yet: "
            "install Node.js (Debian: apt-get install nodejs npm), then make site")


def _installed_version(package: Path) -> str | None:
    try:
        return json.loads((package / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None


def _copy_parts(source: Path, parts: list[str], dest: Path) -> Path:
    for part in parts:
        src, dst = source / part, dest / part
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.map"))
        else:
            shutil.copy2(src, dst)
    return dest


def copy_mathjax(dest: Path) -> Path:
    """MathJax's browser build into dest (a page then loads dest/tex-chtml.js)."""
    return _copy_parts(node_modules() / "mathjax" / "es5", MATHJAX_PARTS, dest)


def copy_reveal(dest: Path) -> Path:
    """reveal.js into dest (a deck then loads dest/dist/reveal.js)."""
    return _copy_parts(node_modules() / "reveal.js", REVEAL_PARTS, dest)


if __name__ == "__main__":
    print(node_modules())
