"""The Gymnasium layer: checkers, determinism, pickling, registration, masks, rendering."""

from __future__ import annotations

import multiprocessing as mp
import pickle
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env, data_equivalence
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import gridenv
from gridenv.envs import GridEnv, InvalidActionError

SHORT = {"horizon_s": 20.0}


def random_valid_action(env: GridEnv, info: dict, rng: np.random.Generator) -> np.ndarray:
    env = env.unwrapped
    mask = info["action_mask"]
    sites = np.flatnonzero(mask[: env.max_sites + 1])
    return np.array([rng.choice(sites), rng.integers(env.n_levels)])


def rollout(env: GridEnv, seed: int, n_steps: int | None = None):
    obs, info = env.reset(seed=seed)
    rng = np.random.default_rng(seed + 1000)
    trajectory = [(obs, info)]
    done = False
    while not done and (n_steps is None or len(trajectory) <= n_steps):
        obs, reward, terminated, truncated, info = env.step(random_valid_action(env, info, rng))
        trajectory.append((obs, reward, terminated, truncated, info))
        done = terminated or truncated
    return trajectory


def test_every_scenario_is_registered() -> None:
    expected = {"Metro", "Continental", "Outage", "Bursty", "Centralized", "DistributedEdge"}
    assert {f"gridenv/{n}-v1" for n in expected} <= set(gridenv.ENV_IDS)
    assert set(gridenv.ENV_IDS) <= set(gym.registry)


@pytest.mark.parametrize("env_id", gridenv.ENV_IDS)
def test_observation_size_is_the_documented_formula(env_id: str) -> None:
    env = gym.make(env_id).unwrapped
    # GridEnv docstring, slots mode: 15 * max_sites + 7 + n_regions + n_models (scenario's own)
    n_models = len({s.model for s in env.scenario.sites})
    assert env.observation_space.shape == (15 * env.max_sites + 7 + env.sim.topology.n_regions + n_models,)
    rel = gym.make(env_id, config={"observation": {"mode": "relative"}}).unwrapped
    # relative mode: 19 * max_sites + 9, whatever the regions and models
    assert rel.observation_space.shape == (19 * rel.max_sites + 9,)


@pytest.mark.parametrize("mode", ["slots", "relative"])
@pytest.mark.parametrize("env_id", gridenv.ENV_IDS)
def test_gymnasium_env_checker(env_id: str, mode: str) -> None:
    config = dict(SHORT, observation={"mode": mode})
    gym_check_env(gym.make(env_id, config=config).unwrapped, skip_render_check=False)


@pytest.mark.parametrize("mode", ["slots", "relative"])
@pytest.mark.parametrize("env_id", gridenv.ENV_IDS)
def test_sb3_env_checker(env_id: str, mode: str) -> None:
    config = dict(SHORT, observation={"mode": mode})
    sb3_check_env(gym.make(env_id, config=config).unwrapped, warn=True)


def test_v0_ids_fail_with_a_pointer_to_v1() -> None:
    """The observation changed in v1 (model one-hot over the scenario's models): v0 is gone."""
    with pytest.raises(gym.error.DeprecatedEnv, match="Metro-v1"):
        gym.make("gridenv/Metro-v0")


@pytest.mark.parametrize("env_id", ["gridenv/Metro-v1", "gridenv/Outage-v1", "gridenv/Continental-v1"])
def test_same_seed_same_episode(env_id: str) -> None:
    a = rollout(gym.make(env_id, config={"horizon_s": 60.0}), seed=7)
    b = rollout(gym.make(env_id, config={"horizon_s": 60.0}), seed=7)
    assert len(a) == len(b) > 10
    assert data_equivalence(a, b, exact=True)
    assert a[-1][4]["episode_metrics"] == b[-1][4]["episode_metrics"]
    c = rollout(gym.make(env_id, config={"horizon_s": 60.0}), seed=8)
    assert not data_equivalence(a, c)


