"""Memory arithmetic of training (lessons 01 and 04): what a model's state weighs, and what fits where.

Theory, not measurement: bytes per parameter under mixed-precision Adam (the ZeRO paper's accounting), the
fewest pipeline stages that hold a model when stages are whole layers, and the decision the lecture ends with
(DDP + checkpointing + low precision first, then ZeRO/FSDP, then a pipeline), computed per GPU.

    training_bytes(175e9)                       # {"weights": 350e9, "gradients": 350e9, "Adam state": 2.1e12}
    fewest_stages(gpt3_layers(), 80e9)          # whole layers per stage, each stage within 80 GB
    decision_guide(70e9, gpus=8)                # per-GPU bytes of each option, in the lecture's order

Activations are left out everywhere here: they depend on the batch, and checkpointing (lesson 05) cuts them.
"""
from __future__ import annotations

GB = 1e9    # decimal gigabytes, as GPU memory and the MPI book's "350GB" are counted

# Mixed-precision Adam (Rajbhandari et al., ZeRO, 2020): 16-bit weights and gradients, and in 32 bits a master
# copy of the weights and Adam's two moments: 2 + 2 + (4 + 4 + 4) = 16 bytes per parameter.
WEIGHT_BYTES, GRADIENT_BYTES, ADAM_BYTES = 2, 2, 12
# Low precision for the optimizer (8-bit Adam, as in bitsandbytes): the two moments in 1 byte each, the master
# weights still in 32 bits: 4 + 1 + 1 = 6 instead of 12.
ADAM_8BIT_BYTES = 6

# GPT-3 175B (Brown et al., 2020): 96 layers of width 12288, a 50257-word vocabulary, 2048 positions.
GPT3 = {"layers": 96, "width": 12288, "vocab": 50257, "positions": 2048}


def training_bytes(parameters: float, optimizer_bytes: int = ADAM_BYTES) -> dict:
    """Bytes of the training state of a model with ``parameters`` parameters (activations not included)."""
    return {"weights": WEIGHT_BYTES * parameters, "gradients": GRADIENT_BYTES * parameters,
            "Adam state": optimizer_bytes * parameters}


def gpt3_layers(spec: dict = GPT3) -> list[float]:
    """GPT-3's parameters layer by layer: embeddings, the blocks, and the (tied) output head's copy.

    A block holds 12 w^2 weights (attention 4 w^2, MLP 8 w^2) plus 13 w biases and norms; the tied head is the
    token embedding again, a copy on the last stage (lesson 04), so it counts once more in a pipeline.
    """
    w = spec["width"]
    embedding = (spec["vocab"] + spec["positions"]) * w
    block = 12 * w * w + 13 * w
    return [embedding] + [block] * spec["layers"] + [spec["vocab"] * w]


def fewest_stages(layer_bytes: list[float], capacity: float) -> list[list[int]]:
    """The fewest contiguous stages of whole layers, each holding at most ``capacity`` bytes.

    Greedy filling is optimal for this question (how many stages, not how balanced): a stage that takes
    one layer fewer than it could only pushes work onto the stages after it. Raises if one layer alone is
    larger than ``capacity``: then no pipeline helps (the lecture's warning).
    """
    stages: list[list[int]] = [[]]
    held = 0.0
    for index, nbytes in enumerate(layer_bytes):
        if nbytes > capacity:
            raise ValueError(f"layer {index} alone needs {nbytes / GB:.1f} GB, more than {capacity / GB:.1f} GB: "
                             f"no pipeline can hold it; split the layer (tensor parallelism) or shard it")
        if held + nbytes > capacity:
            stages.append([])
            held = 0.0
        stages[-1].append(index)
        held += nbytes
    return stages


def decision_guide(parameters: float, gpus: int, capacity: float = 80 * GB) -> list[dict]:
    """The lecture's order of things to try, as bytes of training state per GPU on ``gpus`` GPUs.

    Each row: option, bytes per GPU, and whether it fits in ``capacity``. DDP replicates everything; 8-bit
    optimizer state is the "quantization" rung; ZeRO stage 1 shards the optimizer state, stage 2 also the
    gradients, stage 3 (= FSDP) also the weights (ZeRO paper, Figure 1); a pipeline of ``gpus`` stages holds
    1/gpus of everything (equal stages). Activation checkpointing changes none of these: it cuts activations.
    """
    n = gpus
    rows = [("DDP", (WEIGHT_BYTES + GRADIENT_BYTES + ADAM_BYTES) * parameters),
            ("DDP, 8-bit Adam", (WEIGHT_BYTES + GRADIENT_BYTES + ADAM_8BIT_BYTES) * parameters),
            ("ZeRO-1", (WEIGHT_BYTES + GRADIENT_BYTES + ADAM_BYTES / n) * parameters),
            ("ZeRO-2", (WEIGHT_BYTES + (GRADIENT_BYTES + ADAM_BYTES) / n) * parameters),
            ("ZeRO-3 / FSDP", (WEIGHT_BYTES + GRADIENT_BYTES + ADAM_BYTES) / n * parameters),
            (f"pipeline, {n} stages", (WEIGHT_BYTES + GRADIENT_BYTES + ADAM_BYTES) / n * parameters)]
    return [{"option": name, "bytes per GPU": nbytes, "fits": nbytes <= capacity} for name, nbytes in rows]


def first_that_fits(parameters: float, gpus: int, capacity: float = 80 * GB) -> str:
    """The first option of ``decision_guide`` that fits, or what is left when none does on ``gpus`` GPUs."""
    for row in decision_guide(parameters, gpus, capacity):
        if row["fits"]:
            return row["option"]
    return f"none on {gpus} GPUs: more GPUs (FSDP across nodes, or a pipeline across nodes)"
