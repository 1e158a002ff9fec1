"""Boundaries as tuples of tensors, the Messenger's pool and the executor's plan, without MPI processes.

A fake Transport (one process, messages matched by (source, tag)) stands in for MPI, so these are pure and fast;
the real wire is tested by every multi-process test.
"""
import pytest
import torch
from torch import nn

from pipeline_ref import schedules
from pipeline_ref.engine.executor import Executor, ReceiveWindow, agree_specs, plan
from pipeline_ref.schedules.geometry import Action, Pipeline
from pipeline_ref.engine.message import (ACTIVATION, GRADIENT, Messenger, TensorSpec, gradient_specs,
                                         message_tag, pack, specs_of, unpack)
from pipeline_ref.engine.stage import Stage


class LoopbackTransport:
    """Sends land in a mailbox; a receive copies the matching message when waited on (as MPI would)."""

    def __init__(self):
        self.mailbox, self.posted, self.max_tag = {}, [], 1 << 20

    def isend(self, buffer, dest, tag):
        self.mailbox[(dest, tag)] = buffer.clone()
        return _Done()

    def irecv(self, buffer, source, tag):
        self.posted.append((source, tag))
        return _Copy(self, buffer, source, tag)

    def send_object(self, obj, dest, tag):
        self.mailbox[("object", dest, tag)] = obj

    def recv_object(self, source, tag):
        return self.mailbox.pop(("object", source, tag))


class _Done:
    def test(self):
        return True

    def wait(self):
        pass


class _Copy(_Done):
    def __init__(self, transport, buffer, source, tag):
        self.transport, self.buffer, self.key = transport, buffer, (source, tag)

    def wait(self):
        self.buffer.copy_(self.transport.mailbox.pop(self.key))


def test_a_boundary_of_several_dtypes_packs_and_unpacks_exactly():
    hidden = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True) * 1.0
    mask = torch.tensor([[1, 0, 1], [0, 1, 1]], dtype=torch.bool)
    positions = torch.arange(3)
    half = torch.randn(4, dtype=torch.bfloat16)
    tensors = (hidden, mask, positions, half)
    specs = specs_of(tensors)
    assert [s.requires_grad for s in specs] == [True, False, False, False]   # only floating tensors with grad
    assert gradient_specs(specs) == (TensorSpec((2, 3, 5), torch.float64),)
    out = unpack(pack(tensors), specs)
    for a, b in zip(tensors, out):
        assert a.dtype == b.dtype and torch.equal(a.detach(), b)


def test_a_lone_tensor_is_sent_from_its_own_memory():
    x = torch.randn(4, 4)
    assert pack((x,)).data_ptr() == x.data_ptr()


def test_receive_buffers_are_reused_once_released():
    transport = LoopbackTransport()
    messenger = Messenger(transport)
    specs = (TensorSpec((8, 8), torch.float32),)
    for step in range(3):
        messenger.isend((torch.full((8, 8), float(step)),), dest=0, tag=5)
        pending = messenger.irecv(specs, source=0, tag=5)
        (x,) = pending.wait()
        assert torch.all(x == step)
        if step == 0:
            first = pending.buffer.data_ptr()
        else:
            assert pending.buffer.data_ptr() == first, "a released buffer is taken again, not allocated anew"
        messenger.release(pending)
    assert messenger.pooled_buffers == 1


def test_the_plan_names_what_each_action_receives_and_where_it_sends():
    pipe = Pipeline(2, 2)                   # interleaved: rank 0 holds virtual stages 0 and 2
    specs = {0: (TensorSpec((4,), torch.float32, True),), 1: (TensorSpec((4,), torch.float32, True),)}
    steps = plan([Action("F", 0, 0), Action("F", 0, 1), Action("B", 0, 1), Action("B", 0, 0)], pipe, 0, specs, specs)
    f0, f1, b1, b0 = steps
    assert f0.receive is None and f0.send.dest == 1 and f0.send.tag == message_tag(ACTIVATION, 0, 0, 2)
    assert f1.receive.source == 1 and f1.receive.what == "activation" and f1.send.dest == 1
    assert f1.send.tag == message_tag(ACTIVATION, 0, 1, 2)        # to chunk 1 of rank 1: virtual stage 3
    assert b1.receive.source == 1 and b1.receive.tag == message_tag(GRADIENT, 0, 1, 2)
    assert b1.frees == (Action("F", 0, 1),)                       # the stash let go of F0.1's input
    assert b0.send is None and b0.receive.source == 1


@pytest.mark.parametrize("lookahead", [0, 1, 2, 5])
def test_the_receive_window_posts_ahead_at_most_its_size(lookahead):
    transport = LoopbackTransport()
    pipe = Pipeline(2)
    specs = {0: (TensorSpec((2,), torch.float32, True),)}
    steps = plan(schedules.build("gpipe", 2, 4)[1], pipe, 1, specs, specs)
    window = ReceiveWindow(steps, Messenger(transport), lookahead)
    for i, step in enumerate(steps):
        window.advance()
        assert len(window.posted) <= lookahead
        if step.receive:
            window.take(i)
    assert transport.posted == [(0, message_tag(ACTIVATION, i, 0, 1)) for i in range(4)]


def test_one_rank_pipeline_with_two_chunks_equals_the_whole_model():
    """Two chunks on one rank (a V's turn) pass their boundary by hand and give the unsplit gradients."""
    torch.manual_seed(0)
    layers = [nn.Sequential(nn.Linear(4, 4), nn.Tanh()) for _ in range(2)]
    x, t = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    for layer in layers:
        layer.double()
    pipe = Pipeline(1, 2)
    stages = {c: Stage(layers[c], pipe.is_first(0, c), pipe.is_last(0, c), nn.functional.mse_loss, 2)
              for c in range(2)}
    transport = LoopbackTransport()
    micro = [(xi,) for xi in x.tensor_split(2)]
    in_specs, out_specs = agree_specs(transport, stages, pipe, 0, micro[0])
    sched = schedules.build("interleaved", 1, 2, chunks=2)
    executor = Executor(stages, plan(sched[0], pipe, 0, in_specs, out_specs), Messenger(transport), 0,
                        torch.device("cpu"), lookahead=0)
    executor.run(micro, list(t.tensor_split(2)))
    model = nn.Sequential(*layers)
    expected = torch.autograd.grad(nn.functional.mse_loss(model(x), t), list(model.parameters()))
    for p, g in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-14)


def test_lookahead_must_be_a_count():
    with pytest.raises(ValueError, match="lookahead must be a non-negative integer"):
        Executor({}, [], Messenger(LoopbackTransport()), 0, torch.device("cpu"), lookahead=-1)
