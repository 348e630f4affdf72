"""Replay one measured benchmark through the serving engine and measure it the same way.

One replica (``gridenv.core.engine.Replica``) with the row's GPU, model and TP and the software
stack's ``ReplicaPerf``; the row's server flags (max sequences, prefill token budget); the row's
arrival process (all at once, Poisson at a fixed rate, or a closed loop at fixed concurrency)
and its per-request prompt and output lengths. No network: the benchmark client ran on the
server.

Two things of the measured runs are not in the engine and are applied here:

* the API server handles arriving requests one after another before the engine sees them
  (HTTP, tokenization): ``ReplicaPerf.c_admit_s`` per request, and an idle engine starts its
  next iteration only once the requests already sent are taken in (vLLM 0.6 ran both in one
  process: the measured bursts show no first token until the whole burst was accepted). It
  matters only in bursts;
* multi-step scheduling (``num_scheduler_steps`` k > 1): tokens reach the client in chunks of
  k decode steps, so a request's last token arrives at the end of its last chunk (its TPOT is
  ``ceil((n-1)/k) * k / (n-1)`` times the step time).

Metrics are computed as vLLM's ``benchmark_serving.py`` computes them: TTFT over every completed
request (an empty completion is reported with TTFT 0), TPOT = (latency - TTFT) / (output - 1)
over requests with more than one output token, throughput over the duration from the first send
to the last completion.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from gridenv.core.catalog import GPUS, MODELS
from gridenv.core.engine import Replica, Request
from gridenv.core.perf import ReplicaPerf, software_stack
from gridenv.fidelity.data import BenchmarkFile, BenchmarkRow

__all__ = ["SimulatedRun", "replica_perf", "arrival_times", "replay_row"]

#: Metrics compared with the measured ones (keys of ``SimulatedRun.metrics``).
METRICS = (
    "output_throughput_tps", "request_throughput_rps", "ttft_median_ms", "ttft_mean_ms",
    "tpot_median_ms", "tpot_mean_ms",
)


@dataclass(frozen=True)
class SimulatedRun:
    """What the replay measured, in the benchmark's units."""

    duration_s: float
    output_tokens: int
    metrics: dict[str, float]


def replica_perf(row: BenchmarkRow, stack: dict) -> ReplicaPerf:
    """The row's replica under a software stack (``ReplicaPerf`` keyword arguments)."""
    gpu = GPUS[row.gpu]
    if row.gpu_memory_gb is not None:
        gpu = dataclasses.replace(gpu, memory_bytes=row.gpu_memory_gb * 1e9)
    return ReplicaPerf(gpu, MODELS[row.model], row.tp, **stack)


def arrival_times(row: BenchmarkRow) -> np.ndarray:
    """Send times (s) of an open-loop row: all at 0, or Poisson from the row's seed."""
    n = row.workload.n_requests
    if row.workload.arrival == "burst":
        return np.zeros(n)
    if row.workload.arrival == "poisson":
        rng = np.random.default_rng(row.workload.seed)
        return np.cumsum(rng.exponential(1.0 / row.workload.rate_rps, n))
    raise ValueError(f"row {row.id!r}: arrival {row.workload.arrival!r} is not open-loop")


def _replica(perf: ReplicaPerf, row: BenchmarkRow) -> Replica:
    """The engine's replica with the row's scheduler and prefill token budget.

    Engines with pluggable schedulers (``gridenv.core.schedulers``) get the row's scheduler;
    the single built-in policy of older engines (whole prompts, one decode step mixed into each
    prefill iteration) is used otherwise.
    """
    try:
        from gridenv.core.schedulers import scheduler as make_scheduler
    except ImportError:
        return Replica(0, 0, perf, row.server.max_num_batched_tokens)
    return Replica(0, 0, perf, make_scheduler(row.server.scheduler),
                   row.server.max_num_batched_tokens)


def _request(i: int, t: float, prompt: int, output: int) -> Request:
    # An empty completion still costs a prefill and one (EOS) step.
    return Request(i, t, 0, prompt, max(output, 1), 0, 0, False, math.inf, math.inf)


