"""Heuristic baselines on hand-built router snapshots: each does what its name promises."""

from __future__ import annotations

import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.heuristics import (
    HEURISTICS,
    CostGreedy,
    LocalSpill,
    make_heuristic,
)
from agents.registry import load_policy
from gridenv.core.scenario import load_scenario
from gridenv.core.simulator import GridSimulator
from gridenv.core.snapshot import RequestView, make_snapshot

REPO = Path(__file__).resolve().parents[2]
ALL = list(HEURISTICS)
DETERMINISTIC = [n for n, c in HEURISTICS.items() if not c.randomized]


@lru_cache(maxsize=None)
def statics(scenario: str = "metro"):
    """Site statics of a scenario; ``<name>+pad`` adds padding slots (actions.max_sites = 8)."""
    name, _, pad = scenario.partition("+")
    overrides = {"actions": {"max_sites": 8}} if pad else None
    return GridSimulator(load_scenario(name, overrides)).statics


def snap(
    scenario: str = "metro", *, waiting=None, running=None, kv=None, rtt=None, price=None,
    up=None, level=None, prompt: int = 500, ttft_slo_s: float = 10.0, origin: int = 0,
    model: str = "llama-3-8b", residency: bool = False, cached=None, indexed=None, queued=None,
):
    """A snapshot of `scenario`'s sites with the given live signals (defaults: idle, all up)."""
    s = statics(scenario)
    n = s.n_sites

    def arr(x, default):
        return np.full(n, default, dtype=float) if x is None else np.asarray(x, dtype=float)

    req = RequestView(prompt, 0, origin, s.model_names.index(model), residency, ttft_slo_s, 0.1)
    return make_snapshot(
        s, req, 12.0, arr(waiting, 0), arr(running, 0), arr(kv, 0.1),
        arr(rtt, 20.0), arr(price, 0.1), arr(up, 1), arr(level, 1),
        arr(cached, 0.0), arr(indexed, 0.0), arr(queued, 0.0),
    )


def act(name: str, sn, **kw) -> int:
    """The site a fresh heuristic picks (-1 = shed)."""
    pol = make_heuristic(name, **kw)
    pol.reset(0)
    site = int(pol.act(None, sn)[0])
    return -1 if site == sn.statics.max_sites else site


# ---------------------------------------------------------------------------- each heuristic
def test_jsq_picks_the_fewest_waiting_plus_running():
    sn = snap(waiting=[3, 1, 0, 2, 5], running=[4, 4, 6, 1, 0])  # totals 7 5 6 3 5
    assert act("jsq", sn) == 3


def test_jsq_skips_an_infeasible_shortest_queue():
    sn = snap(waiting=[3, 1, 0, 2, 5], running=[4, 4, 6, 1, 0], up=[1, 1, 1, 0, 1])
    assert act("jsq", sn) in (1, 4)  # totals 5 and 5: tie broken by the smaller predicted TTFT
    i = act("jsq", sn)
    assert sn.ttft_pred_s[i] == min(sn.ttft_pred_s[1], sn.ttft_pred_s[4])


def test_local_first_picks_the_nearest_feasible_site():
    assert act("local-first", snap(rtt=[30, 6, 18, 20, 40])) == 1
    assert act("local-first", snap(rtt=[30, 6, 18, 20, 40], up=[1, 0, 1, 1, 1])) == 2


def test_p2c_never_keeps_the_worse_of_its_two_samples():
    load = np.array([9.0, 2.0, 5.0, 7.0, 0.0])
    sn = snap(waiting=load)
    pol = make_heuristic("p2c")
    pol.reset(123)
    samples = []
    real = pol._rng

    class Recorder:
        def choice(self, *a, **kw):
            out = real.choice(*a, **kw)
            samples.append(out)
            return out

    pol._rng = Recorder()
    picks = set()
    for _ in range(300):
        site = int(pol.act(None, sn)[0])
        a, b = samples[-1]
        assert a != b
        assert site in (a, b)
        assert load[site] == min(load[a], load[b])
        picks.add(site)
    assert 0 not in picks  # the most loaded site loses every comparison
    assert len(picks) >= 3  # but the choice is random, not jsq


def test_p2c_with_one_feasible_site_takes_it():
    assert act("p2c", snap(up=[0, 0, 1, 0, 0])) == 2


def test_round_robin_cycles_and_skips_masked_sites():
    pol = make_heuristic("round-robin")
    pol.reset(0)
    sn = snap()
    assert [int(pol.act(None, sn)[0]) for _ in range(7)] == [0, 1, 2, 3, 4, 0, 1]
    masked = snap(up=[1, 1, 0, 1, 1])
    assert [int(pol.act(None, masked)[0]) for _ in range(4)] == [3, 4, 0, 1]  # after 1: skip 2
    pol.reset(0)
    assert int(pol.act(None, sn)[0]) == 0


