"""Cache-aware baselines and the admission gate on hand-built snapshots: each does what its
production router's source promises (agents/cache_routers.py, agents/admission.py).

Metro's sites: four edges of 2 replicas (sites 0-3, KV 103530 tokens per replica, queue limit
128 per site) and a core of 1 replica (site 4). Loads are per replica in the routers' rules.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest

from agents.admission import gateway_saturated
from agents.cache_routers import DynamoKv
from agents.heuristics import CACHE_AWARE, HEURISTICS, make_heuristic
from gridenv.core.scenario import load_scenario
from gridenv.core.simulator import GridSimulator
from gridenv.core.snapshot import RequestView, make_snapshot

PRECISE = ["llmd-precise", "dynamo-kv"]
APPROXIMATE = ["llmd-approx", "sglang-cache", "vllm-ps-prefix", "ray-prefix", "aibrix-prefix"]
EDGE_REPLICAS = 2


@lru_cache(maxsize=None)
def statics(scenario: str = "metro"):
    return GridSimulator(load_scenario(scenario)).statics


def snap(*, waiting=None, running=None, kv=None, cached=None, indexed=None, queued=None,
         up=None, prompt: int = 2000, residency: bool = False, origin: int = 0):
    """A metro snapshot with the given live signals (defaults: idle, all up, nothing cached)."""
    s = statics()
    n = s.n_sites

    def arr(x, default):
        return np.full(n, default, dtype=float) if x is None else np.asarray(x, dtype=float)

    req = RequestView(prompt, 0, origin, s.model_names.index("llama-3-8b"), residency, 10.0, 0.1)
    return make_snapshot(
        s, req, 12.0, arr(waiting, 0), arr(running, 0), arr(kv, 0.1), arr(None, 20.0),
        arr(None, 0.1), arr(up, 1), arr(None, 1),
        arr(cached, 0.0), arr(indexed, 0.0), arr(queued, 0.0),
    )


def picks(name: str, sn, seeds=range(1), **kw) -> list[int]:
    """The site a fresh heuristic picks for each seed (-1 = shed)."""
    out = []
    for seed in seeds:
        pol = make_heuristic(name, **kw)
        pol.reset(seed)
        site = int(pol.act(None, sn)[0])
        out.append(-1 if site == sn.statics.max_sites else site)
    return out


def per_rep(loads) -> np.ndarray:
    """`running` per site for the given in-flight requests per replica."""
    return np.asarray(loads, dtype=float) * np.array(statics().replicas, dtype=float)


# ---------------------------------------------------------------------------- registry
def test_cache_aware_routers_are_registered_in_leaderboard_order():
    assert CACHE_AWARE == ("llmd-precise", "llmd-approx", "dynamo-kv", "sglang-cache",
                           "vllm-ps-prefix", "ray-prefix", "aibrix-prefix")
    names = list(HEURISTICS)
    assert names.index("cost-greedy") < names.index("llmd-precise")  # after the nine


# ---------------------------------------------------------------------------- cache affinity
@pytest.mark.parametrize("name", PRECISE + APPROXIMATE)
def test_with_balanced_load_it_goes_where_the_prefix_is_cached(name):
    frac = [0.0, 0.0, 0.9, 0.0, 0.0]
    sn = snap(cached=frac, indexed=frac, running=[4, 4, 4, 4, 2])
    assert set(picks(name, sn, seeds=range(20))) == {2}


@pytest.mark.parametrize("name", PRECISE + APPROXIMATE)
def test_precise_routers_read_the_engines_caches_approximate_ones_their_own_index(name):
    """The engines hold the prefix at site 1, the router's index (stale) says site 3."""
    sn = snap(cached=[0, 0.9, 0, 0, 0], indexed=[0, 0, 0, 0.9, 0], running=[4, 4, 4, 4, 2])
    assert set(picks(name, sn, seeds=range(20))) == ({1} if name in PRECISE else {3})


