"""Tools around the library: demo, bench (and its report), doctor, the memory command, the planner
and its plan command, export. The library never imports them; ``__main__`` dispatches to them.

Layer: tools; imports any layer below it.
"""