def test_llmd_follows_its_weighted_formula():
    # Same queues: the lowest KV utilization wins.
    assert act("llm-d", snap(waiting=[2] * 5, kv=[0.9, 0.5, 0.2, 0.7, 0.3])) == 2
    # 2*queue_score + 2*(1-kv): site 1 = 2*1 + 2*0.4 = 2.8 beats site 0 = 0 + 2*0.9 = 1.8.
    sn = snap(waiting=[10, 0, 10, 10, 10], kv=[0.1, 0.6, 0.1, 0.1, 0.1])
    pol = make_heuristic("llm-d")
    raw = pol.raw_scores(sn)
    assert raw[0] == pytest.approx(1.8) and raw[1] == pytest.approx(2.8)
    assert act("llm-d", sn) == 1


def test_slo_greedy_picks_the_largest_headroom_and_sheds_when_all_negative():
    sn = snap(waiting=[20, 0, 20, 20, 60], ttft_slo_s=10.0)
    headroom = sn.request.ttft_slo_s - sn.ttft_pred_s
    assert act("slo-greedy", sn) == int(np.argmax(headroom))
    tight = snap(ttft_slo_s=1e-3)
    assert (tight.request.ttft_slo_s - tight.ttft_pred_s < 0).all()
    assert act("slo-greedy", tight) == -1


def test_slo_greedy_shed_slack_spares_near_misses_on_idle_sites_only():
    """shed_slack_frac (the slo-greedy-lenient teacher): a predicted miss within the slack is
    routed when the best site has fewer waiting requests than replicas, shed otherwise; a miss
    beyond the slack is shed anyway. The default (0) is the baseline's rule."""
    from agents.warm_start import make_teacher

    def at(frac_of_best: float, waiting: float):
        base = snap(waiting=[waiting] * 5)
        slo = float(base.ttft_pred_s.min()) * frac_of_best  # best headroom = slo * (1 - 1/frac)
        return snap(waiting=[waiting] * 5, ttft_slo_s=slo)

    def teacher(sn) -> int:
        pol = make_teacher("slo-greedy-lenient")
        site = int(pol.act(None, sn)[0])
        return -1 if site == sn.statics.max_sites else site

    reps = min(statics("metro").replicas)
    near_idle = at(0.9, 0)  # predicted TTFT 1.11 x SLO: headroom -0.11 SLO
    assert act("slo-greedy", near_idle) == -1
    assert act("slo-greedy", near_idle, shed_slack_frac=0.25) == teacher(near_idle) != -1
    assert teacher(at(0.7, 0)) == -1  # 1.43 x SLO: beyond the slack
    assert teacher(at(0.9, reps)) == -1  # the site has a queue: the estimate is trusted
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="shed_slack_frac must be >= 0"):
            make_heuristic("slo-greedy", shed_slack_frac=bad)


def test_local_spill_stays_local_then_spills_to_the_next_nearest():
    rtt = [6, 18, 16, 20, 30]  # local = 0, then 2, then 1
    calm = snap(rtt=rtt)
    slo = float(calm.ttft_pred_s.max()) * 3.0
    assert act("local-spill", snap(rtt=rtt, ttft_slo_s=slo)) == 0
    # Load site 0 until its headroom is under 20% of the SLO; site 2 is next-nearest.
    busy = snap(rtt=rtt, ttft_slo_s=slo, waiting=[60, 0, 0, 0, 0])
    h = busy.request.ttft_slo_s - busy.ttft_pred_s
    assert h[0] < LocalSpill().spill_headroom_frac * slo <= h[2]
    assert act("local-spill", busy) == 2
    # A lower threshold keeps it local.
    assert act("local-spill", busy, spill_headroom_frac=h[0] / slo - 0.01) == 0


def test_local_spill_falls_back_to_the_largest_headroom():
    sn = snap(rtt=[6, 18, 16, 20, 30], ttft_slo_s=1e-3)  # nobody above the threshold
    assert act("local-spill", sn) == int(np.argmax(-sn.ttft_pred_s))  # never sheds


