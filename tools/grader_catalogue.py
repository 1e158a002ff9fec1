"""The catalogue tools/grader_check.py grades: answers students really write, wrong ones and right ones.

An :class:`Entry` changes one solution file: ``changes`` replace a text that occurs exactly once, ``bodies``
replace a whole exercise's code (between its BEGIN/END EXERCISE markers). ``right=True``: a correct answer
written differently, which must keep every point. ``expect``: a regex a failing test's message must match;
``within``: seconds the whole graded run may take (a hang must end quickly). ``ranks``: it starts MPI ranks
(``--quick`` leaves it out).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    name: str
    module: str
    why: str
    changes: tuple = ()
    bodies: tuple = ()
    expect: str | None = None
    right: bool = False
    ranks: bool = True
    select: str | None = None
    within: float | None = None


EX00, EX01, EX02, EX03 = "ex00_mpi_tensors", "ex01_naive_split", "ex02_gpipe", "ex03_1f1b"
EX04, EX05, EX06, EX07 = "ex04_data_parallel", "ex05_balancing", "ex06_interleaved", "ex07_zero_bubble"
EX08, EX09 = "ex08_real_transformer", "ex09_asynchronous"

# The executor of exercise 3.3 as students write it wrong: each receive posted only when its action comes,
# and each send waited for at once. With synchronous sends, 1F1B's steady state then deadlocks.
LAZY_RECEIVES = """
from .ex00_mpi_tensors import irecv_tensor, isend_tensor
rank, last = comm.Get_rank(), comm.Get_size() - 1
for a in actions:
    i = a.microbatch
    if a.op == "F":
        x = inputs[i] if rank == 0 else None
        if rank > 0:
            request, x = irecv_tensor(comm, shape, dtype, source=rank - 1, tag=2 * i + ACTIVATION)
            request.Wait()
        out = stage.forward(i, x, targets[i] if rank == last else None)
        if rank < last:
            {send}
    else:
        grad = None
        if rank < last:
            request, grad = irecv_tensor(comm, shape, dtype, source=rank + 1, tag=2 * i + GRADIENT)
            request.Wait()
        out = stage.backward(i, grad)
        if rank > 0:
            {send_back}
{finish}
"""


def _lazy(blocking: bool) -> str:
    if blocking:
        return LAZY_RECEIVES.format(send="isend_tensor(comm, out[0], dest=rank + 1, tag=2 * i + ACTIVATION).Wait()",
                                    send_back="isend_tensor(comm, out[0], dest=rank - 1, tag=2 * i + GRADIENT).Wait()",
                                    finish="")
    return ("sends = []\n" + LAZY_RECEIVES.format(
        send="sends.append(isend_tensor(comm, out[0], dest=rank + 1, tag=2 * i + ACTIVATION))",
        send_back="sends.append(isend_tensor(comm, out[0], dest=rank - 1, tag=2 * i + GRADIENT))",
        finish="for request in sends:\n    request.Wait()"))


CATALOGUE = [
    # ------------------------------------------------------------------ exercise 0: tensors over MPI
    Entry("ex00 send ignores its tag", EX00, "both messages sent with tag 0",
          changes=(("comm.send((tuple(buf.shape), buf.dtype), dest=dest, tag=tag)",
                    "comm.send((tuple(buf.shape), buf.dtype), dest=dest, tag=0)"),
                   ("comm.Send([_bytes_of(buf), MPI.BYTE], dest=dest, tag=tag)",
                    "comm.Send([_bytes_of(buf), MPI.BYTE], dest=dest, tag=0)")),
          expect="ignored its tag", within=150),
    Entry("ex00 recv ignores its tag", EX00, "MPI.ANY_TAG in recv_tensor",
          changes=(("shape, dtype = comm.recv(source=source, tag=tag)",
                    "shape, dtype = comm.recv(source=source, tag=MPI.ANY_TAG)"),
                   ("comm.Recv([_bytes_of(tensor), MPI.BYTE], source=source, tag=tag)",
                    "comm.Recv([_bytes_of(tensor), MPI.BYTE], source=source, tag=MPI.ANY_TAG)"))),
    Entry("ex00 recv ignores its source", EX00, "MPI.ANY_SOURCE in recv_tensor",
          changes=(("shape, dtype = comm.recv(source=source, tag=tag)",
                    "status = MPI.Status()\n    shape, dtype = comm.recv(source=MPI.ANY_SOURCE, tag=tag, "
                    "status=status)\n    source = status.Get_source()"),)),
    Entry("ex00 irecv ignores its source", EX00, "MPI.ANY_SOURCE in irecv_tensor",
          changes=(("request = comm.Irecv([_bytes_of(tensor), MPI.BYTE], source=source, tag=tag)",
                    "request = comm.Irecv([_bytes_of(tensor), MPI.BYTE], source=MPI.ANY_SOURCE, tag=tag)"),)),
    Entry("ex00 irecv ignores its tag", EX00, "MPI.ANY_TAG in irecv_tensor",
          changes=(("request = comm.Irecv([_bytes_of(tensor), MPI.BYTE], source=source, tag=tag)",
                    "request = comm.Irecv([_bytes_of(tensor), MPI.BYTE], source=source, tag=MPI.ANY_TAG)"),)),
    Entry("ex00 isend ignores its tag", EX00, "isend_tensor sends with tag 0",
          changes=(("return comm.Isend([_bytes_of(_wire(tensor)), MPI.BYTE], dest=dest, tag=tag)",
                    "return comm.Isend([_bytes_of(_wire(tensor)), MPI.BYTE], dest=dest, tag=0)"),),
          expect="isend_tensor ignored its tag", within=120),
    Entry("ex00 isend blocks", EX00, "isend_tensor waits for its own send before returning the request",
          changes=(("return comm.Isend([_bytes_of(_wire(tensor)), MPI.BYTE], dest=dest, tag=tag)",
                    "request = comm.Isend([_bytes_of(_wire(tensor)), MPI.BYTE], dest=dest, tag=tag)\n"
                    "    request.Wait()\n    return request"),),
          expect="isend_tensor blocked", within=150),
    Entry("ex00 data pickled", EX00, "the whole tensor through lowercase send",
          changes=(("comm.Send([_bytes_of(buf), MPI.BYTE], dest=dest, tag=tag)",
                    "comm.send(buf, dest=dest, tag=tag)"),
                   ("comm.Recv([_bytes_of(tensor), MPI.BYTE], source=source, tag=tag)",
                    "tensor = comm.recv(source=source, tag=tag)"))),
    # ------------------------------------------------------------------ exercise 1: the naive split
    Entry("ex01 remainder to the last stages", EX01, "7 layers on 3 stages as 2, 2, 3",
          changes=(("start = stage_index * base + min(stage_index, extra)",
                    "start = stage_index * base + max(0, stage_index - (num_stages - extra))"),
                   ("stop = start + base + (stage_index < extra)",
                    "stop = start + base + (stage_index >= num_stages - extra)"))),
    Entry("ex01 received input without grad", EX01, "x received without requires_grad",
          changes=(("x = recv_tensor(comm, rank - 1, ACTIVATION_TAG).requires_grad_(True)",
                    "x = recv_tensor(comm, rank - 1, ACTIVATION_TAG)"),)),
    Entry("ex01 loss on every rank", EX01, "naive_step returns 0.0 off the last rank",
          changes=(("    stage_backward(comm, x, y)\n    return None",
                    "    stage_backward(comm, x, y)\n    return 0.0"),)),
    # ------------------------------------------------------------------ exercise 2: GPipe
    Entry("ex02 split accepts True and 2.0", EX02, "no type check of num_microbatches", ranks=False,
          changes=(("if not isinstance(num_microbatches, int) or isinstance(num_microbatches, bool) or "
                    "num_microbatches < 1:", "if num_microbatches < 1:"),), select="split"),
    Entry("ex02 accumulation zeroes the grads given", EX02, "model.zero_grad() first", ranks=False,
          changes=(("    count = len(microbatches)\n", "    count = len(microbatches)\n    model.zero_grad()\n"),),
          select="accum", expect="plus the batch's"),
    Entry("ex02 accumulation rescales at the end", EX02, "sum of the losses' grads, divided by m at the end",
          ranks=False, select="accum",
          changes=(("(loss / count).backward()", "loss.backward()"),
                   ("    return total / count\n", "    for p in model.parameters():\n        p.grad /= count\n"
                                                  "    return total / count\n"))),
    Entry("ex02 gpipe as naive", EX02, "F i B i per microbatch", ranks=False, select="gpipe and not real",
          changes=(("return [forwards + backwards for _ in range(num_stages)]",
                    "return [[a for f, b in zip(forwards, backwards) for a in (f, b)] for _ in range(num_stages)]"),)),
    Entry("ex02 gpipe borrowed", EX02, "pipeline_ref's own gpipe", ranks=False, select="gpipe and not real",
          bodies=(("2.3", "from pipeline_ref.schedules import gpipe as reference\n"
                          "return reference(num_stages, num_microbatches)"),), expect="no points for an answer"),
    Entry("ex02 backwards in reverse", EX02, "GPipe with its backwards last first: also right", right=True,
          ranks=False, select="gpipe and not real",
          changes=(("backwards = [Action(\"B\", i) for i in range(num_microbatches)]",
                    "backwards = [Action(\"B\", i) for i in reversed(range(num_microbatches))]"),)),
    # ------------------------------------------------------------------ exercise 3: 1F1B and the executor
    Entry("ex03 warmup one too many", EX03, "p - s forwards of warmup", ranks=False, select="not run_actions",
          changes=(("return min(num_stages - stage_index - 1, num_microbatches)",
                    "return min(num_stages - stage_index, num_microbatches)"),)),
    Entry("ex03 1f1b borrowed by importlib", EX03, "pipeline_ref's one_f_one_b, imported by name", ranks=False,
          select="1f1b and not real and not run_actions",
          bodies=(("3.2", "import importlib\n"
                          "return importlib.import_module('pipeline_ref.schedules').one_f_one_b(num_stages, "
                          "num_microbatches)"),), expect="no points for an answer"),
    Entry("ex03 executor deadlocks", EX03, "receives posted late, each send waited for at once", select="run_actions",
          bodies=(("3.3", _lazy(blocking=True)),), within=150,
          expect=r"rank \d: stuck for \d+ s while blocked before [FB]\d"),
    Entry("ex03 executor receives late", EX03, "receives posted when their action comes, sends non-blocking: right",
          right=True, select="run_actions", bodies=(("3.3", _lazy(blocking=False)),)),
    Entry("ex03 executor leaves sends unfinished", EX03, "never waits for its sends", select="run_actions",
          changes=(("    for request in sends:                   # a send's buffer is in use until its request "
                    "completes\n        request.Wait()\n", ""),), expect="not completed"),
    Entry("ex03 executor reorders", EX03, "every forward first, whatever the schedule", select="run_actions",
          changes=(("    sends = []\n    for a in actions:\n",
                    "    sends = []\n    for a in sorted(actions, key=lambda a: a.op != \"F\"):\n"),),
          expect="in the order given"),
    Entry("ex03 executor receives from rank -1", EX03, "rank 0 posts receives from rank - 1 (MPI_PROC_NULL on MPICH)",
          select="run_actions", changes=(("if a.op == \"F\" and rank > 0:", "if a.op == \"F\":"),),
          expect="outside the communicator"),
    Entry("ex03 executor tags by microbatch alone", EX03, "tag = microbatch both ways (sources tell them apart here)",
          select="run_actions",
          changes=(("tag=2 * a.microbatch + ACTIVATION)", "tag=a.microbatch)"),
                   ("tag=2 * a.microbatch + GRADIENT)", "tag=a.microbatch)"),
                   ("tag=2 * i + ACTIVATION)", "tag=i)"), ("tag=2 * i + GRADIENT)", "tag=i)")),
          expect="the rule"),
    Entry("ex03 endless loop", EX03, "a while loop that never ends", ranks=False, select="warmup",
          bodies=(("3.1", "while num_stages > 0:\n    stage_index = stage_index\n"
                          "return num_stages - stage_index - 1"),),
          expect=r"TimeoutError: your ex03_1f1b\.warmup_forwards", within=150),
    # ------------------------------------------------------------------ exercise 4: pipeline + data parallel
    Entry("ex04 grid check of too few ranks only", EX04, "refuses pp * dp > size, not pp * dp < size",
          changes=(("if comm.Get_size() != pp * dp:", "if comm.Get_size() < pp * dp:"),),
          select="refuses_wrong", expect="every rank must refuse", within=120),
    Entry("ex04 one buffer of the first dtype", EX04, "all gradients cast to the first one's dtype",
          changes=(("buckets.setdefault(p.grad.dtype, []).append(p)", "buckets.setdefault(0, []).append(p)"),
                   ("flat = torch.cat([p.grad.detach().reshape(-1) for p in params])",
                    "flat = torch.cat([p.grad.detach().reshape(-1).to(params[0].grad.dtype) for p in params])"))),
    Entry("ex04 sum, not mean", EX04, "no division by the replicas",
          changes=(("flat /= size", "flat *= 1"),), select="allreduce"),
    Entry("ex04 coordinates swapped", EX04, "(replica, stage) instead of (stage, replica)", ranks=False,
          select="grid_coords", changes=(("return stage, replica\n", "return replica, stage\n"),)),
    Entry("ex04 tied sum over the replicas", EX04, "the tied weight summed over data_comm, not its holders",
          select="tied", bodies=(("4.4", """
