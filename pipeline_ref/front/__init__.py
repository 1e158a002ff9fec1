"""A model to stages: split (torch's tracer), cut, partition, profiling, the memory plan.

Layer: front; imports only the layers below it (schedules/ to models/).
"""