def test_cost_greedy_picks_the_cheapest_site_meeting_the_slo():
    price = [0.30, 0.05, 0.20, 0.12, 0.15]
    calm = snap(price=price)
    slo = float(calm.ttft_pred_s.max()) * 2.0
    # Site 1 is cheapest but queued past its SLO; site 3 is the cheapest of the rest.
    sn = snap(price=price, waiting=[0, 120, 0, 0, 0], ttft_slo_s=slo)
    h = sn.request.ttft_slo_s - sn.ttft_pred_s
    assert h[1] < 0 and (np.delete(h, 1) >= 0).all()
    # Expected cost from the scenario's own sites (not through the snapshot): prefill GPU time
    # at full power, GPU rent plus energy at the site's price.
    sites = GridSimulator(load_scenario("metro")).topology.sites
    expected = np.array([
        s.perf.prefill_time_s(sn.request.prompt_tokens) * s.tp
        * (s.gpu_usd_per_h / 3600 + s.perf.gpu.tdp_w * s.site_power_factor * p / 3.6e6)
        for s, p in zip(sites, price)
    ])
    np.testing.assert_allclose(CostGreedy.cost_index(sn), expected, rtol=1e-12)
    assert act("cost-greedy", sn) == int(np.argmin(np.where(h >= 0, expected, np.inf)))
    # The H100 core's GPU rent outweighs its speed: the cheapest-energy L4 edge wins.
    assert act("cost-greedy", sn) == 3


def test_cost_greedy_sheds_like_slo_greedy_when_nothing_meets_the_slo():
    assert act("cost-greedy", snap(ttft_slo_s=1e-3)) == -1


def test_random_is_uniform_over_feasible_sites_and_reproducible():
    sn = snap(up=[1, 0, 1, 1, 0])
    pol = make_heuristic("random")
    pol.reset(7)
    a = [int(pol.act(None, sn)[0]) for _ in range(200)]
    pol.reset(7)
    b = [int(pol.act(None, sn)[0]) for _ in range(200)]
    assert a == b
    assert set(a) == {0, 2, 3}


# ---------------------------------------------------------------------------- all heuristics
@pytest.mark.parametrize("name", ALL)
def test_sheds_when_nothing_is_feasible(name):
    assert act(name, snap(up=[0] * 5)) == -1


@pytest.mark.parametrize("name", ALL)
def test_keeps_the_sites_batch_level(name):
    sn = snap(level=[2, 0, 1, 2, 0])
    pol = make_heuristic(name)
    pol.reset(0)
    site, level = pol.act(None, sn)
    assert level == sn.batch_level[site]
    fixed = make_heuristic(name, level=0)
    fixed.reset(0)
    assert fixed.act(None, sn)[1] == 0


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_argmax_of_scores_is_the_chosen_site(name):
    sn = snap(waiting=[3, 1, 0, 2, 5], running=[4, 4, 6, 1, 0], kv=[0.5, 0.2, 0.3, 0.1, 0.4],
              rtt=[6, 18, 16, 20, 30], price=[0.2, 0.1, 0.15, 0.3, 0.12], up=[1, 1, 0, 1, 1])
    pol = make_heuristic(name)
    pol.reset(0)
    s = pol.scores(None, sn)
    site = int(pol.act(None, sn)[0])
    assert s[site] == s.max()


def test_registry_and_errors():
    old = ["random", "round-robin", "local-first", "jsq", "p2c", "llm-d", "slo-greedy",
           "local-spill", "cost-greedy"]
    cache = ["llmd-precise", "llmd-approx", "dynamo-kv", "sglang-cache", "vllm-ps-prefix",
             "ray-prefix", "aibrix-prefix"]
    admit = [f"{n}+admit" for n in old if n not in ("slo-greedy", "cost-greedy")]
    assert ALL == old + cache + admit  # leaderboard order
    for name in ALL:
        assert make_heuristic(name).name == name
        assert load_policy(name).name == name
    with pytest.raises(ValueError, match="unknown heuristic 'nope'.*jsq"):
        make_heuristic("nope")
    with pytest.raises(ValueError, match="unknown policy 'nope'.*slo-greedy"):
        load_policy("nope")
    with pytest.raises(FileNotFoundError, match="missing.zip.*jsq"):
        load_policy("/tmp/definitely/missing.zip")
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        load_policy("missing.onnx")


def test_importing_heuristics_and_evaluation_does_not_import_torch():
    code = "import agents.heuristics, agents.evaluation, agents.registry, sys; " \
           "assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ---------------------------------------------------------------------------- property test
SCENARIOS = ["metro", "continental", "outage", "centralized", "metro+pad"]


