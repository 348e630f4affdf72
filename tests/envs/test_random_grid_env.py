"""gridenv/RandomGrid-v1: a new generated grid every reset, one space for all of them."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml

import gridenv  # noqa: F401
from gridenv.core.random_grid import RandomGridSpec, random_scenario
from gridenv.envs.random_grid_env import HELDOUT_GRID_SEED_MIN, TRAIN_GRID_SEED_END, RandomGridEnv

ROOT = Path(__file__).resolve().parents[2]
SMALL = RandomGridSpec(horizon_s=10.0)


def _episode(env, seed, max_steps=300):
    obs, info = env.reset(seed=seed)
    trace = [obs.copy()]
    for _ in range(max_steps):
        site = int(np.flatnonzero(info["action_mask"][: env.unwrapped.max_sites + 1])[0])
        obs, r, term, trunc, info = env.step(np.array([site, 1]))
        trace.append((obs.copy(), r))
        if term or trunc:
            break
    return info["grid_seed"], trace


def test_checkers_pass():
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    check_env(RandomGridEnv(SMALL))
    sb3_check_env(RandomGridEnv(SMALL), warn=False)


def test_registered_and_same_space_for_every_grid():
    env = gym.make("gridenv/RandomGrid-v1", spec=SMALL)
    shapes, sites = set(), set()
    for seed in range(8):
        obs, info = env.reset(seed=seed)
        assert env.observation_space.contains(obs)
        shapes.add(obs.shape)
        sites.add(env.unwrapped.scenario.n_sites)
    assert len(shapes) == 1 and len(sites) > 1  # different grids, one observation space


def test_same_seed_same_episode_other_seed_other_grid():
    a = _episode(RandomGridEnv(SMALL), 3)
    b = _episode(RandomGridEnv(SMALL), 3)
    assert a[0] == b[0]
    for x, y in zip(a[1], b[1]):
        if isinstance(x, tuple):
            assert np.array_equal(x[0], y[0]) and x[1] == y[1]
        else:
            assert np.array_equal(x, y)
    assert _episode(RandomGridEnv(SMALL), 4)[0] != a[0]


def test_training_draws_never_reach_the_heldout_seeds():
    env = RandomGridEnv(SMALL)
    drawn = []
    for seed in range(20):
        env.reset(seed=seed)
        drawn.append(env.grid_seed)
    assert max(drawn) < TRAIN_GRID_SEED_END < HELDOUT_GRID_SEED_MIN
    heldout = yaml.safe_load((ROOT / "configs/generalization.yaml").read_text())["heldout_grid_seeds"]
    assert min(heldout) >= HELDOUT_GRID_SEED_MIN


def test_pinned_grid_and_grid_list():
    env = RandomGridEnv(SMALL)
    env.reset(seed=0, options={"grid_seed": 123})
    assert env.grid_seed == 123 and env.scenario.name == "random-123"
    env = RandomGridEnv(SMALL, grid_seeds=[5, 6])
    assert {env.reset(seed=s)[1]["grid_seed"] for s in range(12)} == {5, 6}


@pytest.mark.parametrize("bad", [-1, 1.5, "7", True])
def test_bad_grid_seed_option_is_refused(bad):
    with pytest.raises(ValueError, match="grid_seed"):
        RandomGridEnv(SMALL).reset(seed=0, options={"grid_seed": bad})


def test_slots_mode_is_refused():
    with pytest.raises(ValueError, match="relative"):
        RandomGridEnv(RandomGridSpec(observation_mode="slots"))


def test_heldout_files_are_what_the_generator_writes():
    """configs/generalization/*.yaml are exactly random_scenario(seed) for the listed seeds."""
    seeds = yaml.safe_load((ROOT / "configs/generalization.yaml").read_text())["heldout_grid_seeds"]
    spec = RandomGridSpec(arrivals=("poisson", "gamma", "mmpp"))
    files = sorted((ROOT / "configs/generalization").glob("*.yaml"))
    assert len(files) == len(seeds)
    for seed in seeds:
        written = yaml.safe_load((ROOT / f"configs/generalization/heldout-{seed}.yaml").read_text())
        expected = random_scenario(seed, spec)
        expected["name"] = f"heldout-{seed}"
        assert written == expected


def test_generalization_suite_is_the_heldout_files():
    """evaluate.py --suite generalization runs exactly the held-out grids, nothing trained on."""
    from agents.evaluation import load_suites

    suite = load_suites()["generalization"]
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs/generalization").glob("*.yaml"))
    assert sorted(suite.scenarios) == files
    assert min(suite.seeds) >= 10000  # evaluation seeds, disjoint from training's


def test_vector_env_follows_random_grid_env_bit_for_bit():
    """RandomGridVectorEnv sub-env i == RandomGridEnv reset with seed + i (grids, obs, rewards)."""
    from gymnasium.vector import AutoresetMode

    from gridenv.envs.random_grid_env import RandomGridVectorEnv

    n, seed = 3, 40
    venv = gym.make_vec("gridenv/RandomGrid-v1", num_envs=n, spec={"horizon_s": 4.0},
                        autoreset_mode=AutoresetMode.SAME_STEP)
    assert isinstance(venv.unwrapped, RandomGridVectorEnv)
    envs = [RandomGridEnv({"horizon_s": 4.0}) for _ in range(n)]
    obs_v, _ = venv.reset(seed=seed)
    obs = [e.reset(seed=seed + i)[0] for i, e in enumerate(envs)]
    assert np.array_equal(obs_v, np.stack(obs))
    rng = np.random.default_rng(0)
    grids = [{int(e.grid_seed)} for e in envs]
    ends = 0
    for t in range(2000):
        masks = venv.unwrapped.action_masks
        acts = np.array([[rng.choice(np.flatnonzero(m[:13])), rng.integers(3)] for m in masks])
        obs_v, rew_v, _, trunc_v, _ = venv.step(acts)
        for i, e in enumerate(envs):
            o, r, _, tr, _ = e.step(acts[i])
            assert tr == trunc_v[i] and r == rew_v[i], (t, i)
            if tr:
                ends += 1
                o, _ = e.reset()
                grids[i].add(int(e.grid_seed))
            assert np.array_equal(o, obs_v[i]), (t, i)
            assert venv.unwrapped.grid_seed[i] == e.grid_seed
        if ends >= n:
            break
    assert ends >= n and any(len(g) > 1 for g in grids)  # new grids were drawn at the resets
    venv.close()
