"""The planner against training runs published by others: configurations, throughputs, and their sources.

    .venv/bin/python benchmarks/published_runs.py [--out benchmarks/results/planner]

Arithmetic only (the planner's closed forms): no timing, so the machine does not matter; the table is
deterministic and tests/test_planner.py recomputes it. One constant is fitted, the efficiency (the fraction
of a device's peak its kernels reach), on one row (``CALIBRATION_ROW``); every other row is a prediction.

For each row: the published configuration's rank among the plans that fit (among every plan, and among the
distinct parallel layouts tp x cp x pp x dp, each at its best microbatch, schedule and recomputation, since
Megatron-LM's 2021 table gives only the layout), and its predicted against its published throughput in
tokens per second per GPU (Megatron-LM 2021 publishes TFLOP/s per GPU counted with its own formula, which
includes the recomputed forward: 96 B s l h^2 (1 + s/6h + V/16lh) per step; it is converted back to
tokens here). Writes results.md and results.csv into ``--out``.
"""
from __future__ import annotations

import argparse
import csv
import math
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline_ref.sim import cluster
from pipeline_ref.tools import planner

MEGATRON_2021 = ("Narayanan et al. 2021, Efficient Large-Scale Language Model Training on GPU Clusters Using "
                 "Megatron-LM, arXiv:2104.04473, Table 1 (also in https://github.com/NVIDIA/Megatron-LM "
                 "README); "
                 "Selene, DGX A100 80GB nodes, mixed precision, activation recomputation")
NEMO_2407 = ("NVIDIA NeMo 24.07 performance summary, https://github.com/NVIDIA/NeMo/blob/main/docs/source/"
             "performance/performance_summary.md (DGX-H100, FP8)")
BRIDGE_2511 = ("NVIDIA Megatron-Bridge performance summary, 25.11 NeMo container, DGX-H100, "
               "https://github.com/NVIDIA-NeMo/Megatron-Bridge/blob/main/docs/performance-summary-archive.md")
CALIBRATION_ROW = "Megatron 145.6B"


@dataclass(frozen=True)
class Run:
    """A published run: model, GPUs, global batch, layout, and its throughput as published."""
    name: str
    model: str                  # a key of cluster.MODELS
    device: str
    num_gpus: int
    global_batch: int
    tp: int
    pp: int
    source: str
    tflops_per_gpu: float = 0.0         # Megatron 2021: achieved, with its own FLOP count
    tokens_per_gpu: float = 0.0         # NVIDIA's tables: tokens / s / GPU
    aggregate_pflops: float = 0.0       # Megatron 2021's own column, a check on the transcription
    microbatch: int = 0                 # 0: not published (the planner's best is taken)
    chunks: int = 1                     # virtual pipeline stages (VP)
    cp: int = 1
    precision: str = "bf16"
    era: str = "2021"                   # which options existed: 2021 (Megatron-LM 2021) or 2024 (NeMo)


RUNS = [Run(f"Megatron {size}B", key, "a100-80gb", gpus, batch, tp, pp, MEGATRON_2021, tflops,
            aggregate_pflops=pflops)
        for size, key, tp, pp, gpus, batch, tflops, pflops in [
            ("1.7", "megatron-1.7b", 1, 1, 32, 512, 137, 4.4),
            ("3.6", "megatron-3.6b", 2, 1, 64, 512, 138, 8.8),
            ("7.5", "megatron-7.5b", 4, 1, 128, 512, 142, 18.2),
            ("18.4", "megatron-18b", 8, 1, 256, 1024, 135, 34.6),
            ("39.1", "megatron-39b", 8, 2, 512, 1536, 138, 70.8),
            ("76.1", "megatron-76b", 8, 4, 1024, 1792, 140, 143.8),
            ("145.6", "megatron-145b", 8, 8, 1536, 2304, 148, 227.1),
            ("310.1", "megatron-310b", 8, 16, 1920, 2160, 155, 297.4),
            ("529.6", "megatron-530b", 8, 35, 2520, 2520, 163, 410.2),
            ("1008", "megatron-1t", 8, 64, 3072, 3072, 163, 502.0)]]
RUNS += [
    Run("NeMo GPT-3 175B, 128 H100", "gpt3-175b", "h100", 128, 256, 4, 8, NEMO_2407, tokens_per_gpu=726,
        microbatch=1, chunks=6, precision="fp8", era="2024"),
    Run("NeMo GPT-3 175B, 512 H100", "gpt3-175b", "h100", 512, 2048, 4, 8, NEMO_2407, tokens_per_gpu=782,
        microbatch=2, chunks=6, precision="fp8", era="2024"),
    Run("Bridge Llama 3 70B, 64 H100", "llama3-70b", "h100", 64, 128, 4, 8, BRIDGE_2511, tokens_per_gpu=1602,
        microbatch=1, chunks=5, precision="fp8", era="2024"),
    Run("Bridge Llama 3.1 405B, 1024 H100", "llama3-405b", "h100", 1024, 512, 8, 8, BRIDGE_2511,
        tokens_per_gpu=292, microbatch=1, chunks=8, cp=2, precision="fp8", era="2024"),
]


