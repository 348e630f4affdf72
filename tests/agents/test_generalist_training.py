"""Training for any grid (issue 11): RandomGrid runs, collapse warnings, the imitation warm start,
and fine-tuning a trained policy (--init-from). Tiny runs: plumbing and decisions, not learning."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sb3_contrib")
pytest.importorskip("tensorboard")

import gymnasium as gym  # noqa: E402

import gridenv  # noqa: E402,F401
from agents import training as T  # noqa: E402
from agents import warm_start as W  # noqa: E402
from policy_parity import rollout_sb3_vs_onnx  # noqa: E402  (tests/agents/policy_parity.py)
from gridenv.envs.registration import RANDOM_GRID_ID  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OWN_GRID = ROOT / "configs" / "own-grid" / "own-grid-1500000008.yaml"

TINY_SITE = """
default:
  policy: site_scoring
  site_hidden: [16, 16]
  critic_hidden: [16]
  n_envs: 2
  n_steps: 64
  batch_size: 64
  n_epochs: 1
  normalize: {obs: false, reward: true}
  env_config: {horizon_s: 4}
  eval_episodes: 1
random-grid:
  vec_backend: hybrid
"""


def train_main(argv: list[str]):
    """What train.py does, in process (nothing imports the script)."""
    from agents.arguments import TrainArgs, parse, run_main

    args, explicit = parse(TrainArgs, argv, prog="train.py")
    return run_main("train.py", args.debug,
                    lambda: T.train(args, explicit, shlex.join(["python", "train.py", *argv])))


def tiny(run_dir: Path, hp: Path, *extra: str) -> list[str]:
    return ["--run-dir", str(run_dir), "--hyperparams", str(hp), "--total-timesteps", "256",
            "--eval-freq", "0", "--checkpoint-freq", "256", "--no-eval-leaderboard",
            "--no-progress-bar", "--verbose", "0", *extra]


@pytest.fixture(scope="module")
def hp(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("hp") / "tiny.yaml"
    p.write_text(TINY_SITE)
    return p


@pytest.fixture(scope="module")
def random_grid_run(tmp_path_factory, hp):
    """A tiny run on gridenv/RandomGrid-v1 (batched hybrid envs, warm start on)."""
    run_dir = tmp_path_factory.mktemp("runs") / "rg"
    result = train_main(tiny(run_dir, hp, "--scenario", "random-grid", "--warm-start-steps", "64"))
    return run_dir, result


# ----------------------------------------------------------------------------- RandomGrid
def test_random_grid_trains_on_the_relative_interface(random_grid_run):
    run_dir, result = random_grid_run
    assert result["timesteps"] == 256
    rec = json.loads((run_dir / "args.json").read_text())
    assert rec["env_id"] == RANDOM_GRID_ID and rec["scenario"] == "random-grid"
    assert rec["interface"]["interface"]["mode"] == "relative"
    assert rec["hyperparams"]["vec_backend"] == "hybrid"  # the batched path, not DummyVecEnv
    assert rec["warm_start"]["heuristic"] == "slo-greedy" and rec["warm_start"]["n_decisions"] == 64


def test_random_grid_env_config_is_the_generator_spec(hp, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train_main(tiny(tmp_path / "r", hp, "--scenario", "random-grid", "--env-config", '{"n_sitez": [1, 2]}'))
    assert exc.value.code == 2
    assert "RandomGridSpec" in capsys.readouterr().err


# ----------------------------------------------------------------------------- collapse warnings
def _episodes(policy_fn, seeds, config):
    """(episode metrics, mean reward) of `policy_fn(obs, info)` on metro episodes."""
    metrics, rewards = [], []
    for seed in seeds:
        env = gym.make("gridenv/Metro-v1", config=config)
        obs, info = env.reset(seed=seed)
        total = 0.0
        while True:
            obs, r, term, trunc, info = env.step(policy_fn(obs, info))
            total += r
            if term or trunc:
                break
        metrics.append(info["episode_metrics"])
        rewards.append(total)
    return metrics, float(np.mean(rewards))


def test_in_training_collapse_warning_flags_a_shedding_policy_not_a_good_one():
    from agents.heuristics import make_heuristic

    config, seeds = {"horizon_s": 30}, [5000, 5001]
    ref = T.ReferenceOnEvalSeeds("gridenv/Metro-v1", config, seeds)
    shed_all = lambda obs, info: np.array([5, 1])  # noqa: E731 - slot 5 sheds on metro
    m, r = _episodes(shed_all, seeds, config)
    w = T.eval_collapse_warning("run", 100_000, m, r, ref)
    assert w is not None and "collapsed to shedding" in w and "100,000 steps" in w
    assert "--warm-start" in w and "--init-from models/generalist" in w
    assert ref.result is not None and ref.result.reward_mean > r  # random earns more than 0 $
    good = make_heuristic("slo-greedy")
    m, r = _episodes(lambda obs, info: good.act(obs, info["snapshot"]), seeds, config)
    assert T.eval_collapse_warning("run", 100_000, m, r, ref) is None


def test_collapse_counts_only_what_random_served_and_flags_below_random():
    ref = T.EvalReference(reward_mean=1.0, shed=40, arrived=100)  # 40 requests nobody could take
    ok = [{"shed": 45, "arrived": 100}]
    assert T.eval_collapse_warning("run", 1, ok, 2.0, ref) is None
    assert "collapsed to shedding" in T.eval_collapse_warning("run", 1, [{"shed": 80, "arrived": 100}], 2.0, ref)
    w = T.eval_collapse_warning("run", 1, ok, 0.5, ref)
    assert "less than the random heuristic" in w and "1.000 $" in w
    # the end-of-run check on a leaderboard with several scenarios names the one that collapsed
    lb = {"results": [{"policy": "run", "scenario": "a", "reward_mean": 3.0, "shed_frac": 0.1},
                      {"policy": "random", "scenario": "a", "reward_mean": 2.0, "shed_frac": 0.1},
                      {"policy": "run", "scenario": "b", "reward_mean": 1.0, "shed_frac": 0.2},
                      {"policy": "random", "scenario": "b", "reward_mean": 2.0, "shed_frac": 0.1}]}
    w = T.collapse_warning("run", lb)
    assert "less than the random heuristic" in w and "b (1.000 vs 2.000" in w and "a (" not in w
    lb["results"][2]["reward_mean"] = 2.5
    assert T.collapse_warning("run", lb) is None


def test_in_training_warnings_reach_the_user(hp, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(T, "COLLAPSE_SHED_FRAC", -1.0)  # any evaluation counts as collapsed
    run_dir = tmp_path / "m"
    result = train_main(tiny(run_dir, hp, "--scenario", "metro", "--eval-freq", "128", "--warm-start", "none"))
    err = capsys.readouterr().err
    assert len(result["eval_warnings"]) == 2
    for w in result["eval_warnings"]:
        assert f"train.py: warning: {w}" in err and "evaluation at" in w
    assert "random on the same episodes" in result["eval_warnings"][0]


# ----------------------------------------------------------------------------- warm start
def test_behaviour_cloning_learns_the_heuristic():
    from sb3_contrib import MaskablePPO

    from agents.site_policy import MaskableSiteScoringPolicy

    venv = T.make_vec_env("gridenv/Metro-v1", 1, 0, 0.99, {"obs": False}, {"horizon_s": 20})
    model = MaskablePPO(MaskableSiteScoringPolicy, venv, seed=0, policy_kwargs={
        "site_hidden": [32, 32], "critic_hidden": [32], "n_site_features": 12})
    demo = W.collect_demonstrations(T.make_env("gridenv/Metro-v1", {"horizon_s": 20}), "slo-greedy", 1500, seed=7)
    assert demo.obs.shape == (1500, venv.observation_space.shape[0]) and demo.episode_starts[0]
    before, after, site_acc, level_acc = W.behaviour_clone(model.policy, demo.obs, demo.masks, demo.actions,
                                                           maskable=True, min_updates=500)
    assert after < 0.5 * before
    assert site_acc > 0.7 and level_acc > 0.8  # chance: about 1 in 5 feasible sites
    rms_count = venv.ret_rms.count
    returns = W.normalized_returns(demo.rewards, demo.episode_starts, 0.99, venv)
    assert venv.ret_rms.count > rms_count and np.all(np.isfinite(returns))
    assert W.fit_critic(model.policy, demo.obs, returns, epochs=20) > 0.0


def test_warm_start_is_recorded_and_can_be_turned_off(hp, tmp_path, capsys):
    run = tmp_path / "ws"
    train_main(tiny(run, hp, "--scenario", "metro", "--warm-start", "cost-greedy", "--warm-start-steps", "100"))
    ws = json.loads((run / "args.json").read_text())["warm_start"]
    assert ws["heuristic"] == "cost-greedy" and ws["n_decisions"] == 64  # capped at total/4
    assert ws["nll_after"] < ws["nll_before"]
    off = tmp_path / "off"
    train_main(tiny(off, hp, "--scenario", "metro", "--warm-start", "none"))
    assert json.loads((off / "args.json").read_text())["warm_start"] is None
    with pytest.raises(SystemExit) as exc:
        train_main(tiny(tmp_path / "bad", hp, "--warm-start", "oracle"))
    assert exc.value.code == 2 and "--warm-start: unknown heuristic 'oracle'" in capsys.readouterr().err


def test_a_teacher_that_is_not_a_baseline_is_cloned_by_name(hp, tmp_path):
    """--warm-start slo-greedy-lenient (agents.warm_start.TEACHERS): cloned and recorded by its
    name; on centralized it sheds less than slo-greedy, and still some."""
    from agents.heuristics import HEURISTICS

    run = tmp_path / "lenient"
    train_main(tiny(run, hp, "--scenario", "metro", "--warm-start", "slo-greedy-lenient", "--warm-start-steps", "100"))
    assert json.loads((run / "args.json").read_text())["warm_start"]["heuristic"] == "slo-greedy-lenient"
    make = T.make_env("gridenv/Centralized-v1", {"horizon_s": 30})
    strict = W.collect_demonstrations(make, "slo-greedy", 1500, seed=5000, level=2)
    lenient = W.collect_demonstrations(make, "slo-greedy-lenient", 1500, seed=5000, level=2)
    assert 0.0 < lenient.shed_frac < strict.shed_frac  # here 6.3% vs 9.6%
    assert "slo-greedy-lenient" not in HEURISTICS  # not a baseline


# ----------------------------------------------------------------------------- --init-from
def test_init_from_copies_the_policy_onto_a_relative_mode_grid(random_grid_run, tmp_path):
    import torch
    from sb3_contrib import MaskablePPO

    src_dir, _ = random_grid_run
    hp = tmp_path / "frozen.yaml"  # learning rate ~0: the fine-tuned weights stay the source's
    hp.write_text(TINY_SITE.replace("  n_epochs: 1\n", "  n_epochs: 1\n  learning_rate: 1.0e-12\n")
                  .replace("site_hidden: [16, 16]", "site_hidden: [8]"))
    run = tmp_path / "ft"
    train_main(tiny(run, hp, "--scenario", str(OWN_GRID), "--init-from", str(src_dir)))
    rec = json.loads((run / "args.json").read_text())
    assert rec["init_from"].endswith("model.zip") and rec["warm_start"] is None
    src = MaskablePPO.load(src_dir / "model.zip").policy.state_dict()
    new = MaskablePPO.load(run / "model.zip").policy.state_dict()
    assert new.keys() == src.keys()  # the source's architecture (16, 16), not the file's [8]
    for k in src:
        assert torch.allclose(src[k], new[k], atol=1e-6), k


def test_init_from_refuses_another_interface_naming_it(random_grid_run, hp, tmp_path, capsys):
    src_dir, _ = random_grid_run
    with pytest.raises(SystemExit) as exc:
        train_main(tiny(tmp_path / "x", hp, "--scenario", "metro", "--init-from", str(src_dir)))
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert "'relative-" in err and "'slots-" in err and "observation: {mode: relative}" in err
    assert "max_sites: 12" in err
    with pytest.raises(SystemExit):
        train_main(tiny(tmp_path / "y", hp, "--init-from", str(tmp_path / "nowhere")))
    assert "--init-from" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_main(tiny(tmp_path / "z", hp, "--init-from", str(src_dir), "--resume"))
    assert "--init-from" in capsys.readouterr().err


@pytest.mark.parametrize("scenario", [str(OWN_GRID), "mooncake-replay", "gridenv/Metro-v1"])
def test_a_generalist_exports_for_a_grid_file_or_any_registered_scenario(random_grid_run, scenario, tmp_path):
    """A platform engineer's own grid is a YAML file: export takes it (and names it back)."""
    from agents.export import ExportError, export_policy
    from agents.onnx_policy import ONNXPolicy
    from gridenv.envs.registration import register_scenario

    run_dir, _ = random_grid_run
    out = tmp_path / "onnx"
    res = export_policy(run_dir / "model.zip", out, scenario=scenario, verify_states=16)
    assert res["scenario"] == json.loads((out / "policy.json").read_text())["scenario"]["name"] != ""
    policy = ONNXPolicy(out)
    env = gym.make(register_scenario(scenario), config={"horizon_s": 5, "observation": {"mode": "relative"},
                                                        "actions": {"max_sites": 12}})
    obs, info = env.reset(seed=3)
    assert policy.act(obs, info["snapshot"]).shape == (2,)
    with pytest.raises(ExportError, match="no-such-grid.yaml"):
        export_policy(run_dir / "model.zip", tmp_path / "x", scenario=str(tmp_path / "no-such-grid.yaml"))


