"""agents/migrate.py: a model recorded under an older interface (fewer declared features) is
carried to the current one exactly, or refused with one line saying why.

The "older" models are built here: the current Metro declaration with some site features
removed (version ``slots-2``), a site-scoring policy over that smaller observation with random
(not trained) weights scaled up so the actions depend on the inputs, saved with its interface
record. Nothing is trained.
"""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip("sb3_contrib")

import gridenv  # noqa: E402,F401
from agents.migrate import MigrationError, element_names, main, migrate_model  # noqa: E402

METRO = "gridenv/Metro-v1"


class _OldObservation(gym.ObservationWrapper):
    """The env as a model of the older interface saw it: only the elements at `keep`."""

    def __init__(self, env, keep: np.ndarray) -> None:
        super().__init__(env)
        self.keep = keep
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (len(keep),), dtype=np.float32)

    def observation(self, obs):
        return obs[self.keep]

    def action_masks(self):
        return self.env.unwrapped.action_masks()


def _old_interface(dropped: list[str]) -> tuple[dict, np.ndarray]:
    """(an interface record without the site features `dropped`, positions of its elements in
    the current observation)."""
    env = gym.make(METRO)
    decl = env.unwrapped.interface.to_dict()
    old = json.loads(json.dumps(decl))
    old["site_features"] = [f for f in old["site_features"] if f["name"] not in dropped]
    old["version"] = "slots-2"
    old_names, new_names = element_names(old)[0], element_names(decl)[0]
    old["obs_size"] = len(old_names)
    keep = np.array([new_names.index(n) for n in old_names])
    return {"version": "slots-2", "content_hash": "older", "interface": old}, keep


def _old_model(tmp_path: Path, dropped: list[str], level_from_site: bool, algo: str = "maskable_ppo") -> tuple[Path, np.ndarray]:
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import PPO

    from agents.site_policy import MaskableSiteScoringPolicy, SiteScoringPolicy

    record, keep = _old_interface(dropped)
    site_names = [f["name"] for f in record["interface"]["site_features"]]
    kwargs = dict(site_hidden=[16, 16], critic_hidden=[16], n_site_features=len(site_names))
    if level_from_site:
        kwargs.update(level_from_site=True, feasible_index=site_names.index("feasible"))
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    env = VecNormalize(DummyVecEnv([lambda: _OldObservation(gym.make(METRO, config={"horizon_s": 20}), keep)]),
                       norm_obs=False)  # reward-only statistics, as the committed agents have
    Algo, policy = (MaskablePPO, MaskableSiteScoringPolicy) if algo == "maskable_ppo" else (PPO, SiteScoringPolicy)
    model = Algo(policy, env, n_steps=64, batch_size=64, seed=0, device="cpu", policy_kwargs=kwargs)
    torch.manual_seed(1)
    with torch.no_grad():  # random weights large enough that every input moves the logits
        for p in model.policy.mlp_extractor.parameters():
            p.normal_(0.0, 0.7)
    run = tmp_path / "run"
    run.mkdir()
    model.save(run / "model.zip")
    env.save(str(run / "vecnormalize.pkl"))
    (run / "interface.json").write_text(json.dumps(record))
    return run / "model.zip", keep


def _logits(model, obs: np.ndarray) -> np.ndarray:
    p = model.policy
    with torch.no_grad():
        f = p.extract_features(torch.as_tensor(obs, dtype=torch.float32), p.pi_features_extractor)
        return p.action_net(p.mlp_extractor.forward_actor(f)).numpy()


