"""Lesson 10, planning a real run: the tables the notebook prints from pipeline_ref's cluster cost model.

    memory_table(model, device, layouts)        # states and activations per GPU for (tp, pp, recompute) rows
    link_costs(model, device, microbatch)       # one layer's compute against its tensor-parallel all-reduces
                                                # and its pipeline message, on NVLink and on InfiniBand
    bubble_table(num_stages, microbatches, chunks)   # the closed-form bubble and stash, 1F1B and interleaved
    schedule_search(plan, schedules, limit)     # each schedule's simulated step and memory; the fastest
    in_flight_limits(plan, limit)               # the GPU's memory limit in the Zero Bubble searches' units
    searched_schedules(plan, limit)             # zb-auto and zbv-auto searched under it, simulated
    published_rows(path)                        # the committed planner-against-published table

Everything here is arithmetic on a model of a cluster we do not have: predictions, labelled as such where the
notebook prints them. Nothing here starts MPI.
"""
from __future__ import annotations

import csv
import math
from dataclasses import replace

from pipeline_ref import schedules, simulate
from pipeline_ref.sim import cluster, step_model, theory

GB = 1e9        # the seed's and the datasheets' decimal gigabytes


def memory_table(model: cluster.Transformer, device: str, layouts, microbatch: int = 1,
                 num_microbatches: int = 64) -> list[str]:
    """One line per (tp, pp, recompute): weights + gradients + Adam state, 1F1B's stashed activations,
    total."""
    limit = step_model.USABLE_MEMORY * cluster.DEVICES[device].memory
    lines = [f"{'tp':>3}{'pp':>4} {'recompute':>10}{'states GB':>11}{'activations GB':>16}{'total GB':>10}"
             f"  fits "
             f"{limit / GB:.1f} GB?"]
    for tp, pp, recompute in layouts:
        plan = step_model.Plan(model, device, tp, pp, 1, microbatch, num_microbatches, "1f1b",
                               recompute=recompute, sequence_parallel=True)
        states = cluster.state_bytes(step_model.parameters_per_gpu(plan))
        total = step_model.memory_bytes(plan)
        lines.append(f"{tp:>3}{pp:>4} {recompute:>10}{states / GB:>11.1f}{(total - states) / GB:>16.1f}"
                     f"{total / GB:>10.1f}  {'yes' if total <= limit else 'no'}")
    return lines


def link_costs(model: cluster.Transformer, device: str, microbatch: int = 1, tp: int = 8) -> dict:
    """Seconds of one layer's forward on one GPU of a ``tp`` group, of its two tensor-parallel all-reduces,
    and of one pipeline message, each over NVLink and over InfiniBand."""
    dev = cluster.DEVICES[device]
    compute = cluster.compute_seconds(model.layer_forward_flops(microbatch) / tp, dev, "bf16",
                                      step_model.EFFICIENCY)
    activation = 2 * microbatch * model.seq_len * model.hidden           # bytes of b x s x h in 16 bits
    costs = {"layer forward": compute}
    for name, link in (("NVLink", cluster.NVLINK[device]), ("InfiniBand", cluster.NETWORK[device])):
        costs[f"2 all-reduces, {name}"] = 2 * cluster.allreduce_seconds(activation, tp, link)
        costs[f"message, {name}"] = cluster.message_seconds(activation / tp, link)
    return costs


def bubble_table(num_stages: int, microbatches, chunks) -> list[str]:
    """The bubble (p - 1) / (v m + p - 1) and the first stage's stash, in stages' worth of microbatches."""
    lines = [f"{'m':>5}" + "".join(f"{f'bubble v={v}':>14}{'stash':>7}" for v in chunks)]
    for m in microbatches:
        row = f"{m:>5}"
        for v in chunks:
            name = "1f1b" if v == 1 else "interleaved"
            stash = theory.peak_stashed(name, num_stages, m, chunks=v)[0] / v
            row += f"{theory.bubble(name, num_stages, m, chunks=v):>14.3f}{stash:>7.2f}"
        lines.append(row)
    return lines