def test_own_grid_file_is_what_the_generator_writes(tmp_path):
    """The README's own grid: `python -m gridenv.core.random_grid --seeds 1500000008 --prefix own-grid`,
    a seed in neither the training (< 1e9) nor the held-out (>= 2e9) range."""
    import yaml

    from gridenv.core.random_grid import main
    from gridenv.envs.random_grid_env import HELDOUT_GRID_SEED_MIN, TRAIN_GRID_SEED_END

    assert TRAIN_GRID_SEED_END <= 1500000008 < HELDOUT_GRID_SEED_MIN
    assert main(["--seeds", "1500000008", "--out", str(tmp_path), "--prefix", "own-grid"]) == 0
    written = tmp_path / OWN_GRID.name
    assert yaml.safe_load(written.read_text()) == yaml.safe_load(OWN_GRID.read_text())
    assert yaml.safe_load(OWN_GRID.read_text())["observation"] == {"mode": "relative"}


def test_ctrl_c_stops_training_and_keeps_the_model(hp, tmp_path, capsys, monkeypatch):
    """KeyboardInterrupt during learning: the model and statistics are saved, --resume works."""
    class Interrupting(T.EpisodeMetricsCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps >= 128:
                raise KeyboardInterrupt
            return super()._on_step()

    monkeypatch.setattr(T, "EpisodeMetricsCallback", Interrupting)
    run = tmp_path / "stop"
    result = train_main(tiny(run, hp, "--scenario", "metro", "--warm-start", "none"))
    assert result["interrupted"] and result["timesteps"] == 128
    assert (run / "model.zip").is_file() and (run / "vecnormalize.pkl").is_file()
    assert (run / "checkpoints" / "rl_model_128_steps.zip").is_file()
    assert "interrupted at 128 steps" in capsys.readouterr().err
    monkeypatch.undo()
    resumed = train_main(["--resume", *tiny(run, hp, "--scenario", "metro")])
    assert resumed["timesteps"] == 256 and not resumed["interrupted"]


@pytest.mark.parametrize("source", ["metro", "configs/generalization/heldout-2000000006.yaml"])
def test_committed_generalist_loads_and_matches_its_onnx_export(source, tmp_path):
    """models/generalist on a registered scenario (seen through the relative observation; its
    committed export) and on a held-out grid (exported for that grid here: an export binds the
    statics of one grid): the SB3 model and its ONNX export take the same decisions, and it sets
    batch levels itself (its teacher asked for 128; no registered heuristic changes a level)."""
    from agents.export import export_policy
    from agents.onnx_policy import ONNXPolicy
    from agents.sb3_policy import SB3Policy
    from gridenv.envs.registration import register_scenario

    models = ROOT / "models" / "generalist"
    src = str(ROOT / source) if source.endswith(".yaml") else source
    onnx_dir = models / "onnx"
    if source.endswith(".yaml"):
        export_policy(models / "best_model.zip", tmp_path / "onnx", scenario=src, verify_states=64)
        onnx_dir = tmp_path / "onnx"
    policy, onnx = SB3Policy(models / "best_model.zip"), ONNXPolicy(onnx_dir)
    env = gym.make(register_scenario(src), config={"horizon_s": 20, "observation": {"mode": "relative"},
                                                   "actions": {"max_sites": 12}})
    levels, ties, routed = rollout_sb3_vs_onnx(policy, onnx, env)
    assert ties <= 5 and routed > 50
    assert 2 in levels


def test_largest_batch_reference_routes_as_slo_greedy_at_the_largest_level():
    """examples/largest_batch_reference.py (the README's reference row): slo-greedy's site, the
    last batch level, and a shed stays a shed."""
    from agents.heuristics import make_heuristic
    from agents.registry import load_policy

    ref = load_policy(str(ROOT / "examples" / "largest_batch_reference.py") + ":SloGreedyLargestBatch")
    slo = make_heuristic("slo-greedy")
    env = gym.make("gridenv/Bursty-v1", config={"horizon_s": 30})
    obs, info = env.reset(seed=4)
    ref.reset(4), slo.reset(4)
    n_levels = len(info["snapshot"].statics.batch_levels)
    routed = 0
    for _ in range(300):
        a, b = ref.act(obs, info["snapshot"]), slo.act(obs, info["snapshot"])
        assert a[0] == b[0]
        if a[0] < info["snapshot"].statics.n_sites:
            assert a[1] == n_levels - 1
            routed += 1
        obs, _, _, trunc, info = env.step(a)
        if trunc:
            break
    assert routed > 100
