"""Toy models with seeded synthetic data, and the one-device ground truth every pipelined step is compared
with.

A *model factory* is any callable whose options are all keywords with defaults, returning

    layers, loss_fn, (inputs, targets)

- ``layers``: a plain list of ``torch.nn.Module``, applied in sequence, each taking one tensor and returning
  one tensor (a pipeline stage sends exactly one tensor to the next);
- ``loss_fn(output, targets)``: a scalar *mean* loss, so the mean over equal microbatches is the full-batch
  loss;
- ``inputs, targets``: the whole global batch, dim 0 the batch.

or ``module, loss_fn, (inputs, targets)``, ``module`` a whole ``nn.Module`` that ``split.py`` cuts into stages
with torch's tracer (``--split auto`` / ``--split-at``); ``hf_models.py``: Hugging Face GPT-2 and Llama.

The caller seeds the parameter init (``torch.manual_seed``); the data comes from the factory's own
``torch.Generator(seed)``, so it is the same whatever the init consumed. Use:

    torch.manual_seed(0)
    layers, loss_fn, (inputs, targets) = models.load_factory("gpt")(tie_weights=True)
    models.check_model(layers, loss_fn, (inputs, targets))
    loss, grads = models.reference_step(layers, loss_fn, inputs, targets)   # one device, full batch

A user's own model is ``load_factory("pkg.module:function")``, the spec ``--model`` takes on the command line.
"""
from __future__ import annotations

import copy
import importlib
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

import pipeline_ref.models.text_data as text_data
from pipeline_ref.models.batches import PerStep, floats_to


# ---------------------------------------------------------------------------------------------- deep MLP

def mlp(depth: int = 8, width: int = 64, batch: int = 32, seed: int = 0):
    """``depth`` identical layers ``Sequential(Linear(width, width), Tanh)``; MSE regression on random
    targets."""
    if depth < 1 or width < 1 or batch < 1:
        raise ValueError(f"mlp needs depth, width and batch >= 1, got depth={depth}, width={width}, "
                         f"batch={batch}")
    # Every layer is the same block (the last one too): equal cost per layer, and names "i.0.weight"
    # throughout.
    layers = [nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(depth)]
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(batch, width, generator=generator)
    targets = torch.rand(batch, width, generator=generator) * 2 - 1     # inside tanh's range: reachable
    return layers, F.mse_loss, (inputs, targets)


# ---------------------------------------------------------------------------------------------- tiny GPT

class Embedding(nn.Module):
    """Token plus learned position embedding: (B, T) integer ids -> (B, T, dim)."""

    def __init__(self, vocab: int, dim: int, seq_len: int):
        super().__init__()
        self.token = nn.Embedding(vocab, dim)
        self.position = nn.Embedding(seq_len, dim)
        # GPT-2's init: with nn.Embedding's N(0, 1) a tied head would start with very large logits.
        nn.init.normal_(self.token.weight, std=0.02)
        nn.init.normal_(self.position.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        return self.token(ids) + self.position(positions)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attention(LN(x)), then x + MLP(LN(x)); causal, no dropout."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)     # (B, heads, T, C / heads)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Head(nn.Module):
    """Final LayerNorm and the projection to the vocabulary (no bias, so it can share the token embedding)."""

    def __init__(self, dim: int, vocab: int):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, vocab, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.ln(x))


