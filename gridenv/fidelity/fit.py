"""Fit the load-dependent terms of a software stack on the ``use: fit`` rows only.

``python -m gridenv.fidelity.fit`` replays every fit row under trial parameters and minimizes
the squared log errors (simulated / measured) of output throughput, TTFT (median, mean) and TPOT
(median, mean) with ``scipy.optimize.least_squares`` from a fixed start: deterministic, about a
second. It prints the fitted parameters (to paste into ``SOFTWARE_STACKS``) and the fit / held-out
summary. Held-out rows are never read by the objective.

Fitted terms (``ReplicaPerf`` keyword arguments), everything else is the catalog's:
``c_iter_s`` (CPU time per iteration), ``c_per_seq_s`` (per sequence in the batch),
``allreduce_latency_scale`` and ``allreduce_bw_scale`` (the GPU's all-reduce latency and bus
bandwidth), ``c_admit_s`` (API-server time per request, serial), ``attn_per_seq_s`` (per-sequence
GPU time of a decode step on one GPU, split over the TP ranks), and the CPU speed of every
host other than the reference one that has fit rows (``Host.cpu_scale``: the stack's CPU-side
terms are the reference host's). ``FIXED`` stack settings are part of the model, not fitted.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from gridenv.fidelity.data import BENCHMARKS_PATH, BenchmarkFile, load_benchmarks
from gridenv.fidelity.report import fidelity_table, summarize
from gridenv.fidelity.replay import replay_row

__all__ = ["PARAMS", "FIXED", "HOST_PARAM", "FIT_METRICS", "fit_stack", "with_host_scales"]

#: (name, start, lower, upper) of each fitted term; fitted in log space.
PARAMS: tuple[tuple[str, float, float, float], ...] = (
    ("c_iter_s", 1e-3, 1e-5, 20e-3),
    ("c_per_seq_s", 4.4e-6, 1e-7, 1e-3),
    ("allreduce_latency_scale", 1.0, 0.05, 5.0),
    ("allreduce_bw_scale", 1.0, 0.05, 5.0),
    ("c_admit_s", 1e-3, 1e-5, 20e-3),
    ("attn_per_seq_s", 10e-6, 1e-7, 1e-3),
)

#: (start, lower, upper) of a host's CPU scale; fitted in log space.
HOST_PARAM = (1.0, 0.25, 4.0)

#: Model structure of the fitted stack (not fitted): the all-reduce bytes term grows with TP
#: as a bandwidth-optimal all-reduce's does (perf.ReplicaPerf allreduce_bw_tp_scaling).
FIXED: dict = {"allreduce_bw_tp_scaling": True}

#: Metrics in the objective (request throughput is output throughput over the same duration).
FIT_METRICS = ("output_throughput_tps", "ttft_median_ms", "ttft_mean_ms", "tpot_median_ms",
               "tpot_mean_ms")


def _stack(x: np.ndarray) -> dict:
    return {name: float(math.exp(v)) for (name, *_), v in zip(PARAMS, x)} | FIXED


def with_host_scales(bench: BenchmarkFile, scales: dict[str, float]) -> BenchmarkFile:
    """The benchmark file with some hosts' ``cpu_scale`` replaced."""
    raw = bench.model_dump()
    for h, v in scales.items():
        raw["hosts"][h]["cpu_scale"] = v
    return BenchmarkFile.model_validate(raw)


def fit_stack(path=BENCHMARKS_PATH) -> tuple[dict, dict[str, float], float]:
    """(fitted ReplicaPerf keyword arguments, fitted host CPU scales, final cost) on the fit
    rows of ``path``."""
    try:
        from scipy.optimize import least_squares  # the [fit] extra (also in [test])
    except ImportError:
        raise ImportError("python -m gridenv.fidelity.fit needs scipy: pip install -e '.[fit]'") from None

    bench = load_benchmarks(path)
    rows = [r for r in bench.rows if r.use == "fit"]
    measured = [r.measured.model_dump() for r in rows]
    hosts = sorted({r.host for r in rows if not bench.hosts[r.host].reference})
    n_p = len(PARAMS)

    def residuals(x: np.ndarray) -> np.ndarray:
        stack = _stack(x[:n_p])
        scale = {h: float(math.exp(v)) for h, v in zip(hosts, x[n_p:])}
        out = []
        for r, meas in zip(rows, measured):
            sim = replay_row(bench, r, stack, cpu_scale=scale.get(r.host, 1.0)).metrics
            out.extend(math.log(sim[m] / meas[m]) for m in FIT_METRICS)
        return np.asarray(out)

    x0 = np.log([p[1] for p in PARAMS] + [HOST_PARAM[0]] * len(hosts))
    lo = np.log([p[2] for p in PARAMS] + [HOST_PARAM[1]] * len(hosts))
    hi = np.log([p[3] for p in PARAMS] + [HOST_PARAM[2]] * len(hosts))
    # The replay is piecewise smooth (batch composition changes at event boundaries): take
    # finite differences on a coarse step.
    res = least_squares(residuals, x0, bounds=(lo, hi), diff_step=0.02, x_scale=1.0)
    scales = {h: float(math.exp(v)) for h, v in zip(hosts, res.x[n_p:])}
    return _stack(res.x[:n_p]), scales, float(res.cost)


@dataclass
class Args:
    """Fit a software stack's load-dependent terms on the fit rows and print them."""

    json: bool = False
    """Print JSON instead of text."""


def main(argv: list[str] | None = None) -> int:
    import tyro

    args = tyro.cli(Args, args=argv)
    stack, scales, cost = fit_stack()
    bench = with_host_scales(load_benchmarks(), scales)
    summary = summarize(fidelity_table(bench, stack))
    if args.json:
        print(json.dumps({"stack": stack, "host_cpu_scale": scales, "cost": cost,
                          "summary": summary}, indent=1))
        return 0
    print("fitted on", summary["fit"]["rows"], "fit rows; cost (0.5 * sum of squared log errors):",
          f"{cost:.4f}")
    for k, v in stack.items():
        print(f"  {k:26} {v:.4g}" if isinstance(v, float) else f"  {k:26} {v}")
    for h, v in scales.items():
        print(f"  host {h} cpu_scale{'':8} {v:.4g}")
    for use, s in summary.items():
        print(f"{use}: mean |error| " + ", ".join(
            f"{m} {100 * e:.1f}%" for m, e in s["mean_abs_error"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
