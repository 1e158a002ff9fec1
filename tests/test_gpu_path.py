"""The GPU path's lines, run on a CPU wherever they can be: what remains untested needs CUDA itself.

* the device each rank takes: the launcher's local rank (MPICH, Open MPI, Slurm, torchrun, or MPI's
  own shared-memory split), wrapped over the node's GPUs;
* the transport's choice: MPI or torch.distributed, gloo or NCCL, by tag or by order; NCCL's rules
  (one GPU per rank, each channel in order) refused before any message;
* the Messenger's staging bookkeeping, with ``device.CudaStaging`` replaced by a CPU stand-in whose
  copies finish only when the test says so (and once over real MPI ranks);
* benchmarks/gpu/run.sh on a machine without CUDA: it stops at its check, with the reason, no traceback.

The tests marked ``gpu`` run where CUDA is (benchmarks/gpu/run.sh runs them): NCCL's refusal of two
ranks on one GPU, and (with two GPUs) the NCCL transport against one device.
"""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline_ref.engine import device as devices
from pipeline_ref import schedules
from pipeline_ref.engine import torch_transport
from pipeline_ref.config import ConfigError, RunConfig
from pipeline_ref.preflight import check_config
from pipeline_ref.schedules.geometry import Action, Schedule
from pipeline_ref.launch import LaunchError, launch
from pipeline_ref.engine.message import Messenger, TensorSpec, pack, unpack

ROOT = Path(__file__).resolve().parents[1]
GPT = {"dim": 16, "heads": 2, "blocks": 2, "seq_len": 8, "batch": 8, "vocab": 32}


# --------------------------------------------------------------------------- which device


@pytest.mark.parametrize("name", devices.LOCAL_RANK_VARIABLES)
def test_local_rank_comes_from_the_launchers_variable(name):
    assert devices.local_rank(env={name: "3"}) == 3
    assert devices.local_rank(env={}) == 0                          # no launcher, no MPI: the first GPU


def test_local_rank_trusts_the_launchers_in_order_and_says_what_is_wrong():
    assert devices.local_rank(env={"SLURM_LOCALID": "5", "MPI_LOCALRANKID": "1"}) == 1
    assert devices.local_rank(env={"MPI_LOCALRANKID": "", "SLURM_LOCALID": "2"}) == 2
    with pytest.raises(ValueError, match="SLURM_LOCALID='x'"):
        devices.local_rank(env={"SLURM_LOCALID": "x"})


def test_device_choice_wraps_over_the_nodes_gpus():
    assert devices.choose("cuda", local_rank=5, gpus=4) == torch.device("cuda", 1)
    assert devices.choose("auto", local_rank=1, gpus=2) == torch.device("cuda", 1)
    assert devices.choose("auto", local_rank=1, gpus=0) == torch.device("cpu")
    assert devices.choose("cpu", local_rank=3, gpus=8) == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA device"):
        devices.choose("cuda", local_rank=0, gpus=0)
    with pytest.raises(ValueError, match="unknown device"):
        devices.choose("tpu")


# --------------------------------------------------------------------------- which transport


def test_transport_is_chosen_by_config_and_command_line():
    from pipeline_ref.__main__ import _parser
    args = _parser().parse_args(["run", "--transport", "torch", "--pp", "2"])
    assert RunConfig.from_args(args).transport == "torch"
    assert RunConfig.from_args(_parser().parse_args(["run"])).transport == "mpi"         # MPI stays the default
    with pytest.raises(ConfigError, match="unknown transport 'ucx'"):
        check_config(RunConfig(transport="ucx"))
    with pytest.raises(ConfigError, match="no synchronous send"):
        check_config(RunConfig(transport="torch", sync_sends=True))


def test_backend_and_matching_follow_the_device():
    assert torch_transport.backend_for(torch.device("cpu")) == "gloo"
    assert torch_transport.backend_for(torch.device("cuda", 0)) == "nccl"
    assert torch_transport.ordered_for("nccl", env={}) and not torch_transport.ordered_for("gloo", env={})
    assert torch_transport.ordered_for("gloo", env={"PIPELINE_REF_TORCH_ORDERED": "1"})
    import torch.distributed as dist
    if not dist.is_nccl_available():
        with pytest.raises(torch_transport.TransportError, match="NCCL"):
            torch_transport.check_available("nccl")
    torch_transport.check_available("gloo")


