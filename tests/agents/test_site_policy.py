"""The site-scoring actor: permutation equivariance over site slots, and ONNX export parity."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import gridenv  # noqa: F401
from agents.site_policy import MaskableSiteScoringPolicy, SiteScoringPolicy

METRO = "gridenv/Metro-v1"


def make_policy(cls, env_id: str = METRO, mode: str = "slots"):
    env = gym.make(env_id, config={"horizon_s": 10.0, "observation": {"mode": mode}})
    torch.manual_seed(0)
    F = env.unwrapped.interface.n_site_features
    return cls(env.observation_space, env.action_space, lambda _: 3e-4, n_site_features=F), env


@pytest.mark.parametrize("mode", ["slots", "relative"])
@pytest.mark.parametrize("cls", [MaskableSiteScoringPolicy, SiteScoringPolicy])
def test_permuting_sites_permutes_their_logits(cls, mode) -> None:
    policy, env = make_policy(cls, mode=mode)
    N_SITE_FEATURES = env.unwrapped.interface.n_site_features
    n = env.unwrapped.max_sites
    # Perturb the output layers so the logits are not all ~0 (the init makes them tiny).
    for head in (policy.mlp_extractor.site_mlp[-1], policy.mlp_extractor.global_mlp[-1]):
        torch.nn.init.normal_(head.weight)
    rng = np.random.default_rng(0)
    obs = torch.as_tensor(rng.random((8, env.observation_space.shape[0])), dtype=torch.float32)
    perm = rng.permutation(n)
    blocks = obs[:, : n * N_SITE_FEATURES].reshape(8, n, N_SITE_FEATURES)
    permuted = obs.clone()
    permuted[:, : n * N_SITE_FEATURES] = blocks[:, perm].reshape(8, -1)
    with torch.no_grad():
        a = policy.mlp_extractor.forward_actor(obs)
        b = policy.mlp_extractor.forward_actor(permuted)
    assert a.shape == (8, n + 1 + env.unwrapped.n_levels)
    # (up to float summation order: the pooled mean sums the sites in another order)
    torch.testing.assert_close(b[:, :n], a[:, perm], rtol=1e-5, atol=1e-5)  # sites follow
    torch.testing.assert_close(b[:, n:], a[:, n:], rtol=1e-5, atol=1e-5)  # shed, levels do not
    assert not torch.allclose(a[:, 0], a[:, 1])  # and the sites are told apart


def test_action_net_is_identity_and_initial_policy_is_near_uniform() -> None:
    policy, env = make_policy(MaskableSiteScoringPolicy)
    obs, _ = env.reset(seed=0)
    with torch.no_grad():
        logits = policy.action_net(policy.mlp_extractor.forward_actor(torch.as_tensor(obs[None])))
    assert isinstance(policy.action_net, torch.nn.Identity)
    assert logits.abs().max() < 0.5


@pytest.mark.parametrize("mode", ["slots", "relative"])
def test_site_scoring_model_trains_saves_loads_and_exports(tmp_path, mode) -> None:
    import json

    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    from agents.export import export_policy
    from agents.sb3_policy import SB3Policy, write_interface_record
    from gridenv.router.runtime import RouterPolicy

    config = {"horizon_s": 20, "observation": {"mode": mode}}
    venv = VecNormalize(DummyVecEnv([lambda: gym.make(METRO, config=config)]), norm_obs=False)
    iface = venv.get_attr("interface")[0]
    model = MaskablePPO(MaskableSiteScoringPolicy, venv, n_steps=128, batch_size=64, n_epochs=1,
                        seed=0, device="cpu", policy_kwargs={"site_hidden": [32, 32], "critic_hidden": [32],
                                                             "n_site_features": iface.n_site_features})
    model.learn(256)
    run = tmp_path / "metro_maskable_ppo_s0"
    run.mkdir()
    model.save(run / "model.zip")
    venv.save(str(run / "vecnormalize.pkl"))
    write_interface_record(run, iface)
    (run / "args.json").write_text(json.dumps({"args": {"scenario": "metro"},
                                               "hyperparams": {"env_config": {"observation": {"mode": mode}}}}))
    loaded = MaskablePPO.load(run / "model.zip", device="cpu")
    assert loaded.policy.mlp_extractor.site_mlp[0].out_features == 32
    assert loaded.policy.mlp_extractor.n_site_features == iface.n_site_features

    export_policy(run, tmp_path / "export")
    router = RouterPolicy.load(tmp_path / "export")
    assert router.interface.mode == mode and router.meta["interface"] == iface.record()
    sb3 = SB3Policy(run / "model.zip")
    env = gym.make(METRO, config=config).unwrapped
    obs, info = env.reset(seed=3)
    agree = 0
    for _ in range(300):
        want, _ = loaded.predict(obs, action_masks=info["action_mask"], deterministic=True)
        got = router.decide_snapshot(info["snapshot"])
        agree += int(got["action"][0] == want[0] and got["action"][1] == want[1])
        assert sb3.act(obs, info["snapshot"]).tolist() == got["action"]
        obs, _, _, trunc, info = env.step(want)
        if trunc:
            break
    assert agree == 300
