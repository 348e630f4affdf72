"""The network model: every simulated RTT is the scenario's matrix entry (times the degraded-link
windows open at the decision), and overlapping windows on one link compose."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from gridenv.core.scenario import Scenario, load_scenario, scenario_names
from gridenv.core.simulator import SHED, GridSimulator

#: Metro with north -> core at 150 ms: longer than north -> edge-north -> east's users -> core
#: (6 + 16 + 38 = 60 ms), a path a shortest-path recomputation would take instead.
METRO_FAR_CORE = {"network": {"rtt_ms": {"north": [6, 18, 16, 20, 150]}}}


def _window_factor(sc: Scenario, region: int, site: int, t: float) -> float:
    """Product of the rtt_factor of the degraded-link windows on (region, site) open at t."""
    regions = [r.name for r in sc.regions]
    sites = [s.name for s in sc.sites]
    f = 1.0
    for d in sc.faults.degraded_links:
        if (regions.index(d.region), sites.index(d.site)) == (region, site) and d.start_s <= t < d.start_s + d.duration_s:
            f *= d.rtt_factor
    return f


def _expected_rtt_ms(sc: Scenario, origin: int, t: float) -> np.ndarray:
    """Row of RTTs from the scenario file's own matrix (not from the simulator's topology)."""
    row = sc.network.rtt_ms[sc.regions[origin].name]
    return np.array([row[j] * _window_factor(sc, origin, j, t) for j in range(len(sc.sites))])


CASES = [pytest.param(n, {"horizon_s": 200.0}, id=n) for n in scenario_names()] + [
    pytest.param("metro", {"horizon_s": 60.0, **METRO_FAR_CORE}, id="metro-far-core"),
]


@pytest.mark.parametrize("name, overrides", CASES)
def test_every_simulated_rtt_is_the_matrix_entry(name: str, overrides: dict) -> None:
    sc = load_scenario(name, overrides)
    sim = GridSimulator(sc)
    sim.reset(np.random.default_rng(7))
    policy = np.random.default_rng(11)
    routed_pairs: set[tuple[int, int]] = set()
    expected_ms: list[float] = []
    while not sim.done:
        req, snap = sim.pending, sim.snapshot()
        want = _expected_rtt_ms(sc, req.origin, sim.now)
        np.testing.assert_allclose(snap.rtt_ms, want, rtol=1e-12, atol=0)  # what the router sees
        feasible = np.flatnonzero(snap.feasible)
        site = int(policy.choice(feasible)) if len(feasible) else SHED
        sim.decide(site)
        if site != SHED:
            assert req.rtt_s * 1e3 == pytest.approx(want[site], rel=1e-12)  # what it gets
            routed_pairs.add((req.origin, site))
            expected_ms.append(round(want[site], 6))
    # Every completed request's recorded RTT is one of the routed requests' matrix entries.
    recorded = Counter(round(x, 6) for x in sim.metrics.network_rtt_ms)
    assert sim.metrics.completed > 50
    assert not recorded - Counter(expected_ms)
    # The random policy exercised every site and every region.
    assert {s for _, s in routed_pairs} == set(range(len(sc.sites)))
    assert {r for r, _ in routed_pairs} == set(range(len(sc.regions)))
    if name == "metro" and "network" in overrides:
        assert (0, 4) in routed_pairs  # the 150 ms north -> core entry was actually used


@pytest.mark.parametrize("f1, f2", [(2.0, 2.0), (2.0, 3.0)])
def test_overlapping_degraded_windows_compose_and_end_on_their_own(f1: float, f2: float) -> None:
    """Window A (north -> core, 10-30 s, x f1) and B (same link, 20-40 s, x f2), plus an
    unrelated window on south -> core: the link is x1, x f1, x f1*f2, x f2, x1 in turn."""
    windows = [
        {"region": "north", "site": "core", "start_s": 10.0, "duration_s": 20.0, "rtt_factor": f1},
        {"region": "north", "site": "core", "start_s": 20.0, "duration_s": 20.0, "rtt_factor": f2},
        {"region": "south", "site": "core", "start_s": 5.0, "duration_s": 40.0, "rtt_factor": 5.0},
    ]
    sc = load_scenario("metro", {"horizon_s": 50.0, "faults": {"degraded_links": windows}})
    north, core = 0, sc.n_sites - 1
    assert sc.regions[north].name == "north" and sc.sites[core].name == "core"
    base_ms = sc.network.rtt_ms["north"][core]
    phases = {  # [start, end) -> factor expected on north -> core
        (0.0, 10.0): 1.0, (10.0, 20.0): f1, (20.0, 30.0): f1 * f2, (30.0, 40.0): f2, (40.0, 50.0): 1.0,
    }
    seen = Counter()
    sim = GridSimulator(sc)
    sim.reset(np.random.default_rng(3))
    while not sim.done:
        req, snap, t = sim.pending, sim.snapshot(), sim.now
        (phase,) = [p for p in phases if p[0] <= t < p[1]]
        if req.origin == north:
            assert snap.rtt_ms[core] == pytest.approx(base_ms * phases[phase], rel=1e-12), (t, phase)
            seen[phase] += 1
        site = core if snap.feasible[core] else SHED
        sim.decide(site)
        if req.origin == north and site == core:
            assert req.rtt_s * 1e3 == pytest.approx(base_ms * phases[phase], rel=1e-12), (t, phase)
    assert all(seen[p] >= 5 for p in phases), seen  # decisions inside every phase were checked
    assert sim.link_factor[north, core] == 1.0  # exactly back to normal, no float residue


def test_bandwidth_is_not_a_scenario_field() -> None:
    """The network has no bandwidth term (see the Network docstring): a scenario that sets one
    is refused by name instead of being silently ignored."""
    with pytest.raises(ValueError, match="network.bandwidth_gbps"):
        load_scenario("metro", {"network": {"bandwidth_gbps": {"north": [10.0] * 5}}})
