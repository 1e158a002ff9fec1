"""A damaged or foreign checkpoint is refused before any rank trains, in one line that names what is wrong.

    .venv/bin/python -m pytest -q tests/test_checkpoint_refusals.py       # a few seconds: no rank is started

Each case damages a checkpoint written here as a run writes it (``checkpoint.save_layers`` + ``commit``) and
asks ``preflight.preflight``, the check every rank and the parent of ``run -n N`` make before any message. One
case goes through the command line, whose parent refuses before it starts mpiexec: nothing is left running.
"""
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from pipeline_ref.engine import optim
from pipeline_ref.faults import checkpoint
from pipeline_ref.config import ConfigError, RunConfig
from pipeline_ref.preflight import build_model, preflight

ROOT = Path(__file__).resolve().parents[1]
MLP = {"model": "mlp", "model_kwargs": {"depth": 4, "width": 8, "batch": 16}, "dtype": "float64", "pp": 2,
       "microbatches": 4, "steps": 5}


def _save(folder: Path, step: int = 2, **changes) -> RunConfig:
    """A checkpoint of step ``step`` as a 2-stage run of ``MLP`` (with ``changes``) writes it; its config."""
    cfg = RunConfig(**{**MLP, **changes})
    layers, _, _ = build_model(cfg)
    params = [p for layer in layers for p in layer.parameters()]
    optimizer = optim.make(cfg.optimizer, params, cfg.lr)
    files = checkpoint.save_layers(folder, step, dict(enumerate(layers)), optimizer)
    checkpoint.commit(folder, step, checkpoint.describe_run(cfg, None, len(layers)), files)
    return cfg


def _resume(folder: Path, **changes) -> RunConfig:
    return RunConfig(**{**MLP, **changes, "resume_from": str(folder)})


def _truncate(folder: Path) -> None:
    path = checkpoint.step_folder(folder, 2) / "layer-001.pt"
    path.write_bytes(path.read_bytes()[:200])


def _scramble(folder: Path) -> None:
    path = checkpoint.step_folder(folder, 2) / "layer-001.pt"
    path.write_bytes(os.urandom(path.stat().st_size))


def _first_format(folder: Path) -> None:
    marker = checkpoint.step_folder(folder, 2) / checkpoint.MARKER
    marker.write_text('{"step": 2, "num_layers": 4}')


REFUSED = {   # name: (damage done to a good checkpoint, options of the resuming run, what its one line says)
    "truncated file": (_truncate, {}, r"layer-001\.pt has 200 bytes, \d+ were written: the checkpoint is "
                                      r"damaged; delete .*step-000002 to resume from an earlier step"),
    "file that does not load": (_scramble, {}, r"layer-001\.pt does not load \(.*\): the checkpoint is "
                                               r"damaged"),
    "missing file": (lambda f: (checkpoint.step_folder(f, 2) / "layer-003.pt").unlink(), {},
                     r"layer-003\.pt is missing, though step-000002's marker lists it"),
    "another width": (None, {"model_kwargs": {"depth": 4, "width": 16, "batch": 16}},
                      r"is of another model: '0\.0\.weight' has shape \(8, 8\) there, \(16, 16\) here"),
    "more layers": (None, {"model_kwargs": {"depth": 6, "width": 8, "batch": 16}},
                    r"is of another model: '4\.0\.weight' is only in this model \(0 name\(s\) only there, "
                    r"4 only here\)"),
    "another optimizer": (None, {"optimizer": "adamw"},
                          r"was saved with --optimizer sgd \(no optimizer state\), this run asks for adamw: "
                          r"resume with --optimizer sgd"),
    "another dtype": (None, {"dtype": "float32"},
                      r"holds '0\.0\.weight' in float64, this run in float32: resume with --dtype float64"),
    "first format": (_first_format, {},
                     r"is in format 1 \(an earlier pipeline_ref's, without an index of names\)"),
    "no step left": (None, {"steps": 2}, r"is at step 2: --steps 2 leaves nothing to run"),
    "no checkpoint": (lambda f: [p.unlink() for p in checkpoint.step_folder(f, 2).iterdir()], {},
                      r"no complete checkpoint in "),
    "pipedream": (None, {"schedule": "pipedream"},
                  r"pipedream has no point where a checkpoint is exact: .* in flight, whose stashed "
                  r"activations"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_damaged_or_foreign_checkpoint_is_refused_in_one_line(tmp_path, case):
    damage, options, message = REFUSED[case]
    _save(tmp_path)
    if damage:
        damage(tmp_path)
    started = time.monotonic()
    with pytest.raises(ConfigError) as refused:
        preflight(_resume(tmp_path, **options), 2)
    assert "\n" not in str(refused.value)
    assert re.search(message, str(refused.value)), str(refused.value)
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("pointer", ["missing", "partial"])
def test_a_pointer_to_an_unfinished_step_falls_back_and_says_so(tmp_path, pointer):
    _save(tmp_path, step=2)
    if pointer == "partial":           # a save cut short: a layer written, no marker
        _save(tmp_path / "elsewhere", step=4)
        target = checkpoint.step_folder(tmp_path, 4)
        target.mkdir()
        (checkpoint.step_folder(tmp_path / "elsewhere", 4) / "layer-000.pt").rename(target / "layer-000.pt")
    (tmp_path / checkpoint.LATEST).write_text("step-000004")
    preflight(_resume(tmp_path), 2)    # not refused: resumes from step 2
    from pipeline_ref.faults.checkpoint_check import check_resume
    saved = check_resume(_resume(tmp_path), build_model(_resume(tmp_path))[0])
    assert saved.folder.name == "step-000002" and saved.step == 2
    why = "is missing" if pointer == "missing" else "has no complete.json (a save cut short)"
    assert saved.note == (f"{tmp_path / 'latest'} names step-000004, which {why}: resuming from step-000002, "
                          f"the newest complete checkpoint")


def test_the_command_line_refuses_before_starting_any_rank(tmp_path):
    _save(tmp_path)
    _truncate(tmp_path)
    marker = f"checkpoint-refusal-{uuid.uuid4().hex}"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pipeline_ref", "run", "-n", "2", "--pp", "2", "--steps",
                           "5", "--microbatches", "4", "--dtype", "float64", "--model-kwargs",
                           '{"depth": 4, "width": 8, "batch": 16}', "--resume", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PIPELINE_REF_TEST_RUN": marker})
    seconds = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "layer-001.pt has 200 bytes" in lines[0], lines
    # The refusal itself takes well under 10 s (the cases above); a whole command adds a Python start and
    # torch's import, which a loaded machine stretches: this bound says only that nothing waits or hangs.
    assert seconds < 30, f"took {seconds:.1f} s"
    left = [e.parent.name for e in Path("/proc").glob("[0-9]*/environ")
            if _has(e, f"PIPELINE_REF_TEST_RUN={marker}".encode())]
    assert not left, f"processes left: {left}"


def _has(environ: Path, entry: bytes) -> bool:
    try:
        return entry in environ.read_bytes().split(b"\0")
    except OSError:         # ended while we looked, or not ours to read
        return False