def test_pickle_round_trip_mid_episode() -> None:
    env = gym.make("gridenv/Outage-v1", config={"horizon_s": 60.0}).unwrapped
    obs, info = env.reset(seed=3)
    rng = np.random.default_rng(0)
    for _ in range(200):
        obs, _, _, _, info = env.step(random_valid_action(env, info, rng))
    clone = pickle.loads(pickle.dumps(env))
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    info_b = info
    done = False
    while not done:
        step_a = env.step(random_valid_action(env, info, rng_a))
        step_b = clone.step(random_valid_action(clone, info_b, rng_b))
        assert data_equivalence(step_a, step_b, exact=True)
        info, info_b = step_a[4], step_b[4]
        done = step_a[3]


def _make_in_subprocess(env_id: str, queue) -> None:
    import gymnasium

    env = gymnasium.make(env_id, config={"horizon_s": 5.0})
    obs, _ = env.reset(seed=0)
    queue.put((env_id, obs.shape))


@pytest.mark.parametrize("env_id", ["gridenv:Metro-v1", "gridenv:gridenv/Metro-v1"])
def test_module_colon_id_imports_gridenv_in_a_fresh_interpreter(env_id: str) -> None:
    code = (
        "import sys, gymnasium\n"
        "assert 'gridenv' not in sys.modules\n"
        f"env = gymnasium.make({env_id!r}, config={{'horizon_s': 5.0}})\n"
        "obs, _ = env.reset(seed=0)\n"
        "print(obs.shape[0])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) == gym.make("gridenv/Metro-v1").observation_space.shape[0]


@pytest.mark.parametrize("env_id", ["gridenv/Metro-v1", "gridenv:Outage-v1"])
def test_registration_in_spawned_subprocess(env_id: str) -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_make_in_subprocess, args=(env_id, queue))
    proc.start()
    proc.join(120)
    assert proc.exitcode == 0
    got_id, shape = queue.get(timeout=5)
    assert got_id == env_id and shape == gym.make("gridenv/Metro-v1").observation_space.shape


def test_action_mask_marks_infeasible_sites() -> None:
    # Continental has 70B sites and residency: masks must follow the request.
    env = gym.make("gridenv/Continental-v1", config={"horizon_s": 30.0}).unwrapped
    obs, info = env.reset(seed=0)
    rng = np.random.default_rng(0)
    seen_residency = seen_70b = False
    for _ in range(400):
        snap = env.snapshot
        st, req = snap.statics, snap.request
        mask = env.action_masks()
        assert np.array_equal(mask, info["action_mask"])
        for s in range(st.n_sites):
            ok = snap.up[s] and st.site_model[s] == req.model
            ok = ok and req.prompt_tokens < st.max_context_tokens[s]  # room for an answer
            if req.residency:
                ok = ok and st.site_region[s] == req.origin
            assert mask[s] == (ok and snap.waiting[s] < st.max_waiting[s])
        assert mask[st.max_sites] and mask[st.max_sites + 1:].all()
        seen_residency |= req.residency
        seen_70b |= st.model_names[req.model] == "llama-3-70b"
        obs, _, _, trunc, info = env.step(random_valid_action(env, info, rng))
        if trunc:
            break
    assert seen_residency and seen_70b


def test_site_down_is_masked() -> None:
    env = gym.make("gridenv/Outage-v1", config={"faults": {"random": None}}).unwrapped
    obs, info = env.reset(seed=0)
    core = env.sim.topology.site_names.index("core")
    up = [f["name"] for f in env.interface.feature_spec()].index(f"site[{core}].up")
    checked = 0
    while not env.sim.done:
        if 100.0 <= env.sim.now < 160.0:  # the scheduled core outage
            assert not info["action_mask"][core] and obs[up] == 0.0
            checked += 1
        elif env.sim.now < 100.0:
            assert obs[up] == 1.0
        obs, _, _, _, info = env.step(np.array([env.max_sites, 0]))
    assert checked > 100