def space(run: Run) -> planner.Space:
    """The planner's search for a run's model, GPUs and batch, with the options of the run's era."""
    model = cluster.MODELS[run.model]
    if run.era == "2021":       # no sequence parallelism, no selective recomputation, no ZB, one optimizer
        return planner.Space(model, run.device, run.num_gpus, run.global_batch, precision=run.precision,
                             schedules=("gpipe", "1f1b", "interleaved"), recompute=("none", "full"),
                             sequence_parallel=False)
    return planner.Space(model, run.device, run.num_gpus, run.global_batch, precision=run.precision,
                         context_parallel=tuple(sorted({1, run.cp})), chunks=tuple(sorted({2, 3, 4, 5, 6, 8,
                                                                                            run.chunks})),
                         recompute=("none", "full"), distributed_optimizer=True, overlap_dp=True,
                         flash_attention=True)


def published_tokens_per_gpu(run: Run) -> float:
    """Tokens / s / GPU as published, or from Megatron 2021's TFLOP/s and its FLOP count (eq. 3)."""
    if run.tokens_per_gpu:
        return run.tokens_per_gpu
    m = cluster.MODELS[run.model]
    b, s, l, h, v = run.global_batch, m.seq_len, m.num_layers, m.hidden, m.vocab
    flops = 96 * b * s * l * h * h * (1 + s / (6 * h) + v / (16 * l * h))
    step = flops / (run.tflops_per_gpu * 1e12 * run.num_gpus)
    return b * s / step / run.num_gpus


def is_published(run: Run, plan: planner.Plan) -> bool:
    """Whether a plan is the run's published configuration (in what the source states)."""
    dp = run.num_gpus // (run.tp * run.cp * run.pp)
    if (plan.tp, plan.pp, plan.dp, plan.cp) != (run.tp, run.pp, dp, run.cp):
        return False
    if run.era == "2021":
        return plan.recompute == "full"         # eq. 3 counts the recomputed forward
    chunks_match = plan.chunks == run.chunks if run.chunks > 1 else plan.schedule == "1f1b"
    return plan.microbatch == run.microbatch and plan.schedule in ("interleaved", "1f1b") and chunks_match


def published_estimate(run: Run, efficiency: float) -> planner.Estimate | None:
    """The best plan that is the published configuration (None if none fits)."""
    found = [planner.estimate(plan, efficiency)
             for plan in planner.plans(space(run)) if is_published(run, plan)]
    fitting = sorted((e for e in found if e.fits), key=lambda e: e.step_seconds)
    return fitting[0] if fitting else None


def calibrate(run: Run) -> float:
    """The efficiency at which the published configuration's predicted throughput equals the published one
    (bisection: the prediction grows with the efficiency)."""
    target, low, high = published_tokens_per_gpu(run), 0.05, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        if published_estimate(run, middle).tokens_per_second_per_gpu < target:
            low = middle
        else:
            high = middle
    return round((low + high) / 2, 4)


def compare(run: Run, efficiency: float) -> dict:
    """One row of the table: the published configuration's ranks, its predicted and published throughput."""
    found = [e for e in planner.search(space(run), efficiency) if e.fits]
    mine = published_estimate(run, efficiency)
    layouts, seen = [], set()
    same = [e for e in found if e.plan.recompute == mine.plan.recompute] if mine else []
    same_layouts = list(dict.fromkeys((e.plan.tp, e.plan.cp, e.plan.pp, e.plan.dp) for e in same))
    for e in found:
        key = (e.plan.tp, e.plan.cp, e.plan.pp, e.plan.dp)
        if key not in seen:
            seen.add(key)
            layouts.append(key)
    published = published_tokens_per_gpu(run)
    row = {"run": run.name, "gpus": run.num_gpus, "device": run.device, "precision": run.precision,
           "published_layout": f"tp={run.tp} cp={run.cp} pp={run.pp} "
                               f"dp={run.num_gpus // (run.tp * run.cp * run.pp)}",
           "feasible_plans": len(found), "published_tokens_per_gpu": round(published, 1)}
    if mine is None:
        return {**row, "rank": "", "layout_rank": "", "layout_rank_same_recompute": "",
                "predicted_tokens_per_gpu": "", "error": "",
                "planner_best": found[0].plan.describe() if found else "none fits"}
    rank = 1 + sum(e.step_seconds < mine.step_seconds for e in found)
    layout_rank = 1 + layouts.index((mine.plan.tp, mine.plan.cp, mine.plan.pp, mine.plan.dp))
    predicted = mine.tokens_per_second_per_gpu
    same_rank = 1 + same_layouts.index((mine.plan.tp, mine.plan.cp, mine.plan.pp, mine.plan.dp))
    return {**row, "rank": rank, "layout_rank": layout_rank, "layout_rank_same_recompute": same_rank,
            "predicted_tokens_per_gpu": round(predicted, 1),
            "error": round(predicted / published - 1, 4), "published_plan": mine.plan.describe(),
            "memory_gib": round(mine.memory_bytes / 2**30, 1), "planner_best": found[0].plan.describe()}


