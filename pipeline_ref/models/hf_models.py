"""Whole-module model factories: Hugging Face GPT-2 and Llama from small configs, and a net with a skip
connection.

    python -m pipeline_ref run -n 2 --pp 2 --model hf_gpt2 --dtype float64 --split auto
    python -m pipeline_ref run -n 4 --pp 4 --model pipeline_ref.models.hf_models:llama --split-at
    model.layers.1,model.layers.2,model.layers.3

Each returns ``module, loss_fn, (inputs, targets)`` with ``module`` an ordinary ``nn.Module`` as its library
writes it (``transformers.GPT2LMHeadModel``, ``LlamaForCausalLM``): nothing is rewritten for the pipeline,
``split.py`` cuts it. Weights are random (the caller seeds them, ``torch.manual_seed``), nothing is
downloaded; dropout is off so a pipelined step can equal one device's exactly. The data is
``models.tiny_gpt``'s: arithmetic sequences mod ``vocab``, next-token prediction, from its own generator.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from pipeline_ref.models.zoo import next_token_loss, sequences


def lm_loss(output, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of a causal LM's output (a ``ModelOutput`` with ``logits``, or
    logits)."""
    return next_token_loss(output.logits if hasattr(output, "logits") else output, targets)


def gpt2(vocab: int = 128, dim: int = 32, heads: int = 4, blocks: int = 4, seq_len: int = 16, batch: int = 16,
         tie_weights: bool = True, seed: int = 0):
    """``transformers.GPT2LMHeadModel``; with ``tie_weights`` (GPT-2's own choice) ``lm_head`` is ``wte``."""
    from transformers import GPT2Config, GPT2LMHeadModel
    config = GPT2Config(vocab_size=vocab, n_embd=dim, n_head=heads, n_layer=blocks, n_positions=seq_len,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False,
                        tie_word_embeddings=tie_weights, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config), lm_loss, sequences(vocab, seq_len, batch, seed)


def llama(vocab: int = 128, dim: int = 32, heads: int = 4, kv_heads: int = 2, blocks: int = 4,
          seq_len: int = 16,
          batch: int = 16, tie_weights: bool = False, seed: int = 0):
    """``transformers.LlamaForCausalLM``: RMSNorm, rotary positions, grouped-query attention, SwiGLU."""
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=vocab, hidden_size=dim, intermediate_size=2 * dim,
                         num_hidden_layers=blocks,
                         num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=seq_len,
                         attention_dropout=0.0, use_cache=False, tie_word_embeddings=tie_weights,
                         bos_token_id=0, eos_token_id=0, pad_token_id=None)
    return LlamaForCausalLM(config), lm_loss, sequences(vocab, seq_len, batch, seed)


class SkipNet(nn.Module):
    """``inp``, then ``blocks``, then ``out`` applied to the last block's output *plus* ``inp``'s: a skip
    connection across every cut between the blocks, so each boundary carries two activations."""

    def __init__(self, width: int, depth: int):
        super().__init__()
        self.inp = nn.Linear(width, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(depth))
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = h = torch.tanh(self.inp(x))
        for block in self.blocks:
            h = block(h)
        return self.out(h + skip)


def skip_net(width: int = 16, depth: int = 4, batch: int = 16, seed: int = 0):
    """:class:`SkipNet`, MSE regression on random targets (``models.mlp``'s data)."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(batch, width, generator=generator)
    targets = torch.rand(batch, width, generator=generator) * 2 - 1
    return SkipNet(width, depth), F.mse_loss, (inputs, targets)
