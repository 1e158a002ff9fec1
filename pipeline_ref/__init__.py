"""pipeline_ref: the reference implementation of the pipeline-parallelism course.

Folders are layers, bottom to top; each imports only from the layers below it (``tests/test_layers.py``
checks every import, function-level ones too):

    schedules/   geometry (Action, Op, Schedule, Pipeline), the generators, replay / validate: pure data
    sim/         simulate, theory, trace, timeline, plot, the band, the cluster cost model, the planner
    faults/      watchdog, non-finite checks, checkpoints, the rank entry
    engine/      one rank, one step: executor, stage, messages and their transports, reduce, topology, ...
    models/      the zoo, Hugging Face models, text data, batches, one-process references
    front/       a model to stages: split (torch's tracer), cut, partition, profiling, memory plan
    (root)       the run: config (a leaf), preflight, train, async_run, one_device, results, launch, measure
    tools/       demo, bench, doctor, memory, plan, export: tools around the library, never imported by it

From Python, the package's face:

    from pipeline_ref import schedules, simulate, RunConfig, launch

Start with ``python -m pipeline_ref demo``.
"""
import importlib

__version__ = "0.1.0"

# Loaded when first asked for, so that importing one module (a rank's entry, the simulator) costs no torch.
_FACE = {"schedules": ("pipeline_ref.schedules", None), "simulate": ("pipeline_ref.sim.simulate", None),
         "RunConfig": ("pipeline_ref.config", "RunConfig"), "launch": ("pipeline_ref.launch", None)}
__all__ = list(_FACE)


def __getattr__(name: str):
    if name not in _FACE:
        raise AttributeError(f"module 'pipeline_ref' has no attribute {name!r}")
    module_name, attribute = _FACE[name]
    module = importlib.import_module(module_name)
    return module if attribute is None else getattr(module, attribute)


def __dir__():
    return sorted(list(globals()) + __all__)
