"""Request arrivals of one episode, drawn up front from the episode's generator.

Drawing every arrival at reset (vectorized) keeps the simulator fast and gives common random
numbers for free: with the same seed every policy faces the same arrival sequence, whatever it
decides.

Synthetic arrivals (``poisson``, ``gamma``, ``mmpp``) are made in three steps:

1. candidate times at the peak rate ``rate_rps * (1 + amplitude)``, with Poisson, Gamma (given
   CV) or MMPP (hidden states with rate factors normalized to mean 1) inter-arrival times;
2. each candidate gets an origin region with probability proportional to its population;
3. a candidate from region r is kept with probability ``(1 + A cos(2 pi (h_r(t) - peak) / 24)) /
   (1 + A)``, where ``h_r(t)`` is the region's local hour: demand follows each time zone's day.

The mean total rate over a day is ``rate_rps``. Trace replay takes times and lengths from the
trace (times divided by ``rate_scale``; looped if asked) and assigns each request an origin region
by drawing from the population weights; its SLO class is the trace's ``slo_class`` or drawn by
share, and the model and residency are drawn by their shares.

Looping (``loop: true``) repeats the trace with period ``span + mean gap`` (span = last minus
first scaled arrival, mean gap = span / (n - 1)), so the gap between the last request of one
pass and the first of the next is the trace's mean gap; the period is at least
:data:`MIN_LOOP_PERIOD_S` (a single row, or rows that all share one timestamp, repeat once per
second). A replay that would exceed :data:`~gridenv.core.scenario.MAX_REQUESTS_PER_EPISODE`
requests in one episode is refused with a :class:`~gridenv.core.scenario.ScenarioError` when
the simulator is built.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from gridenv.core.interface import local_hour as interface_local_hour
from gridenv.core.scenario import MAX_REQUESTS_PER_EPISODE, SLO_CLASSES, Scenario, ScenarioError
from gridenv.core.topology import MODEL_NAMES, Topology
from gridenv.core.traces import MOONCAKE_BLOCK_TOKENS

__all__ = ["Arrivals", "generate_arrivals", "diurnal_factor", "trace_replay", "MIN_LOOP_PERIOD_S"]

#: Shortest loop period of a replayed trace, seconds (after ``rate_scale``).
MIN_LOOP_PERIOD_S = 1.0


@dataclass(frozen=True)
class Arrivals:
    """One episode's requests, sorted by arrival time (parallel arrays)."""

    time_s: np.ndarray  # float64
    origin: np.ndarray  # int64 region index
    prompt_tokens: np.ndarray  # int64
    output_tokens: np.ndarray  # int64
    slo_class: np.ndarray  # int64 index into SLO_CLASSES
    model: np.ndarray  # int64 index into MODEL_NAMES
    residency: np.ndarray  # bool: must be served in its origin region
    # Prefix-cache identity (None when no request shares anything): per request a sequence of
    # ints (tuple or range) naming consecutive token blocks of hash_block_tokens tokens each,
    # and how many KV blocks of the engine's block size the chain names (prefix_blocks).
    prefix_hashes: list | None = None
    prefix_blocks: np.ndarray | None = None  # int64
    hash_block_tokens: int = 16

    def __len__(self) -> int:
        return len(self.time_s)


def diurnal_factor(scenario: Scenario, utc_offset_h: np.ndarray, t_s: np.ndarray) -> np.ndarray:
    """Demand multiplier (mean 1 over a day) of regions at their local hour at times t_s."""
    d = scenario.workload.diurnal
    hour = local_hour(scenario, utc_offset_h, t_s)
    return 1.0 + d.amplitude * np.cos(2.0 * np.pi * (hour - d.peak_hour) / 24.0)


def local_hour(scenario: Scenario, utc_offset_h, t_s):
    """Local hour of day at simulated time t_s for a UTC offset (scalar or array)."""
    d = scenario.workload.diurnal
    return interface_local_hour(d.start_hour_utc + 24.0 * np.asarray(t_s) / d.period_s, utc_offset_h)


