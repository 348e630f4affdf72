"""What the cache-scenario agents' recipe adds (configs/ppo_cache.yaml): warm-start demonstrations
at a chosen batch level per site kind, and a batch-level head that reads the chosen site."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

import gridenv  # noqa: F401
from agents import training as T
from agents import warm_start as W
from agents.site_policy import MaskableSiteScoringPolicy
from policy_parity import rollout_sb3_vs_onnx  # tests/agents/policy_parity.py

CODING = "gridenv/CodingAgent-v1"
SHORT = {"horizon_s": 40}


def _demo(level, core_level, n=1200):
    return W.collect_demonstrations(T.make_env(CODING, SHORT), "llmd-precise", n, seed=11,
                                    level=level, core_level=core_level)


def test_demonstrations_request_the_level_given_per_site_kind() -> None:
    env = gym.make(CODING)
    is_edge = np.asarray(env.unwrapped.statics.is_edge if hasattr(env.unwrapped, "statics")
                         else env.reset(seed=0)[1]["snapshot"].statics.is_edge)
    demo = _demo(1, 2)
    routed = demo.actions[:, 0] < len(is_edge)
    sites, levels = demo.actions[routed, 0], demo.actions[routed, 1]
    assert (~is_edge[sites]).any() and is_edge[sites].any()  # both kinds were chosen
    assert np.all(levels[is_edge[sites]] == 1) and np.all(levels[~is_edge[sites]] == 2)
    assert np.all(_demo(0, None, n=300).actions[:, 1] == 0)  # one level everywhere


def test_a_level_the_scenario_does_not_have_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="warm start level 3: the scenario has 3 batch levels"):
        _demo(1, 3, n=10)


def _policy(level_from_site: bool):
    env = gym.make(CODING, config=SHORT)
    torch.manual_seed(0)
    F = env.unwrapped.interface.n_site_features
    return MaskableSiteScoringPolicy(env.observation_space, env.action_space, lambda _: 3e-4,
                                     n_site_features=F, level_from_site=level_from_site)


def test_a_site_conditioned_level_head_clones_levels_that_depend_on_the_site() -> None:
    """Level 1 at edges, 2 at the core: the plain level head sees only the request and the mean
    of the sites, so it can only guess which site the level is for; the site-conditioned head
    reads the chosen site's features (is_edge among them)."""
    demo = _demo(1, 2, n=3000)
    acc = {}
    for flag in (False, True):
        policy = _policy(flag)
        *_, acc[flag] = W.behaviour_clone(policy, demo.obs, demo.masks, demo.actions, maskable=True,
                                          min_updates=600)
    assert acc[True] > 0.97
    assert acc[True] > acc[False] + 0.03, acc


def test_the_site_conditioned_head_stays_permutation_equivariant_and_saves_its_flag(tmp_path) -> None:
    policy = _policy(True)
    n, F = policy.mlp_extractor.max_sites, policy.mlp_extractor.n_site_features
    for head in (policy.mlp_extractor.site_mlp[-1], policy.mlp_extractor.global_mlp[-1]):
        torch.nn.init.normal_(head.weight)
    rng = np.random.default_rng(0)
    obs = torch.as_tensor(rng.random((8, policy.observation_space.shape[0])), dtype=torch.float32)
    perm = rng.permutation(n)
    permuted = obs.clone()
    permuted[:, : n * F] = obs[:, : n * F].reshape(8, n, F)[:, perm].reshape(8, -1)
    with torch.no_grad():
        a, b = policy.mlp_extractor.forward_actor(obs), policy.mlp_extractor.forward_actor(permuted)
        # reverse the features of the site the actor prefers: its level logits move
        top = int(a[0, :n].argmax())

        def bumped(site):
            o = obs[:1].clone()
            o[0, site * F:(site + 1) * F] = torch.flip(o[0, site * F:(site + 1) * F], dims=[0])
            return policy.mlp_extractor.forward_actor(o)[0, n + 1:]
    torch.testing.assert_close(b[:, :n], a[:, perm], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b[:, n:], a[:, n:], rtol=1e-5, atol=1e-5)
    assert policy._get_constructor_parameters()["level_from_site"] is True
    assert "level_from_site" not in _policy(False)._get_constructor_parameters()  # older models' kwargs unchanged
    assert bumped(top).sub(a[0, n + 1:]).abs().sum() > 0


@pytest.mark.parametrize("scenario,env_id", [("chat-multiturn", "gridenv/ChatMultiturn-v1"),
                                             ("coding-agent", CODING)])
def test_committed_cache_agents_load_and_match_their_onnx_export(scenario, env_id) -> None:
    """models/<scenario> (coding-agent's with the site-conditioned level head): SB3 and ONNX agree."""
    from pathlib import Path

    from agents.onnx_policy import ONNXPolicy
    from agents.sb3_policy import SB3Policy

    models = Path(__file__).resolve().parents[2] / "models" / scenario
    policy, onnx = SB3Policy(models / "best_model.zip"), ONNXPolicy(models / "onnx")
    levels, ties, _ = rollout_sb3_vs_onnx(policy, onnx, gym.make(env_id, config=SHORT))
    assert ties <= 5
    assert 2 in levels  # both agents ask for batch 128 (chat everywhere, coding at the core)
