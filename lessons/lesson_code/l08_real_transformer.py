"""Lesson 08, beside the ranks: a Hugging Face GPT-2 on real text, its pieces, what crosses each cut, what it holds.

    model, loss_fn, batches = gpt2_text()                 # the lesson's model (``RunConfig(model=GPT2_TEXT)``)
    pieces = split.trace(model, sample)                   # torch's tracer cuts it (pipeline_ref/front/split.py)
    piece_rows(model, pieces), boundary_rows(pieces, sample)   # what each piece holds, what each cut carries
    piece_bytes(pieces, loss_fn, sample, target)          # per piece: parameter bytes by name, activation bytes

The ranks themselves run ``pipeline_ref.train.run_many``; nothing here starts MPI.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline_ref.engine import precision
from pipeline_ref.front import split
from pipeline_ref.models import hf_models, text_data
from pipeline_ref.engine.stage import Stage

GPT2_TEXT = "lesson_code.l08_real_transformer:gpt2_text"
# Small enough that a few dozen bf16 steps on 2 CPU ranks take seconds; wide enough to learn bytes of Python.
# The same on a GPU (PIPELINE_COURSE_DEVICE=cuda): this lesson measures what crosses the cuts, the loss curves
# and the bytes each rank holds, none of which needs a larger model to show.
MODEL = {"dim": 64, "heads": 4, "blocks": 4, "seq_len": 64, "batch": 16}


def gpt2_text(dim: int = 64, heads: int = 4, blocks: int = 4, seq_len: int = 64, batch: int = 16,
              max_bytes: int = 1_000_000, seed: int = 0):
    """``transformers.GPT2LMHeadModel`` over bytes (vocabulary 256, tied ``wte``/``lm_head``, random weights) and a
    new batch of the standard library's source at every step (``text_data.Batches``)."""
    model, loss_fn, _ = hf_models.gpt2(vocab=256, dim=dim, heads=heads, blocks=blocks, seq_len=seq_len, batch=1,
                                       tie_weights=True, seed=seed)
    return model, loss_fn, text_data.Batches(text_data.Corpus.from_stdlib(max_bytes), batch, seq_len, seed)


def owners(model: nn.Module, piece: nn.Module) -> list[str]:
    """The model's submodules whose parameters a piece holds (``transformer.h.0``, ...), by the names it keeps."""
    found = []
    for name, _ in piece.named_parameters(remove_duplicate=False):
        name = name.removeprefix("graph_module.")
        parts = name.split(".")[:-1]                  # drop the parameter's own name (weight, bias)
        if "h" in parts:                              # a block: its name up to the block's index
            parts = parts[: parts.index("h") + 2]
        owner = ".".join(parts)
        if owner not in found:
            found.append(owner)
    return found


def piece_rows(model: nn.Module, pieces) -> list[dict]:
    """One row per piece: the submodules it holds and its parameter count (a tied weight counted where it is used)."""
    return [{"piece": i, "holds": ", ".join(owners(model, p)),
             "parameters": sum(t.numel() for t in p.parameters())} for i, p in enumerate(pieces)]


def boundary_rows(pieces, sample) -> list[dict]:
    """What crosses each cut, from piece i to piece i + 1: each tensor's name in the traced graph, shape, dtype,
    and whether a gradient comes back for it (only floating tensors computed with grad get one, ``message.py``)."""
    rows, values = [], (sample,)
    for i, piece in enumerate(pieces[:-1]):
        values = piece(*values)
        for name, t in zip(pieces[i + 1].inputs, values):
            rows.append({"cut": f"{i} -> {i + 1}", "name": name, "shape": tuple(t.shape),
                         "dtype": str(t.dtype).removeprefix("torch."),
                         "gradient back": bool(t.is_floating_point() and t.requires_grad)})
    return rows


def piece_bytes(pieces, loss_fn, sample, target, names: dict | None = None,
                autocast: str | None = None, device: str = "cpu") -> list[dict]:
    """Per piece, what it holds: ``{"parameters": {name: bytes}, "activations": bytes}``.

    Parameters by name, so a weight two pieces share (GPT-2's ``wte`` and ``lm_head``) is seen as one when both
    are on one stage. Activations: what autograd keeps for one microbatch's backward, counted by the executor's
    own ``Stage`` (a saved-tensors hook, the count a run reports as ``peak_stashed_bytes``); the last piece with
    the loss; with ``autocast`` ("bfloat16"), under the autocast a run with it uses on ``device`` (the pieces and
    the sample must be there: CPU and CUDA autocast keep different tensors in bf16). Each piece is measured on
    its own: a tensor that two pieces of one stage both saved would be counted twice (an upper bound). For GPT-2
    none is, and a stage's sum equals what the run's stage stashes (lesson 08 prints both).
    """
    names, loss = names or {}, split.loss_of(pieces, loss_fn)
    rows, values = [], (sample,)
    with torch.random.fork_rng(devices=[]):
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            stage = Stage(piece, is_first=i == 0, is_last=last, loss_fn=loss)
            stage.precision = precision.autocast(autocast, torch.device(device))
            outputs = stage.forward(0, values, target if last else None)
            params = {names.get(id(p), n): p.numel() * p.element_size() for n, p in piece.named_parameters()}
            rows.append({"parameters": params, "activations": stage.stash[0].nbytes})
            values = outputs
    return rows


