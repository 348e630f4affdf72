"""agents/sb3_policy.py: SB3Policy loads what train.py writes and acts within the action mask."""

from __future__ import annotations

import importlib.util
import pickle
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("sb3_contrib")

import gridenv  # noqa: E402,F401
from agents.policy import Policy  # noqa: E402
from agents.sb3_policy import SB3Policy, detect_algo, find_vecnormalize  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

TINY_YAML = """
default:
  n_envs: 2
  n_steps: 64
  batch_size: 64
  n_epochs: 1
  net_arch: [32, 32]
  env_config: {horizon_s: 8}
  eval_episodes: 1
"""


def _train_main():
    """What train.py does for one run (nothing imports the script itself)."""
    from agents.arguments import TrainArgs, parse
    from agents.training import train

    return lambda argv: train(*parse(TrainArgs, argv, prog="train.py"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny MaskablePPO and PPO runs made by train.py: {algo: run_dir}."""
    base = tmp_path_factory.mktemp("sb3runs")
    hp = base / "tiny.yaml"
    hp.write_text(TINY_YAML)
    main = _train_main()
    out = {}
    for algo in ("maskable_ppo", "ppo"):
        run_dir = base / f"metro_{algo}_s0"
        main(["--algo", algo, "--run-dir", str(run_dir), "--hyperparams", str(hp),
              "--total-timesteps", "256", "--eval-freq", "128", "--checkpoint-freq", "128",
              "--no-eval-leaderboard", "--no-progress-bar", "--verbose", "0"])
        out[algo] = run_dir
    return out


def rollout(policy: Policy, seed: int, horizon_s: float = 15.0, invalid: str = "raise"):
    """One short episode; with invalid_action: raise the env rejects any masked choice."""
    env = gym.make("gridenv/Metro-v1", config={"horizon_s": horizon_s, "actions": {"invalid_action": invalid}})
    obs, info = env.reset(seed=seed)
    policy.reset(seed)
    n = 0
    while True:
        snap = info["snapshot"]
        action = policy.act(obs, snap)
        assert action.shape == (2,) and snap.action_mask[action[0]], (action, snap.feasible)
        obs, _, term, trunc, info = env.step(action)
        n += 1
        if term or trunc:
            return n, info["episode_metrics"]


@pytest.mark.parametrize("algo", ["maskable_ppo", "ppo"])
def test_acts_within_the_mask_over_an_episode(runs, algo):
    policy = SB3Policy(runs[algo] / "model.zip")
    assert isinstance(policy, Policy) and policy.algo == algo
    n, metrics = rollout(policy, seed=3)
    assert n > 200 and metrics["invalid_actions"] == 0


def test_masked_sites_are_never_chosen_even_when_most_are_masked(runs):
    """Outage-like states: mask all but one site per request; MaskablePPO must follow the mask."""
    policy = SB3Policy(runs["maskable_ppo"] / "model.zip")
    env = gym.make("gridenv/Metro-v1", config={"horizon_s": 5})
    obs, info = env.reset(seed=0)
    snap = info["snapshot"]
    rng = np.random.default_rng(0)
    for _ in range(200):
        feasible = np.zeros_like(snap.feasible)
        feasible[rng.integers(len(feasible))] = True
        snap.feasible = feasible
        site = policy.act(obs, snap)[0]
        assert site == snap.statics.max_sites or feasible[site]


def test_plain_ppo_sheds_a_masked_choice(runs, monkeypatch):
    policy = SB3Policy(runs["ppo"] / "model.zip")
    env = gym.make("gridenv/Metro-v1", config={"horizon_s": 5})
    obs, info = env.reset(seed=0)
    snap = info["snapshot"]
    snap.feasible = np.zeros_like(snap.feasible)  # every site masked
    import torch

    fixed = torch.zeros(1, policy.max_sites + 1 + 3)
    fixed[0, 0] = fixed[0, -1] = 10.0  # the policy's choice: site 0, batch level 2

    class Fixed(torch.nn.Module):
        def forward(self, latent):
            return fixed.expand(latent.shape[0], -1)

    monkeypatch.setattr(policy.model.policy, "action_net", Fixed())
    assert policy.act(obs, snap).tolist() == [policy.max_sites, 2]
    assert policy.n_masked_fallbacks == 1


def test_same_actions_as_the_model_on_normalized_observations(runs):
    policy = SB3Policy(runs["maskable_ppo"] / "model.zip")
    with open(runs["maskable_ppo"] / "vecnormalize.pkl", "rb") as f:
        vn = pickle.load(f)
    env = gym.make("gridenv/Metro-v1", config={"horizon_s": 5})
    obs, info = env.reset(seed=1)
    for _ in range(50):
        snap = info["snapshot"]
        np.testing.assert_allclose(policy.normalize_obs(obs), vn.normalize_obs(obs), rtol=1e-6, atol=1e-6)
        expected, _ = policy.model.predict(vn.normalize_obs(obs), action_masks=snap.action_mask, deterministic=True)
        action = policy.act(obs, snap)
        np.testing.assert_array_equal(action, expected)
        obs, _, _, _, info = env.step(action)


def test_loading_resolves_stats_and_name(runs):
    run_dir = runs["maskable_ppo"]
    by_dir = SB3Policy(run_dir)  # a run directory: its best model
    assert by_dir.path == run_dir / "best_model" / "best_model.zip"
    assert by_dir.vecnormalize_path == run_dir / "best_model" / "vecnormalize.pkl"
    assert by_dir.name == run_dir.name == "metro_maskable_ppo_s0"
    final = SB3Policy(run_dir / "model.zip")
    assert final.vecnormalize_path == run_dir / "vecnormalize.pkl" and final.name == run_dir.name
    ckpt = sorted((run_dir / "checkpoints").glob("rl_model_*_steps.zip"))[0]
    steps = ckpt.name.split("_")[-2]
    assert find_vecnormalize(ckpt).name == f"rl_model_vecnormalize_{steps}_steps.pkl"
    assert SB3Policy(ckpt).name == run_dir.name
    assert SB3Policy(run_dir / "model.zip", name="mine").name == "mine"
    assert detect_algo(runs["ppo"] / "model.zip") == "ppo"
    assert detect_algo(run_dir / "model.zip") == "maskable_ppo"


def test_explicit_vecnormalize_path_and_none(runs, tmp_path):
    run_dir = runs["maskable_ppo"]
    shutil.copy(run_dir / "model.zip", tmp_path / "agent.zip")
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "vecnormalize.pkl")):
        SB3Policy(tmp_path / "agent.zip")
    p = SB3Policy(tmp_path / "agent.zip", vecnormalize=run_dir / "vecnormalize.pkl")
    assert p.vecnormalize_path == run_dir / "vecnormalize.pkl" and p.name == tmp_path.name
    raw = SB3Policy(tmp_path / "agent.zip", vecnormalize=False)
    obs = np.full(raw.obs_shape, 0.5, dtype=np.float32)
    np.testing.assert_array_equal(raw.normalize_obs(obs), obs)


def test_missing_and_corrupt_files(runs, tmp_path):
    missing = tmp_path / "nope" / "model.zip"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        SB3Policy(missing)
    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(b"this is not a zip file")
    with pytest.raises(ValueError, match="not a valid Stable-Baselines3 model archive"):
        SB3Policy(garbage)
    bad_pkl = tmp_path / "bad.pkl"
    bad_pkl.write_bytes(b"\x80\x04not a pickle")
    with pytest.raises(ValueError, match="not a valid VecNormalize statistics file"):
        SB3Policy(runs["maskable_ppo"] / "model.zip", vecnormalize=bad_pkl)
    # a zip without SB3 content
    import zipfile

    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(ValueError, match="not a valid Stable-Baselines3 model archive"):
        SB3Policy(tmp_path / "other.zip")


def test_wrong_scenario_is_a_clear_error(runs):
    policy = SB3Policy(runs["maskable_ppo"] / "model.zip")  # metro: 5 sites, 72 features
    env = gym.make("gridenv/Continental-v1")
    obs, info = env.reset(seed=0)
    with pytest.raises(ValueError, match="trained on another scenario"):
        policy.act(obs, info["snapshot"])


@pytest.mark.parametrize("algo", ["maskable_ppo", "ppo"])
def test_scores_follow_the_mask(runs, algo):
    policy = SB3Policy(runs[algo] / "model.zip")
    env = gym.make("gridenv/Metro-v1", config={"horizon_s": 5})
    obs, info = env.reset(seed=2)
    for _ in range(20):
        snap = info["snapshot"]
        s = policy.scores(obs, snap)
        assert s.shape == (policy.max_sites,) and np.all((s >= 0) & (s <= 1))
        assert np.all(s[~snap.feasible[: policy.max_sites]] == 0)
        if snap.feasible.any():
            assert s.max() == pytest.approx(1.0)
        obs, _, _, _, info = env.step(policy.act(obs, snap))


def test_registry_loads_a_zip_as_sb3_policy(runs):
    registry = pytest.importorskip("agents.registry")
    policy = registry.load_policy(str(runs["maskable_ppo"] / "best_model" / "best_model.zip"))
    assert isinstance(policy, SB3Policy) and policy.algo == "maskable_ppo"


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_train_records_the_interface_and_the_policy_checks_it(runs):
    import json

    policy = SB3Policy(runs["maskable_ppo"] / "model.zip")
    env = gym.make("gridenv/Metro-v1", config={"horizon_s": 5})
    assert policy.interface_record == env.unwrapped.interface.record()
    assert policy.interface_record_path.name == "args.json"
    obs, info = env.reset(seed=0)
    policy.act(obs, info["snapshot"])  # same interface: accepted
    rec = json.loads((runs["maskable_ppo"] / "args.json").read_text())["interface"]
    assert rec["version"] == "slots-3" and rec["content_hash"] == env.unwrapped.interface.content_hash


@pytest.mark.parametrize("edit,message", [
    # a model saved under the v0 interface: model one-hot over the whole catalog
    (lambda r: (r.update(version="slots-1"), r["interface"].update(version="slots-1"),
                r["interface"]["vocabularies"].update(model=["llama-2-70b", "llama-3-70b", "llama-3-8b"])),
     r"version: recorded 'slots-1', current 'slots-3'.*vocabulary 'model': entries \['llama-2-70b', 'llama-3-70b'\] "
     r"only in recorded"),
    # a model saved under slots-2, before the cache signals: refused naming each added feature
    (lambda r: (r.update(version="slots-2"), r["interface"].update(version="slots-2"),
                r["interface"].update(site_features=r["interface"]["site_features"][:12])),
     r"version: recorded 'slots-2', current 'slots-3'.*site feature 'prefix_cached' added.*"
     r"site feature 'prefix_indexed' added.*site feature 'prefill_backlog' added"),
    (lambda r: r["interface"]["site_features"][7].update(divide_by="100.0"),
     r"site feature 'rtt': divide_by recorded '100.0', current '200.0'"),
])
def test_policy_saved_under_another_interface_is_refused(runs, tmp_path, edit, message):
    import json

    from gridenv.core.interface import InterfaceMismatchError

    run = _copy_run(runs["maskable_ppo"], tmp_path / "run")
    args = json.loads((run / "args.json").read_text())
    edit(args["interface"])
    (run / "args.json").write_text(json.dumps(args))
    policy = SB3Policy(run / "model.zip")
    env = gym.make("gridenv/Metro-v1", config={"horizon_s": 5})
    obs, info = env.reset(seed=0)
    with pytest.raises(InterfaceMismatchError, match=message):
        policy.act(obs, info["snapshot"])
    # a sidecar interface.json beside the model takes precedence over args.json
    (run / "interface.json").write_text(json.dumps(env.unwrapped.interface.record()))
    SB3Policy(run / "model.zip").act(obs, info["snapshot"])


@pytest.mark.parametrize("folder,env_id", [("metro", "gridenv/Metro-v1"), ("continental", "gridenv/Continental-v1"),
                                           ("metro-fast", "gridenv/Metro-v1")])
def test_committed_agents_load_and_match_their_onnx_export(folder, env_id):
    """models/<folder>: migrated to slots-3 (agents/migrate.py) or trained on it; SB3 and ONNX agree."""
    from agents.onnx_policy import ONNXPolicy

    policy = SB3Policy(ROOT / "models" / folder / "best_model.zip")
    onnx = ONNXPolicy(ROOT / "models" / folder / "onnx")
    env = gym.make(env_id, config={"horizon_s": 20})
    assert policy.interface_record["content_hash"] == env.unwrapped.interface.content_hash
    obs, info = env.reset(seed=11)
    for _ in range(150):
        a = policy.act(obs, info["snapshot"])
        assert a.tolist() == onnx.act(obs, info["snapshot"]).tolist()
        obs, _, _, trunc, info = env.step(a)
        if trunc:
            break
