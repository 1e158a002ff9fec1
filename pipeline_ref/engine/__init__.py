"""One rank, one step: the executor, a stage, weight gradients and versions, the message format and
its transports (MPI, torch.distributed), reduce, topology, device, precision, optim, the machine.

Layer: engine; it knows nothing of how a run was configured or started, and imports only
schedules/, sim/ and faults/.
"""