def _states(n: int, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Observations (current interface) and masks of Metro episodes under random feasible actions."""
    env = gym.make(METRO, config={"horizon_s": 20})
    rng = np.random.default_rng(seed)
    obs, info = env.reset(seed=seed)
    X, M = [], []
    while len(X) < n:
        X.append(obs)
        M.append(info["action_mask"])
        n1 = env.unwrapped.max_sites + 1
        m = info["action_mask"]
        action = np.array([rng.choice(np.flatnonzero(m[:n1])), rng.choice(np.flatnonzero(m[n1:]))])
        obs, _, term, trunc, info = env.step(action)
        if term or trunc:
            obs, info = env.reset(seed=int(rng.integers(1000)))
    return np.asarray(X), np.asarray(M)


def _assert_same_decisions(old_model, new_model, keep: np.ndarray, n1: int) -> None:
    """Same logits (hence same deterministic actions) on env states, and on the same states
    with every added element replaced by noise: the old features decide, the new ones do not."""
    X, M = _states(300)
    rng = np.random.default_rng(0)
    noisy = X.copy()
    added = np.setdiff1d(np.arange(X.shape[1]), keep)
    noisy[:, added] = rng.uniform(-1, 1, (len(X), len(added))).astype(np.float32)
    lo = np.where(M, _logits(old_model, X[:, keep]), -1e8)
    for obs in (X, noisy):
        ln = np.where(M, _logits(new_model, obs), -1e8)
        np.testing.assert_allclose(ln, lo, atol=1e-5, rtol=0)
        assert np.array_equal(ln[:, :n1].argmax(1), lo[:, :n1].argmax(1))
        assert np.array_equal(ln[:, n1:].argmax(1), lo[:, n1:].argmax(1))
    # the check has teeth: the preferred site and level vary with the state
    assert len(set(lo[:, : n1 - 1].argmax(1))) > 1 and len(set(lo[:, n1:].argmax(1))) > 1


# Dropping `up` moves `feasible` (the level head's softmax reads it) from slot 1 to slot 2 of
# each site block; dropping the slots-3 cache features is the real slots-2 -> slots-3 step.
@pytest.mark.parametrize("dropped", [["prefix_cached", "prefix_indexed", "prefill_backlog"], ["up", "prefill_backlog"]])
@pytest.mark.parametrize("level_from_site", [False, True])
def test_site_scoring_models_migrate_exactly(tmp_path, dropped, level_from_site) -> None:
    from sb3_contrib import MaskablePPO

    path, keep = _old_model(tmp_path, dropped, level_from_site)
    old = MaskablePPO.load(path, device="cpu")
    out = tmp_path / "run" / "migrated.zip"
    result = migrate_model(path, "metro", out_path=out, verify_states=200)
    assert result["action_agreement"] == 1.0 and result["max_abs_logit_diff"] <= 1e-5
    assert result["added_elements"] and result["new_obs_size"] == gym.make(METRO).observation_space.shape[0]
    new = MaskablePPO.load(out, device="cpu")
    ext = new.policy.mlp_extractor
    assert ext.level_from_site is level_from_site
    if level_from_site:  # the chosen site's `feasible` flag is found at its new position
        names = [f.name for f in gym.make(METRO).unwrapped.interface.site_features]
        assert names[ext.feasible_index] == "feasible"
    _assert_same_decisions(old, new, keep, gym.make(METRO).unwrapped.max_sites + 1)
    # the migrated model is accepted where a policy is: its interface record is the current one
    from agents.sb3_policy import SB3Policy

    env = gym.make(METRO, config={"horizon_s": 20})
    obs, info = env.reset(seed=0)
    SB3Policy(out).act(obs, info["snapshot"])


def test_plain_ppo_level_from_site_model_migrates_exactly(tmp_path) -> None:
    from stable_baselines3 import PPO

    path, keep = _old_model(tmp_path, ["up"], True, algo="ppo")
    old = PPO.load(path, device="cpu")
    migrate_model(path, "metro", verify_states=100)  # in place
    _assert_same_decisions(old, PPO.load(path, device="cpu"), keep, gym.make(METRO).unwrapped.max_sites + 1)


def test_a_removed_feature_is_refused_in_one_line(tmp_path, capsys) -> None:
    path, _ = _old_model(tmp_path, ["prefix_cached"], True)
    record = json.loads((path.parent / "interface.json").read_text())
    record["interface"]["site_features"].append({"name": "retired", "unit": "1"})
    (path.parent / "interface.json").write_text(json.dumps(record))
    before = path.read_bytes()
    assert main([str(path), "--scenario", "metro", "--verify-states", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "site feature 'retired' removed" in err
    assert path.read_bytes() == before
    with pytest.raises(MigrationError):
        migrate_model(path, "metro", verify_states=10)