from mpi4py import MPI
allreduce_gradients(data_comm, parameters.values())
for name, stages in tied:
    if pipeline_comm.Get_rank() in stages:
        data_comm.Allreduce(MPI.IN_PLACE, parameters[name].grad.numpy(), op=MPI.SUM)
"""),)),
    Entry("ex04 tied part counted twice", EX04, "the holders' sum taken twice", select="tied",
          changes=(("            group.Allreduce(MPI.IN_PLACE, parameters[name].grad.numpy(), op=MPI.SUM)\n",
                    "            for _ in stages:\n"
                    "                group.Allreduce(MPI.IN_PLACE, parameters[name].grad.numpy(), op=MPI.SUM)\n"),),
          expect="tied"),
    Entry("ex04 only the holders split", EX04, "Split called by the holders alone: the others never join",
          select="tied", changes=(("        group = pipeline_comm.Split(0 if holds else MPI.UNDEFINED, stage)\n"
                                   "        if holds:",
                                   "        if holds:\n            group = pipeline_comm.Split(0, stage)"),),
          expect="stuck for", within=150),
    Entry("ex04 tied sum first", EX04, "the tied sums first, then the replicas' mean: also right", right=True,
          select="tied", bodies=(("4.4", """
from mpi4py import MPI
for name, stages in tied:
    color = 1 if pipeline_comm.Get_rank() in stages else MPI.UNDEFINED
    holders = pipeline_comm.Split(color, pipeline_comm.Get_rank())
    if holders != MPI.COMM_NULL:
        grad = parameters[name].grad
        summed = grad.clone()
        holders.Allreduce(grad.numpy(), summed.numpy(), op=MPI.SUM)
        grad.copy_(summed)
        holders.Free()
