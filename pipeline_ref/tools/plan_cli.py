"""``python -m pipeline_ref plan``: the fastest configurations of a model on a cluster that fit its memory.

Layer: tools (the command line of ``planner.py``).

    python -m pipeline_ref plan --model gpt3-175b --gpus 1024 --device a100-80gb --global-batch 1536
    python -m pipeline_ref plan --model path/to/config.json --gpus 64 --device h100 --seq 4096
    python -m pipeline_ref plan --layers 32 --hidden 4096 --heads 32 --seq 2048 --vocab 50257 --gpus 16

``--model`` is a preset (``cluster.MODELS``) or a Hugging Face ``config.json`` (a file or its folder, read by
``transformers.AutoConfig``; nothing is downloaded); or give the shape with ``--layers --hidden --heads``.
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from pipeline_ref.sim import cluster, step_model
from pipeline_ref.tools import planner
from pipeline_ref.config import ConfigError


def add_parser(sub) -> None:
    plan = sub.add_parser("plan", help="rank parallel configurations of a model on a GPU cluster")
    plan.add_argument("--model", help=f"a preset ({', '.join(cluster.MODELS)}) or a Hugging Face config.json")
    plan.add_argument("--layers", type=int)
    plan.add_argument("--hidden", type=int)
    plan.add_argument("--heads", type=int)
    plan.add_argument("--vocab", type=int, default=51200)
    plan.add_argument("--seq", type=int, help="sequence length (default: the model's)")
    plan.add_argument("--gpus", type=int, required=True)
    plan.add_argument("--device", default="h100", choices=list(cluster.DEVICES))
    plan.add_argument("--nodes-of", type=int, default=8, metavar="GPUS", help="GPUs per node (NVLink inside)")
    plan.add_argument("--global-batch", type=int, help="sequences per step (default: 2 per GPU)")
    plan.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp8"])
    plan.add_argument("--efficiency", type=float, default=planner.EFFICIENCY,
                      help="fraction of peak the kernels reach (default: calibrated on Megatron-LM 2021)")
    plan.add_argument("--top", type=int, default=5)
    plan.add_argument("--overlap-dp", action="store_true",
                      help="the data-parallel gradient reduction hidden behind the backward (default: after)")
    plan.add_argument("--distributed-optimizer", action="store_true",
                      help="Adam's state sharded over the data-parallel replicas (6 + 12/dp bytes per param)")


def load_model(args) -> cluster.Transformer:
    """The transformer's shape from a preset, a Hugging Face config, or --layers/--hidden/--heads."""
    if args.model is None:
        if None in (args.layers, args.hidden, args.heads):
            raise ConfigError("give --model (a preset or a config.json) or --layers, --hidden and --heads")
        return cluster.Transformer("custom", args.layers, args.hidden, args.heads, args.seq or 2048,
                                   args.vocab)
    if args.model in cluster.MODELS:
        model = cluster.MODELS[args.model]
    elif Path(args.model).exists():
        model = from_hf_config(args.model)
    else:
        raise ConfigError(f"--model {args.model!r} is neither a preset ({', '.join(cluster.MODELS)}) "
                          f"nor a file")
    return replace_seq(model, args.seq)


def replace_seq(model: cluster.Transformer, seq: int | None) -> cluster.Transformer:
    return model if seq is None else replace(model, seq_len=seq)


def from_hf_config(path: str) -> cluster.Transformer:
    """A Hugging Face config (a config.json or its folder, or a dict) as a transformer's shape."""
    from transformers import AutoConfig
    if isinstance(path, dict):
        config = AutoConfig.for_model(**path)
        name = path.get("model_type", "hf")
    else:
        folder = Path(path).parent if Path(path).is_file() else Path(path)
        if Path(path).is_file() and Path(path).name != "config.json":
            config = AutoConfig.for_model(**json.loads(Path(path).read_text()))
        else:
            config = AutoConfig.from_pretrained(folder, local_files_only=True)
        name = Path(path).stem if Path(path).name != "config.json" else folder.name
    gated = getattr(config, "hidden_act", "gelu") in ("silu", "swiglu")      # Llama, Mistral, Qwen: SwiGLU
    return cluster.Transformer(
        name, config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
        getattr(config, "max_position_embeddings", 2048), config.vocab_size,
        ffn=getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 0,
        kv_heads=getattr(config, "num_key_value_heads", None) or 0, gated=gated,
        tied=bool(getattr(config, "tie_word_embeddings", True)))


def main(args) -> int:
    try:
        model = load_model(args)
        batch = args.global_batch or 2 * args.gpus        # Megatron's runs: one to two sequences per GPU
        space = planner.current_space(model, args.device, args.gpus, batch, gpus_per_node=args.nodes_of,
                                      precision=args.precision, overlap_dp=args.overlap_dp,
                                      distributed_optimizer=args.distributed_optimizer)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    found = planner.search(space, args.efficiency)
    ranked = planner.rank(space, args.efficiency, found=found)
    device = cluster.DEVICES[args.device]
    print(f"{model.name}: {model.num_parameters() / 1e9:.1f}B parameters, {model.num_layers} layers, "
          f"sequence {model.seq_len}; {args.gpus} x {device.name} ({args.nodes_of} per node), global batch "
          f"{batch}, {args.precision}; efficiency {args.efficiency:g} of peak (predictions, not "
          f"measurements)")
    print(f"{len(found)} configurations tried, {len(ranked)} fit {step_model.USABLE_MEMORY:.0%} of "
          f"{device.memory / 2**30:.0f} GiB")
    if not ranked:
        print("none fits: more GPUs, a smaller global batch, or a device with more memory")
        return 1
    print(f"{'#':>2}  {'configuration':62} {'step s':>8} {'bubble':>7} {'GiB/GPU':>8} {'MFU':>6} "
          f"{'tok/s/GPU':>10}")
    for i, e in enumerate(ranked[:args.top], 1):
        mark = "*" if e.plan.pp > 1 and not e.simulated else ""      # one stage: nothing to replay
        print(f"{i:>2}  {e.plan.describe():62} {e.step_seconds:>7.2f}{mark:1} {e.bubble:>7.1%} "
              f"{e.memory_bytes / 2**30:>8.1f} {e.mfu:>6.1%} {e.tokens_per_second_per_gpu:>10.0f}")
    if any(e.plan.pp > 1 and not e.simulated for e in ranked[:args.top]):
        print("(* the closed form only: too many actions to replay in the simulator quickly)")
    reasons = planner.why_lost(found, ranked[0])
    print("why the others lost: " + ", ".join(f"{reason} {count}" for reason, count in
                                              sorted(reasons.items(), key=lambda kv: -kv[1])))
    return 0
