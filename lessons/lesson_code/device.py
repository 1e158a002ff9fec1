"""The one place the lessons take their device from, and the model sizes that go with it.

    PIPELINE_COURSE_DEVICE=cuda make lessons        # or cpu, or auto (the default)

    from lesson_code.device import DEVICE, sized
    RunConfig(..., device=DEVICE, model_kwargs=sized("timing"))

``DEVICE`` is ``"cpu"`` or ``"cuda"``: what ``PIPELINE_COURSE_DEVICE`` asks for (``auto``: a GPU when torch
sees one), read once when a notebook (or a rank) imports this module. A ``RunConfig(device="cuda")`` run puts
each rank on its own GPU, chosen from the launcher's local rank (``pipeline_ref.engine.device.for_rank``): on a node with
N GPUs a lesson's ranks use up to N of them, one per rank (more ranks than GPUs share them, which is correct over
MPI).

``sized(name)`` is the model of that name, sized for the device: on a CPU the small models the committed outputs
were measured with (so a laptop's outputs do not drift: ``tests/test_lesson_device.py`` pins them); on a GPU
models large enough that a stage's matrix products, not kernel launches or the executor's own work, set its time.
Code written out by hand to teach MPI (lesson 00, lesson 01's ``naive_step``, lesson 03's ``play_blocking``)
sends host memory and stays on the CPU on any device.
"""
from __future__ import annotations

import os

import torch

ENV_VARIABLE = "PIPELINE_COURSE_DEVICE"
CHOICES = ("cpu", "cuda", "auto")

# Per device kind, the keyword arguments of each model the lessons train. The CPU column is what the lessons
# measured before there was a switch (pinned by the tests); the GPU column multiplies a block's product by
# about 500 (width 4096, batch 4096: a microbatch of 512 through a 4096 x 4096 layer is 17 GFLOP), which keeps
# an H100/H200 busy for most of a millisecond per layer while a message of 512 x 4096 float32 (8 MiB) stays
# small beside a stage's four layers.
SIZES = {
    "cpu": {
        "timing": {"depth": 8, "width": 512, "batch": 512},            # lessons 01-03 (models.mlp)
        "lesson": {"depth": 8, "width": 1024, "batch": 512},           # lessons 04-07 (= models.MEASURE_MLP)
        "big_vocab_gpt": {"vocab": 8192, "dim": 128, "heads": 4, "blocks": 6, "seq_len": 32, "batch": 64},
    },
    "cuda": {
        "timing": {"depth": 8, "width": 4096, "batch": 4096},
        "lesson": {"depth": 8, "width": 4096, "batch": 4096},
        "big_vocab_gpt": {"vocab": 32768, "dim": 1024, "heads": 16, "blocks": 6, "seq_len": 256, "batch": 64},
    },
}


def course_device(env=None, cuda_available: bool | None = None) -> str:
    """``"cpu"`` or ``"cuda"``, as ``PIPELINE_COURSE_DEVICE`` asks (unset or empty: ``auto``).

    ``cuda_available`` defaults to ``torch.cuda.is_available()``; the tests pass it to play either machine.
    Asking for ``cuda`` where torch sees no GPU is an error that says so, not a silent CPU run.
    """
    env = os.environ if env is None else env
    asked = (env.get(ENV_VARIABLE) or "auto").strip().lower() or "auto"
    if asked not in CHOICES:
        raise ValueError(f"{ENV_VARIABLE}={env.get(ENV_VARIABLE)!r} is not a device; "
                         f"choose one of {', '.join(CHOICES)} (auto: a GPU when there is one)")
    if asked == "cpu":
        return "cpu"
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if asked == "auto":
        return "cuda" if available else "cpu"
    if not available:
        raise ValueError(f"{ENV_VARIABLE}=cuda, but torch sees no CUDA device (torch {torch.__version__}, "
                         f"built for CUDA {torch.version.cuda or 'none: a CPU build'}); "
                         f"unset it or set {ENV_VARIABLE}=cpu to run the lessons on the CPU")
    return "cuda"


DEVICE = course_device()


def sized(name: str, device: str | None = None) -> dict:
    """The keyword arguments of model ``name`` for ``device`` ("cpu" or "cuda"; default ``DEVICE``), a copy."""
    kind = DEVICE if device is None else device
    if kind not in SIZES:
        raise ValueError(f"no model sizes for device {kind!r}; choose one of {', '.join(SIZES)}")
    if name not in SIZES[kind]:
        raise KeyError(f"no model {name!r} in lesson_code.device.SIZES; choose one of {', '.join(SIZES[kind])}")
    return dict(SIZES[kind][name])