@pytest.mark.parametrize("name", ["jsq", "p2c", "llm-d", "round-robin"])
def test_cache_blind_baselines_ignore_the_prefix_signals(name):
    # (No ties: the tie-break by predicted TTFT does see the cached fraction.)
    kv = [0.5, 0.2, 0.3, 0.1, 0.4]
    base = snap(running=[4, 5, 6, 7, 2], waiting=[1, 2, 0, 3, 4], kv=kv)
    cached = snap(running=[4, 5, 6, 7, 2], waiting=[1, 2, 0, 3, 4], kv=kv,
                  cached=[0, 0, 0.9, 0, 0], indexed=[0, 0, 0.9, 0, 0])
    assert picks(name, base, seeds=range(10)) == picks(name, cached, seeds=range(10))


# ---------------------------------------------------------------------------- SGLang
def test_sglang_falls_back_to_the_least_loaded_past_both_balance_thresholds():
    idx = [0, 0, 0.9, 0, 0]
    # abs threshold 64: spread 64 is balanced (cache), 65 with max > 1.5 * min is imbalanced.
    assert picks("sglang-cache", snap(indexed=idx, running=per_rep([1, 2, 65, 2, 3])))[0] == 2
    assert picks("sglang-cache", snap(indexed=idx, running=per_rep([1, 2, 66, 2, 3])))[0] == 0
    # rel threshold 1.5: min 130, max 195 (= 1.5 * min) is balanced, 196 is imbalanced.
    assert picks("sglang-cache", snap(indexed=idx, running=per_rep([130, 131, 195, 131, 132])))[0] == 2
    assert picks("sglang-cache", snap(indexed=idx, running=per_rep([130, 131, 196, 131, 132])))[0] == 0


def test_sglang_needs_a_match_above_its_cache_threshold_else_the_emptiest_cache():
    kv = [0.5, 0.3, 0.4, 0.2, 0.6]
    assert picks("sglang-cache", snap(indexed=[0, 0, 0.31, 0, 0], kv=kv))[0] == 2
    assert picks("sglang-cache", snap(indexed=[0, 0, 0.30, 0, 0], kv=kv))[0] == 3  # least kv_util
    # The smallest "tree" counts prompts just sent (queued or in transit), not only KV in use:
    # site 3 was just sent 2 x 40000 prompt tokens (> 0.1 x 103530 per replica): site 1 next.
    assert picks("sglang-cache", snap(indexed=[0, 0, 0.30, 0, 0], kv=kv, queued=[0, 0, 0, 80000, 0]))[0] == 1
    assert picks("ray-prefix", snap(indexed=[0, 0, 0.09, 0, 0], kv=kv, queued=[0, 0, 0, 80000, 0]))[0] == 1


# ---------------------------------------------------------------------------- Ray Serve
def test_ray_prefix_uses_power_of_two_past_its_imbalance_threshold():
    idx = [0, 0, 0.9, 0, 0]
    # Queue lengths differ by 10 per replica: balanced, the cached site.
    assert set(picks("ray-prefix", snap(indexed=idx, running=per_rep([0, 0, 10, 0, 0])), seeds=range(30))) == {2}
    # By 11: power of two choices; site 2 is the longest queue and loses every comparison.
    chosen = picks("ray-prefix", snap(indexed=idx, running=per_rep([0, 0, 11, 0, 0])), seeds=range(60))
    assert 2 not in chosen and len(set(chosen)) >= 3  # random, not shortest-queue


def test_ray_prefix_match_threshold_and_shortest_queue_among_the_best_matches():
    kv = [0.5, 0.3, 0.4, 0.2, 0.6]
    assert picks("ray-prefix", snap(indexed=[0, 0, 0.1, 0, 0], kv=kv))[0] == 2  # >= 0.1 matches
    assert picks("ray-prefix", snap(indexed=[0, 0, 0.09, 0, 0], kv=kv))[0] == 3  # least KV use
    # Two sites with the same best match: the shorter queue of the two.
    sn = snap(indexed=[0, 0.5, 0.5, 0, 0], running=[0, 8, 4, 0, 0])
    assert set(picks("ray-prefix", sn, seeds=range(20))) == {2}


