"""Lesson 08, beside the ranks: a Hugging Face GPT-2 on real text, its pieces, what crosses each cut, what it holds.

    model, loss_fn, batches = gpt2_text()                 # the lesson's model (``RunConfig(model=GPT2_TEXT)``)
    pieces = split.trace(model, sample)                   # torch's tracer cuts it (pipeline_ref/split.py)
    piece_rows(model, pieces), boundary_rows(pieces, sample)   # what each piece holds, what each cut carries
    piece_bytes(pieces, loss_fn, sample, target)          # per piece: parameter bytes by name, activation bytes

The ranks themselves run ``pipeline_ref.train.run_many``; nothing here starts MPI.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline_ref import hf_models, precision, split, text_data
from pipeline_ref.stage import Stage

GPT2_TEXT = "lesson_code.l08_real_transformer:gpt2_text"
# Small enough that a few dozen bf16 steps on 2 CPU ranks take seconds; wide enough to learn bytes of Python.
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


def piece_bytes(pieces, loss_fn, sample, target, names: dict | None = None, autocast: str | None = None) -> list[dict]:
    """Per piece, what it holds: ``{"parameters": {name: bytes}, "activations": bytes}``.

    Parameters by name, so a weight two pieces share (GPT-2's ``wte`` and ``lm_head``) is seen as one when both
    are on one stage. Activations: what autograd keeps for one microbatch's backward, counted by the executor's
    own ``Stage`` (a saved-tensors hook, the count a run reports as ``peak_stashed_bytes``); the last piece with
    the loss; with ``autocast`` ("bfloat16") run as a run with that autocast runs it. Each piece is measured on its own, so a tensor two pieces of one stage both save (the attention
    mask) is counted in each: the sum over a stage's pieces is an upper bound of what the stage stashes.
    """
    names, loss = names or {}, split.loss_of(pieces, loss_fn)
    rows, values = [], (sample,)
    with torch.random.fork_rng(devices=[]):
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            stage = Stage(piece, is_first=i == 0, is_last=last, loss_fn=loss)
            stage.precision = precision.autocast(autocast, torch.device("cpu"))
            outputs = stage.forward(0, values, target if last else None)
            params = {names.get(id(p), n): p.numel() * p.element_size() for n, p in piece.named_parameters()}
            rows.append({"parameters": params, "activations": stage.stash[0].nbytes})
            values = outputs
    return rows
