"""The native vector env (gridenv/envs/vector.py) against N separate GridEnvs, bit for bit."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

import gridenv  # noqa: F401
from gridenv.envs.registration import env_id
from gridenv.envs import GridEnv, InvalidActionError
from gridenv.envs.vector import GridVectorEnv

METRO = env_id("metro")
SHORT = {"horizon_s": 6.0}  # ~150 decisions per episode: several episode ends in a test


def choose_actions(masks: np.ndarray, max_sites: int, n_levels: int, rng: np.random.Generator,
                   p_masked: float = 0.0) -> np.ndarray:
    """One action per row: a random feasible site (or, with probability p_masked, any site,
    possibly a masked one) and a random batch level."""
    acts = np.zeros((len(masks), 2), dtype=np.int64)
    for i, m in enumerate(masks):
        if rng.random() < p_masked:
            acts[i, 0] = rng.integers(max_sites + 1)
        else:
            sites = np.flatnonzero(m[: max_sites + 1])
            acts[i, 0] = sites[rng.integers(len(sites))]
        acts[i, 1] = rng.integers(n_levels)
    return acts


def reference_run(n: int, seed: int, n_steps: int, config: dict, action_seed: int, p_masked: float = 0.0):
    """N GridEnvs seeded seed + i, stepped with the actions the vector env gets; SB3-style
    (same-step) autoreset: a finished env is reset at once, continuing its RNG."""
    envs = [GridEnv("metro", config) for _ in range(n)]
    obs = np.stack([e.reset(seed=seed + i)[0] for i, e in enumerate(envs)])
    masks = np.stack([e.action_masks() for e in envs])
    rng = np.random.default_rng(action_seed)
    out = []
    for _ in range(n_steps):
        acts = choose_actions(masks, envs[0].max_sites, envs[0].n_levels, rng, p_masked)
        rows = []
        for i, e in enumerate(envs):
            o, r, term, trunc, info = e.step(acts[i])
            final = None
            if trunc:
                final = (o, info["episode_metrics"])
                o, _ = e.reset()
            rows.append((o, r, term, trunc, e.action_masks().copy(), info["invalid_action"], final, e.snapshot))
        obs = np.stack([r[0] for r in rows])
        masks = np.stack([r[4] for r in rows])
        out.append((acts, rows))
    return out


@pytest.mark.parametrize("n", [1, 4])
def test_make_vec_returns_the_native_vector_env(n: int) -> None:
    venv = gym.make_vec(METRO, num_envs=n, vectorization_mode="vector_entry_point", config=SHORT)
    assert isinstance(venv.unwrapped, GridVectorEnv)
    single = gym.make(METRO, config=SHORT)
    assert venv.single_observation_space == single.observation_space
    assert venv.single_action_space == single.action_space
    obs, info = venv.reset(seed=3)
    assert obs.shape == (n, *single.observation_space.shape) and obs.dtype == np.float32
    assert venv.observation_space.contains(obs)
    assert info["action_mask"].shape == (n, single.unwrapped.max_sites + 1 + single.unwrapped.n_levels)
    # the default vectorization of a gridenv id is now the native one
    assert isinstance(gym.make_vec(METRO, num_envs=2).unwrapped, GridVectorEnv)
    # ... and sync still wraps GridEnv copies
    assert not isinstance(gym.make_vec(METRO, num_envs=2, vectorization_mode="sync").unwrapped, GridVectorEnv)


@pytest.mark.parametrize("p_masked, mode", [(0.0, "slots"), (0.3, "slots"), (0.0, "relative")])
def test_same_step_trajectories_equal_separate_gridenvs_bit_for_bit(p_masked: float, mode: str) -> None:
    n, seed, steps = 3, 11, 420  # >= 2 episode ends per env
    config = {**SHORT, "observation": {"mode": mode}}
    ref = reference_run(n, seed, steps, config, action_seed=5, p_masked=p_masked)
    venv = GridVectorEnv(n, "metro", config, autoreset_mode=AutoresetMode.SAME_STEP)
    assert venv.interface.mode == mode and venv.single_observation_space.shape == (venv.interface.obs_size,)
    obs, info = venv.reset(seed=seed)
    ends = 0
    for t, (acts, rows) in enumerate(ref):
        obs, rew, term, trunc, info = venv.step(acts)
        for i, (o, r, rterm, rtrunc, mask, invalid, final, snap) in enumerate(rows):
            assert np.array_equal(obs[i], o), (t, i)
            got_snap = info["snapshot"][i]  # the router-visible snapshot, as GridEnv's info has it
            assert np.array_equal(got_snap.feasible, snap.feasible) and got_snap.request == snap.request
            assert rew[i] == r and term[i] == rterm and trunc[i] == rtrunc, (t, i)
            assert np.array_equal(info["action_mask"][i], mask), (t, i)
            assert info["invalid_action"][i] == invalid
            if final is not None:
                ends += 1
                assert info["_final_obs"][i]
                assert np.array_equal(info["final_obs"][i], final[0])
                got = {k: v[i] for k, v in info["final_info"]["episode_metrics"].items() if not k.startswith("_")}
                assert got == pytest.approx(final[1], nan_ok=True) and got.keys() == final[1].keys()
            else:
                assert "final_obs" not in info or not info["_final_obs"][i]
    assert ends >= 2 * n
    if p_masked:
        assert sum(r[5] for _, rows in ref for r in rows) > 0  # some masked choices were made


def test_next_step_autoreset_follows_gymnasium_semantics() -> None:
    n, seed = 2, 4
    ref = reference_run(n, seed, 400, SHORT, action_seed=9)
    venv = gym.make_vec(METRO, num_envs=n, config=SHORT)  # NEXT_STEP is the default
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    venv.reset(seed=seed)
    # Replay the reference's actions per env, inserting the extra reset step after each end.
    queues = [[(acts[i], rows[i]) for acts, rows in ref] for i in range(n)]
    cursor = [0] * n
    pending_reset = [False] * n
    checked_resets = 0
    for _ in range(380):
        acts = np.zeros((n, 2), dtype=np.int64)
        for i in range(n):
            acts[i] = queues[i][cursor[i]][0] if not pending_reset[i] else [0, 0]
        obs, rew, term, trunc, info = venv.step(acts)
        for i in range(n):
            if pending_reset[i]:
                # the reset step: action ignored, reward 0, not done, obs = the new episode's first
                o, r, _, _, _, _, final, _ = queues[i][cursor[i] - 1][1]
                assert rew[i] == 0.0 and not trunc[i] and not term[i]
                assert np.array_equal(obs[i], o)
                pending_reset[i] = False
                checked_resets += 1
                continue
            o, r, _, rtrunc, mask, _, final, _ = queues[i][cursor[i]][1]
            cursor[i] += 1
            assert rew[i] == r and trunc[i] == rtrunc
            if final is not None:
                assert np.array_equal(obs[i], final[0])  # the final observation itself
                assert info["_episode_metrics"][i]
                assert info["episode_metrics"]["slo_attainment"][i] == final[1]["slo_attainment"]
                assert info["episode"]["l"][i] > 0
                pending_reset[i] = True
            else:
                assert np.array_equal(obs[i], o) and np.array_equal(info["action_mask"][i], mask)
    assert checked_resets >= n


def test_seeding_is_per_env_and_deterministic() -> None:
    a = GridVectorEnv(3, "metro", SHORT)
    b = GridVectorEnv(3, "metro", SHORT)
    oa, _ = a.reset(seed=7)
    ob, _ = b.reset(seed=[7, 8, 9])
    assert np.array_equal(oa, ob)
    single = GridEnv("metro", SHORT)
    for i in range(3):
        assert np.array_equal(oa[i], single.reset(seed=7 + i)[0])
    assert not np.array_equal(oa[0], oa[1])  # different seeds, different first requests
    oc, _ = a.reset(seed=7)
    assert np.array_equal(oa, oc)


def test_reset_mask_resets_only_the_masked_envs() -> None:
    venv = GridVectorEnv(2, "metro", SHORT)
    obs0, _ = venv.reset(seed=1)
    rng = np.random.default_rng(0)
    for _ in range(5):
        obs, *_ = venv.step(choose_actions(venv.action_masks, venv.max_sites, venv.n_levels, rng))
    obs2, _ = venv.reset(seed=[1, None], options={"reset_mask": np.array([True, False])})
    assert np.array_equal(obs2[0], obs0[0]) and np.array_equal(obs2[1], obs[1])


def test_returned_arrays_are_copies_unless_asked_otherwise() -> None:
    venv = GridVectorEnv(2, "metro", SHORT)
    obs, info = venv.reset(seed=0)
    obs2, *_ = venv.step(choose_actions(info["action_mask"], venv.max_sites, venv.n_levels,
                                         np.random.default_rng(0)))
    assert not np.shares_memory(obs, obs2) and not np.array_equal(obs, obs2)
    lean = GridVectorEnv(2, "metro", SHORT, copy=False)
    o, _ = lean.reset(seed=0)
    assert np.shares_memory(o, lean.observations)


def test_bad_actions_and_calls_are_clear_errors() -> None:
    venv = GridVectorEnv(2, "metro", SHORT)
    with pytest.raises(RuntimeError, match="reset"):
        venv.step(np.zeros((2, 2), dtype=np.int64))
    venv.reset(seed=0)
    with pytest.raises(InvalidActionError, match=r"shape \(2, 2\)"):
        venv.step(np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(InvalidActionError, match="sub-env 1"):
        venv.step(np.array([[0, 0], [venv.max_sites + 1, 0]]))
    with pytest.raises(InvalidActionError, match="integers"):
        venv.step(np.array([[0.5, 0], [0, 0]]))
    with pytest.raises(ValueError, match="num_envs"):
        GridVectorEnv(0, "metro")
    strict = GridVectorEnv(1, "metro", {**SHORT, "actions": {"invalid_action": "raise"}})
    _, info = strict.reset(seed=0)
    masked = np.flatnonzero(~info["action_mask"][0, : strict.max_sites])
    if masked.size:  # metro: padding slots beyond the real sites are always masked
        with pytest.raises(InvalidActionError, match="masked"):
            strict.step(np.array([[masked[0], 0]]))


@pytest.mark.parametrize("actions, fragment", [
    (np.ones((2, 2), dtype=bool), "dtype bool"),              # GridEnv refuses booleans too
    (np.array([[0, 1], [0, 1j]]), "dtype complex128"),        # was: imaginary part dropped
    (np.array([["0", "1"], ["0", "1"]]), "dtype <U1"),        # was: numpy TypeError from isfinite
    (np.array([[0, None], [0, 1]], dtype=object), "dtype object"),
    ([[0, 1], [0]], "(2, 2) array of integers"),              # ragged
    (np.array([[1e20, 0], [0, 0]]), "[1e+20, 0.0] of sub-env 0"),  # was: shown as -2**63 after the cast
], ids=["bool", "complex", "str", "object", "ragged", "huge-float"])
def test_actions_of_a_wrong_kind_are_refused_and_named(actions, fragment) -> None:
    venv = GridVectorEnv(2, "metro", SHORT)
    venv.reset(seed=0)
    with pytest.raises(InvalidActionError) as err:
        venv.step(actions)
    assert fragment in str(err.value), str(err.value)


def test_step_batch_reports_ended_episodes_with_their_return() -> None:
    venv = GridVectorEnv(2, "metro", SHORT, copy=False)
    venv.reset(seed=2)
    rng = np.random.default_rng(1)
    total = np.zeros(2)
    length = np.zeros(2, dtype=int)
    ended = []
    while len(ended) < 2:
        res = venv.step_batch(choose_actions(venv.action_masks, venv.max_sites, venv.n_levels, rng))
        total += res.rewards
        length += 1
        for ep in res.ended:
            assert ep.reward_usd == pytest.approx(total[ep.index], rel=1e-12)
            assert ep.length == length[ep.index]
            assert not ep.final_obs.any()  # GridEnv's last observation: no request, all zeros
            assert {"slo_attainment", "goodput_tokens_per_s", "invalid_actions"} <= ep.metrics.keys()
            total[ep.index], length[ep.index] = 0.0, 0
            ended.append(ep)


def test_a_heuristic_drives_the_native_vector_env_as_the_sync_one():
    """info["snapshot"] (an object array) is what heuristics decide from; native and sync
    vectorization give the same trajectories under the same heuristic, resets included."""
    from agents.heuristics import make_heuristic

    n, config = 3, {"horizon_s": 4.0}
    native = gym.make_vec(METRO, num_envs=n, vectorization_mode="vector_entry_point", config=config)
    sync = gym.make_vec(METRO, num_envs=n, vectorization_mode="sync", config=config)
    shed = np.array([native.single_action_space.nvec[0] - 1, 0])
    runs = []
    for venv in (native, sync):
        pols = [make_heuristic("slo-greedy") for _ in range(n)]
        obs, infos = venv.reset(seed=[1, 2, 3])
        assert infos["snapshot"].dtype == object and infos["snapshot"].shape == (n,)
        trace = []
        for _ in range(250):  # past the first episode end (~100 decisions) of every env
            snaps = infos["snapshot"]
            actions = np.stack([pols[i].act(obs[i], snaps[i]) if snaps[i] is not None else shed
                                for i in range(n)])
            obs, rew, term, trunc, infos = venv.step(actions)
            trace.append((obs.copy(), rew.copy(), trunc.copy()))
        runs.append(trace)
    ends = 0
    for (o1, r1, t1), (o2, r2, t2) in zip(*runs):
        assert np.array_equal(o1, o2) and np.array_equal(r1, r2) and np.array_equal(t1, t2)
        ends += int(t1.sum())
    assert ends >= n
