"""Models and functions the multi-process tests hand to ranks (importable as tests.rank_targets)."""
import time

import torch
from torch import nn

from pipeline_ref import models


class Trap(nn.Module):
    """An identity layer that misbehaves on its n-th call: raises, or sleeps (a hung rank)."""

    def __init__(self, on_call: int, action: str):
        super().__init__()
        self.on_call, self.action, self.calls = on_call, action, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.on_call:
            if self.action == "raise":
                raise RuntimeError("trap sprung on purpose")
            time.sleep(3600)
        return x


def _trapped(action: str, seed: int = 0):
    layers, loss_fn, batch = models.mlp(depth=4, width=8, batch=8, seed=seed)
    # Last layer lands on rank 1 of 2. Call 1 is the shape agreement, call 2 is F0, call 3 is F1.
    layers.append(Trap(on_call=3 if action == "raise" else 2, action=action))
    return layers, loss_fn, batch


def raising_model():
    return _trapped("raise")


def hanging_model():
    return _trapped("hang")


def user_model():
    """A model as a user would write one for --model: two Linear layers and MSE."""
    generator = torch.Generator().manual_seed(1)
    layers = [nn.Sequential(nn.Linear(6, 5), nn.ReLU()), nn.Linear(5, 3)]
    inputs = torch.randn(8, 6, generator=generator)
    targets = torch.randn(8, 3, generator=generator)
    return layers, nn.functional.mse_loss, (inputs, targets)


def counted_model(log: str, picklable: bool = True):
    """``user_model``, writing this process's id to ``log`` each time it is built; with ``picklable=False``
    its loss is a lambda, which pickle refuses."""
    import os
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    layers, loss_fn, batch = user_model()
    return layers, (loss_fn if picklable else lambda outputs, targets: loss_fn(outputs, targets)), batch


def unbalanced_mlp(width: int = 512, batch: int = 256):
    """A first layer as costly as six of the others: on 2 stages the uniform split gives stage 0
    nine units of work and stage 1 three; the balanced split [1 | 6] gives six and six."""
    generator = torch.Generator().manual_seed(2)
    heavy = nn.Sequential(*[m for _ in range(6) for m in (nn.Linear(width, width), nn.Tanh())])
    layers = [heavy] + [nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(6)]
    inputs = torch.randn(batch, width, generator=generator)
    targets = torch.randn(batch, width, generator=generator)
    return layers, nn.functional.mse_loss, (inputs, targets)


def cuda_round_trip(comm, sync_sends: bool = True):
    """Rank 0 sends CUDA tensors of several dtypes to rank 1 through the Messenger, one boundary of one tensor
    each and then all of them packed as one boundary; rank 1 returns what it received, on the CPU."""
    from pipeline_ref.engine.message import Messenger, specs_of
    from pipeline_ref.engine.mpi_transport import MPITransport
    device = torch.device("cuda", comm.Get_rank() % torch.cuda.device_count())
    generator = torch.Generator().manual_seed(3)
    tensors = [torch.randn(5, 7, generator=generator).to(dtype)
               for dtype in (torch.float32, torch.float64, torch.bfloat16)]
    tensors.append(torch.randint(0, 100, (3, 4, 2), generator=generator))
    boundaries = [(t,) for t in tensors] + [tuple(tensors)]
    messenger = Messenger(MPITransport(comm, sync_sends=sync_sends), device)
    if comm.Get_rank() == 0:
        for tag, boundary in enumerate(boundaries):
            messenger.isend(tuple(t.to(device) for t in boundary), dest=1, tag=tag)
        messenger.finish_sends()
        return [t for b in boundaries for t in b]
    received = [messenger.irecv(specs_of(b), source=0, tag=tag).wait() for tag, b in enumerate(boundaries)]
    return [t.cpu() for b in received for t in b]


def gpt_flat_targets(**options):
    """The tiny GPT with its targets flattened per token, (B * T,) for inputs (B, T), as language models often give them."""
    layers, loss_fn, (inputs, targets) = models.tiny_gpt(**options)
    return layers, loss_fn, (inputs, targets.reshape(-1))


class NaNAt(nn.Module):
    """An identity layer whose output (forward) or input gradient (backward) turns NaN on its n-th call."""

    def __init__(self, on_call: int, where: str):
        super().__init__()
        self.on_call, self.where, self.calls = on_call, where, 0

    def forward(self, x):
        self.calls += 1
        if self.calls != self.on_call:
            return x
        return x * float("nan") if self.where == "forward" else _NaNGradient.apply(x)


class _NaNGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def nan_model(where: str = "forward", on_call: int = 4):
    """A 4-layer MLP on 2 stages with a NaN at the start of rank 1 (layers 3-4; call 1 is the shape agreement; with 2
    microbatches, calls 2-3 are step 0 and call 4 is F0 of step 1)."""
    layers, loss_fn, batch = models.mlp(depth=4, width=8, batch=8)
    layers.insert(3, NaNAt(on_call, where))
    return layers, loss_fn, batch


def crashing_mlp(crash_on_call: int = 0, depth: int = 8, width: int = 8, batch: int = 16):
    """``models.mlp`` with an identity layer at the end that raises on its n-th call (0: never), to crash a run
    mid-way; the same layers either way, so a checkpoint of one loads into the other."""
    layers, loss_fn, data = models.mlp(depth=depth, width=width, batch=batch)
    layers.append(Trap(on_call=crash_on_call or -1, action="raise"))
    return layers, loss_fn, data


def overflow_linear(overflow_step: int = 2, width: int = 8, batch: int = 8, depth: int = 4):
    """Linear layers only (nothing saturates), a new batch per step; step ``overflow_step``'s inputs are 1e6 times
    larger, so in float16 (largest 65504) its activations overflow on every stage after the first layer."""
    layers = [nn.Linear(width, width) for _ in range(depth)]

    def data(step: int):
        generator = torch.Generator().manual_seed(step)
        inputs = torch.randn(batch, width, generator=generator) * (1e6 if step == overflow_step else 1.0)
        return inputs, torch.randn(batch, width, generator=generator)
    return layers, torch.nn.functional.mse_loss, data