allreduce_gradients(data_comm, parameters.values())
"""),)),
    # ------------------------------------------------------------------ exercise 5: balancing
    Entry("ex05 greedy fill", EX05, "fill each stage up to total / stages", ranks=False,
          bodies=(("5.1", """
costs = [float(c) for c in costs]
target, ranges, start, acc = sum(costs) / num_stages, [], 0, 0.0
for i, c in enumerate(costs):
    left_layers, left_stages = len(costs) - i, num_stages - len(ranges)
    if acc + c > target and i > start and left_layers >= left_stages:
        ranges.append(range(start, i))
        start, acc = i, 0.0
    acc += c
ranges.append(range(start, len(costs)))
return ranges
"""),), select="partition"),
    Entry("ex05 stages True and 2.0", EX05, "no type check of num_stages", ranks=False, select="refuses",
          changes=(("    if not isinstance(num_stages, int) or isinstance(num_stages, bool):\n"
                    "        raise ValueError(f\"num_stages must be an integer, got {num_stages!r}\")\n", ""),
                   ("best = [[math.inf] * (n + 1) for _ in range(num_stages + 1)]",
                    "num_stages = int(num_stages)\n    best = [[math.inf] * (n + 1) for _ in range(num_stages + 1)]"))),
    Entry("ex05 endless loop", EX05, "a search that never stops", ranks=False, select="is_a_split",
          changes=(("    bounds = [n]\n", "    while n > 0:\n        pass\n    bounds = [n]\n"),),
          expect=r"TimeoutError: your ex05_balancing\.balanced_partition", within=150),
    Entry("ex05 latency as the mean gap", EX05, "the mean producer-to-use gap, waits for a busy rank included",
          ranks=False, select="stage_costs or explain",
          changes=(("costs[\"latency\"] = min(gaps, default=0.0)",
                    "costs[\"latency\"] = sum(gaps) / len(gaps) if gaps else 0.0"),), expect="latency"),
    Entry("ex05 step as the balanced theory", EX05, "(m + p - 1)(max F + max B): the slowest stage everywhere",
          ranks=False, select="gpipe_step",
          bodies=(("5.4", "return (num_microbatches + len(forward) - 1) * (max(forward) + max(backward))"),)),
    Entry("ex05 messages left out", EX05, "contention taken from the step without latency", ranks=False,
          select="explain", changes=(("\"contention\": trace.makespan - explained}",
                                      "\"contention\": trace.makespan - uneven}"),)),
    Entry("ex05 step played, not a formula", EX05, "GPipe's step by playing the schedule: also right", right=True,
          ranks=False, select="gpipe_step or explain", bodies=(("5.4", """