# ---------------------------------------------------------------------------- AIBrix
def test_aibrix_restricts_to_the_least_loaded_past_its_imbalance_count():
    # Spread 9 > 8: only the least-loaded sites (0, 1, 3) count; site 1's small match wins over
    # site 2's (load 9) and site 4's (load 3).
    sn = snap(indexed=[0, 0.2, 0.9, 0, 0.5], running=per_rep([0, 0, 9, 0, 3]))
    assert picks("aibrix-prefix", sn)[0] == 1
    # Spread 8: balanced, the best match within mean + std (site 4; site 2 is above the bound).
    sn = snap(indexed=[0, 0.2, 0.9, 0, 0.5], running=per_rep([0, 0, 8, 0, 3]))
    assert picks("aibrix-prefix", sn)[0] == 4
    # Nothing matched among the least loaded: least request.
    sn = snap(indexed=[0, 0, 0.9, 0, 0], running=per_rep([0, 1, 9, 1, 3]))
    assert picks("aibrix-prefix", sn)[0] == 0


def test_aibrix_leaves_a_match_whose_load_exceeds_mean_plus_one_std():
    # Balanced (spread 3 <= 8) but site 2 is above mean + std.
    load = np.array([1, 2, 4, 2, 2], dtype=float)
    assert load[2] > load.mean() + load.std()
    sn = snap(indexed=[0, 0, 0.9, 0, 0], running=per_rep(load))
    assert picks("aibrix-prefix", sn)[0] == 0  # least-request fallback
    # A lesser match within the bound is taken instead of falling back.
    sn = snap(indexed=[0, 0.3, 0.9, 0, 0], running=per_rep(load))
    assert picks("aibrix-prefix", sn)[0] == 1
    # Equal loads: the best match.
    assert picks("aibrix-prefix", snap(indexed=[0, 0.3, 0.9, 0, 0], running=per_rep([2] * 5)))[0] == 2


# ---------------------------------------------------------------------------- vLLM production-stack
def test_vllm_ps_prefix_has_no_load_term_and_spreads_at_random_without_a_match():
    # The matched site is taken however loaded it is (the source has no load term).
    sn = snap(indexed=[0, 0, 0.2, 0, 0], waiting=[0, 0, 100, 0, 0], running=per_rep([0, 0, 50, 0, 0]))
    assert set(picks("vllm-ps-prefix", sn, seeds=range(20))) == {2}
    # Equal best matches: uniform among them; no match anywhere: uniform over all feasible sites.
    assert set(picks("vllm-ps-prefix", snap(indexed=[0, 0.5, 0.5, 0, 0]), seeds=range(40))) == {1, 2}
    assert set(picks("vllm-ps-prefix", snap(up=[1, 1, 0, 1, 1]), seeds=range(80))) == {0, 1, 3, 4}


# ---------------------------------------------------------------------------- Dynamo
def test_dynamo_cost_follows_its_formula_and_ranks_the_sites():
    st = statics()
    prompt = 3000
    cached = np.array([0.0, 0.5, 0.9, 0.0, 0.2])
    queued = np.array([0.0, 0.0, 9000.0, 0.0, 0.0])
    kv = np.array([0.1, 0.1, 0.1, 0.3, 0.05])
    sn = snap(prompt=prompt, cached=cached, queued=queued, kv=kv)
    b = 16.0
    reps = np.array(st.replicas, dtype=float)
    cap = np.array(st.kv_capacity_tokens, dtype=float)
    # Written out from Dynamo's selector: prefill blocks (active per worker + ISL) minus the
    # cached blocks (credit 1, scale 1), plus active decode blocks and the request's blocks.
    expected = (np.maximum((queued / reps + prompt) / b - cached * prompt / b, 0.0)
                + kv * cap / b + prompt / b)
    pol = make_heuristic("dynamo-kv")
    np.testing.assert_allclose(pol.cost_blocks(sn), expected, rtol=1e-12)
    assert picks("dynamo-kv", sn)[0] == int(np.argmin(expected))
    # Site 2's 90% hit is outweighed by its prefill backlog here: site 1 wins.
    assert int(np.argmin(expected)) == 1
    # Without the backlog, the biggest hit wins.
    assert picks("dynamo-kv", snap(prompt=prompt, cached=cached, kv=kv))[0] == 2