def schedule_search(plan: step_model.Plan, candidates, limit: float) -> tuple[list[str], str, dict]:
    """Each (schedule, chunks): its simulated step with the plan's per-stage costs and its memory per GPU;
    the fastest that fits ``limit`` bytes; and {label: (step seconds, memory bytes)}."""
    lines = [f"{'schedule':>16}{'step s':>9}{'bubble':>9}{'memory GB':>11}  fits"]
    best, best_step, found = None, math.inf, {}
    for name, chunks in candidates:
        candidate = replace(plan, schedule=name, chunks=chunks)
        fwd, bwd, message = step_model.stage_costs(candidate)
        built = schedules.build(name, plan.pp, plan.num_microbatches, **schedules.chunk_options(name, chunks))
        v = built.num_chunks
        trace = simulate.simulate(built, forward=[f / v for f in fwd], backward=[b / v for b in bwd],
                                  latency=message, time_unit="s")
        memory = step_model.memory_bytes(candidate)
        fits = memory <= limit
        label = name + (f" v={chunks}" if name == "interleaved" else "")
        found[label] = (trace.makespan, memory)
        lines.append(f"{label:>16}{trace.makespan:>9.2f}{1 - trace.utilization:>9.3f}{memory / GB:>11.1f}  "
                     f"{'yes' if fits else 'no'}")
        if fits and trace.makespan < best_step:
            best, best_step = label, trace.makespan
    return lines, best, found


def in_flight_limits(plan: step_model.Plan, limit: float) -> dict:
    """{search: (max_in_flight, bytes of its unit)}: the bytes ``limit`` leaves after ``static_bytes``
    (weights, gradients, optimizer state, logits), counted in one microbatch's activations on a stage
    (zb-auto's unit, per stage) or on a chunk of half a stage (zbv-auto's unit, per rank of two chunks)."""
    limits = {}
    for name, chunks in (("zb-auto", 1), ("zbv-auto", 2)):
        candidate = replace(plan, schedule=name, chunks=chunks)
        unit = step_model.microbatch_activation_bytes(candidate)
        limits[name] = (math.floor((limit - step_model.static_bytes(candidate)) / unit), unit)
    return limits


def searched_schedules(plan: step_model.Plan, limit: float) -> tuple[list[str], dict, dict]:
    """zb-auto and zbv-auto searched under ``limit`` bytes per GPU with the plan's per-stage costs, then
    simulated: a table, {name: (step seconds, memory bytes)} and {name: the schedule found}.

    An assumption: W, the weight gradient, is half of the cost model's backward and I the other half (a
    matrix product's backward is two products of its forward's size, one for its input, one for its weights;
    attention's score products and the all-reduces, which belong to I, are split evenly too: a few percent).
    Activations are held from F to W (the searches' default ``weight_memory = 1``), as ``memory_bytes``
    counts them. In the V the output layer sits on rank 0, with the first chunk: its costs are the stages'
    in reverse, each rank's spread evenly over its two chunks."""
    fwd, bwd, message = step_model.stage_costs(plan)
    costs = {"zb-auto": (fwd, [b / 2 for b in bwd]),
             "zbv-auto": ([f / 2 for f in fwd[::-1]], [b / 4 for b in bwd[::-1]])}
    lines = [f"{'schedule':>16}{'max_in_flight':>15}{'step s':>9}{'bubble':>9}{'memory GB':>11}  fits"]
    found, orders = {}, {}
    for name, (in_flight, unit) in in_flight_limits(plan, limit).items():
        forward, half = costs[name]
        built = schedules.build(name, plan.pp, plan.num_microbatches, max_in_flight=in_flight,
                                forward=forward, input_grad=half, weight_grad=half, latency=message)
        trace = simulate.simulate(built, forward=forward, input_grad=half, weight_grad=half, latency=message,
                                  time_unit="s")
        memory = step_model.static_bytes(replace(plan, schedule=name)) + max(trace.peak_stashed) * unit
        found[name], orders[name] = (trace.makespan, memory), built
        lines.append(f"{name:>16}{in_flight:>15}{trace.makespan:>9.2f}{1 - trace.utilization:>9.3f}"
                     f"{memory / GB:>11.1f}  {'yes' if memory <= limit else 'no'}")
    return lines, found, orders


def published_rows(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))
