"""The router-visible cache signals: the precise cached fraction is what admission would hit at
the replica the site's balancer picks, the approximate index remembers what the router sent where
(bounded, LRU), and the prefill backlog counts the prompt tokens in transit and queued."""

from __future__ import annotations

import numpy as np
import pytest

from gridenv.core.engine import QUEUED, TRANSIT
from gridenv.core.prefix_index import PrefixIndex
from gridenv.core.scenario import load_scenario
from gridenv.core.simulator import GridSimulator

from tests.core.test_prefix_cache import one_site


def two_sites(replicas: int = 1, **over) -> dict:
    """Two identical single-H100 sites in one region; multi-turn chat (so prompts share)."""
    vary = lambda med, mx: {"median": med, "sigma": 0.6, "min": 1, "max": mx}  # noqa: E731
    raw = one_site(horizon_s=1500.0, workload={
        "arrivals": "poisson", "rate_rps": 1.0, "models": {"llama-3-8b": 1.0},
        "classes": {"chat": {"share": 1.0, "prompt_tokens": vary(300, 1500), "output_tokens": vary(150, 600),
                             "prefix": {"kind": "multi_turn", "turns_mean": 5.0, "think_time_s": 30.0}}}})
    site = dict(raw["sites"][0], replicas=replicas)
    raw["sites"] = [dict(site, name="a"), dict(site, name="b")]
    raw["network"] = {"rtt_ms": {"r": [0.0, 0.0]}, "api_overhead_ms": 0.0}
    raw.update(over)
    return raw


def _conversation(sim) -> int:
    return sim.pending.hashes.start >> 24  # the conversation id in the synthetic key namespace


def test_prefix_index_lru_and_bounded() -> None:
    idx = PrefixIndex(2, 4)
    idx.insert(0, [1, 2, 3])
    assert idx.match_all([1, 2, 3, 9]) == [3, 0]
    assert idx.match(0, [2, 3]) == 2 and idx.match(0, [9, 1]) == 0  # leading hashes only
    idx.insert(0, [1, 7, 8])  # 5 distinct > 4: the least recently used (2) goes
    assert idx.size(0) == 4
    assert idx.match(0, [1, 2]) == 1 and idx.match(0, [3]) == 1
    idx.insert(0, [3, 10])  # 3 refreshed; now 1 is the oldest and goes
    assert idx.match(0, [1]) == 0 and idx.match(0, [3]) == 1 and idx.match(0, [7]) == 1
    idx.forget(0)
    assert idx.size(0) == 0
    with pytest.raises(ValueError, match="capacities"):
        PrefixIndex(2, [1])


def test_precise_and_indexed_fractions_follow_the_conversation() -> None:
    """Conversations go to site a or b by id parity. At each later turn, the precise fraction is
    what the replica would hit now (cached_blocks), positive at the conversation's site only,
    and the index names that site only."""
    sim = GridSimulator(load_scenario(two_sites()))
    sim.reset(np.random.default_rng(1))
    seen_home = seen_hits = 0
    bs = sim.scenario.engine.block_size_tokens
    home: dict[int, int] = {}
    while not sim.done:
        req = sim.pending
        snap = sim.snapshot()
        site = _conversation(sim) % 2
        for s in range(2):
            expect = sim.replicas[s][0].cached_blocks(req) * bs / req.prompt_tokens
            assert snap.prefix_cached_frac[s] == pytest.approx(expect)
        assert np.all((snap.prefix_cached_frac >= 0) & (snap.prefix_cached_frac <= 1))
        assert np.all((snap.prefix_indexed_frac >= 0) & (snap.prefix_indexed_frac <= 1))
        conv = _conversation(sim)
        if conv in home:
            seen_home += 1
            assert snap.prefix_cached_frac[1 - site] == 0.0 and snap.prefix_indexed_frac[1 - site] == 0.0
            if snap.prefix_cached_frac[site] > 0:
                seen_hits += 1
        else:
            assert not snap.prefix_cached_frac.any() and not snap.prefix_indexed_frac.any()
        home[conv] = site
        sim.decide(site, 0)
    assert seen_home > 100 and seen_hits > 0.5 * seen_home


def test_indexed_fraction_is_the_prompt_share_of_the_chain_the_router_sent() -> None:
    """With 128-token index entries (8 engine blocks), a turn whose previous turn was sent to a
    site reads at least the previous prompt's full entries there."""
    sim = GridSimulator(load_scenario(two_sites()))
    sim.reset(np.random.default_rng(2))
    last_prompt: dict[int, int] = {}
    checked = 0
    while not sim.done:
        req, conv = sim.pending, _conversation(sim)
        snap = sim.snapshot()
        if conv in last_prompt:
            entries = last_prompt[conv] // 128
            assert snap.prefix_indexed_frac[0] == pytest.approx(min(entries * 128 / req.prompt_tokens, 1.0))
            checked += 1
        last_prompt[conv] = req.prompt_tokens
        sim.decide(0, 0)
    assert checked > 100


def test_queued_prompt_tokens_count_transit_and_queue() -> None:
    raw = two_sites(network={"rtt_ms": {"r": [40.0, 80.0]}, "api_overhead_ms": 0.0},
                    workload=dict(two_sites()["workload"], rate_rps=400.0))  # overload: queues build up
    raw["horizon_s"] = 20.0
    sim = GridSimulator(load_scenario(raw))
    sim.reset(np.random.default_rng(3))
    rng = np.random.default_rng(0)
    peak = 0.0
    while not sim.done:
        snap = sim.snapshot()
        for s in range(2):
            expect = sum(e[3].prompt_tokens for e in sim._events
                         if e[2] == 1 and e[3].state == TRANSIT and e[3].site == s)
            expect += sum(r.target for rep in sim.replicas[s] for r in rep.waiting if r.state == QUEUED)
            assert snap.queued_prompt_tokens[s] == expect
        peak = max(peak, float(snap.queued_prompt_tokens.max()))
        sim.decide(int(rng.integers(2)), 0)
    assert peak > 20_000  # the check ran on long queues, not only empty ones


def test_site_balancer_prefers_the_replica_holding_the_prefix() -> None:
    """Four replicas in one site: later turns land on the replica that served the earlier ones
    (so the site's precise fraction is positive), unless it is far more loaded."""
    sim = GridSimulator(load_scenario(two_sites(replicas=4)))
    sim.reset(np.random.default_rng(4))
    summary_hits = 0
    while not sim.done:
        sim.decide(0, 0)
    summary = sim.summary()
    summary_hits = summary["prefix_hit_rate"]
    # the same workload through a cache-blind site balancer (least load only) hits far less
    sim2 = GridSimulator(load_scenario(two_sites(replicas=4)))
    sim2._pick_replica = lambda s, req: (min(sim2.replicas[s], key=lambda r: r.load()), 0)
    sim2.reset(np.random.default_rng(4))
    while not sim2.done:
        sim2.decide(0, 0)
    assert summary_hits > 0.3 and summary_hits > 1.5 * sim2.summary()["prefix_hit_rate"]