p, m = len(forward), num_microbatches
free, ended = [0.0] * p, {}
for op, costs, order in (("F", forward, range(p)), ("B", backward, range(p - 1, -1, -1))):
    for i in range(m):
        previous = None
        for s in order:
            ready = free[s] if previous is None else max(free[s], ended[(op, previous, i)] + latency)
            free[s] = ended[(op, s, i)] = ready + costs[s]
            previous = s
return max(free)
"""),)),
    # ------------------------------------------------------------------ exercises 6 and 7: past 1F1B
    Entry("ex06 chunks True accepted", EX06, "no type check of chunks", ranks=False, select="refuses",
          changes=(("if not isinstance(v, int) or isinstance(v, bool) or v < 1:", "if v < 1:"),
                   ("    total = m * v ", "    v = int(v)\n    total = m * v "))),
    Entry("ex06 plain 1F1B warmup", EX06, "warm-up p - r - 1 whatever the chunks", ranks=False, select="not real",
          changes=(("warmup = p - rank - 1 if v == 1 else (p - rank - 1) * 2 + (v - 1) * p",
                    "warmup = p - rank - 1"),)),
    Entry("ex07 no weight gradient held back", EX07, "1F1B with I W, nothing deferred", ranks=False,
          select="not real", changes=(("for _ in range(s):                      # hold back",
                                       "for _ in range(0):                      # hold back"),)),
    Entry("ex07 holds Ws back after the forwards", EX07, "keeps holding back Ws once the forwards ran out (m < p)",
          ranks=False, select="order",
          changes=(("            if count[\"F\"] < m:\n                run(\"F\", \"I\")",
                    "            if count[\"F\"] < m:\n                run(\"F\", \"I\")\n"
                    "            elif count[\"I\"] < m:\n                run(\"I\")"),),
          expect="lesson 07's phases"),
    Entry("ex07 I computes the weights too", EX07, "a whole backward in I, nothing left for W", ranks=False,
          select="split_backward or input_half or nothing_twice", bodies=(("7.1", """
