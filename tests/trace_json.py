"""A trace to a dict and back, through JSON (lists stay lists): what the tests of traces round-trip."""
from dataclasses import asdict

from pipeline_ref.sim.trace import Event, Trace, TraceMeta, Wait


def to_dict(trace: Trace) -> dict:
    return asdict(trace)


def from_dict(data: dict) -> Trace:
    """Inverse of :func:`to_dict`, also after a trip through JSON."""
    data = dict(data)
    data["events"] = [e if isinstance(e, Event) else Event(**e) for e in data.get("events", [])]
    data["waits"] = [w if isinstance(w, Wait) else Wait(**w) for w in data.get("waits", [])]
    for key in ("peak_stashed", "peak_stashed_bytes", "peak_memory_bytes"):
        if data.get(key) is not None:
            data[key] = list(data[key])
    meta = data.get("meta") or {}
    data["meta"] = meta if isinstance(meta, TraceMeta) else TraceMeta(**meta)
    return Trace(**data)