def _candidate_times(scenario: Scenario, rng: np.random.Generator, rate: float) -> np.ndarray:
    """Arrival times in [0, horizon) of a stationary process with mean rate `rate`."""
    w, horizon = scenario.workload, scenario.horizon_s
    times: list[np.ndarray] = []
    t0 = 0.0
    chunk = max(64, int(rate * horizon * 1.1) + 64)
    if w.arrivals == "mmpp":
        factors = np.asarray(w.mmpp_rate_factors, dtype=float)
        factors = factors / factors.mean()
        state = int(rng.integers(len(factors)))
        while t0 < horizon:
            sojourn = rng.exponential(w.mmpp_mean_sojourn_s)
            end = min(t0 + sojourn, horizon)
            lam = rate * factors[state]
            n = rng.poisson(lam * (end - t0))
            times.append(np.sort(rng.uniform(t0, end, size=n)))
            t0 = end
            if len(factors) > 1:  # jump to one of the other states, uniformly
                nxt = int(rng.integers(len(factors) - 1))
                state = nxt if nxt < state else nxt + 1
        return np.concatenate(times) if times else np.zeros(0)
    while t0 < horizon:
        if w.arrivals == "gamma":
            shape = 1.0 / (w.cv * w.cv)
            gaps = rng.gamma(shape, 1.0 / (rate * shape), size=chunk)
        else:
            gaps = rng.exponential(1.0 / rate, size=chunk)
        t = t0 + np.cumsum(gaps)
        times.append(t)
        t0 = float(t[-1])
    out = np.concatenate(times)
    return out[out < horizon]


@functools.lru_cache(maxsize=8)
def load_trace_cached(path: str, fmt: str | None):
    from gridenv.core.traces import load_trace

    return load_trace(path, fmt)


def trace_replay(scenario: Scenario):
    """(trace, scaled arrival times of one pass, loop period_s, passes) of a trace scenario.

    Raises ScenarioError when the replay would exceed MAX_REQUESTS_PER_EPISODE requests.
    """
    tr = scenario.workload.trace
    trace = load_trace_cached(tr.path, tr.format)
    base_t = trace.arrival_s / tr.rate_scale
    n = len(base_t)
    span = float(base_t[-1] - base_t[0]) if n else 0.0
    mean_gap = span / (n - 1) if n > 1 else 0.0
    period_s = max(span + mean_gap, MIN_LOOP_PERIOD_S)
    horizon = scenario.horizon_s
    passes = int(np.ceil(horizon / period_s)) if tr.loop and n and span < horizon else 1
    in_horizon = int(np.searchsorted(base_t, horizon, side="left"))
    total = in_horizon if passes == 1 else n * (passes - 1) + in_horizon
    if total > MAX_REQUESTS_PER_EPISODE:
        raise ScenarioError(
            f"workload.trace: replaying {tr.path} ({n:,} rows, loop period {period_s:.6g} s) over "
            f"horizon_s {horizon:g} gives {total:,} requests, over the limit of "
            f"{MAX_REQUESTS_PER_EPISODE:,}; lower rate_scale, shorten horizon_s or set loop: false"
        )
    return trace, base_t, period_s, passes


