"""agents.export (SB3 -> ONNX + policy.json) and agents.onnx_policy.ONNXPolicy.

Parity: on >= 10,000 states of seeded Metro episodes driven by the SB3 policy's own actions,
the exported graph picks the same action as ``MaskablePPO.predict`` every time, its logits match
the SB3 policy's (raw and log-softmax per head) within 1e-5, and it never picks a masked action.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sb3_contrib")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import gymnasium as gym  # noqa: E402

import gridenv  # noqa: E402,F401
from agents.export import ExportError, export_policy, main, resolve_model  # noqa: E402
from gridenv.core.snapshot import feature_spec  # noqa: E402

METRO = "gridenv/Metro-v1"
PARITY_STATES = 10_000


@pytest.fixture(scope="module")
def run_dir(tiny_metro_run):
    return tiny_metro_run


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export_cli") / "metro"
    assert main([str(run_dir), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def sb3(run_dir):
    """(model, VecNormalize in eval mode) loaded the ordinary SB3 way."""
    from sb3_contrib import MaskablePPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    model = MaskablePPO.load(run_dir / "model.zip", device="cpu")
    vn = VecNormalize.load(str(run_dir / "vecnormalize.pkl"), DummyVecEnv([lambda: gym.make(METRO)]))
    vn.training = False
    return model, vn


# ---------------------------------------------------------------------------- files
def test_policy_files(exported, run_dir):
    import onnx

    onnx_path, json_path = exported / "policy.onnx", exported / "policy.json"
    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model, full_check=True)
    meta = json.loads(json_path.read_text())
    import hashlib

    from gridenv.router.runtime import FORMAT_VERSION

    assert meta["format_version"] == FORMAT_VERSION
    assert meta["onnx"]["sha256"] == hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    env = gym.make(METRO)
    st = env.unwrapped.sim.statics
    sc = env.unwrapped.scenario
    assert meta["statics"] == json.loads(json.dumps(st.to_dict()))
    iface = env.unwrapped.interface
    assert meta["observation"]["features"] == feature_spec(st) == iface.feature_spec()
    assert meta["observation"]["size"] == env.observation_space.shape[0] == iface.obs_size
    assert meta["interface"] == iface.record()  # version, content hash, declaration
    assert meta["scenario"]["name"] == "metro" and meta["scenario"]["env_id"] == METRO
    with open(run_dir / "vecnormalize.pkl", "rb") as f:
        vn = pickle.load(f)
    assert meta["observation"]["normalization"]["clip_obs"] == vn.clip_obs
    assert meta["observation"]["normalization"]["epsilon"] == vn.epsilon
    act = meta["action"]
    assert act["shed_index"] == act["max_sites"] == 5 and act["n_sites"] == 5
    assert act["site_slots"] == list(st.site_names) and act["batch_levels"] == [8, 32, 128]
    for c in ("chat", "code", "summarization"):
        ttft, tpot = sc.slo_of(c)
        assert meta["request_defaults"]["slo_s"][c] == {"ttft_s": ttft, "tpot_s": tpot}
    # graph interface: two inputs, four outputs, a dynamic batch dimension
    ins = {i.name: i for i in model.graph.input}
    assert set(ins) == {"obs", "action_mask"}
    assert [o.name for o in model.graph.output] == ["logits", "site_scores", "site", "batch_level"]
    dim0 = ins["obs"].type.tensor_type.shape.dim[0]
    assert dim0.dim_param and not dim0.dim_value
    assert meta["verification"]["action_agreement"] == 1.0


def test_dynamic_batch(exported):
    sess = ort.InferenceSession(str(exported / "policy.onnx"), providers=["CPUExecutionProvider"])
    env = gym.make(METRO, config={"horizon_s": 20})
    obs, _ = env.reset(seed=3)
    mask = env.unwrapped.action_masks()
    one = sess.run(None, {"obs": obs[None], "action_mask": mask[None]})
    seven = sess.run(None, {"obs": np.repeat(obs[None], 7, 0), "action_mask": np.repeat(mask[None], 7, 0)})
    assert [o.shape for o in seven] == [(7, 9), (7, 6), (7,), (7,)]
    np.testing.assert_allclose(seven[0], np.repeat(one[0], 7, 0), atol=1e-6)
    scores = seven[1]
    assert np.all((scores >= 0) & (scores <= 1)) and np.allclose(scores.sum(1), 1.0, atol=1e-5)


# ---------------------------------------------------------------------------- parity
def _rollout(model, vn, n_states: int):
    """States of seeded 60 s Metro episodes, driven by the SB3 policy's own deterministic actions."""
    env = gym.make(METRO, config={"horizon_s": 60})
    X, M, A = [], [], []
    seed = 100
    while len(X) < n_states:
        obs, _ = env.reset(seed=seed)
        seed += 1
        done = False
        while not done:
            mask = env.unwrapped.action_masks()
            a, _ = model.predict(vn.normalize_obs(obs), action_masks=mask, deterministic=True)
            X.append(obs)
            M.append(mask)
            A.append(np.asarray(a))
            obs, _, term, trunc, _ = env.step(a)
            done = term or trunc
    return np.asarray(X, np.float32), np.asarray(M, bool), np.asarray(A, np.int64), seed - 100