def sequences(vocab: int, seq_len: int, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The GPTs' ``(inputs, targets)`` (ours and Hugging Face's): rows counting from a random start by a
    random stride (mod ``vocab``), random enough to be data, regular enough for a few SGD steps to lower the
    loss."""
    generator = torch.Generator().manual_seed(seed)
    start = torch.randint(0, vocab, (batch, 1), generator=generator)
    stride = torch.randint(1, 5, (batch, 1), generator=generator)
    tokens = (start + stride * torch.arange(seq_len + 1)) % vocab
    return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()


def next_token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every position of every sequence."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def tiny_gpt(vocab: int = 64, dim: int = 32, heads: int = 4, blocks: int = 4, seq_len: int = 16,
             batch: int = 16, tie_weights: bool = False, seed: int = 0):
    """Layers ``[Embedding, Block x blocks, Head]``; next-token prediction on arithmetic sequences.

    With ``tie_weights`` the head's weight *is* the token embedding's Parameter (as in GPT-2): in a pipeline
    it lives on the first and the last stage, whose two gradient contributions must be summed.
    """
    if dim % heads:
        raise ValueError(f"tiny_gpt: dim {dim} is not divisible by heads {heads}")
    if min(vocab, dim, heads, seq_len, batch) < 1 or blocks < 0:
        raise ValueError("tiny_gpt: vocab, dim, heads, seq_len and batch must be >= 1 and blocks >= 0")
    embedding = Embedding(vocab, dim, seq_len)
    head = Head(dim, vocab)
    if tie_weights:
        head.out.weight = embedding.token.weight
    layers = [embedding, *(Block(dim, heads) for _ in range(blocks)), head]

    return layers, next_token_loss, sequences(vocab, seq_len, batch, seed)


def tiny_gpt_tied(**options):
    """``tiny_gpt(tie_weights=True, ...)``, for the command line's ``--model gpt_tied``."""
    return tiny_gpt(tie_weights=True, **options)


def text_gpt(dim: int = 64, heads: int = 4, blocks: int = 4, seq_len: int = 64, batch: int = 16,
             tie_weights: bool = True, max_bytes: int = 1_000_000, seed: int = 0):
    """``tiny_gpt``'s layers over bytes (vocabulary 256, tied as in GPT-2 by default), trained on real text: a
    new batch of the standard library's source at every step (``text_data.Batches``; ``--model text_gpt``)."""
    layers, loss_fn, _ = tiny_gpt(vocab=256, dim=dim, heads=heads, blocks=blocks, seq_len=seq_len, batch=1,
                                  tie_weights=tie_weights, seed=seed)
    return layers, loss_fn, text_data.Batches(text_data.Corpus.from_stdlib(max_bytes), batch, seq_len, seed)


FACTORIES = {"mlp": mlp, "gpt": tiny_gpt, "gpt_tied": tiny_gpt_tied, "text_gpt": text_gpt}
# Whole modules (split.py cuts them), named for the command line; imported only when asked for (transformers).
ALIASES = {"hf_gpt2": "pipeline_ref.models.hf_models:gpt2", "hf_llama": "pipeline_ref.models.hf_models:llama"}

# The mlp the lessons past 03 and benchmarks/schedules.py measure on: 8 equal blocks (2 or 4 stages cost the
# same), wide enough that each action is long against the executor's few µs and a message's ~0.1 ms.
MEASURE_MLP = {"depth": 8, "width": 1024, "batch": 512}


# -------------------------------------------------------------------------------------------- loading, checks

def load_factory(spec: str):
    """The factory a spec names: a key of ``FACTORIES`` or ``"pkg.module:function"``. Raises ValueError naming
    the spec when the module does not import, the attribute is missing, or it is not callable."""
    if not isinstance(spec, str):
        raise TypeError("a model spec is a string (a name or 'pkg.module:function'), got "
                        f"{type(spec).__name__}")
    spec = ALIASES.get(spec, spec)
    if spec in FACTORIES:
        return FACTORIES[spec]
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"unknown model {spec!r}: use one of {', '.join(FACTORIES)}, or "
                         "'pkg.module:function'")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:    # a user's module can fail at import with anything, not only ImportError
        raise ValueError(f"model {spec!r}: module {module_name!r} does not import: "
                         f"{type(err).__name__}: {err}") from err
    target = module
    for part in attribute.split("."):   # "module:Class.method" works too
        if not hasattr(target, part):
            raise ValueError(f"model {spec!r}: module {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"model {spec!r}: {attribute!r} is a {type(target).__name__}, "
                         f"not a callable factory")
    return target


