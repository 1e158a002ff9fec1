"""The benchmark sweep's tables and plots (tools layer, beside ``bench.py``, which measures the rows).

    from pipeline_ref.tools import bench_report
    bench_report.write_csv(rows, "out/bench/results.csv")    # rows: bench.comparison_rows(...)
    bench_report.write_markdown(rows, "out/bench/results.md", machine.machine_info())
"""
from __future__ import annotations

import csv
from pathlib import Path

from pipeline_ref.engine.machine import machine_markdown

COLUMNS = ("schedule", "stages", "microbatches", "repeats", "warmup_step_s", "step_s", "step_min_s",
           "step_max_s", "band_low_s", "band_high_s", "band_predicted_s", "flag", "measured", "measured_min",
           "measured_max", "theory", "ratio", "predicted", "prediction_error", "forward_ms", "backward_ms",
           "comm_us", "gaps", "gap_per_action_us", "peak_stashed", "theory_peak_stashed",
           "peak_stashed_bytes",
           "cpu_share", "retried")
HEAD = ("| schedule | p | m | warm-up step (ms) | step (ms): median (min-max) | band (ms): low-high "
        "(predicted) | flag | utilization (min-max) | theory | measured / theory | calibrated prediction "
        "(step error) | F per stage (ms) | B (or I + W) per stage (ms) | message (µs) | executor gaps "
        "| peak stashed (theory) | peak stashed (MiB) | CPU share |")
LEGEND = (
    "Each configuration ran once per round, the rounds alternating their order (measure.compare); a run's "
    "first step warms up (reported, not used). Band: the step the schedule explains, the simulator played "
    "with the runs' own per-rank op times, gaps and message latency (lowest, highest, median over the "
    "rounds); flag: a median outside its band, drift between rounds, contention or too few rounds. "
    "theory: naive 1/p; GPipe and 1F1B m/(m+p-1). Calibrated prediction: the simulator played with the "
    "run's own median forward/backward time per stage and median message latency. Executor gaps: worst "
    "rank's time between its actions spent neither computing nor waiting, as a share of the step. CPU "
    "share: the lowest rank's running time over the time it wanted its core (1.0: it had its core to "
    "itself; a round below the threshold was played again, up to --retries times).")


def write_csv(rows: list[dict], path) -> Path:
    path = Path(path)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _num(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _per_stage(values, fmt: str = ".1f") -> str:
    return "-" if values is None else " / ".join(format(v, fmt) for v in values)


def _ms(row: dict, key: str) -> str:
    return _num(None if row.get(key) is None else row[key] * 1e3, ".1f")


def markdown_table(rows: list[dict]) -> str:
    lines = [HEAD, "|" + "---|" * HEAD.count(" | ") + "---|"]
    for r in rows:
        mib = None if r["peak_stashed_bytes"] is None else [b / 2 ** 20 for b in r["peak_stashed_bytes"]]
        cells = [r["schedule"], r["stages"], r["microbatches"], _ms(r, "warmup_step_s"),
                 f"{r['step_s'] * 1e3:.1f} ({_ms(r, 'step_min_s')}-{_ms(r, 'step_max_s')})",
                 f"{_ms(r, 'band_low_s')}-{_ms(r, 'band_high_s')} ({_ms(r, 'band_predicted_s')})",
                 r.get("flag") or "-",
                 f"{r['measured']:.3f} ({r['measured_min']:.3f}-{r['measured_max']:.3f})",
                 _num(r["theory"], ".3f"), _num(r["ratio"], ".3f"),
                 f"{r['predicted']:.3f} ({r['prediction_error']:+.1%})", _per_stage(r["forward_ms"]),
                 _per_stage(r["backward_ms"]), f"{r['comm_us']:.0f}", f"{r['gaps']:.2%}",
                 f"{_per_stage(r['peak_stashed'], 'd')} ({_per_stage(r['theory_peak_stashed'], 'd')})",
                 _per_stage(mib, ".2f"), _num(r.get("cpu_share"), ".2f")]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(rows: list[dict], path, info: dict | None = None, note: str = "") -> Path:
    path = Path(path)
    text = "# Pipeline schedules measured against theory\n\n"
    text += machine_markdown(info) + "\n" if info else ""
    text += (note + "\n\n" if note else "") + markdown_table(rows) + "\n" + LEGEND + "\n"
    path.write_text(text)
    return path


def write_plots(rows: list[dict], traces: dict, out: Path, gantt_microbatches=None) -> None:
    """Utilization curves per depth and Gantt charts (for the listed microbatch counts; all if None)."""
    import matplotlib.pyplot as plt
    from pipeline_ref.sim import plot
    for depth in dict.fromkeys(r["stages"] for r in rows):
        points = [(r["schedule"], r["microbatches"], r["measured"]) for r in rows if r["stages"] == depth]
        plt.close(plot.utilization_curve(points, depth, path=out / f"utilization_p{depth}.png").figure)
    for (name, depth, m), (measured, predicted) in traces.items():
        if gantt_microbatches is None or m in gantt_microbatches:
            path = out / f"gantt_{name.replace(':', '_')}_p{depth}_m{m}.png"
            title = f"{name}, {depth} stages, {m} microbatches (below: calibrated simulation)"
            plt.close(plot.compare_gantt(measured, predicted, path=path, title=title))
