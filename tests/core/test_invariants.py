"""Property tests over random scenarios and random valid actions: no request ever vanishes,
the live counters agree with the data structures, energy never falls below the idle floor."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from gridenv.core.scenario import load_scenario
from gridenv.core.simulator import SHED, GridSimulator


@st.composite
def scenarios(draw) -> dict:
    n_regions = draw(st.integers(1, 3))
    n_sites = draw(st.integers(1, 4))
    regions = [{"name": f"r{i}", "population": draw(st.floats(0.2, 2.0)),
                "utc_offset_h": draw(st.sampled_from([-5.0, 0.0, 8.0]))} for i in range(n_regions)]
    sites = []
    for j in range(n_sites):
        gpu, model, tp = draw(st.sampled_from([
            ("L4", "llama-3-8b", 1), ("H100", "llama-3-8b", 1), ("A100", "llama-3-8b", 2),
            ("H100", "llama-3-70b", 4), ("A100", "llama-3-70b", 2),
        ]))
        sites.append({
            "name": f"s{j}", "region": f"r{draw(st.integers(0, n_regions - 1))}",
            "kind": draw(st.sampled_from(["edge", "core"])), "gpu": gpu, "tp": tp,
            "replicas": draw(st.integers(1, 3)), "model": model,
            "weight_dtype": "fp8" if (gpu == "A100" and model == "llama-3-70b") else "bf16",
            "gpu_usd_per_h": draw(st.floats(0.3, 4.0)), "pue": draw(st.floats(1.05, 1.8)),
            "energy_price_usd_per_kwh": draw(st.floats(0.0, 0.4)),
            "max_queue": draw(st.integers(1, 64)),
        })
    models = sorted({s["model"] for s in sites})
    length = lambda med, mx: {"median": med, "sigma": 1.0, "max": mx}  # noqa: E731
    faults = {"max_retries": draw(st.integers(0, 2))}
    if draw(st.booleans()):
        faults["random"] = {"mtbf_s": draw(st.floats(5.0, 60.0)), "mttr_s": draw(st.floats(1.0, 20.0))}
    if draw(st.booleans()):
        faults["outages"] = [{"site": "s0", "start_s": draw(st.floats(0.0, 20.0)),
                              "duration_s": draw(st.floats(0.5, 20.0))}]
    if draw(st.booleans()):  # possibly overlapping windows, possibly on the same link
        faults["degraded_links"] = [
            {"region": f"r{draw(st.integers(0, n_regions - 1))}", "site": f"s{draw(st.integers(0, n_sites - 1))}",
             "start_s": draw(st.floats(0.0, 30.0)), "duration_s": draw(st.floats(0.5, 30.0)),
             "rtt_factor": draw(st.sampled_from([1.5, 2.0, 3.0]))}
            for _ in range(draw(st.integers(1, 4)))
        ]
    return {
        "name": "random", "horizon_s": draw(st.floats(5.0, 40.0)),
        "max_prefill_tokens": draw(st.sampled_from([512, 8192])),
        "regions": regions, "sites": sites,
        "network": {"rtt_ms": {r["name"]: [draw(st.floats(0.0, 150.0)) for _ in sites] for r in regions}},
        "workload": {
            "arrivals": draw(st.sampled_from(["poisson", "gamma", "mmpp"])),
            "rate_rps": draw(st.floats(1.0, 60.0)), "cv": draw(st.floats(0.5, 6.0)),
            "diurnal": {"amplitude": draw(st.floats(0.0, 0.9)), "period_s": 40.0},
            "classes": {
                "chat": {"share": 1.0, "prompt_tokens": length(500, 16000), "output_tokens": length(100, 4000)},
                "code": {"share": draw(st.floats(0.0, 1.0)), "prompt_tokens": length(1500, 8192),
                         "output_tokens": length(20, 300)},
            },
            "models": {m: 1.0 for m in models},
            "residency_share": draw(st.floats(0.0, 1.0)),
        },
        "faults": faults,
        "actions": {"batch_levels": draw(st.sampled_from([[1], [4, 16], [8, 32, 128]])),
                    "initial_batch_level": 0},
    }


def check_conservation(sim: GridSimulator) -> None:
    m = sim.metrics
    census = sim.in_flight_census()
    assert m.arrived == m.completed + m.shed + m.failed + sum(census.values())
    queued = [sum(len(r.waiting) for r in reps) for reps in sim.replicas]
    running = [sum(len(r.running) + len(r.prefilling) for r in reps) for reps in sim.replicas]
    transit = [0] * sim.n_sites
    for e in sim._events:
        if e[2] == 1:  # DELIVER
            transit[e[3].site] += 1
    assert sim.site_running == running
    assert sim.site_waiting == [q + t for q, t in zip(queued, transit)]
    for reps in sim.replicas:
        for r in reps:
            held = sum(e[2].kv_need for e in r.running)
            held += sum(x.kv_need for x in r.prefilling)
            assert r.kv_reserved == held <= r.kv_capacity


def run_and_check(raw: dict, seed: int) -> set[str]:
    """Run one random scenario under a random valid policy, checking the invariants on the way;
    returns the fates its requests met (completed, shed, failed, ...)."""
    sim = GridSimulator(load_scenario(raw))
    sim.reset(np.random.default_rng(seed))
    policy_rng = np.random.default_rng(seed ^ 0x5EED)
    n_levels = len(raw["actions"]["batch_levels"])
    steps = 0
    sc = sim.scenario
    while not sim.done:
        snap = sim.snapshot()
        # RTT = the scenario's matrix entry times every degraded window open now.
        origin, t = sim.pending.origin, sim.now
        want = np.array(sc.network.rtt_ms[f"r{origin}"], dtype=float)
        for d in sc.faults.degraded_links:
            if d.region == f"r{origin}" and d.start_s <= t < d.start_s + d.duration_s:
                want[int(d.site[1:])] *= d.rtt_factor
        np.testing.assert_allclose(snap.rtt_ms, want, rtol=1e-12)
        feasible = np.flatnonzero(snap.feasible)
        site = int(policy_rng.choice(feasible)) if len(feasible) and policy_rng.random() < 0.95 else SHED
        sim.decide(site, int(policy_rng.integers(n_levels)))
        steps += 1
        if steps % 25 == 0:
            check_conservation(sim)
    check_conservation(sim)
    summary = sim.summary()
    m = sim.metrics
    assert summary["in_flight"] == sum(sim.in_flight_census().values())
    assert m.arrived == len(sim.arrivals)  # every drawn arrival reached the router
    idle_floor_j = sum(s.idle_w * s.site_power_factor for s in sim.topology.sites) * raw["horizon_s"]
    assert summary["energy_kwh"] * 3.6e6 >= idle_floor_j * (1 - 1e-12)
    assert np.all(m.dyn_energy_j >= 0.0)
    assert m.good <= m.completed
    # A request that is served at all was prefilled and reported its latency.
    assert len(m.ttft_s) == m.completed
    return {k for k in ("completed", "shed", "failed", "retried", "failed_oversize") if getattr(m, k)}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=scenarios(), seed=st.integers(0, 2**31 - 1))
def test_no_request_vanishes_and_energy_above_idle_floor(raw: dict, seed: int) -> None:
    run_and_check(raw, seed)


#: Examples the fate check draws (every fate shows up within the first 10 or so).
FATE_EXAMPLES = 30


def test_the_generator_reaches_every_fate() -> None:
    """Guards the generator: the random scenarios above must exercise every way a request ends.

    Self-contained, so it passes alone and in any order: it draws its own fixed set of examples
    (derandomized, no example database, generation only) instead of reading what the property
    test happened to draw in this session (a module-level set it used to share, which was empty
    when this test ran first or alone, and varied with the random draw and the database)."""
    fates: set[str] = set()

    @settings(max_examples=FATE_EXAMPLES, derandomize=True, database=None, phases=[Phase.generate],
              deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(raw=scenarios(), seed=st.integers(0, 2**31 - 1))
    def run(raw: dict, seed: int) -> None:
        fates.update(run_and_check(raw, seed))

    run()
    assert fates >= {"completed", "shed", "failed", "retried"}, fates


def test_idle_floor_cost_integrates_hourly_prices() -> None:
    """Idle energy cost and CO2 follow each site's hourly series over the (compressed) day:
    checked against a brute-force integration on a million-point grid."""
    sim = GridSimulator(load_scenario("continental"))  # one day in 600 s, prices by local hour
    sim.reset(np.random.default_rng(0))
    while not sim.done:
        sim.decide(SHED)
    sim.summary()
    m = sim.metrics
    t = (np.arange(1_000_000) + 0.5) * (sim.now / 1_000_000)
    hours = (sim.scenario.workload.diurnal.start_hour_utc + 24.0 * t / sim.scenario.workload.diurnal.period_s)
    for s, spec in enumerate(sim.topology.sites):
        idx = ((hours + spec.utc_offset_h) % 24.0).astype(int) % 24
        kwh_per_step = spec.idle_w * spec.site_power_factor * (sim.now / 1_000_000) / 3.6e6
        assert m.idle_energy_usd[s] == pytest.approx(kwh_per_step * np.asarray(spec.price_usd_per_kwh)[idx].sum(), rel=1e-3)
        assert m.idle_co2_g[s] == pytest.approx(kwh_per_step * np.asarray(spec.carbon_g_per_kwh)[idx].sum(), rel=1e-3)
