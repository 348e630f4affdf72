"""Queueing theory as ground truth: one replica, batch size 1, deterministic service, Poisson
arrivals is an M/D/1 queue, whose mean wait is given by Pollaczek-Khinchine:

    W_q = rho * S / (2 * (1 - rho))

The simulator knows nothing of this formula; the wait comes out of its event loop.
"""

from __future__ import annotations

import numpy as np
import pytest

from gridenv.core.scenario import load_scenario
from gridenv.core.simulator import GridSimulator

PROMPT_TOKENS = 512
OUTPUT_TOKENS = 32


def md1_scenario(rate_rps: float, horizon_s: float) -> dict:
    fixed = lambda n: {"median": n, "sigma": 0.0, "min": n, "max": n}  # noqa: E731
    return {
        "name": "md1",
        "horizon_s": horizon_s,
        "regions": [{"name": "r", "population": 1.0}],
        "sites": [{"name": "s", "region": "r", "kind": "core", "gpu": "H100", "tp": 1,
                   "replicas": 1, "model": "llama-3-8b", "gpu_usd_per_h": 3.0,
                   "max_queue": 1_000_000}],
        "network": {"rtt_ms": {"r": [0.0]}, "api_overhead_ms": 0.0},
        "workload": {
            "arrivals": "poisson", "rate_rps": rate_rps,
            "classes": {"chat": {"share": 1.0, "prompt_tokens": fixed(PROMPT_TOKENS),
                                 "output_tokens": fixed(OUTPUT_TOKENS)}},
            "models": {"llama-3-8b": 1.0},
        },
        "actions": {"batch_levels": [1], "initial_batch_level": 0},
    }


def service_time_s(sim: GridSimulator) -> float:
    perf = sim.topology.sites[0].perf
    prefill = perf.prefill_time_s(PROMPT_TOKENS)
    decode, _ = perf.decode_segment(1, PROMPT_TOKENS + 1, OUTPUT_TOKENS - 1)
    return prefill + decode


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_md1_mean_wait_matches_pollaczek_khinchine(rho: float) -> None:
    probe = GridSimulator(load_scenario(md1_scenario(1.0, 1.0)))
    service_s = service_time_s(probe)
    rate = rho / service_s
    n_requests = 150_000  # per seed
    sim = GridSimulator(load_scenario(md1_scenario(rate, n_requests / rate)))
    prefill_s = sim.topology.sites[0].perf.prefill_time_s(PROMPT_TOKENS)
    waits = []
    for seed in range(4):  # the noise of one 150k-request run is about 2% at rho = 0.8
        sim.reset(np.random.default_rng(seed))
        while not sim.done:
            sim.decide(0, 0)
        ttft = np.asarray(sim.metrics.ttft_s)
        # Service is deterministic: every TTFT is wait + the same prefill time.
        waits.append(ttft[len(ttft) // 20:] - prefill_s)  # drop the warm-up
        e2e = np.asarray(sim.metrics.e2e_s)
        np.testing.assert_allclose(np.min(e2e), service_s, rtol=1e-9)
    mean_wait = float(np.mean(np.concatenate(waits)))
    expected = rho * service_s / (2.0 * (1.0 - rho))
    print(f"rho={rho}: S={service_s * 1e3:.2f} ms, simulated W_q={mean_wait * 1e3:.2f} ms, "
          f"P-K W_q={expected * 1e3:.2f} ms, error={100 * (mean_wait / expected - 1):+.2f}%")
    assert mean_wait == pytest.approx(expected, rel=0.05)
