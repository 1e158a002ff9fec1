"""What keeps a run honest when something goes wrong: the watchdog, non-finite checks, checkpoint
files and their checks, the rank entry (``_rank.py``, what ``launch`` starts).

Layer: faults; imports only schedules/ and sim/.
"""
