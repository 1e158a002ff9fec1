"""The lessons' device switch (lessons/lesson_code/device.py): PIPELINE_COURSE_DEVICE and the models sized for it.

Pure tests, milliseconds each, except one subprocess that imports the module the way a notebook does. The CPU
sizes are pinned to the constants the committed lesson outputs were measured with, so the switch cannot change
what a laptop prints.

    .venv/bin/python -m pytest -q tests/test_lesson_device.py
"""
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

LESSONS = Path(__file__).resolve().parents[1] / "lessons"
if str(LESSONS) not in sys.path:
    sys.path.insert(0, str(LESSONS))

from lesson_code import device  # noqa: E402
from lesson_code.device import ENV_VARIABLE, course_device, sized  # noqa: E402


@pytest.mark.parametrize("value, cuda, expected", [
    (None, False, "cpu"), (None, True, "cuda"),            # unset: auto
    ("", True, "cuda"), ("  ", False, "cpu"),               # empty: auto
    ("auto", False, "cpu"), ("auto", True, "cuda"),
    ("cpu", True, "cpu"), ("CPU", False, "cpu"),            # cpu even where there is a GPU
    ("cuda", True, "cuda"), (" Cuda ", True, "cuda"),
])
def test_the_variable_picks_the_device(value, cuda, expected):
    env = {} if value is None else {ENV_VARIABLE: value}
    assert course_device(env, cuda_available=cuda) == expected


def test_cuda_without_a_gpu_says_so():
    with pytest.raises(ValueError, match=f"{ENV_VARIABLE}=cuda, but torch sees no CUDA device") as err:
        course_device({ENV_VARIABLE: "cuda"}, cuda_available=False)
    assert f"{ENV_VARIABLE}=cpu" in str(err.value)                   # and what to do instead


@pytest.mark.parametrize("value", ["gpu", "cuda:1", "mps", "0"])
def test_an_unknown_device_is_named(value):
    with pytest.raises(ValueError, match=rf"{ENV_VARIABLE}='{value}' is not a device; choose one of cpu, cuda, auto"):
        course_device({ENV_VARIABLE: value}, cuda_available=True)


def test_the_default_reads_the_environment(monkeypatch):
    monkeypatch.setenv(ENV_VARIABLE, "cpu")
    assert course_device(cuda_available=True) == "cpu"
    monkeypatch.delenv(ENV_VARIABLE)
    assert course_device() == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: cuda is a valid request")
