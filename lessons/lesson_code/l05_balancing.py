"""Lesson 05, beside the ranks: an unbalanced model, what each of its layers costs, and what a split predicts.

    big_vocab_gpt()                       # the model factory the ranks train: --model lesson_code.l05_balancing:big_vocab_gpt
    costs = layer_costs(cfg)              # seconds of forward + backward per layer, measured here on one core
    simulate_split(costs, ranges, "1f1b", 4)   # the step those costs predict for a split
    prediction_sentence(...)              # is a split's predicted step inside the band of its measured one?

The ranks themselves run ``pipeline_ref.train.run_many``; nothing here starts MPI.
"""
from __future__ import annotations

import torch

from lesson_code.common import LESSON_MODEL
from pipeline_ref import models, schedules, simulate
from pipeline_ref.front import profiling
from pipeline_ref.sim import band
from pipeline_ref.config import RunConfig
from pipeline_ref.preflight import build_model
from pipeline_ref.engine.device import choose

# The model of the activation-checkpointing runs (pipeline_ref.models.mlp): 8 equal blocks; on 2 stages a
# microbatch of 64 samples through 4 blocks is 4 products of 64 x 1024 x 1024.
CHECKPOINT_MODEL = LESSON_MODEL


def big_vocab_gpt(vocab: int = 8192, dim: int = 128, heads: int = 4, blocks: int = 6, seq_len: int = 32,
                  batch: int = 64, seed: int = 0):
    """The course's tiny GPT with a vocabulary far larger than its width: a model that is easy to split badly.

    Layers ``[Embedding, Block x 6, Head]``. The embedding and the head hold the same number of parameters
    (vocab x dim each, about 1M, five times a block's 200k), but they cost very different amounts of time:
    the embedding *looks up* one row per token, while the head multiplies every token by a dim x vocab
    matrix (and the loss takes a softmax over the whole vocabulary). Equal layer counts, or equal
    parameters, put the head with three blocks, and that stage sets the pace of the whole pipeline.
    """
    return models.tiny_gpt(vocab=vocab, dim=dim, heads=heads, blocks=blocks, seq_len=seq_len, batch=batch,
                           seed=seed)


def layer_costs(cfg: RunConfig, repeats: int = 7) -> list[float]:
    """Seconds of forward + backward of each layer on one microbatch, on one core of this process (or its GPU):
    the median of ``repeats`` alternating rounds after a warm-up round.

    The same measurement the ranks make for ``partition="time"`` (``pipeline_ref.front.profiling.layer_costs``).
    """
    layers, _, (inputs, _) = build_model(cfg)
    device = choose(cfg.device)            # this process: GPU 0 when the course runs on CUDA, else the CPU
    layers = [layer.to(device) for layer in layers]
    microbatch = inputs.shape[0] // (cfg.dp * cfg.microbatches)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)               # like a rank (launch gives each rank one thread)
    try:
        return profiling.layer_costs(layers, inputs[:microbatch].to(device), repeats=repeats)
    finally:
        torch.set_num_threads(threads)


def parameter_counts(cfg: RunConfig) -> list[int]:
    layers, _, _ = build_model(cfg)
    return [sum(p.numel() for p in layer.parameters()) for layer in layers]


def simulate_split(stage_costs: list[float], schedule: str, num_microbatches: int, time_unit: str = "s"):
    """The step the simulator predicts when stage s costs ``stage_costs[s]`` per microbatch (forward + backward).

    Each stage's cost is split 1 : 2 between forward and backward, the usual ratio for matrix products.
    """
    sched = schedules.build(schedule, len(stage_costs), num_microbatches)
    return simulate.simulate(sched, forward=[c / 3 for c in stage_costs], backward=[2 * c / 3 for c in stage_costs],
                             time_unit=time_unit)


def layer_names(cfg: RunConfig) -> list[str]:
    layers, _, _ = build_model(cfg)
    return [type(layer).__name__.lower() for layer in layers]


def layer_bars(names: list[str], params: list[int], costs: list[float], splits: dict):
    """Each layer's share of the parameters and of the time, with where each partitioner cuts the model."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 3.8))   # under 7.8 in: not shrunk on the site
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [p / sum(params) for p in params], width=0.4, color="#8172B3", label="share of parameters")
    ax.bar([i + 0.2 for i in x], [c / sum(costs) for c in costs], width=0.4, color="#55A868",
           label="share of forward + backward time (measured)")
    styles = [("-", "black", -0.08), ("--", "#C44E52", 0.0), (":", "#4C72B0", 0.08)]   # nudged: cuts may coincide
    top = max(max(p / sum(params) for p in params), max(c / sum(costs) for c in costs))
    for (name, ranges), (style, color, nudge) in zip(splits.items(), styles):
        for r in ranges[:-1]:
            ax.axvline(r.stop - 0.5 + nudge, color=color, linestyle=style, linewidth=1.8)
        ax.plot([], [], color=color, linestyle=style, label=f"cut: {name}")
    ax.set_xticks(list(x), [f"{i}\n{n}" for i, n in enumerate(names)])
    ax.set_ylim(0, 1.1 * top)
    ax.set_ylabel("share of the model")
    ax.legend(fontsize=9, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
    fig.tight_layout()
    return fig


def run_stage_costs(trace) -> list[float]:
    """Each rank's mean forward + backward of one microbatch in a measured run, with the executor's own time
    between actions (``band.run_costs``): the costs the run itself played, beside the profile's."""
    costs = band.run_costs(trace)
    return [f + b for f, b in zip(costs["forward"], costs["backward"])]


def prediction_sentence(name: str, predicted: float, measured: float, explained, causes: list[str]) -> str:
    """Whether a split's step predicted from the profile lies in the band of its measured step, as a sentence.

    ``explained`` is ``measure``'s Band (seconds): the step the schedule explains with the runs' own costs.
    A prediction outside it means the profile's costs are not the ones the runs played (``causes``: what
    the protocol flagged, such as contention for the cores).
    """
    low, high = explained.low, explained.high
    where = "inside" if low <= predicted <= high else "outside"
    text = (f"{name}: predicted {predicted * 1e3:.0f} ms, measured median {measured * 1e3:.0f} ms, band "
            f"{low * 1e3:.0f}-{high * 1e3:.0f} ms: the prediction is {where} the band")
    return text + (f"; flagged: {' and '.join(causes)}" if causes else "")
