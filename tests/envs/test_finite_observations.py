"""The env guarantees finite observations and rewards: a hypothesis search over random valid
scenario overrides and random actions (valid, masked and outside the action space)."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

import gridenv  # noqa: F401
from gridenv.envs import GridEnv, InvalidActionError

FAST_SCENARIOS = ["metro", "bursty", "outage", "centralized", "distributed-edge", "continental"]


@st.composite
def overrides(draw) -> tuple[str, dict]:
    name = draw(st.sampled_from(FAST_SCENARIOS))
    workload: dict = {}
    if draw(st.booleans()):
        workload["rate_rps"] = draw(st.floats(0.05, 300.0))
    if draw(st.booleans()):
        workload["diurnal"] = {"amplitude": draw(st.floats(0.0, 0.99)),
                               "period_s": draw(st.floats(1e-3, 1e9)),
                               "start_hour_utc": draw(st.floats(0.0, 23.99))}
    if draw(st.booleans()):
        workload["residency_share"] = draw(st.floats(0.0, 1.0))
    if draw(st.booleans()):  # every shipped scenario has a chat class
        workload["classes"] = {"chat": {
            "prompt_tokens": {"median": draw(st.floats(1.0, 1e6)), "sigma": draw(st.floats(0.0, 3.0)),
                              "max": draw(st.integers(1, 200_000))},
            "output_tokens": {"median": draw(st.floats(1.0, 1e5)), "sigma": draw(st.floats(0.0, 3.0))},
            "ttft_slo_s": draw(st.floats(1e-4, 1e3)), "tpot_slo_s": draw(st.floats(1e-5, 10.0))}}
    cfg: dict = {"horizon_s": draw(st.floats(0.5, 12.0)), "workload": workload}
    if draw(st.booleans()):
        cfg["economics"] = {"input_value_usd_per_mtok": draw(st.floats(0.0, 1e4)),
                            "output_value_usd_per_mtok": draw(st.floats(0.0, 1e4))}
    if draw(st.booleans()):
        cfg["network"] = {"api_overhead_ms": draw(st.floats(0.0, 5e3))}
    if draw(st.booleans()):
        cfg["faults"] = {"random": {"mtbf_s": draw(st.floats(0.5, 50.0)), "mttr_s": draw(st.floats(0.1, 20.0))},
                         "max_retries": draw(st.integers(0, 3))}
    if draw(st.booleans()):
        cfg["actions"] = {"max_sites": draw(st.integers(8, 12)), "initial_batch_level": 0,
                          "batch_levels": draw(st.sampled_from([[1], [2, 64], [8, 32, 128, 512]]))}
    if draw(st.booleans()):
        cfg["max_prefill_tokens"] = draw(st.sampled_from([1, 64, 8192, 65536]))
    return name, cfg


ACTION_KINDS = ["valid", "any-in-space", "shed", "out-of-space"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=overrides(), seed=st.integers(0, 2**31 - 1), kinds=st.lists(st.sampled_from(ACTION_KINDS), min_size=1, max_size=8))
def test_observations_and_rewards_are_always_finite(case, seed: int, kinds: list[str]) -> None:
    name, cfg = case
    env = GridEnv(name, config=cfg)
    obs, info = env.reset(seed=seed)
    assert np.isfinite(obs).all() and obs.dtype == np.float32
    rng = np.random.default_rng(seed)
    steps, done = 0, env.sim.done
    while not done and steps < 150:
        kind = kinds[steps % len(kinds)]
        n_site = env.max_sites + 1
        if kind == "out-of-space":
            bad = [np.array([n_site + rng.integers(0, 5), 0]), [0.5, 0], [np.nan, 0], [0, -1]][rng.integers(4)]
            try:
                env.step(bad)
            except InvalidActionError:
                pass
            else:
                raise AssertionError(f"action {bad!r} was accepted")
            kind = "shed"
        if kind == "valid":
            feasible = np.flatnonzero(info["action_mask"][:n_site])
            action = np.array([rng.choice(feasible), rng.integers(env.n_levels)])
        elif kind == "shed":
            action = np.array([env.max_sites, rng.integers(env.n_levels)])
        else:  # any element of the space, masked or not
            action = np.array([rng.integers(n_site), rng.integers(env.n_levels)])
        obs, reward, terminated, truncated, info = env.step(action)
        assert np.isfinite(obs).all(), (name, cfg, steps, obs)
        assert np.isfinite(reward), (name, cfg, steps, reward)
        assert all(np.isfinite(v) for v in info["rewards"].values())
        steps += 1
        done = terminated or truncated
