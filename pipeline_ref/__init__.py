"""pipeline_ref: the reference implementation of the pipeline-parallelism course.

A schedule is data (``schedules``); the simulator plays it without processes
(``simulate``); the executor plays it over MPI (``runner``, ``executor``); both
return a ``trace.Trace``. Start with ``python -m pipeline_ref demo``.
"""
__version__ = "0.1.0"
