"""What cutting a whole nn.Module costs (pipeline_ref/front/split.py), and whether torch.fx could have done it.

    .venv/bin/python benchmarks/split_time.py [--out benchmarks/results/split_time]

For Hugging Face GPT-2 and Llama (4 blocks, the hf_models defaults) and the skip-connection net, on one
microbatch of 4 sequences: the first trace in this process (torch.export warms up), a second trace of a
fresh model of the same kind, and the cached path a rank takes for its next run (a copy of the kept trace
bound to the new module's parameters); beside each, whether ``torch.fx.symbolic_trace`` traces the module.
Each kind is run in a fresh process, so the first trace really is the first. Writes results.md into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

FACTORIES = ["gpt2", "llama", "skip_net"]


def measure(kind: str) -> dict:
    import torch
    from pipeline_ref import models
    from pipeline_ref.front import split
    from pipeline_ref.models import hf_models

    def build(seed):
        torch.manual_seed(seed)
        module, _, batch = getattr(hf_models, kind)(batch=4)
        module, (inputs, _) = models.to_dtype(module, batch, torch.float64)
        return module, inputs

    times = {}
    for label, seed, key in (("first trace", 0, None), ("second trace", 1, "kept"), ("cached copy", 2, "kept")):
        module, inputs = build(seed)
        start = time.perf_counter()
        pieces = split.trace(module, inputs, key=key)
        times[label] = time.perf_counter() - start
    try:
        torch.fx.symbolic_trace(build(3)[0])
        fx = "traces"
    except Exception as err:
        fx = f"fails: {type(err).__name__}: {str(err).splitlines()[0][:80]}"
    return {"kind": kind, "pieces": len(pieces), "fx": fx, **times}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(measure(sys.argv[2])))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/results/split_time")
    args = parser.parse_args()
    from pipeline_ref.engine import machine
    rows = [json.loads(subprocess.run([sys.executable, __file__, "--one", kind], capture_output=True, text=True,
                                      check=True).stdout.strip().splitlines()[-1]) for kind in FACTORIES]
    lines = ["# Cutting a whole module: trace time", "", machine.machine_markdown(machine.machine_info()), "",
             "| model | pieces | first trace (s) | second trace (s) | cached copy (s) | torch.fx.symbolic_trace |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['kind']} | {r['pieces']} | {r['first trace']:.2f} | {r['second trace']:.2f} | "
              f"{r['cached copy']:.2f} | {r['fx']} |" for r in rows]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