def test_dynamo_temperature_samples_by_its_softmax_and_zero_is_argmin():
    sn = snap(cached=[0.0, 0.3, 0.9, 0.0, 0.6], kv=[0.1, 0.1, 0.1, 0.1, 0.02])
    cost = DynamoKv().cost_blocks(sn)
    assert picks("dynamo-kv", sn, seeds=range(10)) == [int(np.argmin(cost))] * 10
    pol = make_heuristic("dynamo-kv", temperature=0.5)
    assert pol.randomized and not DynamoKv.randomized
    p = pol.probabilities(sn)
    norm = (cost - cost.min()) / (cost.max() - cost.min())
    expected = np.exp(-norm / 0.5) / np.exp(-norm / 0.5).sum()
    np.testing.assert_allclose(p, expected, rtol=1e-12)
    pol.reset(3)
    draws = np.array([int(pol.act(None, sn)[0]) for _ in range(4000)])
    freq = np.bincount(draws, minlength=5) / len(draws)
    assert np.abs(freq - expected).max() < 0.03  # ~4 standard errors at n=4000
    assert (freq > 0).sum() >= 4  # not argmin
    pol.reset(3)
    assert [int(pol.act(None, sn)[0]) for _ in range(200)] == draws[:200].tolist()  # reproducible
    with pytest.raises(ValueError, match="temperature"):
        make_heuristic("dynamo-kv", temperature=-1.0)


# ---------------------------------------------------------------------------- llm-d
def test_llmd_precise_weights_prefix_2_kv_1_queue_1():
    sn = snap(cached=[0, 0, 0.9, 0, 0], waiting=[0, 0, 8, 0, 0])
    raw = make_heuristic("llmd-precise").raw_scores(sn)
    # site 2: 2*0.9 + 1*(1-0.1) + 1*0 (the longest queue per replica); others: 0 + 0.9 + 1.
    np.testing.assert_allclose(raw, [1.9, 1.9, 2.7, 1.9, 1.9])
    assert picks("llmd-precise", sn)[0] == 2
    # A nearly full KV cache at site 2 tips it: 1.8 + 0.05 + 0 < 1.9.
    assert picks("llmd-precise", snap(cached=[0, 0, 0.9, 0, 0], waiting=[0, 0, 8, 0, 0],
                                      kv=[0.1, 0.1, 0.79, 0.1, 0.1]))[0] == 2
    sn = snap(cached=[0, 0, 0.9, 0, 0], waiting=[0, 0, 8, 0, 0], kv=[0.1, 0.1, 0.95, 0.1, 0.1])
    assert make_heuristic("llmd-precise").raw_scores(sn)[2] == pytest.approx(1.85)
    assert picks("llmd-precise", sn)[0] != 2


def test_llmd_approx_is_llmd_plus_three_times_the_approximate_match():
    sn = snap(indexed=[0, 0.4, 0, 0, 0], cached=[0, 0, 1.0, 0, 0], kv=[0.2, 0.5, 0.2, 0.2, 0.2])
    raw = make_heuristic("llmd-approx").raw_scores(sn)
    np.testing.assert_allclose(raw, 2 * 1 + 2 * (1 - sn.kv_util) + 3 * np.array([0, 0.4, 0, 0, 0]))
    assert picks("llmd-approx", sn)[0] == 1


def saturated_snap(**kw):
    """Every site saturated: edges at 6 waiting per replica (> 5), the core at KV 0.85 (> 0.8)."""
    waiting = kw.pop("waiting", [12, 12, 12, 12, 0])
    kv = kw.pop("kv", [0.1, 0.1, 0.1, 0.1, 0.85])
    return snap(waiting=waiting, kv=kv, **kw)


@pytest.mark.parametrize("name", ["llmd-precise", "jsq+admit", "p2c+admit", "llm-d+admit",
                                  "round-robin+admit", "local-spill+admit", "random+admit",
                                  "local-first+admit"])
def test_admission_sheds_when_every_site_is_saturated_and_not_otherwise(name):
    sn = saturated_snap()
    assert sn.feasible.all()  # routable, yet the gateway answers 429
    assert set(picks(name, sn, seeds=range(5))) == {-1}
    # One site with good capacity (exactly 5 waiting per replica, KV exactly 0.8): admitted.
    for waiting, kv in (([12, 12, 10, 12, 0], None), ([12, 12, 12, 12, 0], [0.1, 0.1, 0.1, 0.1, 0.8])):
        kw = {"kv": kv} if kv else {}
        sn = saturated_snap(waiting=waiting, **kw)
        assert -1 not in picks(name, sn, seeds=range(5))
    # The cache-blind name without the suffix never sheds there.
    base = name.removesuffix("+admit")
    if base != name:
        assert -1 not in picks(base, saturated_snap(), seeds=range(5))