def test_parity_with_sb3(exported, sb3):
    import torch

    model, vn = sb3
    X, M, A, episodes = _rollout(model, vn, PARITY_STATES)
    assert len(X) >= PARITY_STATES and episodes >= 3
    sess = ort.InferenceSession(str(exported / "policy.onnx"), providers=["CPUExecutionProvider"])
    logits, scores, site, level = sess.run(None, {"obs": X, "action_mask": M})

    # 1. the same action as MaskablePPO.predict, 100%
    agree = np.mean((site == A[:, 0]) & (level == A[:, 1]))
    # 2. never a masked action
    masked_chosen = int((~M[np.arange(len(M)), site]).sum() + (~M[np.arange(len(M)), 6 + level]).sum())
    # 3. logits: the SB3 policy's on VecNormalize-normalized observations
    policy = model.policy
    with torch.no_grad():
        obs_t = torch.as_tensor(vn.normalize_obs(X))
        dist = policy.get_distribution(obs_t, action_masks=M)
        sb3_logp = [d.logits.numpy() for d in dist.distributions]  # per head: log-softmax of masked logits
        raw = policy.action_net(policy.mlp_extractor.forward_actor(policy.extract_features(obs_t))).numpy()
    raw_diff = float(np.abs(np.where(M, logits - raw, 0.0)).max())
    heads = [slice(0, 6), slice(6, 9)]
    logp_diff = 0.0
    for h, ref in zip(heads, sb3_logp):
        lg = logits[:, h].astype(np.float64)
        top = lg.max(1, keepdims=True)
        logp = lg - top - np.log(np.exp(lg - top).sum(1, keepdims=True))
        logp_diff = max(logp_diff, float(np.abs(np.where(M[:, h], logp - ref, 0.0)).max()))
        assert np.all(logits[:, h][~M[:, h]] == -1e8) and np.all(ref[~M[:, h]] < -1e7)
    score_diff = float(np.abs(scores - np.exp(sb3_logp[0])).max())
    print(f"\nparity: {len(X)} states from {episodes} episodes, action agreement {100 * agree:.3f}%, "
          f"max |raw logit diff| {raw_diff:.2e}, max |log-prob diff| {logp_diff:.2e}, "
          f"max |score - prob| {score_diff:.2e}, masked actions chosen {masked_chosen}, "
          f"shed decisions {int((site == 5).sum())}")
    assert agree == 1.0
    assert masked_chosen == 0
    assert raw_diff <= 1e-5 and logp_diff <= 1e-5 and score_diff <= 1e-5


# ---------------------------------------------------------------------------- ONNXPolicy
def test_onnx_policy_acts_like_sb3(exported, sb3):
    from agents.onnx_policy import ONNXPolicy
    from agents.policy import Policy

    model, vn = sb3
    for path in (exported, exported / "policy.onnx"):
        pol = ONNXPolicy(path)
        assert isinstance(pol, Policy) and pol.name == "metro"
    env = gym.make(METRO, config={"horizon_s": 20})
    obs, info = env.reset(seed=7)
    pol.reset(7)
    done, n = False, 0
    while not done:
        snap = info["snapshot"]
        a = pol.act(obs, snap)
        ref, _ = model.predict(vn.normalize_obs(obs), action_masks=snap.action_mask, deterministic=True)
        assert a.tolist() == np.asarray(ref).tolist()
        s = pol.scores(obs, snap)
        assert s.shape == (5,) and np.all((s >= 0) & (s <= 1)) and s.sum() <= 1 + 1e-6
        assert np.all(s[~snap.feasible] == 0.0)
        obs, _, term, done, info = env.step(a)
        n += 1
    assert n > 100


def test_onnx_policy_via_registry(exported):
    registry = pytest.importorskip("agents.registry")  # another engineer's module: optional here
    pol = registry.load_policy(str(exported))
    from agents.onnx_policy import ONNXPolicy

    assert isinstance(pol, ONNXPolicy)


def test_onnx_policy_rejects_other_scenario(exported):
    from agents.onnx_policy import ONNXPolicy

    pol = ONNXPolicy(exported)
    env = gym.make("gridenv/Continental-v1")
    obs, info = env.reset(seed=0)
    with pytest.raises(ValueError, match="snapshot of sites"):
        pol.act(obs, info["snapshot"])


