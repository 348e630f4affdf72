"""The per-step reward terms (info["rewards"]) summed over an episode are the episode's own
value and cost metrics: nothing is charged twice, dropped between decisions, or lost at the
horizon (partial segments, outages and hourly prices included)."""

from __future__ import annotations

import numpy as np
import pytest

from gridenv.envs.grid_env import GridEnv

CASES = [
    ("metro", {"horizon_s": 60.0}),
    ("outage", {"horizon_s": 200.0}),  # the core outage at 100-160 s evicts work
    ("continental", {"horizon_s": 120.0}),  # hourly prices over a compressed day
]


@pytest.mark.parametrize("scenario, config", CASES, ids=[c[0] for c in CASES])
def test_reward_terms_sum_to_episode_metrics(scenario: str, config: dict) -> None:
    env = GridEnv(scenario, config=config)
    _, info = env.reset(seed=5)
    rng = np.random.default_rng(5)
    n_slots = int(env.action_space.nvec[0])
    totals = {"goodput_value_usd": 0.0, "energy_cost_usd": 0.0, "gpu_cost_usd": 0.0}
    reward_sum = 0.0
    steps = 0
    while True:
        mask = info["action_mask"][:n_slots]
        site = int(rng.choice(np.flatnonzero(mask)))  # random feasible site or shed
        level = int(rng.integers(env.action_space.nvec[1]))  # and a random batch level
        _, reward, terminated, truncated, info = env.step(np.array([site, level]))
        steps += 1
        for k in totals:
            totals[k] += info["rewards"][k]
        reward_sum += reward
        if terminated or truncated:
            break
    m = info["episode_metrics"]
    assert steps > 100 and m["good"] > 0 and m["busy_gpu_cost_usd"] > 0
    assert totals["goodput_value_usd"] == pytest.approx(m["goodput_value_usd"], rel=1e-9)
    assert totals["energy_cost_usd"] == pytest.approx(m["dynamic_energy_cost_usd"], rel=1e-9)
    assert totals["gpu_cost_usd"] == pytest.approx(m["busy_gpu_cost_usd"], rel=1e-9)
    assert reward_sum == pytest.approx(
        m["goodput_value_usd"] - m["dynamic_energy_cost_usd"] - m["busy_gpu_cost_usd"], rel=1e-9, abs=1e-12
    )
    # The reward leaves out only what routing cannot change: the idle floor and the
    # provisioned GPUs, which the episode's full cost adds on top.
    assert m["energy_cost_usd"] > m["dynamic_energy_cost_usd"] > 0
    assert m["gpu_cost_usd"] >= m["busy_gpu_cost_usd"] * (1 - 1e-12)
    env.close()