def test_admission_candidates_are_the_sites_that_could_serve_the_request():
    # The only unsaturated site is down: saturated. Residency in region 0 keeps only its sites.
    assert picks("jsq+admit", saturated_snap(waiting=[12, 12, 0, 12, 0], up=[1, 1, 0, 1, 1])) == [-1]
    st = statics()
    region0 = [i for i in range(st.n_sites) if st.site_region[i] == 0]
    other = next(i for i in range(st.n_sites) if st.site_region[i] != 0)
    waiting = np.array([12, 12, 12, 12, 0], dtype=float)
    kv = np.array([0.1, 0.1, 0.1, 0.1, 0.85])
    waiting[other], kv[other] = 0, 0.1  # room only outside the request's region
    sn = snap(waiting=waiting, kv=kv, residency=True, origin=0)
    assert other not in region0 and gateway_saturated(sn)
    assert not gateway_saturated(snap(waiting=waiting, kv=kv, residency=False, origin=0))


def test_admission_mean_rule_is_the_replica_weighted_mean_saturation():
    # Edges: 4 waiting per replica (0.8 each), core KV 0.96 (1.2): mean (8*0.8 + 1*1.2) / 9 < 1.
    sn = snap(waiting=[8, 8, 8, 8, 0], kv=[0.1, 0.1, 0.1, 0.1, 0.96])
    assert not gateway_saturated(sn, "mean") and not gateway_saturated(sn, "all")
    # One edge far over (20 per replica = 4.0): the mean passes 1 while others have room.
    sn = snap(waiting=[8, 8, 40, 8, 0], kv=[0.1, 0.1, 0.1, 0.1, 0.96])
    assert gateway_saturated(sn, "mean") and not gateway_saturated(sn, "all")
    assert picks("jsq", sn, admission=True, saturation_rule="mean") == [-1]
    with pytest.raises(ValueError, match="saturation_rule"):
        make_heuristic("jsq", admission=True, saturation_rule="nope")


def test_admit_variant_routes_like_its_base_when_not_saturated():
    sn = snap(waiting=[3, 1, 0, 2, 5], running=[4, 4, 6, 1, 0], cached=[0, 0.2, 0, 0, 0])
    for base in ("jsq", "p2c", "llm-d", "round-robin", "local-first", "local-spill", "random"):
        assert picks(f"{base}+admit", sn, seeds=range(8)) == picks(base, sn, seeds=range(8))


# ---------------------------------------------------------------------------- in the environment
SHARED_DOCS = {"horizon_s": 30.0, "workload": {"classes": {"chat": {"prefix": {
    "kind": "documents", "count": 100, "tokens": 4096}}}}}


@lru_cache(maxsize=None)
def episode(name: str, seed: int = 1) -> dict:
    from agents.evaluation import EpisodeSpec, run_episode

    return run_episode(EpisodeSpec(name, name, "metro", seed, SHARED_DOCS, None))


@pytest.mark.parametrize("name", CACHE_AWARE)
def test_cache_aware_routers_hit_the_prefix_cache_more_than_cache_blind_ones(name):
    """Metro with 100 shared 4096-token documents (more than a replica's KV holds): following
    the cache signals the env returns in info["snapshot"] reuses more prefill than jsq / llm-d."""
    blind = max(episode(n)["metrics"]["prefix_hit_rate"] for n in ("jsq", "llm-d"))
    assert episode(name)["metrics"]["prefix_hit_rate"] > blind + 0.05


def test_randomized_cache_router_episodes_are_reproducible():
    from agents.evaluation import EpisodeSpec, run_episode

    again = run_episode(EpisodeSpec("ray-prefix", "ray-prefix", "metro", 1, SHARED_DOCS, None))
    assert again["reward"] == episode("ray-prefix")["reward"]
    assert again["metrics"] == episode("ray-prefix")["metrics"]