def test_invalid_action_falls_back_to_shed() -> None:
    env = gym.make("gridenv/Outage-v1", config={"faults": {"random": None}}).unwrapped
    obs, info = env.reset(seed=0)
    core = env.sim.topology.site_names.index("core")
    while env.sim.now < 110.0:
        obs, _, _, _, info = env.step(np.array([env.max_sites, 0]))
    shed_before = env.sim.metrics.shed
    obs, _, _, _, info = env.step(np.array([core, 0]))
    assert info["invalid_action"] is True
    assert env.sim.metrics.invalid_actions == 1 and env.sim.metrics.shed == shed_before + 1


def test_invalid_action_raises_when_configured() -> None:
    env = gym.make("gridenv/Outage-v1", config={"faults": {"random": None},
                                                "actions": {"invalid_action": "raise"}}).unwrapped
    env.reset(seed=0)
    core = env.sim.topology.site_names.index("core")
    while env.sim.now < 110.0:
        env.step(np.array([env.max_sites, 0]))
    with pytest.raises(InvalidActionError, match="masked"):
        env.step(np.array([core, 0]))
    with pytest.raises(InvalidActionError, match="outside"):
        env.step(np.array([env.max_sites + 1, 0]))
    with pytest.raises(InvalidActionError, match="shape"):
        env.step(np.array([0, 0, 0]))


def test_padding_slots_are_present_zero_and_masked() -> None:
    env = gym.make("gridenv/Metro-v1", config={"horizon_s": 10.0, "actions": {"max_sites": 8}}).unwrapped
    obs, info = env.reset(seed=0)
    assert env.action_space.nvec.tolist() == [9, 3]
    assert obs.shape == env.observation_space.shape
    n, F = env.sim.n_sites, env.interface.n_site_features
    assert np.all(obs[n * F: 8 * F] == 0.0)  # padding: presence flag and all features zero
    assert np.all(obs[0: n * F: F] == 1.0)
    assert not info["action_mask"][n:8].any() and info["action_mask"][8]
    obs, _, _, _, info = env.step(np.array([n, 0]))  # a padding slot: shed as invalid
    assert info["invalid_action"]


def test_reward_is_sum_of_reported_terms_and_truncation_only() -> None:
    env = gym.make("gridenv/Metro-v1", config={"horizon_s": 30.0})
    traj = rollout(env, seed=1)
    total_value = 0.0
    for obs, reward, terminated, truncated, info in traj[1:]:
        r = info["rewards"]
        assert reward == pytest.approx(r["goodput_value_usd"] - r["energy_cost_usd"] - r["gpu_cost_usd"])
        assert min(r.values()) >= 0.0
        assert terminated is False
        total_value += r["goodput_value_usd"]
    assert traj[-1][3] is True and all(not t[3] for t in traj[1:-1])
    m = traj[-1][4]["episode_metrics"]
    assert total_value == pytest.approx(m["goodput_value_usd"])
    assert m["good"] > 0


@pytest.mark.parametrize("mode", ["slots", "relative"])
def test_observation_stays_in_bounds_and_matches_snapshot_encoder(mode: str) -> None:
    from gridenv.core.interface import make_interface

    env = gym.make("gridenv/Continental-v1", config={"horizon_s": 30.0, "observation": {"mode": mode}}).unwrapped
    obs, info = env.reset(seed=2)
    rng = np.random.default_rng(2)
    for _ in range(300):
        assert env.observation_space.contains(obs)
        assert info["snapshot"] is env.snapshot
        np.testing.assert_array_equal(obs, make_interface(info["snapshot"].statics, mode).encode(info["snapshot"]))
        obs, _, _, trunc, info = env.step(random_valid_action(env, info, rng))
        if trunc:
            break


@pytest.mark.parametrize("mode", ["ansi", "rgb_array"])
def test_render_modes(mode: str) -> None:
    env = gym.make("gridenv/Metro-v1", config=SHORT, render_mode=mode)
    env.reset(seed=0)
    env.step(np.array([0, 1]))
    frame = env.render()
    if mode == "ansi":
        assert "edge-north" in frame and "core" in frame
    else:
        assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
        assert frame.std() > 0  # something was drawn


def test_bad_render_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="render_mode"):
        GridEnv("metro", render_mode="human")