def table(efficiency: float | None = None) -> tuple[float, list[dict]]:
    """(the calibrated efficiency, one row per published run)."""
    if efficiency is None:
        efficiency = calibrate(next(r for r in RUNS if r.name == CALIBRATION_ROW))
    return efficiency, [compare(run, efficiency) for run in RUNS]


COLUMNS = ["run", "gpus", "device", "precision", "published_layout", "published_plan", "feasible_plans",
           "rank", "layout_rank", "layout_rank_same_recompute", "published_tokens_per_gpu",
           "predicted_tokens_per_gpu", "error", "memory_gib", "planner_best"]


def write(out: Path, efficiency: float, rows: list[dict]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"efficiency calibrated on {CALIBRATION_ROW}: {efficiency}", "",
             "| run | published configuration (the planner's best variant of it) | rank (all plans) "
             "| rank (layouts) "
             "| rank (layouts, same recomputation) | published tok/s/GPU | predicted | error |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        error = f"{r['error']:+.1%}" if r["error"] != "" else "does not fit"
        lines.append(f"| {r['run']} | {r.get('published_plan', r['published_layout'])} | {r['rank']} of "
                     f"{r['feasible_plans']} | {r['layout_rank']} | {r['layout_rank_same_recompute']} | "
                     f"{r['published_tokens_per_gpu']} | {r['predicted_tokens_per_gpu']} | "
                     f"{error} |")
    print("\n".join(lines))
    header = ["# The planner against published runs", "",
              "Written by `.venv/bin/python benchmarks/published_runs.py` (arithmetic: no timing, any "
              "machine gives these numbers; `tests/test_planner.py` recomputes them). Sources of every row: "
              "`benchmarks/published_runs.py`. Rank: 1 + the plans (or layouts tp x cp x pp x dp, each at "
              "its best variant) the planner predicts faster, among those that fit; the last rank column "
              "counts "
              "only plans with the published configuration's recomputation. Error: predicted / published "
              "tokens per second per GPU - 1.", ""]
    (out / "results.md").write_text("\n".join(header + lines + [""] + WHY) + "\n")


# Why rows miss, read off the rows' breakdowns (planner.Estimate.parts) and the memory they need.
WHY = [
    "## Where the model misses, and why", "",
    "- **Ranks of the small Megatron models** (1.7B to 18.4B: no pipeline, 32 replicas): Table 1 gives only "
    "tp, pp and dp, and every run recomputed its activations (its FLOP count includes the recomputed "
    "forward). The planner prefers no recomputation where the memory allows (the middle rank column), and even at the "
    "same recomputation it prefers a pipeline with fewer replicas (the last column): in the model the "
    "all-reduce of 32 replicas' gradients comes after the backward, not under it, and is a large part of "
    "these steps (`Estimate.parts`). The published throughputs of these rows are still predicted within the "
    "table's errors; whether the 2021 runs overlapped that all-reduce, the paper's table does not say.",
    "- **H100 FP8 rows predicted too slow**: our activation memory is Korthikanti et al.'s 16-bit count of "
    "GPT's layer. FP8 runs keep the inputs of their matrix multiplies in 8 bits, and Llama's gated MLP keeps "
    "other tensors, so in the model the published microbatch only fits with full recomputation (a third more "
    "compute), which the published runs did not need. The one H100 row that fits without recomputation is "
    "predicted too fast: one efficiency for BF16 on A100 and FP8 on H100 overrates FP8's kernels.",
    "- **Llama 3.1 405B** runs context parallelism across two nodes (tp 8 x cp 2); the model splits the "
    "sequence but does not charge the ring exchange of keys and values (assumed overlapped).",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/planner")
    args = parser.parse_args()
    for run in RUNS:        # the transcription against the source's own aggregate column
        if run.aggregate_pflops and not math.isclose(run.tflops_per_gpu * run.num_gpus / 1e3,
                                                     run.aggregate_pflops, rel_tol=0.01):
            raise SystemExit(f"{run.name}: per-GPU and aggregate throughput disagree")
    efficiency, rows = table()
    write(Path(args.out), efficiency, rows)


if __name__ == "__main__":
    main()
