"""Replay one measured benchmark through the serving engine and measure it the same way.

One replica (``gridenv.core.engine.Replica``) with the row's GPU, model and TP and the software
stack's ``ReplicaPerf``; the row's server flags (max sequences, prefill token budget); the row's
arrival process (all at once, Poisson at a fixed rate, or a closed loop at fixed concurrency)
and its per-request prompt and output lengths. No network: the benchmark client ran on the
server.

What the measured runs had that the engine does not model is applied here:

* the API server handles arriving requests one after another before the engine sees them
  (HTTP, tokenization): ``ReplicaPerf.c_admit_s`` per request. vLLM 0.6 ran the engine loop in
  the API server's process, so an idle engine starts its next iteration only once the requests
  already sent are taken in (the measured bursts show no first token until the whole burst was
  accepted); vLLM V1's engine core is its own process (``engine_core_process``) and starts on
  the first requests. It matters only in bursts;
* a burst reaches the engine in an order the client does not set: metrics are averaged over
  ``BURST_ORDERS`` random engine orders (``replay_row``);
* multi-step scheduling (``num_scheduler_steps`` k > 1): tokens reach the client in chunks of
  k decode steps, so a request's last token arrives at the end of its last chunk (its TPOT is
  ``ceil((n-1)/k) * k / (n-1)`` times the step time);
* the host: the stack's CPU-side terms scaled by the row's ``Host.cpu_scale``; a GPU variant's
  memory (``gpu_memory_gb``) and bandwidth (``gpu_memory_bandwidth_gbps``);
* a warm prefix cache (``prefix_cache_warm``: the same prompts served just before on the same
  server): every prompt's full 16-token blocks are cached when the run starts;
* latency outside the engine that requests pay in parallel (``ReplicaPerf.c_request_s``: a
  client in another pod behind a Kubernetes service, HTTP, tokenization, streaming): it delays
  each request's first and last token.

Metrics are computed as vLLM's ``benchmark_serving.py`` computes them: TTFT over every completed
request (an empty completion is reported with TTFT 0), TPOT = (latency - TTFT) / (output - 1)
over requests with more than one output token, throughput over the duration from the first send
to the last completion. For a source measured with inference-perf (``Source.metrics``) the TPOTs
are (mean latency - mean TTFT) / (mean output - 1) and the same of the medians, as the benchmark
file derives the measured ones.
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


#: The stack's CPU-side terms, scaled by the row's host (``Host.cpu_scale``).
CPU_TERMS = ("c_iter_s", "c_per_seq_s", "c_admit_s")


def replica_perf(row: BenchmarkRow, stack: dict, cpu_scale: float = 1.0) -> ReplicaPerf:
    """The row's replica under a software stack (``ReplicaPerf`` keyword arguments), on a host
    whose CPU-side time is ``cpu_scale`` times the stack's reference host's."""
    if cpu_scale != 1.0:
        stack = dict(stack)
        for k in CPU_TERMS:
            if k in stack:
                stack[k] = stack[k] * cpu_scale
    gpu = GPUS[row.gpu]
    if row.gpu_memory_gb is not None:
        gpu = dataclasses.replace(gpu, memory_bytes=row.gpu_memory_gb * 1e9)
    if row.gpu_memory_bandwidth_gbps is not None:
        gpu = dataclasses.replace(gpu, mem_bw_bytes_per_s=row.gpu_memory_bandwidth_gbps * 1e9)
    return ReplicaPerf(gpu, MODELS[row.model], row.tp, **stack)


def arrival_times(row: BenchmarkRow) -> np.ndarray:
    """Send times (s) of an open-loop row: all at 0, Poisson as benchmark_serving.py draws it, or
    inference-perf's "constant" load.

    benchmark_serving.py seeds NumPy's global generator with ``--seed`` and, after sending each
    request, sleeps ``np.random.gamma(burstiness, 1 / (rate * burstiness))`` (burstiness 1:
    exponential): the first request goes at 0 and the draws are the legacy ``RandomState``
    stream. Drawn that way, the surajssd runs' last sends plus their measured latencies land
    within 0.15 s of their measured durations (205.2 / 63.0 / 31.6 s at 1 / 4 / 16 req/s).
    """
    n = row.workload.n_requests
    if row.workload.arrival == "burst":
        return np.zeros(n)
    if row.workload.arrival == "poisson":
        rs = np.random.RandomState(row.workload.seed)
        gaps = [rs.gamma(1.0, 1.0 / row.workload.rate_rps) for _ in range(n - 1)]
        return np.concatenate([[0.0], np.cumsum(gaps)])
    if row.workload.arrival == "constant":
        # inference-perf's ConstantLoadTimer: n exponential gaps (mean 1 / rate) rescaled to sum
        # to the stage's duration, a request after each. Its generator is unseeded, so the
        # measured run's draw is unknown; this one is seeded by the row.
        rng = np.random.default_rng(row.workload.seed)
        gaps = rng.exponential(1.0 / row.workload.rate_rps, n)
        return np.cumsum(gaps * (row.workload.duration_s / gaps.sum()))
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


#: Prefix-cache keys of request i's prompt blocks are i * _KEY_STRIDE + block: distinct prompts
#: (ShareGPT conversations, the completions endpoint: no shared template) share no block.
_KEY_STRIDE = 1 << 20


def _request(i: int, t: float, prompt: int, output: int, hashed: bool = False,
             block_size: int = 16) -> Request:
    # An empty completion still costs a prefill and one (EOS) step.
    if not hashed:
        return Request(i, t, 0, prompt, max(output, 1), 0, 0, False, math.inf, math.inf)
    n_full = prompt // block_size
    hashes = range(i * _KEY_STRIDE, i * _KEY_STRIDE + n_full)
    return Request(i, t, 0, prompt, max(output, 1), 0, 0, False, math.inf, math.inf,
                   hashes, 1, n_full)


def warm_prefix_cache(rep: Replica, prompts: list[int]) -> int:
    """Put every prompt's full blocks in the replica's prefix cache as evictable blocks, in
    request order (as an earlier run of the same prompts leaves them); returns the number
    kept (the least recently freed are evicted first when the pool is too small)."""
    pool = rep.pool
    bs = rep.bs
    for i, p in enumerate(prompts):
        for b in range(p // bs):
            pool.donate(i * _KEY_STRIDE + b)
    pool.reclaim()
    return len(pool.evictable)


#: A burst reaches the engine in an order the client does not set (the Lambda result files'
#: TTFTs show it: in the 4 x A100 70B run about a hundred requests from the middle of the send
#: order were prefilled first, then the first ones, then the last ones). The replay takes that order as unknown and uniformly
#: random: a burst's metrics are the mean over this many seeded random engine orders.
BURST_ORDERS = 8


def replay_row(bench: BenchmarkFile, row: BenchmarkRow, stack: dict | str | None = None,
               burst_orders: int = BURST_ORDERS, cpu_scale: float | None = None) -> SimulatedRun:
    """Simulate ``row`` under ``stack`` (a name in ``SOFTWARE_STACKS`` or keyword arguments;
    default: the row's own ``stack``).

    A burst of more than one request is replayed in ``burst_orders`` random engine orders
    (seeded by the row's seed; 0 = the send order) and its metrics averaged. ``cpu_scale``
    (default: the row's host's, from the benchmark file) scales the stack's CPU-side terms.
    """
    if stack is None:
        stack = row.stack
    if isinstance(stack, str):
        stack = software_stack(stack)
    if cpu_scale is None:
        cpu_scale = bench.hosts[row.host].cpu_scale
    perf = replica_perf(row, stack, cpu_scale)
    prompts, outputs = bench.lengths(row)
    n = len(prompts)
    from_means = bench.sources[row.source].metrics == "inference_perf"
    if row.workload.arrival != "burst" or n < 2 or burst_orders < 1:
        return _replay_once(row, perf, prompts, outputs, from_means)
    rng = np.random.default_rng(row.workload.seed)
    runs = []
    for _ in range(burst_orders):
        order = rng.permutation(n)
        runs.append(_replay_once(row, perf, [prompts[i] for i in order],
                                 [outputs[i] for i in order], from_means))
    metrics = {m: float(np.mean([r.metrics[m] for r in runs])) for m in runs[0].metrics}
    return SimulatedRun(float(np.mean([r.duration_s for r in runs])), runs[0].output_tokens,
                        metrics)


def _replay_once(row: BenchmarkRow, perf: ReplicaPerf, prompts: list[int],
                 outputs: list[int], from_means: bool = False) -> SimulatedRun:
    """One replay with the requests reaching the API server in the given order."""
    n = len(prompts)
    rep = _replica(perf, row)
    hashed = row.workload.prefix_cache_warm
    if hashed:
        warm_prefix_cache(rep, prompts)
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
            if not busy and not row.server.engine_core_process:
                # The engine loop shares the API server's thread: it starts an iteration only
                # once the requests already sent have been taken in (a burst enters whole).
                j = head
                while j < len(pending) and sends[pending[j][1]] <= t:
                    t = max(t, pending[j][0])
                    j += 1
            while head < len(pending) and pending[head][0] <= t:
                i = pending[head][1]
                rep.enqueue(_request(i, sends[i], prompts[i], outputs[i], hashed, rep.bs))
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

    return _measure(row, sends, first_s, done_s, last_step_s, outputs, perf.c_request_s, from_means)


def _measure(row, sends, first_s, done_s, last_step_s, outputs, c_request_s: float = 0.0,
             from_means: bool = False) -> SimulatedRun:
    k = row.server.num_scheduler_steps
    ttft_ms, tpot_ms, latency_ms = [], [], []
    end = 0.0
    for i, n_out in enumerate(outputs):
        # c_request_s: latency outside the engine on the way in and out (one term for both),
        # seen by the client on every token it times
        first = first_s[i] + c_request_s
        ttft = first - sends[i]
        finish = done_s[i] + c_request_s
        if n_out > 1:
            # Multi-step: the last token reaches the client at the end of its chunk of k steps
            # (counted from its first decode step), after the chunk's remaining iterations.
            finish += last_step_s[i] * (-(n_out - 1) % k)
            tpot_ms.append(1e3 * (finish - first) / (n_out - 1))
        # benchmark_serving records TTFT 0 for a completion that streamed no text.
        ttft_ms.append(1e3 * ttft if n_out > 0 else 0.0)
        latency_ms.append(1e3 * (finish - sends[i]))
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
    if from_means:  # inference-perf: from the latency, TTFT and output-length statistics
        for key, stat in (("tpot_mean_ms", np.mean), ("tpot_median_ms", np.median)):
            n_out = float(stat(outputs))
            metrics[key] = ((float(stat(latency_ms)) - float(stat(ttft_ms))) / (n_out - 1.0)
                            if n_out > 1 else math.nan)
    return SimulatedRun(duration, total_out, metrics)