def test_nccl_refuses_two_ranks_on_one_gpu():
    torch_transport.check_own_gpus([("a", 0), ("a", 1), ("b", 0), ("b", 1)])
    with pytest.raises(torch_transport.TransportError, match=r"ranks 1, 2 would share GPU cuda:1 on a.*one GPU per rank"):
        torch_transport.check_own_gpus([("a", 0), ("a", 1), ("a", 1)])


def test_every_built_in_schedule_keeps_each_channel_in_order():
    for name in schedules.GENERATORS:
        for pp, m in ((2, 4), (3, 6), (4, 8)):
            options = schedules.chunk_options(name, 2)
            try:
                schedule = Schedule.of(schedules.build(name, pp, m, **options))
            except schedules.ScheduleError:
                continue
            torch_transport.check_order(schedule, name)


def test_a_schedule_out_of_order_is_refused_by_name():
    F, B = (lambda m: Action("F", m, 0)), (lambda m: Action("B", m, 0))
    swapped = Schedule.of([[F(0), F(1), B(0), B(1)], [F(1), F(0), B(1), B(0)]])   # valid, with MPI's tags
    schedules.validate(swapped, 2)
    with pytest.raises(torch_transport.TransportError, match=r"rank 0's message 1 to rank 1 .* F0, but rank 1 .* for F1"):
        torch_transport.check_order(swapped, "swapped")


def test_zbv_needs_one_channel_per_direction_and_chunk():
    zbv = Schedule.of(schedules.build("zbv", 2, 4))
    keys = torch_transport.channels(zbv, [[0, 1], [2, 3]])
    assert {k[2] for k in keys if k[:2] == (0, 1)} == {0, 3}    # chunk 0's activations, chunk 1's gradients
    assert len(keys) == 8 and keys[4:] == [(a + 2, b + 2, c) for a, b, c in keys[:4]]   # the second replica's


def test_store_address():
    assert torch_transport.store_address(["n1", "n1"], env={}) == "127.0.0.1"
    assert torch_transport.store_address(["n1", "n2"], env={}) == "n1"
    assert torch_transport.store_address(["n1", "n2"], env={"MASTER_ADDR": "10.0.0.7"}) == "10.0.0.7"


def test_torch_transport_routes_each_message_to_its_channel():
    groups = {(4, 5, c): f"4->5 c{c}" for c in range(4)} | {(5, 4, c): f"5->4 c{c}" for c in range(4)}
    transport = torch_transport.TorchTransport([4, 5], 4, "nccl", groups, num_chunks=2)
    assert (transport.rank, transport.size) == (0, 2)
    assert transport.reads_device_memory and transport.stream_ordered     # NCCL: no staging, no host wait
    assert transport._wire(1, tag=7, sending=True) == ({"group": "4->5 c3", "tag": 0}, 5)
    assert transport._wire(1, tag=6, sending=False) == ({"group": "5->4 c2", "tag": 0}, 5)
    by_tag = torch_transport.TorchTransport([4, 5], 5, "gloo")
    assert by_tag._wire(0, tag=6, sending=True) == ({"group": None, "tag": 6}, 4)
    assert not by_tag.reads_device_memory


def test_a_message_to_oneself_never_touches_the_wire():
    transport = torch_transport.TorchTransport([0, 1], 1, "gloo")
    sent = torch.arange(4, dtype=torch.uint8)
    transport.isend(sent, 1, tag=3).wait()                      # sent first, received later
    first = torch.empty(4, dtype=torch.uint8)
    transport.irecv(first, 1, tag=3).wait()
    later = torch.empty(4, dtype=torch.uint8)
    request = transport.irecv(later, 1, tag=5)                  # received first, sent later
    assert not request.test()
    with pytest.raises(RuntimeError, match="has not sent"):
        request.wait()
    transport.isend(sent + 1, 1, tag=5)
    assert request.test() and torch.equal(first, sent) and torch.equal(later, sent + 1)