def test_a_notebook_asking_for_cuda_on_a_cpu_stops_at_its_import():
    env = {**os.environ, ENV_VARIABLE: "cuda"}
    done = subprocess.run([sys.executable, "-c", "import lesson_code.device"], cwd=LESSONS, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"ValueError: {ENV_VARIABLE}=cuda, but torch sees no CUDA device" in done.stderr


# ---------------------------------------------------------------------------------------------------- sizes

def test_cpu_sizes_are_the_ones_the_committed_outputs_were_measured_with():
    from lesson_code import l05_balancing
    from pipeline_ref import models
    assert sized("timing", "cpu") == {"depth": 8, "width": 512, "batch": 512}
    assert sized("lesson", "cpu") == {"depth": 8, "width": 1024, "batch": 512} == models.MEASURE_MLP
    defaults = {name: p.default for name, p in inspect.signature(l05_balancing.big_vocab_gpt).parameters.items()
                if name != "seed"}
    assert sized("big_vocab_gpt", "cpu") == defaults


@pytest.mark.skipif(device.DEVICE != "cpu", reason="the lessons run on a GPU here")
def test_on_a_cpu_the_lessons_models_are_the_cpu_sizes():
    from lesson_code import common, l04_data_parallel, l05_balancing, l06_interleaved
    assert common.TIMING_MODEL == sized("timing", "cpu")
    for model in (common.LESSON_MODEL, l04_data_parallel.COMPARE_MODEL, l05_balancing.CHECKPOINT_MODEL,
                  l06_interleaved.MEASURE_MODEL):
        assert model == sized("lesson", "cpu")
    assert sized("timing") == sized("timing", "cpu")


def test_both_devices_size_the_same_models_with_the_same_arguments():
    assert set(device.SIZES) == {"cpu", "cuda"}
    for name, kwargs in device.SIZES["cpu"].items():
        assert set(device.SIZES["cuda"][name]) == set(kwargs), name


def test_gpu_models_are_larger_and_still_split_as_the_lessons_split_them():
    for name in ("timing", "lesson"):
        cpu, gpu = sized(name, "cpu"), sized(name, "cuda")
        assert gpu["depth"] == cpu["depth"]                     # 2 and 4 stages of equal blocks, as on a CPU
        assert gpu["width"] * gpu["batch"] >= 32 * cpu["width"] * cpu["batch"]
        assert gpu["batch"] % 32 == 0                           # lesson 04's dp 4 x 8 microbatches at most
    cpu, gpu = sized("big_vocab_gpt", "cpu"), sized("big_vocab_gpt", "cuda")
    assert gpu["dim"] % gpu["heads"] == 0 and gpu["batch"] % 4 == 0
    assert gpu["vocab"] > 8 * gpu["dim"]                        # the head still dwarfs a block
    assert gpu["dim"] * gpu["seq_len"] > cpu["dim"] * cpu["seq_len"]


def test_sized_returns_a_copy_and_refuses_unknown_names():
    mine = sized("timing", "cpu")
    mine["width"] = 1
    assert sized("timing", "cpu")["width"] == 512
    with pytest.raises(KeyError, match="no model 'resnet'"):
        sized("resnet", "cpu")
    with pytest.raises(ValueError, match="no model sizes for device 'auto'"):
        sized("timing", "auto")


def test_a_run_config_takes_the_course_device():
    from pipeline_ref.config import RunConfig
    from pipeline_ref.preflight import check_config
    check_config(RunConfig(device=device.DEVICE, model="mlp", model_kwargs=sized("timing")), world_size=2)


# ------------------------------------------------------------------------------ the notebooks use the switch

@pytest.mark.parametrize("number", ["01", "02", "03", "04", "05", "06", "07", "08"])
def test_every_lesson_that_trains_takes_the_course_device(number):
    """Lessons 01-08 read DEVICE from device.py and pass it to their runs (lesson 08: to its reference too)."""
    import nbformat
    path = next(LESSONS.glob(f"{number}_*.ipynb"))
    code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    assert "from lesson_code.device import DEVICE" in code, path.name
    assert "device=DEVICE" in code, path.name
    assert "on the CPU, as `one_device.train`" not in path.read_text()


def test_lesson_08_measures_its_pieces_on_the_runs_device():
    import nbformat
    code = "\n".join(c.source for c in nbformat.read(next(LESSONS.glob("08_*.ipynb")), as_version=4).cells
                     if c.cell_type == "code")
    assert 'autocast="bfloat16", device=DEVICE)' in code                     # base: every run and the reference
    assert "model.to(DEVICE)" in code and "device=DEVICE)" in code.split("l08.piece_bytes(")[1].split("\n\n")[0]


def test_lesson_08s_model_is_the_one_its_outputs_were_measured_with():
    from lesson_code import l08_real_transformer as l08
    assert l08.MODEL == {"dim": 64, "heads": 4, "blocks": 4, "seq_len": 64, "batch": 16}


def test_the_one_device_reference_trains_on_the_configs_device():
    from pipeline_ref import one_device
    from pipeline_ref.config import RunConfig
    where = device.DEVICE
    curve = one_device.train(RunConfig(model="mlp", model_kwargs={"depth": 2, "width": 8, "batch": 8}, steps=2,
                                       microbatches=2, device=where))
    assert len(curve.losses) == 2
    assert {p.device.type for layer in curve.layers for p in layer.parameters()} == {where}