grads = torch.autograd.grad(outputs, list(inputs), grad_outputs=output_grads, retain_graph=True) if inputs else []
torch.autograd.backward(outputs, output_grads, retain_graph=True)
return list(grads), [None] * len(layer_outputs)
"""),), expect="computed weight gradients"),
    Entry("ex07 W redoes the input path", EX07, "W from the stage's output: the whole chain again", ranks=False,
          select="split_backward or input_half or nothing_twice",
          bodies=(("7.1", """
grads = torch.autograd.grad(outputs, list(inputs) + list(layer_outputs), grad_outputs=output_grads,
                            retain_graph=True, allow_unused=True)
return list(grads[:len(inputs)]), [outputs, output_grads]
"""), ("7.2", """
outputs, output_grads = kept
params = [p for layer in layers for p in layer.parameters(recurse=False)]
for p, g in zip(params, torch.autograd.grad(outputs, params, output_grads, retain_graph=True)):
    p.grad = g if p.grad is None else p.grad + g
""")), expect="FLOPs|bytes"),
    Entry("ex07 I frees the graph", EX07, "no retain_graph in I: W finds the graph gone", ranks=False,
          select="equals_the_whole", changes=(("grad_outputs=output_grads, retain_graph=True, allow_unused=True)",
                                             "grad_outputs=output_grads, allow_unused=True)"),)),
    Entry("ex07 W one parameter at a time", EX07, "one autograd call per parameter: also right", right=True,
          bodies=(("7.2", """
