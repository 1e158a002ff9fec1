"""The simulator and what it gives: simulate, play, action costs, theory, traces, timelines, plots, the
band a schedule explains, the cluster cost model and the step model.

Layer: sim (no processes); imports only schedules/.
"""
