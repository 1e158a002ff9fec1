"""pipeline_ref: the reference implementation of the pipeline-parallelism course.

Follow one microbatch from the command line to the trace, one module at a time:

    geometry    Action, Schedule, Pipeline: which virtual stage talks to which (imports nothing else)
    schedules   the generators (naive, gpipe, 1f1b; interleaved.py, zero_bubble.py), build, describe
    replay      the ranks played in dependency order: validate() and simulate() both use it
    simulate    the schedule with costs, without processes; theory: the closed forms
    config      RunConfig and every check made before a rank communicates
    train       set-up, the step loop, SGD, results (results.RunResult)
    stage       one model chunk: forward / backward / I / W, the stash
    message     boundaries (tuples of tensors) and the Transport that moves them (MPI)
    executor    receive, compute, send, for each action of a rank
    trace       what happened and when; plot: Gantt charts

Start with ``python -m pipeline_ref demo``.
"""
__version__ = "0.1.0"