@st.composite
def random_snapshots(draw):
    scenario = draw(st.sampled_from(SCENARIOS))
    s = statics(scenario)
    n = s.n_sites
    floats = lambda lo, hi: st.lists(st.floats(lo, hi), min_size=n, max_size=n)  # noqa: E731
    ints = lambda lo, hi: st.lists(st.integers(lo, hi), min_size=n, max_size=n)  # noqa: E731
    maxw = max(s.max_waiting)
    return snap(
        scenario,
        waiting=draw(ints(0, maxw)), running=draw(ints(0, 300)), kv=draw(floats(0, 1)),
        rtt=draw(floats(1, 300)), price=draw(floats(0, 0.6)), up=draw(ints(0, 1)),
        level=draw(ints(0, len(s.batch_levels) - 1)),
        prompt=draw(st.integers(1, 60000)), ttft_slo_s=draw(st.floats(1e-3, 5.0)),
        origin=draw(st.integers(0, len(s.region_names) - 1)),
        model=draw(st.sampled_from([s.model_names[m] for m in set(s.site_model)])),
        residency=draw(st.booleans()),
        cached=draw(floats(0, 1)), indexed=draw(floats(0, 1)), queued=draw(ints(0, 200000)),
    )


@settings(max_examples=150, deadline=None)
@given(sn=random_snapshots(), seed=st.integers(0, 2**31 - 1))
def test_no_heuristic_ever_picks_a_masked_site(sn, seed):
    st_ = sn.statics
    mask = sn.action_mask
    for name in ALL:
        pol = make_heuristic(name)
        pol.reset(seed)
        for _ in range(3):  # the stateful / random ones act differently each call
            site, level = (int(x) for x in pol.act(None, sn))
            assert 0 <= site <= st_.max_sites and 0 <= level < len(st_.batch_levels)
            assert mask[site], f"{name} picked masked site {site}"
            if sn.feasible.any() and not pol.may_shed:
                assert site != st_.max_sites, f"{name} shed with feasible sites left"
        s = pol.scores(None, sn)
        assert s.shape == (st_.max_sites,)
        assert ((s >= 0) & (s <= 1)).all()
        assert (s[st_.n_sites:] == 0).all()  # padding slots
        s = s[: st_.n_sites]
        assert (s[~sn.feasible] == 0).all() and (s[sn.feasible] > 0).all()


# ---------------------------------------------------------------------------- through wrappers
def test_heuristic_runs_from_info_through_wrappers():
    """The snapshot travels in info: a heuristic runs through gym.make's wrappers and
    RecordEpisodeStatistics without touching env.unwrapped, and matches the unwrapped run."""
    import gymnasium as gym
    from gymnasium.wrappers import RecordEpisodeStatistics

    import gridenv  # noqa: F401

    def run(env):
        pol = make_heuristic("cost-greedy")
        obs, info = env.reset(seed=3)
        total, actions = 0.0, []
        while True:
            a = pol.act(obs, info["snapshot"])
            actions.append(a.tolist())
            obs, r, term, trunc, info = env.step(a)
            total += r
            if term or trunc:
                assert info["snapshot"] is None  # nothing left to route
                return total, actions, info

    wrapped = RecordEpisodeStatistics(gym.make("gridenv/Metro-v1", config={"horizon_s": 20}))
    total, actions, info = run(wrapped)
    assert info["episode"]["r"] == pytest.approx(total) and info["episode"]["l"] == len(actions) > 50
    plain = gym.make("gridenv/Metro-v1", config={"horizon_s": 20}).unwrapped
    assert run(plain)[:2] == (total, actions)


def test_heuristic_runs_in_a_sync_vector_env():
    """gym.make_vec: infos are dicts of arrays, the snapshots an object array (one per env)."""
    import gymnasium as gym

    import gridenv  # noqa: F401

    n = 3
    venv = gym.make_vec("gridenv/Metro-v1", num_envs=n, vectorization_mode="sync",
                        config={"horizon_s": 10})
    pols = [make_heuristic("slo-greedy") for _ in range(n)]
    obs, infos = venv.reset(seed=[1, 2, 3])
    assert infos["snapshot"].dtype == object and infos["snapshot"].shape == (n,)
    steps = 0
    for _ in range(200):
        snaps = infos["snapshot"]
        actions = np.stack([
            pols[i].act(obs[i], snaps[i]) if snaps[i] is not None else np.array([venv.single_action_space.nvec[0] - 1, 0])
            for i in range(n)])
        for i in range(n):
            if snaps[i] is not None:
                assert actions[i, 0] == snaps[i].statics.max_sites or snaps[i].feasible[actions[i, 0]]
                np.testing.assert_array_equal(infos["action_mask"][i], snaps[i].action_mask)
        obs, rewards, term, trunc, infos = venv.step(actions)
        steps += 1
    assert steps == 200
    venv.close()