for layer, output, grad in zip(layers, layer_outputs, kept):
    for p in layer.parameters(recurse=False):
        if grad is None or not p.requires_grad:
            continue
        (g,) = torch.autograd.grad(output, [p], grad, retain_graph=True)
        p.grad = g if p.grad is None else p.grad + g
"""),)),
    # ------------------------------------------------------------------ exercise 8: a real model cut to fit
    Entry("ex08 refusal without its stage", EX08, "the message names no stage", ranks=False, select="refuses",
          changes=(("at best stage {worst} \"", "at best one stage \""),), expect="stage N"),
    Entry("ex08 refusal says minus the bytes", EX08, "budget - held: '-7' for 7 over", ranks=False,
          select="refuses", changes=(("{held[worst] - budget} over the budget", "{budget - held[worst]} to spare"),),
          expect="by how many bytes"),
    Entry("ex08 last count's miss", EX08, "reports the last stage count's miss, not the closest", ranks=False,
          select="fewest", changes=(("closest = min(closest, max(stage_bytes(pieces, split, num_microbatches, "
                                     "optimizer)) - budget)",
                                     "closest = max(stage_bytes(pieces, split, num_microbatches, optimizer)) - budget"),),
          expect="say the closest"),
    Entry("ex08 refusal worded otherwise", EX08, "another sentence with the same numbers: also right", right=True,
          ranks=False, select="refuses",
          changes=(("f\"no split into {num_stages} stages fits {budget} bytes per stage: at best stage {worst} \"",
                    "f\"{num_stages} stages cannot fit {budget} bytes each; the best split's stage {worst} \""),)),
    # ------------------------------------------------------------------ exercise 9: asynchronous weight versions
    Entry("ex09 no max(0, ...)", EX09, "PipeDream's warm-up forwards on negative versions", ranks=False,
          changes=(("return max(0, microbatch - (num_stages - stage - 1))",
                    "return microbatch - (num_stages - stage - 1)"),), expect=r"backwards"),
    Entry("ex09 no weight stashing", EX09, "keeps only the newest version, not the stashed ones", ranks=False,
          select="versions_kept", changes=(("needed = set(stash.values()) | {newest}", "needed = {newest}"),),
          expect=r"weight store"),
]
