"""A cost model of a real GPU cluster, as data: devices, links, and what a transformer layer costs on them.

Layer: sim (pure arithmetic; no torch, no processes). The planner (``planner.py``) and lesson 10 build on it.

    >>> from pipeline_ref.sim import cluster
    >>> gpt3 = cluster.MODELS["gpt3-175b"]
    >>> round(gpt3.num_parameters() / 1e9, 1)        # Megatron's 12 l h^2 (1 + 13/12h + (V+s)/12lh)
    174.6
    >>> cluster.DEVICES["h100"].peak_tflops["bf16"]
    989.4

Every device and link number carries its source in ``SOURCES``. Formulas and where they come from:

- FLOPs of a layer's forward (Narayanan et al. 2021, arXiv:2104.04473, appendix): two per multiply-add of
  every weight matrix, ``2 b s (matmul weights)``, plus attention's scores and mix, ``4 b s^2 h``; for GPT's
  shape that is ``24 b s h^2 (1 + s / 6h)``. A backward costs two forwards; full recomputation adds one.
- Tensor parallelism (Shoeybi et al. 2019, arXiv:1909.08053): a layer's weights split ``tp`` ways, two
  all-reduces of the ``b s h`` activation per layer forward and two per backward, inside a node.
- Activations per layer (Korthikanti et al. 2022, arXiv:2205.05198, Sec. 4 and Table 2), in bytes:
  ``s b h (34 + 5 a s / h)`` unsplit; ``s b h (10 + 24/t + 5 a s / (h t))`` with tensor parallelism;
  ``s b h (34 + 5 a s / h) / t`` with sequence parallelism; ``2 s b h`` (``/ t`` with sequence
  parallelism) when the layer is fully recomputed; ``34 s b h / t`` when only attention is (selective).
- Mixed-precision Adam: 18 bytes per parameter (bf16 weights, fp32 gradients, fp32 master copy and two
  moments), ``6 + 12 / dp`` with the distributed optimizer (Megatron-LM's distributed optimizer notes).
- Ring all-reduce of ``n`` bytes on ``k`` GPUs: ``2 (k - 1) / k * n`` bytes through each GPU's link.
"""
from __future__ import annotations

from dataclasses import dataclass

GB = 2**30          # a datasheet's "80GB" of HBM is 80 GiB of addressable memory
TB = 1e12           # bandwidths are decimal: TB/s, GB/s

SOURCES = {
    "a100": "NVIDIA A100 Tensor Core GPU datasheet, https://www.nvidia.com/content/dam/en-zz/Solutions/"
            "Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf",
    "h100": "NVIDIA H100 Tensor Core GPU datasheet, https://resources.nvidia.com/en-us-tensor-core/"
            "nvidia-tensor-core-gpu-datasheet (SXM column; the sparse figures halved: dense)",
    "h200": "NVIDIA H200 Tensor Core GPU, https://www.nvidia.com/en-us/data-center/h200/ (SXM column)",
    "dgx-a100": "NVIDIA DGX A100 User Guide, https://docs.nvidia.com/dgx/dgxa100-user-guide/introduction-to-"
                "dgxa100.html: eight 200 Gb/s HDR InfiniBand adapters, one per GPU (Selene's nodes: "
                "Narayanan et al. 2021, Sec. 5)",
    "dgx-h100": "NVIDIA DGX H100 User Guide, https://docs.nvidia.com/dgx/dgxh100-user-guide/introduction-to-"
                "dgxh100.html: eight 400 Gb/s NDR ConnectX-7 adapters, one per GPU",
    "nccl": "NCCL's tuning model, https://github.com/NVIDIA/nccl/blob/master/src/graph/tuning.cc: hwLat, "
            "Ring/Simple (the protocol of large messages): NVLink 5.7 us, network 6.6 us",
}


@dataclass(frozen=True)
class Device:
    """One GPU: dense tensor-core peak (TFLOP/s) per precision, memory (bytes) and its bandwidth (bytes/s)."""
    name: str
    peak_tflops: dict
    memory: float
    memory_bandwidth: float
    source: str


@dataclass(frozen=True)
class Link:
    """A GPU's link to its peers: per-direction bandwidth (bytes/s) and the latency of one message (s)."""
    name: str
    bandwidth: float
    latency: float
    source: str