def generate_arrivals(scenario: Scenario, topo: Topology, rng: np.random.Generator) -> Arrivals:
    w = scenario.workload
    pop = topo.region_population / topo.region_population.sum()
    class_names = list(w.classes)
    class_share = np.array([w.classes[c].share for c in class_names], dtype=float)
    class_share /= class_share.sum()

    bs = scenario.engine.block_size_tokens
    chains: list | None = None
    chain_blocks: np.ndarray | None = None
    hash_block_tokens = bs
    if w.arrivals == "trace":
        tr = w.trace
        trace, base_t, period_s, passes = trace_replay(scenario)
        prompt, output = trace.prompt_tokens, trace.output_tokens
        hashes = trace.hash_ids
        reps = passes
        if passes > 1:
            base_t = (base_t[None, :] + period_s * np.arange(passes)[:, None]).ravel()
            prompt, output = np.tile(prompt, passes), np.tile(output, passes)
        keep = base_t < scenario.horizon_s
        t, prompt, output = base_t[keep], prompt[keep].astype(np.int64), output[keep].astype(np.int64)
        n = len(t)
        if hashes is not None and scenario.engine.prefix_caching:
            chains, chain_blocks, hash_block_tokens = _mooncake_chains(hashes, reps, keep, prompt, bs)
        origin = rng.choice(len(pop), size=n, p=pop)
        if tr.slo_class is not None:
            cls_local = np.full(n, class_names.index(tr.slo_class))
        else:
            cls_local = rng.choice(len(class_names), size=n, p=class_share)
    else:
        peak = w.rate_rps * (1.0 + w.diurnal.amplitude)
        t = _candidate_times(scenario, rng, peak)
        origin = rng.choice(len(pop), size=len(t), p=pop)
        keep_p = diurnal_factor(scenario, topo.region_utc_offset_h[origin], t) / (1.0 + w.diurnal.amplitude)
        keep = rng.random(len(t)) < keep_p
        t, origin = t[keep], origin[keep]
        n = len(t)
        cls_local = rng.choice(len(class_names), size=n, p=class_share)
        prompt = np.empty(n, dtype=np.int64)
        output = np.empty(n, dtype=np.int64)
        for ci, cname in enumerate(class_names):
            idx = np.flatnonzero(cls_local == ci)
            prompt[idx] = w.classes[cname].prompt_tokens.sample(rng, len(idx))
            output[idx] = w.classes[cname].output_tokens.sample(rng, len(idx))
        if any(c.prefix is not None for c in w.classes.values()):
            from gridenv.core.sharing import apply_sharing

            t, origin, cls_local, prompt, output, chains, chain_blocks = apply_sharing(
                scenario, rng, class_names, t, origin, cls_local, prompt, output)
            n = len(t)
            if not scenario.engine.prefix_caching:
                chains = chain_blocks = None

    model_names = list(w.models)
    model_share = np.array([w.models[m] for m in model_names], dtype=float)
    model_local = rng.choice(len(model_names), size=n, p=model_share / model_share.sum())
    residency = rng.random(n) < w.residency_share
    class_global = np.array([SLO_CLASSES.index(c) for c in class_names], dtype=np.int64)[cls_local]
    model_global = np.array([MODEL_NAMES.index(m) for m in model_names], dtype=np.int64)[model_local]
    return Arrivals(
        time_s=np.asarray(t, dtype=np.float64),
        origin=np.asarray(origin, dtype=np.int64),
        prompt_tokens=prompt,
        output_tokens=output,
        slo_class=class_global,
        model=model_global,
        residency=residency,
        prefix_hashes=chains,
        prefix_blocks=chain_blocks,
        hash_block_tokens=hash_block_tokens,
    )


def _mooncake_chains(hash_ids, reps: int, keep: np.ndarray, prompt: np.ndarray, bs: int):
    """Mooncake ``hash_ids`` (one per 512-token block) as prefix chains of the engine's blocks:
    hash h's j-th block of ``bs`` tokens gets key ``h * (512 // bs) + j`` (Request.block_key);
    only full engine blocks of the prompt are named. A looped trace reuses its hashes. (`bs`
    divides 512: the scenario refuses any other block size with a Mooncake trace.)"""
    k = MOONCAKE_BLOCK_TOKENS // bs
    chains = [h for h, kept in zip(list(hash_ids) * reps, keep) if kept]
    n_named = np.fromiter((len(h) for h in chains), dtype=np.int64, count=len(chains)) * k
    return chains, np.minimum(prompt // bs, n_named), MOONCAKE_BLOCK_TOKENS
