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
from scenario_builders import one_site_scenario  # tests/core/scenario_builders.py

PROMPT_TOKENS = 512
OUTPUT_TOKENS = 32


def md1_scenario(rate_rps: float, horizon_s: float) -> dict:
    """Batch size 1 and fixed token counts: an M/D/1 queue."""
    return one_site_scenario("md1", horizon_s, prompt_tokens=PROMPT_TOKENS, output_tokens=OUTPUT_TOKENS,
                             rate_rps=rate_rps, site={"max_queue": 1_000_000}, batch_levels=[1])


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
