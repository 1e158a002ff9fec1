"""Measured vs theoretical utilization of naive, GPipe and 1F1B, and peak stashed activations per stage.

    .venv/bin/python benchmarks/utilization.py [--repeats 5] [--stages 2 [4]] [--out benchmarks/results/utilization]

The sweep of ``python -m pipeline_ref bench`` (one ``mpiexec`` per pipeline depth,
one thread per rank) over m in {1, 2, 4, 8, 16} on balanced, compute-heavy stages:
an MLP of 8 layers of width 1024 and a global batch of 2048, so that even at
m = 16 (microbatches of 128 rows) a 4-layer stage's forward takes ~10-15 ms and
its backward ~25 ms on one thread. p = 2 always; p = 4 only with >= 4 free cores
(ranks sharing a core would measure the OS scheduler). A run during which another
process took more than 3% of a rank's core is played again (up to 6 times per
configuration) once the cores are idle (waiting up to 10 minutes); the table's CPU
share column shows what the kept runs got.

Writes into ``--out``: results.csv and results.md (the sweep, with the machine it
ran on), utilization_p2.png, Gantt charts for m = 1 and 8 (measured above the
calibrated simulation), and stash.md: peak stashed activations per stage from
the trace against theory (naive 1, GPipe m, 1F1B min(p - s, m)), with bytes.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipeline_ref.tools import bench

HERE = Path(__file__).resolve().parent
MODEL = {"depth": 8, "width": 1024, "batch": 2048}


def stash_markdown(rows: list[dict]) -> str:
    lines = ["# Peak stashed activations per stage", "",
             f"MLP depth {MODEL['depth']}, width {MODEL['width']}, global batch {MODEL['batch']}, float32. Count: "
             "microbatches whose activations a stage holds at once, recorded by the executor's Stage. Bytes: what "
             "autograd saved for those backwards (saved-tensor hooks, parameters excluded), at the peak.", "",
             "| schedule | p | m | peak stashed per stage | theory | peak MiB per stage | MiB per stashed microbatch |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        mib = [b / 2 ** 20 for b in r["peak_stashed_bytes"]]
        per = [b / n for b, n in zip(mib, r["peak_stashed"]) if n]
        lines.append(f"| {r['schedule']} | {r['stages']} | {r['microbatches']} "
                     f"| {' / '.join(map(str, r['peak_stashed']))} | {' / '.join(map(str, r['theory_peak_stashed']))} "
                     f"| {' / '.join(f'{x:.1f}' for x in mib)} | {' / '.join(f'{x:.2f}' for x in per)} |")
    lines += ["", "theory: naive 1; GPipe m; 1F1B min(p - s, m) on stage s. A stashed microbatch costs the same at "
              "every m per row of the batch: bytes per microbatch halve when m doubles."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stages", type=int, nargs="+", help="default: 2, and 4 with >= 4 free cores")
    parser.add_argument("--out", default=str(HERE / "results" / "utilization"))
    args = parser.parse_args()
    sweep = argparse.Namespace(out=args.out, schedules=["naive", "gpipe", "1f1b"], microbatches=[1, 2, 4, 8, 16],
                               stages=args.stages, steps=2, repeats=args.repeats, model_depth=MODEL["depth"],
                               model_width=MODEL["width"], batch=MODEL["batch"], gantt=[1, 8], timeout=7200,
                               min_cpu_share=0.97, retries=6, quiet_wait=600)
    rows, _ = bench.run_sweep(sweep)
    (Path(args.out) / "stash.md").write_text(stash_markdown(rows))
    print(bench.markdown_table(rows))
    print(stash_markdown(rows))


if __name__ == "__main__":
    main()
