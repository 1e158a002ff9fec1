"""Rank-side code of the lessons: what each notebook starts on its MPI ranks.

Every public function here that takes ``comm`` first is run on every rank by
``pipeline_ref.launch.launch(n, "lesson_code.<module>:<function>", ...)``. The
ranks start in ``lessons/``, so this package is importable there, and the
notebooks print the functions with ``inspect.getsource``: the code you read in a
lesson is the code that ran.

    l00_mpi       lesson 00: ranks, Send/Recv of tensors, Isend/Irecv, deadlocks, communicators
    l01_naive     lesson 01: one training step split over two ranks, written out with Send/Recv
    l03_blocking  lesson 03: 1F1B played with blocking sends, the obvious code that deadlocks
    l04_data_parallel  lesson 04: the communicators of a pp x dp grid, DDP vs pipeline vs both
    l05_balancing lesson 05: an unbalanced GPT, per-layer profiles, the three partitions
    l06_interleaved  lesson 06: the bubble in both conventions, message counts, the lessons' measured model
    l07_zero_bubble  lesson 07: the synchronous bound, bytes held per schedule, FLOPs of I and W
    sizing        lessons 01 and 04: bytes of training state, GPT-3's stages, the decision guide
    simulator_widget  lessons 02-03: sliders that redraw the simulated Gantt chart (ipywidgets)
    common        helpers the notebooks share: the timing model, core count, memory arithmetic, calibration
    device        the course's device (PIPELINE_COURSE_DEVICE=cpu|cuda|auto) and the model sizes for it
    diagrams      the pictures the notebooks draw with matplotlib (no image files)
"""