def replay_row(bench: BenchmarkFile, row: BenchmarkRow, stack: dict | str) -> SimulatedRun:
    """Simulate ``row`` under ``stack`` (a name in ``SOFTWARE_STACKS`` or keyword arguments)."""
    if isinstance(stack, str):
        stack = software_stack(stack)
    perf = replica_perf(row, stack)
    prompts, outputs = bench.lengths(row)
    n = len(prompts)
    rep = _replica(perf, row)
    max_batch = row.server.max_num_seqs
    c_admit = perf.c_admit_s

    closed = row.workload.arrival == "closed"
    sends = np.zeros(n) if closed else arrival_times(row)
    # Requests enter the engine through the API server, one after another.
    pending: list[tuple[float, int]] = []  # (time the engine sees it, index), in order
    api_free = 0.0
    next_send = row.workload.concurrency if closed else n

    def admit_through_api(i: int, t_send: float) -> None:
        nonlocal api_free
        api_free = max(api_free, t_send) + c_admit
        pending.append((api_free, i))

    for i in range(next_send):
        admit_through_api(i, float(sends[i]))

    first_s = [0.0] * n
    done_s = [0.0] * n
    last_step_s = [0.0] * n  # iteration time when the request finished
    n_done = 0
    t = 0.0
    busy = False
    head = 0  # next entry of `pending` not yet handed to the engine
    while n_done < n:
        t_arr = pending[head][0] if head < len(pending) else math.inf
        if not busy and t_arr == math.inf:
            raise RuntimeError(f"row {row.id!r}: replay stalled with {n - n_done} requests left")
        if not busy or t_arr < rep.wake_s:
            t = max(t, t_arr)
            if not busy:
                # The engine loop shares the API server's thread: it starts an iteration only
                # once the requests already sent have been taken in (a burst enters whole).
                j = head
                while j < len(pending) and sends[pending[j][1]] <= t:
                    t = max(t, pending[j][0])
                    j += 1
            while head < len(pending) and pending[head][0] <= t:
                i = pending[head][1]
                rep.enqueue(_request(i, sends[i], prompts[i], outputs[i]))
                head += 1
            if not busy:
                busy = rep.start(t, max_batch)
            elif rep.can_admit(max_batch):
                rep.cut_segment(t)
            continue
        t = rep.wake_s
        step_s = rep.seg_dur / max(rep.seg_k, 1)  # mean iteration of the segment ending now
        # (first tokens, finished[, abandoned]) depending on the engine version
        first, done = rep.finish_segment(t)[:2]
        for r in first:
            first_s[r.id] = t
        for r in done:
            done_s[r.id] = t
            last_step_s[r.id] = step_s
            n_done += 1
            if closed and next_send < n:
                sends[next_send] = t
                admit_through_api(next_send, t)
                next_send += 1
        busy = rep.start(t, max_batch)

    return _measure(row, sends, first_s, done_s, last_step_s, outputs)


def _measure(row, sends, first_s, done_s, last_step_s, outputs) -> SimulatedRun:
    k = row.server.num_scheduler_steps
    ttft_ms, tpot_ms = [], []
    end = 0.0
    for i, n_out in enumerate(outputs):
        ttft = first_s[i] - sends[i]
        finish = done_s[i]
        if n_out > 1:
            # Multi-step: the last token reaches the client at the end of its chunk of k steps
            # (counted from its first decode step), after the chunk's remaining iterations.
            finish += last_step_s[i] * (-(n_out - 1) % k)
            tpot_ms.append(1e3 * (finish - first_s[i]) / (n_out - 1))
        # benchmark_serving records TTFT 0 for a completion that streamed no text.
        ttft_ms.append(1e3 * ttft if n_out > 0 else 0.0)
        end = max(end, finish)
    start = float(np.min(sends))
    duration = end - start
    total_out = int(sum(outputs))
    metrics = {
        "output_throughput_tps": total_out / duration,
        "request_throughput_rps": len(outputs) / duration,
        "ttft_median_ms": float(np.median(ttft_ms)),
        "ttft_mean_ms": float(np.mean(ttft_ms)),
        "tpot_median_ms": float(np.median(tpot_ms)) if tpot_ms else math.nan,
        "tpot_mean_ms": float(np.mean(tpot_ms)) if tpot_ms else math.nan,
    }
    return SimulatedRun(duration, total_out, metrics)
