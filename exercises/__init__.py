"""The course's exercises: each file holds functions for you to write, one lesson per file.

    ex00_mpi_tensors.py   lesson 00: send and receive torch tensors of any shape and dtype with mpi4py
    ex01_naive_split.py   lesson 01: a model split over ranks, forward and backward with Send/Recv
    ex02_gpipe.py         lesson 02: microbatches, gradient accumulation, and the GPipe schedule as data
    ex03_1f1b.py          lesson 03: the 1F1B schedule as data, and the executor that plays it over MPI
    ex04_data_parallel.py lesson 04: the pp x dp grid, its communicators, all-reduce, a tied weight's step
    ex05_balancing.py     lesson 05: the optimal balanced partition; a measured step's gap, explained
    ex06_interleaved.py   lesson 06: interleaved 1F1B (virtual stages) as data
    ex07_zero_bubble.py   lesson 07: the backward split into I and W, and the zero-bubble schedule ZB-H1
    ex08_real_transformer.py  lesson 08: a real model's split chosen so that every rank fits a memory budget
    ex09_asynchronous.py  lesson 09: PipeDream's weight versions: which one each action uses, which a stage keeps
    ex10_planning.py      lesson 10: one configuration's memory per GPU and its step, as a planner counts them

Every function starts as a stub that raises ``NotImplementedError("Exercise N.k: ...")``. Replace
the ``raise`` with your code, then grade it:

    make grade                                                       # every exercise, with a score table
    .venv/bin/python -m pytest tests/exercises/test_ex02_gpipe.py    # one file
    .venv/bin/python -m pytest tests/exercises -k "gpipe"            # the tests whose name matches

The tests take your functions as they are and run them for real: on MPI ranks (lessons 00-01),
through the validator and the simulator, and through ``pipeline_ref``'s executor on real ranks,
whose gradients must equal those of the unsplit model on one process.
Each stub's message carries a one-line hint. Stuck? ``exercises/hints/exNN_topic.md`` has longer hints, one
section per function: a question first, then a nudge and the idea, each folded behind the one before.
``solutions/`` holds one answer.
"""
