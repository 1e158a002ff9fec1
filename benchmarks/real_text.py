"""A small GPT trained on real text through a 2-stage pipeline, against the same training on one process.

    .venv/bin/python benchmarks/real_text.py [--steps 300] [--out benchmarks/results/real_text]

The data is ``text_data``'s byte-level corpus (the standard library's own source, no download); the model is
``models.text_gpt`` (tied embedding and head, as GPT-2). Three runs, each on 2 local ranks (1F1B, 4 microbatches)
and on one process (``one_device.train``, the same configuration):

1. float32, AdamW, ``--steps`` steps: the two loss curves step for step (largest difference), and the
   validation loss of both final models against the uniform baseline ln(256);
2. float64, SGD, 30 steps: the curves equal to rounding;
3. bfloat16 autocast, AdamW, ``--steps`` steps: the curve beside float32's.

Writes results.md and curves.png into ``--out``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

from pipeline_ref import one_device
from pipeline_ref.engine import machine
from pipeline_ref.models import text_data
from pipeline_ref.config import RunConfig
from pipeline_ref.preflight import build_model
from pipeline_ref.launch import launch

HERE = Path(__file__).resolve().parent
MODEL = {"dim": 64, "heads": 4, "blocks": 4, "seq_len": 64, "batch": 16}


def pipelined_layers(cfg: RunConfig, result) -> list:
    """The one-process model with every parameter the pipelined run ended with (names as named_parameters)."""
    layers, _, _ = build_model(cfg)
    own = dict(nn.Sequential(*layers).named_parameters())
    with torch.no_grad():
        for rank_params in result.params:
            for name, tensor in rank_params.items():
                own[name].copy_(tensor)
    return layers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--out", default=str(HERE / "results" / "real_text"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine.machine_info()
    common = dict(schedule="1f1b", pp=2, microbatches=4, model="text_gpt", model_kwargs=MODEL)
    runs = {"float32 AdamW": RunConfig(**common, steps=args.steps, optimizer="adamw", lr=3e-3, collect_params=True),
            "float64 SGD": RunConfig(**common, steps=30, dtype="float64", lr=0.3),
            "bfloat16 AdamW": RunConfig(**common, steps=args.steps, optimizer="adamw", lr=3e-3,
                                        autocast="bfloat16", collect_params=True)}
    began = time.perf_counter()
    results = dict(zip(runs, launch(2, "pipeline_ref.train:run_many", list(runs.values()), timeout=7200,
                                    stall_timeout=600)[0]))
    pipeline_seconds = time.perf_counter() - began
    began = time.perf_counter()
    curves = {name: one_device.train(cfg) for name, cfg in runs.items()}
    one_seconds = time.perf_counter() - began

    corpus = text_data.Corpus.from_stdlib()
    lines = ["# A small GPT on real text: 2-stage pipeline against one process", "", machine.machine_markdown(info),
             f"Data: {corpus!r}. Model: `models.text_gpt({MODEL})`, tied embedding and head; 1F1B, 2 stages, "
             f"4 microbatches. The pipelined runs took {pipeline_seconds:.0f} s, the one-process runs "
             f"{one_seconds:.0f} s (both on this machine's cores, shared).", "",
             "| run | steps | first loss | last loss (pipeline) | largest difference pipeline - one process, "
             "any step | first step that differs | validation loss, pipeline | validation loss, one process |",
             "|---|---|---|---|---|---|---|---|"]
    for name, cfg in runs.items():
        pipe, one = results[name].losses, curves[name].losses
        diff = max(abs(a - b) for a, b in zip(pipe, one))
        if cfg.collect_params:
            val_pipe = f"{one_device.validation_loss(pipelined_layers(cfg, results[name]), cfg):.3f}"
            val_one = f"{one_device.validation_loss(curves[name].layers, cfg):.3f}"
        else:
            val_pipe = val_one = "-"
        first = next((str(s) for s, (a, b) in enumerate(zip(pipe, one)) if a != b), "none")
        lines.append(f"| {name} | {cfg.steps} | {pipe[0]:.4f} | {pipe[-1]:.4f} | {diff:.2e} | {first} | {val_pipe} "
                     f"| {val_one} |")
    bf16, fp32 = results["bfloat16 AdamW"].losses, results["float32 AdamW"].losses
    lines += ["", "In float32 the two curves start equal bit for bit and part by rounding: the tied embedding's "
              "gradient is summed over two ranks in an order one process does not use, and AdamW carries the last "
              "bits forward step after step. float64 shows the computation itself is the same.",
              "", f"Uniform baseline: ln(256) = {text_data.UNIFORM_LOSS:.3f} nats per byte. Validation: the mean over "
              "8 held-out batches. bfloat16 against float32 (both pipelined): largest difference of the loss at any "
              f"step {max(abs(a - b) for a, b in zip(bf16, fp32)):.3f}, mean over the last 50 steps "
              f"{sum(bf16[-50:]) / 50:.3f} against {sum(fp32[-50:]) / 50:.3f}."]
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, style in (("float32 AdamW", "-"), ("bfloat16 AdamW", "-")):
        ax.plot(results[name].losses, style, label=f"{name}, pipeline (2 stages)")
        ax.plot(curves[name].losses, ":", color="black", linewidth=1, label=f"{name}, one process")
    ax.axhline(text_data.UNIFORM_LOSS, color="grey", linestyle="--", label="uniform, ln 256")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats per byte)")
    ax.legend(fontsize=7)
    ax.set_title("text_gpt on the standard library's source")
    fig.savefig(out / "curves.png", dpi=110, bbox_inches="tight")
    print(text)


if __name__ == "__main__":
    main()
