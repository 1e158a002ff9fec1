"""The predicted step of one parallel configuration on a GPU cluster: its time, bubble, memory per GPU.

Layer: sim (arithmetic on ``cluster.py``'s cost model and ``theory.py``'s closed forms; the simulator for a
replay). The planner (``planner.py``) enumerates configurations and ranks them by this prediction.

    >>> from pipeline_ref.sim import cluster, step_model
    >>> plan = step_model.Plan(cluster.MODELS["gpt3-175b"], "a100-80gb", tp=8, pp=8, dp=1, microbatch=1,
    ...                        num_microbatches=64, recompute="full")
    >>> e = step_model.estimate(plan)
    >>> e.fits, round(e.bubble, 3)
    (True, 0.099)

``estimate(plan)``: each stage's forward and backward time from its FLOPs at ``efficiency`` of the device's
peak plus its tensor-parallel all-reduces; the pipeline's time from the schedule's closed-form utilization
(``theory.utilization``) on the slowest stage, plus the messages on the fill and drain; then the
data-parallel gradient reduction and the optimizer step, counted after the pipeline (``overlap_dp=True``
hides the reduction, as Megatron-LM's ``--overlap-grad-reduce`` does in NVIDIA's recent recipes).
``simulate_estimate`` replays the schedule in the simulator instead
(per-stage costs: the last stage also computes the logits; messages cost their latency).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from pipeline_ref import schedules
from pipeline_ref.sim import cluster, simulate, theory

EFFICIENCY = 0.5555          # fraction of peak the kernels reach, calibrated by benchmarks/published_runs.py
USABLE_MEMORY = 0.9             # of a GPU's memory: CUDA context, NCCL buffers, fragmentation (an assumption)


@dataclass(frozen=True)
class Plan:
    """One configuration: ``tp * cp * pp * dp`` GPUs, ``num_microbatches`` of ``microbatch`` sequences."""
    model: cluster.Transformer
    device: str
    tp: int
    pp: int
    dp: int
    microbatch: int
    num_microbatches: int
    schedule: str = "1f1b"
    chunks: int = 1
    recompute: str = "none"
    cp: int = 1
    gpus_per_node: int = 8
    precision: str = "bf16"
    sequence_parallel: bool = True
    distributed_optimizer: bool = False
    overlap_dp: bool = False
    flash_attention: bool = False       # keeps no s x s scores: "none" stores what "selective" does

    @property
    def num_gpus(self) -> int:
        return self.tp * self.cp * self.pp * self.dp

    @property
    def global_batch(self) -> int:
        return self.dp * self.microbatch * self.num_microbatches

    def describe(self) -> str:
        chunks = f" v={self.chunks}" if self.schedule == "interleaved" else ""
        cp = f" cp={self.cp}" if self.cp > 1 else ""
        return (f"tp={self.tp}{cp} pp={self.pp} dp={self.dp} {self.schedule}{chunks} b={self.microbatch} "
                f"m={self.num_microbatches} recompute={self.recompute}")


@dataclass
class Estimate:
    """What ``estimate`` predicts for a plan: seconds per step and where they go, memory, and why not."""
    plan: Plan
    step_seconds: float = math.inf
    bubble: float = 0.0
    memory_bytes: float = 0.0
    fits: bool = False
    problem: str = ""
    parts: dict = field(default_factory=dict)     # seconds: compute, tp_comm, bubble, messages, dp, optimizer
    stage_costs: tuple = ()                       # (forward per stage, backward per stage, message seconds)
    simulated: bool = False

    @property
    def tokens_per_second_per_gpu(self) -> float:
        p = self.plan
        return p.global_batch * p.model.seq_len / self.step_seconds / p.num_gpus

    @property
    def model_tflops_per_gpu(self) -> float:
        p = self.plan
        return p.model.model_flops(p.global_batch) / self.step_seconds / p.num_gpus / 1e12

    @property
    def mfu(self) -> float:
        return self.model_tflops_per_gpu / cluster.DEVICES[self.plan.device].peak_tflops[self.plan.precision]


def refusal(plan: Plan) -> str:
    """Why a plan cannot run at all (an empty string if it can)."""
    m = plan.model
    if plan.tp > plan.gpus_per_node:      # its all-reduces, 4 per layer, must stay on NVLink
        return f"tensor parallelism {plan.tp} spans more than a node of {plan.gpus_per_node}"
    if m.heads % plan.tp:
        return f"{m.heads} heads do not split {plan.tp} ways"
    if plan.pp * plan.chunks > m.num_layers:
        return f"{m.num_layers} layers cannot fill {plan.pp * plan.chunks} stages"
    if plan.schedule == "interleaved" and plan.num_microbatches % plan.pp:
        return f"interleaved needs microbatches ({plan.num_microbatches}) a multiple of stages ({plan.pp})"
    if plan.schedule == "zb-h1" and (plan.recompute != "none" or plan.num_microbatches < plan.pp):
        return "zb-h1 needs m >= p and no recomputation (its backward is split)"
    if m.seq_len % plan.cp:
        return f"sequence {m.seq_len} does not split {plan.cp} ways"
    return ""


def _layer_seconds(plan: Plan, device: cluster.Device, efficiency: float) -> tuple[float, float, float]:
    """One layer's forward compute, its recomputation in the backward, and one tensor-parallel all-reduce."""
    m, b = plan.model, plan.microbatch
    local = m.seq_len // plan.cp                          # context parallelism splits the sequence
    matmul = 2 * b * local * m.layer_matmul_parameters() / plan.tp
    attention = 4 * b * local * m.seq_len * m.hidden / plan.tp
    # FP8 runs the weight matrices in FP8; attention's scores stay in 16 bits (Transformer Engine).
    forward = (cluster.compute_seconds(matmul, device, plan.precision, efficiency)
               + cluster.compute_seconds(attention, device, "bf16", efficiency))
    recompute = {"none": 0.0, "full": forward,
                 "selective": cluster.compute_seconds(attention, device, "bf16", efficiency)}[plan.recompute]
    nvlink = cluster.NVLINK[plan.device]
    allreduce = cluster.allreduce_seconds(2 * b * local * m.hidden, plan.tp, nvlink)
    return forward, recompute, allreduce


