"""Fit the load-dependent terms of a software stack on its own ``use: fit`` rows only.

``python -m gridenv.fidelity.fit [--stack NAME]`` replays every fit row of the stack (the rows
whose ``stack`` is NAME; default ``vllm-0.6``) under trial parameters and minimizes
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

``vllm-v1-2025`` (``STACK_FITS``) has fit rows of one model at TP1 on one host only: it fits the
CPU-side terms (``c_iter_s``, ``c_per_seq_s``, ``c_admit_s``) and ``c_request_s`` (latency each
request pays outside the engine, in parallel), and takes the GPU-side terms that TP1 rows cannot
determine (all-reduce, ``attn_per_seq_s``) from the fitted ``vllm-0.6``: the same kernels.
Their host is that stack's reference.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass

import numpy as np

from gridenv.core.perf import DEFAULT_SOFTWARE_STACK, software_stack
from gridenv.fidelity.data import BENCHMARKS_PATH, BenchmarkFile, load_benchmarks
from gridenv.fidelity.report import fidelity_table, summarize
from gridenv.fidelity.replay import replay_row

__all__ = ["PARAMS", "FIXED", "STACK_FITS", "HOST_PARAM", "FIT_METRICS", "fit_stack",
           "with_host_scales", "reference_host"]

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

#: What is fitted for each stack that has fit rows: (PARAMS-like tuple, FIXED-like dict).
STACK_FITS: dict[str, tuple[tuple, dict]] = {
    "vllm-0.6": (PARAMS, FIXED),
    "vllm-v1-2025": (
        (
            ("c_iter_s", 1e-3, 1e-5, 20e-3),
            ("c_per_seq_s", 20e-6, 1e-7, 1e-3),
            ("c_admit_s", 1e-3, 1e-5, 20e-3),
            ("c_request_s", 10e-3, 1e-4, 0.2),
        ),
        {k: software_stack("vllm-0.6")[k] for k in (
            "attn_per_seq_s", "allreduce_latency_scale", "allreduce_bw_scale",
            "allreduce_bw_tp_scaling")},
    ),
}

#: Metrics in the objective (request throughput is output throughput over the same duration).
FIT_METRICS = ("output_throughput_tps", "ttft_median_ms", "ttft_mean_ms", "tpot_median_ms",
               "tpot_mean_ms")


def _stack(x: np.ndarray, params=PARAMS, fixed=FIXED) -> dict:
    return {name: float(math.exp(v)) for (name, *_), v in zip(params, x)} | fixed


def reference_host(bench: BenchmarkFile, rows) -> str:
    """The host whose CPU the fitted stack's CPU-side terms describe: the file's reference host
    if some of the stack's fit rows ran on it, otherwise the one host they all ran on."""
    hosts = sorted({r.host for r in rows})
    ref = next(h for h, v in bench.hosts.items() if v.reference)
    if ref in hosts:
        return ref
    if len(hosts) != 1:
        raise ValueError(f"fit rows on hosts {hosts} and none on the reference host {ref!r}: "
                         "which host's CPU the stack describes is undetermined")
    if bench.hosts[hosts[0]].cpu_scale != 1.0:
        raise ValueError(f"host {hosts[0]!r} holds every fit row of the stack, so its cpu_scale "
                         "must be 1.0")
    return hosts[0]


def with_host_scales(bench: BenchmarkFile, scales: dict[str, float]) -> BenchmarkFile:
    """The benchmark file with some hosts' ``cpu_scale`` replaced."""
    raw = bench.model_dump()
    for h, v in scales.items():
        raw["hosts"][h]["cpu_scale"] = v
    return BenchmarkFile.model_validate(raw)


def fit_stack(path=BENCHMARKS_PATH, stack: str = DEFAULT_SOFTWARE_STACK) -> tuple[dict, dict[str, float], float]:
    """(fitted ReplicaPerf keyword arguments, fitted host CPU scales, final cost) of ``stack``
    on its fit rows in ``path``."""
    try:
        from scipy.optimize import least_squares  # the [fit] extra (also in [test])
    except ImportError:
        raise ImportError("python -m gridenv.fidelity.fit needs scipy: pip install -e '.[fit]'") from None

    if stack not in STACK_FITS:
        raise ValueError(f"no fit is defined for stack {stack!r}; fitted stacks: {sorted(STACK_FITS)}")
    params, fixed = STACK_FITS[stack]
    bench = load_benchmarks(path)
    rows = [r for r in bench.rows if r.use == "fit" and r.stack == stack]
    if not rows:
        raise ValueError(f"{path}: no fit rows of stack {stack!r}")
    measured = [r.measured.model_dump() for r in rows]
    ref = reference_host(bench, rows)
    hosts = sorted({r.host for r in rows} - {ref})
    n_p = len(params)

    def residuals(x: np.ndarray) -> np.ndarray:
        trial = _stack(x[:n_p], params, fixed)
        scale = {h: float(math.exp(v)) for h, v in zip(hosts, x[n_p:])}
        out = []
        for r, meas in zip(rows, measured):
            sim = replay_row(bench, r, trial, cpu_scale=scale.get(r.host, 1.0)).metrics
            out.extend(math.log(sim[m] / meas[m]) for m in FIT_METRICS)
        return np.asarray(out)

    x0 = np.log([p[1] for p in params] + [HOST_PARAM[0]] * len(hosts))
    lo = np.log([p[2] for p in params] + [HOST_PARAM[1]] * len(hosts))
    hi = np.log([p[3] for p in params] + [HOST_PARAM[2]] * len(hosts))
    # The replay is piecewise smooth (batch composition changes at event boundaries): take
    # finite differences on a coarse step.
    res = least_squares(residuals, x0, bounds=(lo, hi), diff_step=0.02, x_scale=1.0)
    scales = {h: float(math.exp(v)) for h, v in zip(hosts, res.x[n_p:])}
    return _stack(res.x[:n_p], params, fixed), scales, float(res.cost)


@dataclass
class Args:
    """Fit a software stack's load-dependent terms on the fit rows and print them."""

    stack: str = DEFAULT_SOFTWARE_STACK
    """The stack to fit (a key of STACK_FITS), on its own fit rows."""
    json: bool = False
    """Print JSON instead of text."""


def main(argv: list[str] | None = None) -> int:
    import tyro

    args = tyro.cli(Args, args=argv)
    try:
        stack, scales, cost = fit_stack(stack=args.stack)
    except ValueError as e:
        print(f"gridenv.fidelity.fit: {e}", file=sys.stderr)
        return 2
    bench = with_host_scales(load_benchmarks(), scales)
    ids = [r.id for r in bench.rows if r.stack == args.stack]
    summary = summarize(fidelity_table(bench, stack, ids))
    if args.json:
        print(json.dumps({"stack": stack, "host_cpu_scale": scales, "cost": cost,
                          "summary": summary}, indent=1))
        return 0
    print(args.stack, "fitted on", summary["fit"]["rows"], "fit rows; cost (0.5 * sum of squared log errors):",
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