DEVICES = {
    "a100-40gb": Device("A100 SXM 40GB", {"bf16": 312.0, "fp16": 312.0}, 40 * GB, 1.555 * TB, "a100"),
    "a100-80gb": Device("A100 SXM 80GB", {"bf16": 312.0, "fp16": 312.0}, 80 * GB, 2.039 * TB, "a100"),
    "h100": Device("H100 SXM 80GB", {"bf16": 989.4, "fp16": 989.4, "fp8": 1978.9}, 80 * GB, 3.35 * TB,
                   "h100"),
    "h200": Device("H200 SXM 141GB", {"bf16": 989.4, "fp16": 989.4, "fp8": 1978.9}, 141 * GB, 4.8 * TB,
                   "h200"),
}
# Inside a node: NVLink (A100: 600 GB/s, H100/H200: 900 GB/s, both directions together). Across nodes: each
# GPU's own InfiniBand adapter (HDR 200 Gb/s on DGX A100, NDR 400 Gb/s on DGX H100).
NVLINK = {"a100-40gb": Link("NVLink 3", 300e9, 5.7e-6, "a100+nccl"),
          "a100-80gb": Link("NVLink 3", 300e9, 5.7e-6, "a100+nccl"),
          "h100": Link("NVLink 4", 450e9, 5.7e-6, "h100+nccl"),
          "h200": Link("NVLink 4", 450e9, 5.7e-6, "h200+nccl")}
NETWORK = {"a100-40gb": Link("InfiniBand HDR", 25e9, 6.6e-6, "dgx-a100+nccl"),
           "a100-80gb": Link("InfiniBand HDR", 25e9, 6.6e-6, "dgx-a100+nccl"),
           "h100": Link("InfiniBand NDR", 50e9, 6.6e-6, "dgx-h100+nccl"),
           "h200": Link("InfiniBand NDR", 50e9, 6.6e-6, "dgx-h100+nccl")}

OPTIMIZER_BYTES = 18            # per parameter, mixed-precision Adam (see the module docstring)
ADAM_TRAFFIC_BYTES = 30         # per parameter and step: read 18 (state, gradient), write 12 (an assumption)