def stage_costs(plan: Plan, efficiency: float = EFFICIENCY) -> tuple[list, list, float]:
    """Per stage: forward and backward seconds of one microbatch through it (all its chunks), and the
    seconds of one message between stages."""
    m, device = plan.model, cluster.DEVICES[plan.device]
    forward, recompute, allreduce = _layer_seconds(plan, device, efficiency)
    layers = [m.num_layers // plan.pp + (s < m.num_layers % plan.pp) for s in range(plan.pp)]
    # Megatron's 2 all-reduces per layer forward and 2 backward (+2 when the forward is recomputed).
    backward_reduces = 2 + (2 if plan.recompute == "full" else 0)
    fwd = [n * (forward + 2 * allreduce) for n in layers]
    bwd = [n * (2 * forward + recompute + backward_reduces * allreduce) for n in layers]
    logits = cluster.compute_seconds(m.logits_forward_flops(plan.microbatch) / plan.tp / plan.cp, device,
                                     plan.precision, efficiency)
    fwd[-1] += logits
    bwd[-1] += 2 * logits
    link = cluster.NETWORK[plan.device] if plan.num_gpus > plan.gpus_per_node else cluster.NVLINK[plan.device]
    # Megatron sends 1/tp of the activation from each GPU of the stage (scatter/gather, or sequence parallel).
    message = cluster.message_seconds(2 * plan.microbatch * m.seq_len * m.hidden / plan.tp / plan.cp, link)
    return fwd, bwd, message


def parameters_per_gpu(plan: Plan) -> float:
    """The most parameters a GPU holds: a full stage's layers, plus the embedding on the first stage (and the
    output layer on the last, which also holds a copy of a tied embedding when pp > 1)."""
    m = plan.model
    layers = math.ceil(m.num_layers / plan.pp) * m.layer_parameters()
    ends = m.embedding_parameters() if plan.pp == 1 else max(m.embedding_parameters() - m.vocab * m.hidden *
                                                             (0 if m.tied else 1), m.vocab * m.hidden)
    return (layers + ends) / plan.tp


def _memory_parts(plan: Plan) -> tuple[float, float, float, int, float]:
    """Bytes of the states, of the layer being recomputed and of the logits; a chunk's layers; one layer's
    activations of one microbatch."""
    m = plan.model
    states = cluster.state_bytes(parameters_per_gpu(plan), plan.dp * plan.cp, plan.distributed_optimizer)
    local = replace(m, seq_len=m.seq_len // plan.cp) if plan.cp > 1 else m
    sp = plan.sequence_parallel and plan.tp > 1
    kept = "selective" if plan.flash_attention and plan.recompute == "none" else plan.recompute
    per_layer = local.layer_activation_bytes(plan.microbatch, plan.tp, sp, kept)
    recomputing = 0.0
    if plan.recompute != "none":    # the layer being recomputed holds its full activations for a moment
        recomputing = local.layer_activation_bytes(plan.microbatch, plan.tp, sp,
                                                   "selective" if plan.flash_attention else "none")
    logits = 4 * plan.microbatch * local.seq_len * m.vocab / plan.tp       # fp32 logits on the last stage
    return states, recomputing, logits, math.ceil(m.num_layers / (plan.pp * plan.chunks)), per_layer


def static_bytes(plan: Plan) -> float:
    """Bytes per GPU that do not grow with the microbatches in flight: weights, gradients and optimizer state,
    the last stage's fp32 logits, and, when recomputing, the one layer being recomputed."""
    states, recomputing, logits, _, _ = _memory_parts(plan)
    return states + recomputing + logits


def microbatch_activation_bytes(plan: Plan) -> float:
    """The activations one microbatch leaves on one of a stage's chunks (the whole stage when chunks is 1)
    until its backward: what each microbatch in flight adds to ``static_bytes``."""
    _, _, _, chunk_layers, per_layer = _memory_parts(plan)
    return chunk_layers * per_layer


def memory_bytes(plan: Plan) -> float:
    """Peak bytes per GPU: weights, gradients and optimizer state, plus the activations the schedule keeps
    (``static_bytes`` and the schedule's peak of ``microbatch_activation_bytes``)."""
    states, recomputing, logits, chunk_layers, per_layer = _memory_parts(plan)
    stashed = max(theory.peak_stashed(plan.schedule, plan.pp, plan.num_microbatches, chunks=plan.chunks)
                  if plan.schedule == "interleaved" else
                  [n * plan.chunks
                   for n in theory.peak_stashed(plan.schedule, plan.pp, plan.num_microbatches)])
    return states + (stashed * chunk_layers * per_layer + recomputing) + logits


def estimate(plan: Plan, efficiency: float = EFFICIENCY) -> Estimate:
    """The closed-form prediction for one plan (``Estimate.problem`` says why it cannot run or fit)."""
    result = Estimate(plan)
    result.problem = refusal(plan)
    if result.problem:
        return result
    device = cluster.DEVICES[plan.device]
    result.memory_bytes = memory_bytes(plan)
    limit = USABLE_MEMORY * device.memory
    result.fits = result.memory_bytes <= limit
    if not result.fits:
        result.problem = f"needs {result.memory_bytes / 2**30:.1f} GiB of {limit / 2**30:.1f} GiB"
    fwd, bwd, message = stage_costs(plan, efficiency)
    result.stage_costs = (fwd, bwd, message)
    m_, p, v = plan.num_microbatches, plan.pp, plan.chunks
    utilization = theory.utilization(plan.schedule, p, m_, chunks=v) if p > 1 else 1.0
    slowest = max(f + b for f, b in zip(fwd, bwd))
    busy = m_ * slowest
    pipeline = busy / utilization + (2 * (p * v - 1) * message if p > 1 else 0.0)
    result.bubble = 1.0 - busy / pipeline
    result.parts = _parts(plan, device, efficiency, busy, pipeline)
    result.step_seconds = pipeline + result.parts["dp"] + result.parts["optimizer"]
    return result


def _parts(plan: Plan, device, efficiency: float, busy: float, pipeline: float) -> dict:
    """Where a step's seconds go (the pipeline's compute, all-reduces, bubble, then the data-parallel end)."""
    forward, recompute, allreduce = _layer_seconds(plan, device, efficiency)
    layers = math.ceil(plan.model.num_layers / plan.pp) * plan.num_microbatches
    reduces = 4 + (2 if plan.recompute == "full" else 0)
    params = parameters_per_gpu(plan)
    group = plan.dp * plan.cp
    link = cluster.NVLINK[plan.device] if plan.tp * plan.cp * plan.dp <= plan.gpus_per_node \
        else cluster.NETWORK[plan.device]
    if plan.distributed_optimizer:      # reduce-scatter fp32 gradients, all-gather bf16 weights: 6 bytes
        dp = cluster.allreduce_seconds(3 * params, group, link)
        optimizer = cluster.optimizer_seconds(params / group, device)
    else:                               # all-reduce fp32 gradients
        dp = cluster.allreduce_seconds(4 * params, group, link)
        optimizer = cluster.optimizer_seconds(params, device)
    return {"compute": layers * (3 * forward), "recompute": layers * recompute,
            "tp_comm": layers * reduces * allreduce, "bubble": pipeline - busy,
            "dp": 0.0 if plan.overlap_dp else dp, "optimizer": optimizer}


def simulate_estimate(result: Estimate, max_actions: int = 200_000) -> Estimate:
    """Replace the closed form's pipeline time by the simulator's (per-stage costs, message latency), when
    the schedule is small enough to replay quickly; returns a new Estimate."""
    plan = result.plan
    if result.problem and not result.fits or plan.pp == 1 or \
            plan.pp * plan.num_microbatches * plan.chunks > max_actions:
        return result
    fwd, bwd, message = result.stage_costs
    options = schedules.chunk_options(plan.schedule, plan.chunks)
    schedule = schedules.build(plan.schedule, plan.pp, plan.num_microbatches, **options)
    v = schedule.num_chunks
    trace = simulate.simulate(schedule, forward=[f / v for f in fwd], backward=[b / v for b in bwd],
                              latency=message, time_unit="s")
    parts = dict(result.parts)
    busy = result.step_seconds - parts["dp"] - parts["optimizer"] - parts["bubble"]
    parts["bubble"] = trace.makespan - busy
    return replace(result, step_seconds=trace.makespan + parts["dp"] + parts["optimizer"], parts=parts,
                   bubble=1.0 - busy / trace.makespan, simulated=True)


