"""Prefix caching: hits shorten prefill by exactly the cached blocks, eviction is LRU over
unreferenced blocks, a block cached on one replica does not help another, and the sharing
workloads (Mooncake hash_ids, multi-turn conversations) reach the hit rates they imply."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gridenv.core.catalog import GPUS, MODELS
from gridenv.core.engine import QUEUED, Replica, Request
from gridenv.core.kvcache import KVBlockPool
from gridenv.core.perf import ReplicaPerf
from gridenv.core.scenario import load_scenario
from gridenv.core.schedulers import scheduler
from gridenv.core.sharing import implied_multi_turn_hits
from gridenv.core.simulator import GridSimulator
from scenario_builders import one_site_scenario  # tests/core/scenario_builders.py

MOONCAKE_SAMPLE = Path(__file__).parent / "data" / "mooncake_sample.jsonl"


def one_site(**over) -> dict:
    """One H100 running Llama-3-8B, no network delay, no API overhead; `over`: top-level
    sections (a dict updates the section, anything else replaces it)."""
    raw = one_site_scenario("one-site", 200.0, prompt_tokens=200, output_tokens=40, rate_rps=0.5)
    for k, v in over.items():
        raw[k] = v if not isinstance(v, dict) else {**raw.get(k, {}), **v}
    return raw


def run_all_to_site0(sim: GridSimulator, seed: int = 0) -> dict:
    sim.reset(np.random.default_rng(seed))
    while not sim.done:
        sim.decide(0, 0)
    return sim.summary()


def mooncake_scenario(**engine) -> dict:
    raw = one_site(horizon_s=200.0, engine=engine, workload={
        "arrivals": "trace", "trace": {"path": str(MOONCAKE_SAMPLE), "slo_class": "chat"}})
    del raw["workload"]["rate_rps"]  # a trace sets its own times
    return raw


# ---------------------------------------------------------------------------------------------
def test_prefix_hit_shortens_ttft_by_the_prefill_of_the_cached_blocks() -> None:
    """Mooncake fixture: 30 requests of 1300 tokens, 5 s apart, on three 1024-token documents.
    The first request of a document prefills 1300 tokens; every later one finds the document's
    64 blocks cached and prefills only the 276-token suffix over 1024 cached tokens."""
    sim = GridSimulator(load_scenario(mooncake_scenario()))
    summary = run_all_to_site0(sim)
    perf = sim.topology.sites[0].perf
    cold = perf.prefill_time_s(1300)
    q, c = 1300 - 1024, 1024
    warm = perf.iter_time(q, q * (c + q / 2), 0, c, 1)[0]
    ttft = np.asarray(sim.metrics.ttft_s)
    assert summary["completed"] == 30
    np.testing.assert_allclose(ttft[:3], cold, rtol=1e-12)  # one cold start per document
    np.testing.assert_allclose(ttft[3:], warm, rtol=1e-12)
    assert cold - warm > 0.5 * (perf.prefill_time_s(1024) - perf.fixed_s)  # a real saving
    assert summary["prefill_tokens_saved"] == 27 * 1024
    assert summary["prefix_hit_rate"] == pytest.approx(27 * 1024 / (30 * 1300))

    # Without prefix caching every request is a cold start.
    off = GridSimulator(load_scenario(mooncake_scenario(prefix_caching=False)))
    summary_off = run_all_to_site0(off)
    np.testing.assert_allclose(np.asarray(off.metrics.ttft_s), cold, rtol=1e-12)
    assert summary_off["prefill_tokens_saved"] == 0


def test_a_block_cached_on_one_replica_does_not_help_another() -> None:
    """Two sites: requests alternate between them, so each document is cold once per site."""
    raw = mooncake_scenario()
    raw["sites"] = [dict(raw["sites"][0], name="a"), dict(raw["sites"][0], name="b")]
    raw["network"] = {"rtt_ms": {"r": [0.0, 0.0]}, "api_overhead_ms": 0.0}
    sim = GridSimulator(load_scenario(raw))
    sim.reset(np.random.default_rng(0))
    i = 0
    while not sim.done:
        sim.decide(i % 2, 0)  # request i (document i % 3) goes to site i % 2
        i += 1
    summary = sim.summary()
    # Each (document, site) pair is cold once: 6 cold starts, 24 hits.
    assert summary["prefill_tokens_saved"] == 24 * 1024
    assert list(sim.metrics.prefix_hit_tokens) == [12 * 1024, 12 * 1024]


def test_mooncake_replay_reports_a_hit_rate_per_site() -> None:
    sim = GridSimulator(load_scenario(mooncake_scenario()))
    run_all_to_site0(sim)
    rate = sim.metrics.prefix_hit_rate_by_site()
    assert rate.shape == (1,) and 0.6 < rate[0] < 0.75


# ---------------------------------------------------------------------------------------------
def test_pool_evicts_least_recently_freed_unreferenced_blocks_tail_first() -> None:
    pool = KVBlockPool(total_blocks=8, block_size=16)
    for keys in (["a0", "a1", "a2"], ["b0", "b1", "b2"]):  # cached while prefilling, then freed
        pool.private += 3
        for k in keys:
            pool.promote(k)
        pool.release(reversed(keys))
    assert pool.private == 0 and list(pool.evictable) == ["a2", "a1", "a0", "b2", "b1", "b0"]
    pool.acquire(["b0"])  # a new request reuses b0: referenced blocks are never evicted
    assert pool.available() == 7 and pool.lookup(["a0", "a1", "a2"]) == (3, 3)
    pool.private += 3  # three new blocks: 2 free ones, then the least recently freed (a2)
    pool.reclaim()
    assert list(pool.evictable) == ["a1", "a0", "b2", "b1"] and "b0" in pool.ref
    assert pool.lookup(["a0", "a1", "a2"]) == (2, 2)  # the chain lost its tail, not its head
    pool.private += 4
    pool.reclaim()
    assert list(pool.evictable) == [] and set(pool.ref) == {"b0"}
    assert pool.available() == 0


def _doc_request(i: int, doc: int, prompt: int, blocks: int) -> Request:
    base = (doc + 1) << 24
    r = Request(i, 0.0, 0, prompt, 2, 0, 0, False, 1.0, 1.0,
                hashes=range(base, base + blocks), hash_k=1, n_hashed=blocks)
    r.state = QUEUED
    return r


def _serve(rep: Replica, req: Request, t: float) -> float:
    """Run one request alone through a replica; return the time it finished."""
    rep.waiting.append(req)
    busy = rep.start(t, 8)
    while busy:
        t = rep.wake_s
        rep.finish_segment(t)
        busy = rep.start(t, 8)
    return t


def test_replica_evicts_lru_document_under_pressure() -> None:
    """Llama-3-70B on 2 x H100 has 534 blocks of KV. Documents A and B (187 full blocks of a
    3000-token prompt) are served, then A again (now more recently used than B), then C (250
    blocks, 4000 tokens, plus one decode block): 625 > 534, so 91 cached blocks must go. They
    come from B (least recently freed), tail first; A survives whole and B keeps its head."""
    perf = ReplicaPerf(GPUS["H100"], MODELS["llama-3-70b"], 2)
    rep = Replica(0, 0, perf, scheduler("vllm-v1"), 8192, 16)
    assert rep.pool.total == 534
    t = 0.0
    for i, (doc, prompt) in enumerate([(0, 3000), (1, 3000), (0, 3000), (2, 4000)]):
        t = _serve(rep, _doc_request(i, doc, prompt, prompt // 16), t)
    assert rep.pool.used() == 0 and rep.pool.evictions == 187 + 187 + 251 - 534
    before = rep.hit_tokens
    t = _serve(rep, _doc_request(4, 0, 3000, 187), t)
    assert rep.hit_tokens - before == 187 * 16  # all of A (2992 tokens; 8 are computed)
    before = rep.hit_tokens
    _serve(rep, _doc_request(5, 1, 3000, 187), t)
    assert rep.hit_tokens - before == (187 - 91) * 16  # B's head survived, its tail did not


# ---------------------------------------------------------------------------------------------
def test_multi_turn_conversations_reach_the_implied_hit_rate() -> None:
    """One replica with room for everything: turn k hits all of turn k-1's prompt and answer
    (what was computed of it), as sharing.implied_multi_turn_hits says."""
    vary = lambda med, mx: {"median": med, "sigma": 0.6, "min": 1, "max": mx}  # noqa: E731
    raw = one_site(horizon_s=3000.0, workload={
        "arrivals": "poisson", "rate_rps": 0.5, "models": {"llama-3-8b": 1.0},
        "classes": {"chat": {"share": 1.0, "prompt_tokens": vary(120, 400), "output_tokens": vary(120, 400),
                             "prefix": {"kind": "multi_turn", "turns_mean": 4.0, "think_time_s": 600.0}}}})
    sim = GridSimulator(load_scenario(raw))
    summary = run_all_to_site0(sim)
    a = sim.arrivals
    assert summary["over_context"] == 0 and summary["timed_out"] == 0 and summary["preemptions"] == 0
    assert summary["cache_evictions"] == 0
    convs: dict[int, list[int]] = {}
    for i in range(len(a)):
        convs.setdefault(a.prefix_hashes[i].start, []).append(i)
    assert max(len(v) for v in convs.values()) >= 4  # real conversations, not single turns
    implied = sum(implied_multi_turn_hits(a.prompt_tokens[idx], a.output_tokens[idx], 16)
                  for idx in convs.values())
    admitted = int(a.prompt_tokens.sum())
    assert summary["prefix_hit_rate"] == pytest.approx(implied / admitted, rel=0.01)
    assert summary["prefix_hit_rate"] > 0.4