@dataclass(frozen=True)
class Transformer:
    """A decoder-only transformer's shape. ``ffn`` defaults to 4 h; ``kv_heads`` < heads is grouped-query
    attention; ``gated`` is a SwiGLU MLP (three matrices); ``tied`` shares the embedding with the output."""
    name: str
    num_layers: int
    hidden: int
    heads: int
    seq_len: int
    vocab: int
    ffn: int = 0
    kv_heads: int = 0
    gated: bool = False
    tied: bool = True

    def __post_init__(self):
        for field in ("num_layers", "hidden", "heads", "seq_len", "vocab"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{self.name}: {field} must be a positive integer, got {value!r}")
        if self.hidden % self.heads:
            raise ValueError(f"{self.name}: hidden {self.hidden} is not a multiple of heads {self.heads}")
        object.__setattr__(self, "ffn", self.ffn or 4 * self.hidden)
        object.__setattr__(self, "kv_heads", self.kv_heads or self.heads)

    def layer_matmul_parameters(self) -> int:
        h, kv = self.hidden, self.hidden * self.kv_heads // self.heads
        return 2 * h * h + 2 * h * kv + (3 if self.gated else 2) * h * self.ffn

    def layer_parameters(self) -> int:
        """Weights, plus biases and two layer norms (13 h for GPT's shape; Llama's have no biases: 2 h)."""
        small = 2 * self.hidden if self.gated else 13 * self.hidden
        return self.layer_matmul_parameters() + small

    def embedding_parameters(self) -> int:
        """Token embedding (and GPT's learned positions); an untied output layer counts again."""
        positions = 0 if self.gated else self.seq_len * self.hidden
        return self.vocab * self.hidden * (1 if self.tied else 2) + positions

    def num_parameters(self) -> int:
        return self.num_layers * self.layer_parameters() + self.embedding_parameters()

    def layer_forward_flops(self, microbatch: int) -> float:
        """One layer's forward on ``microbatch`` sequences: 24 b s h^2 (1 + s / 6h) for GPT's shape."""
        b, s, h = microbatch, self.seq_len, self.hidden
        return 2 * b * s * self.layer_matmul_parameters() + 4 * b * s * s * h

    def logits_forward_flops(self, microbatch: int) -> float:
        return 2 * microbatch * self.seq_len * self.hidden * self.vocab

    def model_flops(self, batch: int) -> float:
        """A training step's model FLOPs on ``batch`` sequences (forward and backward, no recomputation)."""
        return 3 * (self.num_layers * self.layer_forward_flops(batch) + self.logits_forward_flops(batch))

    def layer_activation_bytes(self, microbatch: int, tp: int = 1, sequence_parallel: bool = False,
                               recompute: str = "none") -> float:
        """Korthikanti et al.'s bytes one layer keeps for its backward (16-bit activations)."""
        s, b, h, a, t = self.seq_len, microbatch, self.hidden, self.heads, tp
        if recompute == "full":
            return 2 * s * b * h / (t if sequence_parallel else 1)
        if recompute == "selective":
            return 34 * s * b * h / t if sequence_parallel else s * b * h * (10 + 24 / t)
        if recompute != "none":
            raise ValueError(f"recompute must be 'none', 'selective' or 'full', got {recompute!r}")
        if sequence_parallel:
            return s * b * h * (34 + 5 * a * s / h) / t
        return s * b * h * (10 + 24 / t + 5 * a * s / (h * t))


# Shapes as their papers give them. GPT-3: Brown et al. 2020 (arXiv:2005.14165), Table 2.1, with Megatron's
# vocabulary; Llama 3: Grattafiori et al. 2024 (arXiv:2407.21783), Table 3.
MODELS = {
    "gpt3-175b": Transformer("GPT-3 175B", 96, 12288, 96, 2048, 51200),
    "llama3-70b": Transformer("Llama 3 70B", 80, 8192, 64, 8192, 128256, ffn=28672, kv_heads=8, gated=True,
                              tied=False),
    "llama3-405b": Transformer("Llama 3 405B", 126, 16384, 128, 8192, 128256, ffn=53248, kv_heads=8,
                               gated=True, tied=False),
}
# Megatron-LM 2021's weak-scaling models (Narayanan et al. 2021, Table 1: vocabulary 51200, sequence 2048).
for _size, _heads, _hidden, _layers in [
        ("1.7b", 24, 2304, 24), ("3.6b", 32, 3072, 30), ("7.5b", 32, 4096, 36), ("18b", 48, 6144, 40),
        ("39b", 64, 8192, 48), ("76b", 80, 10240, 60), ("145b", 96, 12288, 80), ("310b", 128, 16384, 96),
        ("530b", 128, 20480, 105), ("1t", 160, 25600, 128)]:
    MODELS[f"megatron-{_size}"] = Transformer(f"Megatron-LM 2021 GPT {_size.upper()}", _layers, _hidden,
                                              _heads, 2048, 51200)


def compute_seconds(flops: float, device: Device, precision: str, efficiency: float) -> float:
    """Time of ``flops`` at ``efficiency`` of the device's dense peak in that precision."""
    if precision not in device.peak_tflops:
        raise ValueError(f"{device.name} has no {precision} peak; known: {', '.join(device.peak_tflops)}")
    return flops / (device.peak_tflops[precision] * 1e12 * efficiency)


def message_seconds(num_bytes: float, link: Link) -> float:
    """One point-to-point message: the link's latency plus its bytes at the link's bandwidth."""
    return link.latency + num_bytes / link.bandwidth


def allreduce_seconds(num_bytes: float, num_gpus: int, link: Link) -> float:
    """A ring all-reduce of ``num_bytes`` on ``num_gpus``: 2 (n - 1) / n of them through each GPU's link,
    in 2 (n - 1) steps of one latency each. Zero for one GPU."""
    if num_gpus <= 1:
        return 0.0
    steps = 2 * (num_gpus - 1)
    return steps * link.latency + steps / num_gpus * num_bytes / link.bandwidth


def optimizer_seconds(parameters: float, device: Device) -> float:
    """Adam's step is bound by memory traffic, not FLOPs: ADAM_TRAFFIC_BYTES per parameter."""
    return parameters * ADAM_TRAFFIC_BYTES / device.memory_bandwidth


def state_bytes(parameters: float, dp: int = 1, distributed_optimizer: bool = False) -> float:
    """Weights, gradients and optimizer state of ``parameters`` on one GPU (Megatron's bytes per
    parameter)."""
    if distributed_optimizer:
        return parameters * (6 + 12 / dp)
    return parameters * OPTIMIZER_BYTES