# ---------------------------------------------------------------------------- inputs
def test_resolve_model_layouts(run_dir, tmp_path):
    run = tmp_path / "metro_maskable_ppo_s1"
    shutil.copytree(run_dir, run)
    assert resolve_model(run) == (run / "model.zip", run / "vecnormalize.pkl")
    (run / "best_model").mkdir()
    shutil.copy(run / "model.zip", run / "best_model" / "best_model.zip")
    shutil.copy(run / "vecnormalize.pkl", run / "best_model" / "vecnormalize.pkl")
    assert resolve_model(run) == (run / "best_model" / "best_model.zip", run / "best_model" / "vecnormalize.pkl")
    ck = run / "checkpoints"
    ck.mkdir()
    shutil.copy(run / "model.zip", ck / "rl_model_384_steps.zip")
    shutil.copy(run / "vecnormalize.pkl", ck / "rl_model_vecnormalize_384_steps.pkl")
    assert resolve_model(ck / "rl_model_384_steps.zip")[1] == ck / "rl_model_vecnormalize_384_steps.pkl"


def test_scenario_from_args_json_and_checks(run_dir, tmp_path):
    run = tmp_path / "anonymous"
    shutil.copytree(run_dir, run)
    with pytest.raises(ExportError, match="pass --scenario"):
        export_policy(run, tmp_path / "o1", verify_states=0)
    with pytest.raises(ExportError, match="shape"):  # continental encodes a different observation
        export_policy(run, tmp_path / "o2", scenario="continental", verify_states=0)
    (run / "args.json").write_text(json.dumps({"args": {"scenario": "gridenv/Metro-v1"},
                                               "hyperparams": {"env_config": {"horizon_s": 30}}}))
    res = export_policy(run, tmp_path / "o3", verify_states=0)
    meta = json.loads((tmp_path / "o3" / "policy.json").read_text())
    assert res["scenario"] == "metro" and meta["scenario"]["env_config"] == {"horizon_s": 30}
    with pytest.raises(ExportError, match="trained on"):
        export_policy(run, tmp_path / "o4", scenario="outage", verify_states=0)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_cli_bad_inputs(run_dir, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main([str(tmp_path / "nope"), "--out", out]) == 2
    assert "no such file or directory" in _one_error_line(capsys)

    (tmp_path / "empty_run").mkdir()
    assert main([str(tmp_path / "empty_run"), "--out", out]) == 2
    assert "not a run directory" in _one_error_line(capsys)

    fake = tmp_path / "fake" / "model.zip"
    fake.parent.mkdir()
    fake.write_text("not a zip")
    shutil.copy(run_dir / "vecnormalize.pkl", fake.parent)
    assert main([str(fake), "--out", out, "--scenario", "metro"]) == 2
    assert "not a valid Stable-Baselines3 model archive" in _one_error_line(capsys)

    novn = tmp_path / "novn"
    novn.mkdir()
    shutil.copy(run_dir / "model.zip", novn)
    assert main([str(novn / "model.zip"), "--out", out, "--scenario", "metro"]) == 2
    assert "VecNormalize statistics not found" in _one_error_line(capsys)

    (novn / "vecnormalize.pkl").write_bytes(b"garbage")
    assert main([str(novn / "model.zip"), "--out", out, "--scenario", "metro"]) == 2
    assert "not a VecNormalize pickle" in _one_error_line(capsys)
    assert not (tmp_path / "out" / "policy.onnx").exists()


def test_cli_exit_code_subprocess(tmp_path):
    r = subprocess.run([sys.executable, "-m", "agents.export", str(tmp_path / "missing"), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing" in lines[0]


def test_plain_ppo_export(tmp_path):
    """A plain PPO model (separate actor/critic extractors) exports too; the mask is applied in the graph."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    run = tmp_path / "metro_ppo_s0"
    run.mkdir()
    venv = VecNormalize(DummyVecEnv([lambda: gym.make(METRO, config={"horizon_s": 20})]), norm_reward=False)
    model = PPO("MlpPolicy", venv, n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu",
                policy_kwargs={"share_features_extractor": False})
    model.learn(64)
    model.save(run / "model.zip")
    venv.save(str(run / "vecnormalize.pkl"))
    res = export_policy(run, tmp_path / "out", verify_states=256)
    v = res["verification"]
    assert res["algo"] == "ppo" and v["action_agreement"] == 1.0 and v["masked_actions_chosen"] == 0
    assert v["max_abs_logit_diff"] <= 1e-5


@pytest.mark.parametrize("diff,scale,ok", [(5e-5, 1.0, True), (2e-4, 1.0, False), (2.8e-4, 82.5, True),
                                           (1e-3, 82.5, False)])
def test_verification_tolerance_is_absolute_or_relative_to_the_largest_logit(run_dir, tmp_path, monkeypatch,
                                                                             diff, scale, ok):
    """A peaked clone (logits ~80, models/generalist) differs from ONNX Runtime by float32 ulps:
    1e-4 absolute or 1e-5 of the largest logit passes, more is refused."""
    from agents import export as E

    monkeypatch.setattr(E, "_verify", lambda *a, **k: {"states": 8, "max_abs_logit_diff": diff,
                                                        "max_abs_logit": scale, "action_agreement": 1.0,
                                                        "masked_actions_chosen": 0})
    if ok:
        export_policy(run_dir, tmp_path / "out", verify_states=8)
    else:
        with pytest.raises(E.ExportError, match="disagrees"):
            export_policy(run_dir, tmp_path / "out", verify_states=8)