# --------------------------------------------------------------------------- staging, with a CPU stand-in


class StandInEvent:
    def __init__(self, done: bool):
        self.done, self.synchronized = done, False

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.done = self.synchronized = True


class StandInStaging:
    """CudaStaging's three methods on the CPU; a copy is done when the test (or a synchronize) says so."""

    def __init__(self, done: bool = False):
        self.events, self.host_buffers, self.to_device_calls, self.done = [], 0, 0, done

    def to_host(self, buffer):
        self.events.append(StandInEvent(self.done))
        return self.events[-1], buffer.clone()

    def host_buffer(self, size):
        self.host_buffers += 1
        return torch.empty(size, dtype=torch.uint8)

    def to_device(self, tensors):
        self.to_device_calls += 1
        return tuple(t.clone() for t in tensors)


class Request:
    def __init__(self, done=True):
        self.done = done

    def test(self):
        return self.done

    def wait(self):
        self.done = True


class RecordingTransport:
    reads_device_memory = False

    def __init__(self):
        self.sent = []

    def isend(self, buffer, dest, tag):
        self.sent.append((dest, tag, buffer.clone()))
        return Request()

    def irecv(self, buffer, source, tag):
        return Request(done=False)


def test_a_staged_send_is_posted_once_its_copy_is_done_in_send_order():
    transport, staging = RecordingTransport(), StandInStaging()
    messenger = Messenger(transport, torch.device("cpu"), staging=staging)
    boundaries = [(torch.full((3,), float(i)),) for i in range(3)]
    for tag, b in enumerate(boundaries):
        messenger.isend(b, dest=1, tag=tag)
    assert transport.sent == [] and messenger.pending_sends == 3
    staging.events[1].done = True
    messenger.progress()
    assert transport.sent == []                 # the second copy is done, the first is not: order holds
    staging.events[0].done = True
    messenger.progress()
    assert [tag for _, tag, _ in transport.sent] == [0, 1] and messenger.pending_sends == 1
    messenger.finish_sends()                    # waits for the last copy, posts it, completes everything
    assert staging.events[2].synchronized and messenger.pending_sends == 0
    assert [unpack(buf, [TensorSpec((3,), torch.float32)])[0].tolist() for _, _, buf in transport.sent] == \
           [[0.0] * 3, [1.0] * 3, [2.0] * 3]


def test_staged_receives_land_in_host_buffers_that_are_not_pooled():
    staging = StandInStaging()
    messenger = Messenger(RecordingTransport(), torch.device("cpu"), staging=staging)
    specs = (TensorSpec((2, 3), torch.float64), TensorSpec((4,), torch.int64))
    pending = messenger.irecv(specs, source=0, tag=0)
    sent = (torch.randn(2, 3, dtype=torch.float64), torch.arange(4))
    pending.buffer.copy_(pack(sent))
    got = pending.wait()
    assert staging.host_buffers == 1 and staging.to_device_calls == 1
    assert all(torch.equal(a, b) for a, b in zip(got, sent))
    messenger.release(pending)
    assert messenger.pooled_buffers == 0        # it may still feed an asynchronous copy to the device
    plain = Messenger(RecordingTransport(), torch.device("cpu"))
    first = plain.irecv(specs, 0, 0)
    plain.release(first)
    assert plain.pooled_buffers == 1 and plain.irecv(specs, 0, 1).buffer is first.buffer


def test_the_messenger_stages_only_for_a_transport_that_cannot_read_device_memory(monkeypatch):
    gpu = torch.device("cuda", 0)               # no CUDA call: the copy stream is made on the first send
    assert isinstance(Messenger(RecordingTransport(), gpu).staging, devices.CudaStaging)
    nccl = torch_transport.TorchTransport([0, 1], 0, "nccl", {})
    assert Messenger(nccl, gpu).staging is None
    assert Messenger(RecordingTransport(), torch.device("cpu")).staging is None

    class Bare:                                  # no reads_device_memory: what PIPELINE_REF_CUDA_AWARE says
        pass
    monkeypatch.setenv("PIPELINE_REF_CUDA_AWARE", "1")
    assert Messenger(Bare(), gpu).staging is None
    monkeypatch.setenv("PIPELINE_REF_CUDA_AWARE", "0")
    assert Messenger(Bare(), gpu).staging is not None