def check_model(layers, loss_fn, batch, probe: bool = True) -> None:
    """Refuse, with a readable TypeError/ValueError, what a factory returned if a pipeline cannot run it.

    With ``probe`` one sample goes through a *copy* of the layers (eval mode, no autograd), to catch a layer
    that returns a tuple or a loss that is not a scalar before any rank starts.
    """
    whole = isinstance(layers, nn.Module) and not isinstance(layers, (nn.Sequential, nn.ModuleList))
    if not isinstance(layers, (list, tuple)) and not whole:
        hint = "; for an nn.Sequential return list(model)" if isinstance(layers, nn.Sequential) else ""
        raise TypeError("a model factory must return (layers, loss_fn, (inputs, targets)) with layers a "
                        f"list of modules, got {type(layers).__name__}{hint}")
    if not whole and not layers:
        raise ValueError("the model has no layers")
    for index, layer in enumerate([] if whole else layers):
        if not isinstance(layer, nn.Module):
            raise TypeError(f"layer {index} is a {type(layer).__name__}, not a torch.nn.Module")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn is a {type(loss_fn).__name__}, not callable")
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(f"the batch must be a pair (inputs, targets), got {type(batch).__name__}"
                        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""))
    for name, tensor in zip(("inputs", "targets"), batch):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.dim() == 0:
            raise ValueError(f"{name} is a 0-d tensor; dim 0 must be the batch")
    inputs, targets = batch
    per_sample, rest = divmod(targets.shape[0], inputs.shape[0])
    if rest or not per_sample:
        raise ValueError(f"the targets' first dimension ({targets.shape[0]}) is neither the batch's "
                         f"({inputs.shape[0]}) nor a multiple of it: give targets shaped ({inputs.shape[0]}, "
                         f"...), or flattened per token ({inputs.shape[0]} * tokens,) in the inputs' order")
    if probe:
        probe_model(layers, loss_fn, inputs[:1], targets[:per_sample])


def probe_model(model, loss_fn, x, target) -> None:
    """One sample through a copy of the model (layers, or a whole module) and its loss; refused readably."""
    # A copy, so the real layers see no extra call (BatchNorm statistics, call counters stay as they were);
    # fork_rng, so the caller's next random numbers are the ones it would have drawn anyway.
    whole = isinstance(model, nn.Module)
    try:
        copies = copy.deepcopy(model if whole else list(model))
    except Exception:
        return      # a model that cannot be copied is not checked, rather than run for real
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        if whole:
            try:
                x = copies.eval()(*(tuple(x) if isinstance(x, (tuple, list)) else (x,)))
            except Exception as err:
                raise ValueError(f"the model ({type(model).__name__}) fails on one sample of the inputs: "
                                 f"{type(err).__name__}: {err}") from err
        for index, layer in enumerate([] if whole else copies):
            layer.eval()
            try:
                x = layer(x)
            except Exception as err:
                raise ValueError(f"layer {index} ({type(layer).__name__}) fails on one sample of the inputs: "
                                 f"{type(err).__name__}: {err}") from err
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"layer {index} ({type(layer).__name__}) returns a {type(x).__name__}; every "
                                f"layer must return exactly one tensor, the one sent to the next stage")
        loss = loss_fn(x, target)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"loss_fn must return a scalar tensor (a mean over the batch), got {shape}")


# ---------------------------------------------------------------------------------------------- ground truth

def reference_step(layers, loss_fn, inputs: torch.Tensor, targets: torch.Tensor):
    """One forward and backward of ``nn.Sequential(*layers)`` (or of a whole module) on the whole batch, on
    one device.

    Returns ``(loss, grads)``, ``grads`` keyed as ``nn.Sequential(*layers).named_parameters()`` names them (a
    shared Parameter once, under its first name; one that gets no gradient is left out, as the pipeline does).
    ``.grad`` of the layers is not touched: ``torch.autograd.grad`` returns the gradients instead.
    """
    model = layers if isinstance(layers, nn.Module) else nn.Sequential(*layers)
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    loss = loss_fn(model(inputs), targets)
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return loss.item(), {name: g for (name, _), g in zip(named, grads) if g is not None}


def to_dtype(layers, batch, dtype: torch.dtype):
    """Floating parameters, buffers and batch tensors to ``dtype``; integer token ids stay as they are.

    In place (``Module.to`` keeps each Parameter object, so tied weights stay tied); returns ``(layers,
    batch)``.
    """
    if not dtype.is_floating_point:
        raise ValueError(f"to_dtype converts to a floating dtype, got {dtype}")
    for layer in [layers] if isinstance(layers, nn.Module) else layers:
        layer.to(dtype)
    convert = partial(floats_to, dtype)      # a partial, not a closure: a Prepared batch source pickles
    if isinstance(batch, PerStep):
        return layers, PerStep(batch.source, convert)
    return layers, convert(batch)