def stage_theory(rows: list[dict], ranges, num_microbatches: int, optimizer: str = "adamw") -> list[dict]:
    """What each stage of ``ranges`` should hold under 1F1B, from ``piece_bytes``: the formula of the lesson.

    Parameters once per name on a stage (a tied weight on two stages: once on each), gradients as many bytes,
    AdamW two moments per parameter and a 4-byte step per tensor, and ``min(p - s, m)`` microbatches in flight.
    """
    out = []
    for s, r in enumerate(ranges):
        params = {name: size for i in r for name, size in rows[i]["parameters"].items()}
        weights = sum(params.values())
        out.append({"parameters": weights, "gradients": weights,
                    "optimizer": 2 * weights + 4 * len(params) if optimizer == "adamw" else 0,
                    "peak_stashed_bytes": min(len(ranges) - s, num_microbatches)
                    * sum(rows[i]["activations"] for i in r)})
    return out


def gpt2_small_pieces(vocab: int = 50257, dim: int = 768, blocks: int = 12, positions: int = 1024) -> list[tuple]:
    """Parameters of the real GPT-2 small's pieces, counted from its shape (nothing built): (piece, count)."""
    block = 12 * dim * dim + 13 * dim          # attention 4 d^2 + 4 d, MLP 8 d^2 + 5 d, two LayerNorms 4 d
    return ([("wte", vocab * dim), ("wpe", positions * dim)] + [(f"h.{i}", block) for i in range(blocks)]
            + [("ln_f", 2 * dim), ("lm_head (wte, tied)", vocab * dim)])


def draw_pieces(rows: list[dict], boundaries: list[dict], ranges):
    """The pieces top to bottom, coloured by the stage that holds them, and what crosses each cut between
    them: red for tensors that get a gradient back, grey for those that do not (mask, position ids).
    Drawn tall and narrow so its labels stay readable in the course site's 784 px column."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyBboxPatch

    from lesson_code.diagrams import STAGE_COLORS
    stage_of = {i: s for s, r in enumerate(ranges) for i in r}
    n = len(rows)
    fig, ax = plt.subplots(figsize=(8, 0.85 * n + 1.0))
    ax.set_xlim(0, 10)
    ax.set_ylim(-n + 0.4, 0.6)
    ax.axis("off")
    for i, row in enumerate(rows):
        ax.add_patch(FancyBboxPatch((1.9, -i - 0.25), 3.4, 0.5, boxstyle="round,pad=0.03",
                                    facecolor=STAGE_COLORS[stage_of[i] % len(STAGE_COLORS)], alpha=0.85))
        ax.text(3.6, -i, f"{i}: {row['holds'].replace('transformer.', '')}", ha="center", va="center",
                fontsize=10, color="white", weight="bold")
        ax.text(5.5, -i, f"{row['parameters']:,} parameters", ha="left", va="center", fontsize=10)
    for s, r in enumerate(ranges):
        ax.text(1.7, -(r.start + r.stop - 1) / 2, f"stage {s}\n(rank {s})", ha="right", va="center",
                fontsize=11, weight="bold", color=STAGE_COLORS[s % len(STAGE_COLORS)])
    for i in range(n - 1):
        crossing = [b for b in boundaries if b["cut"] == f"{i} -> {i + 1}"]
        for k, b in enumerate(crossing):
            color = "#C44E52" if b["gradient back"] else "#555555"
            y = -i - 0.5 + 0.12 * (len(crossing) - 1) - 0.24 * k
            shape = "x".join(map(str, b["shape"]))
            ax.text(5.5, y, f"{b['dtype']} {shape}", ha="left", va="center", fontsize=9.5, color=color,
                    style="normal" if b["gradient back"] else "italic")
        if crossing:
            ax.annotate("", xy=(3.6, -i - 0.72), xytext=(3.6, -i - 0.28),
                        arrowprops={"arrowstyle": "<|-|>" if any(b["gradient back"] for b in crossing)
                                    else "-|>", "color": "#333333"})
    ax.legend(handles=[Line2D([], [], color="#C44E52", label="crosses a cut, a gradient comes back"),
                       Line2D([], [], color="#555555", label="crosses a cut, no gradient (italic)")],
              loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=2, fontsize=9.5, frameon=False)
    ax.set_title("GPT-2 cut by torch's tracer: pieces (parameters), what crosses each cut", fontsize=11)
    fig.tight_layout()
    return fig