def stand_in_round_trip(comm):
    """Over real MPI: rank 0 sends staged boundaries (stand-in copies, done at once) to rank 1, which
    receives them staged. Also each rank's local rank, from the launcher and from MPI's own split."""
    from pipeline_ref.engine.message import specs_of
    from pipeline_ref.engine.mpi_transport import MPITransport
    staging = StandInStaging(done=True)
    messenger = Messenger(MPITransport(comm, sync_sends=True), torch.device("cpu"), staging=staging)
    boundaries = [(torch.randn(5, 7, generator=torch.Generator().manual_seed(i)), torch.arange(i + 1))
                  for i in range(3)]
    if comm.Get_rank() == 0:
        for tag, b in enumerate(boundaries):
            messenger.isend(b, dest=1, tag=tag)
        messenger.finish_sends()
        got = None
    else:
        got = [messenger.irecv(specs_of(b), source=0, tag=tag).wait() for tag, b in enumerate(boundaries)]
    return {"sent": boundaries, "got": got, "staged": (len(staging.events), staging.to_device_calls),
            "local": (devices.local_rank(comm), devices.local_rank(comm, env={}))}


@pytest.mark.mpi
def test_staging_bookkeeping_over_real_ranks():
    rank0, rank1 = launch(2, "tests.test_gpu_path:stand_in_round_trip", timeout=120)
    for sent, got in zip(rank0["sent"], rank1["got"]):
        assert all(torch.equal(a, b) for a, b in zip(sent, got))
    assert rank0["staged"] == (3, 0) and rank1["staged"] == (0, 3)
    assert [rank0["local"], rank1["local"]] == [(0, 0), (1, 1)]      # Hydra's MPI_LOCALRANKID, and MPI's split


# --------------------------------------------------------------------------- the prepared GPU check


@pytest.mark.skipif(torch.cuda.is_available(), reason="the dry run is for machines without CUDA")
def test_gpu_check_stops_without_cuda_with_the_reason_and_no_traceback():
    run = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/run.sh"), "--no-install"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert run.returncode == 3, run.stdout + run.stderr
    assert run.stdout.startswith("benchmarks/gpu/run.sh, the prepared GPU check. In order, it will:")
    assert "changes no GPU setting" in run.stdout and "== 3." not in run.stdout     # stopped at step 2
    assert "no CUDA device" in run.stderr and "before the first CUDA call" in run.stderr
    assert "Traceback" not in run.stdout + run.stderr


# --------------------------------------------------------------------------- on a GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_nccl_refuses_ranks_sharing_a_gpu():
    cfg = RunConfig(schedule="1f1b", pp=2, microbatches=2, model="gpt", model_kwargs=GPT, device="cuda",
                    transport="torch")
    with pytest.raises(LaunchError, match="one GPU per rank"):
        launch(2, "pipeline_ref.train:run_rank", cfg, timeout=120, env={"CUDA_VISIBLE_DEVICES": "0"})


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs one GPU per rank: two GPUs")
@pytest.mark.parametrize("schedule", ["1f1b", "zbv", "interleaved"])
def test_nccl_pipeline_equals_one_device(schedule):
    from tests.one_device import assert_equals_one_device, reference
    cfg = RunConfig(schedule=schedule, pp=2, microbatches=4, chunks=2 if schedule == "interleaved" else 1,
                    model="gpt_tied", model_kwargs=GPT, dtype="float64", device="cuda", transport="torch",
                    collect_grads=True)
    result = launch(2, "pipeline_ref.train:run_rank", cfg, timeout=180)[0]
    loss, grads = reference(cfg)
    assert_equals_one_device(result, loss, grads, where=f"NCCL {schedule}")
