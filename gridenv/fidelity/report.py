"""Simulated vs measured, row by row: the fidelity table and its summary."""

from __future__ import annotations

import math

from gridenv.fidelity.data import BenchmarkFile, BenchmarkRow
from gridenv.fidelity.replay import METRICS, replay_row

__all__ = ["TOLERANCES", "compare_row", "fidelity_table", "summarize", "format_table",
           "format_markdown"]

#: Targets on held-out rows (issue 9): |simulated / measured - 1| at most this.
TOLERANCES = {
    "output_throughput_tps": 0.10,
    "request_throughput_rps": 0.10,
    "tpot_median_ms": 0.10,
    "ttft_median_ms": 0.15,
    "ttft_mean_ms": 0.15,
    "tpot_mean_ms": 0.15,
}

_SHORT = {
    "output_throughput_tps": "out tok/s",
    "request_throughput_rps": "req/s",
    "ttft_median_ms": "TTFT p50 ms",
    "ttft_mean_ms": "TTFT mean ms",
    "tpot_median_ms": "TPOT p50 ms",
    "tpot_mean_ms": "TPOT mean ms",
}


def compare_row(bench: BenchmarkFile, row: BenchmarkRow, stack: dict | str | None = None) -> dict:
    """One row: measured, simulated and signed relative error (sim / measured - 1) per metric,
    under ``stack`` (default: the row's own)."""
    sim = replay_row(bench, row, stack)
    measured = row.measured.model_dump()
    out = {"id": row.id, "use": row.use, "load": row.load, "gpu": row.gpu, "model": row.model,
           "tp": row.tp, "stack": row.stack if stack is None else stack if isinstance(stack, str) else "(given)",
           "metrics": {}}
    for m in METRICS:
        meas, s = measured[m], sim.metrics[m]
        out["metrics"][m] = {"measured": meas, "simulated": s, "error": s / meas - 1.0,
                             "comparable": m not in row.not_comparable}
    out["not_comparable"] = dict(row.not_comparable)
    return out


def fidelity_table(bench: BenchmarkFile, stack: dict | str | None = None,
                   ids: list[str] | None = None) -> list[dict]:
    """Compare every row (or the rows named in ``ids``, in file order), each under ``stack``
    (default: the row's own)."""
    if ids:
        unknown = sorted(set(ids) - set(bench.by_id))
        if unknown:
            raise KeyError(f"unknown row ids {unknown}; known: {sorted(bench.by_id)}")
    rows = [r for r in bench.rows if not ids or r.id in ids]
    return [compare_row(bench, r, stack) for r in rows]


def summarize(table: list[dict]) -> dict:
    """Per use (fit / holdout): mean |error| per metric, and how many rows meet the targets."""
    out = {}
    for use in ("fit", "holdout"):
        rows = [r for r in table if r["use"] == use]
        if not rows:
            continue
        s = {"rows": len(rows), "mean_abs_error": {}, "within_target": {}}
        for m in METRICS:
            errs = [abs(r["metrics"][m]["error"]) for r in rows if r["metrics"][m]["comparable"]]
            s["mean_abs_error"][m] = sum(errs) / len(errs) if errs else math.nan
            s["within_target"][m] = sum(e <= TOLERANCES[m] for e in errs)
            s.setdefault("compared", {})[m] = len(errs)
        out[use] = s
    return out


def _pct(e: float) -> str:
    return "   n/a" if math.isnan(e) else f"{100 * e:+6.1f}%"


def format_table(table: list[dict], summary: dict) -> str:
    """A plain-text table: per row, measured / simulated / error for each metric."""
    lines = []
    head = f"{'row':34} {'stack':13} {'load':9} " + " ".join(f"{_SHORT[m]:>26}" for m in METRICS)
    for use in ("fit", "holdout"):
        rows = [r for r in table if r["use"] == use]
        if not rows:
            continue
        lines.append(f"== {use} rows (measured / simulated / error) ==")
        lines.append(head)
        for r in rows:
            cells = []
            for m in METRICS:
                c = r["metrics"][m]
                err = _pct(c["error"]) if c["comparable"] else "   (nc)"
                cells.append(f"{c['measured']:8.1f} /{c['simulated']:8.1f} {err}")
            lines.append(f"{r['id']:34} {r['stack']:13} {r['load']:9} " + " ".join(f"{c:>26}" for c in cells))
        s = summary[use]
        lines.append(
            f"{'mean |error|':34} {'':13} {'':9} "
            + " ".join(f"{100 * s['mean_abs_error'][m]:25.1f}%" for m in METRICS)
        )
        lines.append(
            f"{'within target':34} {'':13} {'':9} "
            + " ".join(f"{s['within_target'][m]:>21d} of {s['compared'][m]:<2d}" for m in METRICS)
        )
        lines.append("")
    for r in table:
        for m, why in r["not_comparable"].items():
            lines.append(f"(nc) {r['id']} {_SHORT[m]}: not comparable: {why}")
    lines.append("targets: " + ", ".join(f"{_SHORT[m]} {100 * t:.0f}%" for m, t in TOLERANCES.items()))
    return "\n".join(lines)


def format_markdown(table: list[dict], summary: dict) -> str:
    """The README's table: per row, each metric as ``measured (error of the simulation)``."""
    head = ("| row | use | stack | load | "
            + " | ".join(_SHORT[m] for m in METRICS if m != "request_throughput_rps") + " |")
    metrics = [m for m in METRICS if m != "request_throughput_rps"]
    lines = [head, "|" + "---|" * (4 + len(metrics))]
    for use in ("fit", "holdout"):
        for r in (r for r in table if r["use"] == use):
            cells = []
            for m in metrics:
                c = r["metrics"][m]
                err = f"{100 * c['error']:+.0f}%" if c["comparable"] else "n/c"
                cells.append(f"{c['measured']:.0f} ({err})" if c["measured"] >= 100
                             else f"{c['measured']:.1f} ({err})")
            lines.append(f"| `{r['id']}` | {use} | {r['stack']} | {r['load']} | " + " | ".join(cells) + " |")
    for use, s in summary.items():
        cells = [f"{100 * s['mean_abs_error'][m]:.1f}% ({s['within_target'][m]}/{s['compared'][m]})"
                 for m in metrics]
        lines.append(f"| mean abs. error (rows within target) | {use} | | | " + " | ".join(cells) + " |")
    return "\n".join(lines)
