"""Inside a site: a batch-level change cuts a running decode segment at the next iteration
boundary, and the site's balancer spreads requests over its replicas as documented."""

from __future__ import annotations

import numpy as np
import pytest

from gridenv.core.simulator import GridSimulator


def _run(sim: GridSimulator, decisions: list[tuple[int, int]]) -> list:
    """Make the given (site, batch level) decisions in order; returns the Request objects."""
    sim.reset(np.random.default_rng(0))
    reqs = []
    for site, level in decisions:
        reqs.append(sim.pending)
        sim.decide(site, level)
    return reqs


@pytest.mark.parametrize("raise_level", [True, False])
def test_batch_level_change_cuts_decode_segment_at_next_iteration_boundary(
    scripted_arrivals, one_region_scenario, raise_level: bool
) -> None:
    """A decodes alone at batch level 1 (max batch 1) while B queues. At t = 1 s the router raises
    the site to max batch 8: B (and C, routed with the change) must start prefilling at the first
    decode-iteration boundary after 1 s, not at the end of A's closed-form segment (thousands of
    iterations later). Without the change, B waits for A to finish."""
    sc = one_region_scenario([{"replicas": 1}], batch_levels=[1, 8], initial_level=0, horizon_s=120.0)
    scripted_arrivals([(0.0, 200, 3000), (0.1, 300, 5), (1.0, 100, 5), (100.0, 10, 2)])
    sim = GridSimulator(sc)
    a, b, c, _ = _run(sim, [(0, 0), (0, 0), (0, 1 if raise_level else 0), (0, 0)])
    perf = sim.topology.sites[0].perf

    # A's decode iterations one at a time (the per-iteration model, not the closed form).
    t, ctx, k = a.first_token_s, a.prompt_tokens + 1, 0
    while t <= 1.0:
        t += perf.iter_time(0, 0.0, 1, ctx, 0)[0]
        ctx += 1
        k += 1
    boundary_s = t  # first iteration boundary after the change
    assert 0.0 < boundary_s - 1.0 <= perf.iter_time(0, 0.0, 1, ctx, 0)[0] * 1.01

    if raise_level:
        # B and C are prefilled together in one mixed iteration with A's next decode step.
        q = b.prompt_tokens + c.prompt_tokens
        attn = 0.5 * (b.prompt_tokens ** 2 + c.prompt_tokens ** 2)
        prefill_s = perf.iter_time(q, attn, 1, ctx, 2)[0]
        assert b.first_token_s == pytest.approx(boundary_s + prefill_s, rel=1e-9, abs=1e-9)
        assert c.first_token_s == b.first_token_s
        assert b.first_token_s < 1.1  # within a tenth of a second of the decision
    else:
        # Batch 1 throughout: B only starts once A's 2999 decode steps are done.
        a_done_s = a.first_token_s + sum(
            perf.iter_time(0, 0.0, 1, a.prompt_tokens + 1 + i, 0)[0] for i in range(a.output_tokens - 1)
        )
        assert b.first_token_s > a_done_s - 1e-9
        assert b.first_token_s > 10.0


def _replica_of(sim: GridSimulator, req) -> int:
    for j, rep in enumerate(sim.replicas[0]):
        if req in rep.waiting or req in rep.prefilling or any(e[2] is req for e in rep.running):
            return j
    raise AssertionError(f"request {req.id} is on no replica")


def test_site_balancer_picks_least_loaded_replica_lowest_index_on_ties(
    scripted_arrivals, one_region_scenario
) -> None:
    """Documented rule (README, simulator): a request delivered to a site goes to the replica with
    the fewest requests queued or in service, the lowest index among equals."""
    sc = one_region_scenario([{"replicas": 3}], batch_levels=[8], initial_level=0, horizon_s=60.0)
    long, short = 2000, 5
    scripted_arrivals([
        (0.000, 100, long),   # loads [0, 0, 0] -> 0
        (0.001, 100, long),   # [1, 0, 0] -> 1
        (0.002, 100, short),  # [1, 1, 0] -> 2 (finishes within a second)
        (0.003, 100, long),   # [1, 1, 1] -> 0 (tie: lowest index)
        (0.004, 100, long),   # [2, 1, 1] -> 1
        (2.000, 100, long),   # [2, 2, 0] -> 2 (the short one is gone)
        (2.001, 100, long),   # [2, 2, 1] -> 2 (least loaded beats lowest index)
        (2.002, 100, long),   # [2, 2, 2] -> 0
        (2.003, 10, 2),  # the next decision: the sim stops here, before anything finishes
    ])
    sim = GridSimulator(sc)
    sim.reset(np.random.default_rng(0))
    placed = []
    for _ in range(8):
        req = sim.pending
        loads_before = [rep.load() for rep in sim.replicas[0]]
        sim.decide(0, 0)
        j = _replica_of(sim, req)
        placed.append(j)
        assert loads_before[j] == min(loads_before)
    assert placed == [0, 1, 2, 0, 1, 2, 2, 0]
