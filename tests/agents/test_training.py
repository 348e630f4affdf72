"""agents/training.py and train.py: a tiny run end to end, resume, hyperparameter files, bad args.

The training runs use a 8-second horizon, 2 envs and a tiny network so the whole file takes a
few seconds; they check the plumbing (files, statistics, logs), not learning.
"""

from __future__ import annotations

import json
import pickle
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("sb3_contrib")
pytest.importorskip("tensorboard")

import gridenv  # noqa: E402,F401
from agents import training as T  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
METRICS = ("goodput_tokens_per_s", "slo_attainment", "usd_per_mtok", "energy_kwh")


class train:  # noqa: N801 - what train.py does, in process (nothing imports the script)
    @staticmethod
    def main(argv: list[str]):
        from agents.arguments import TrainArgs, parse, run_main

        args, explicit = parse(TrainArgs, argv, prog="train.py")
        command = shlex.join(["python", "train.py", *argv])

        def main():
            if args.seeds or args.sweep or args.backend != "local":
                from agents.campaign import train_runs

                return train_runs(args, explicit, command)
            return T.train(args, explicit, command)

        return run_main("train.py", args.debug, main)

TINY_YAML = """
default:
  n_envs: 2
  n_steps: 64
  batch_size: 64
  n_epochs: 1
  gamma: 0.99
  net_arch: [32, 32]
  normalize: {obs: true, reward: true}
  env_config: {horizon_s: 8}
  eval_episodes: 1
  eval_seeds_start: 5000
"""


def tiny_args(run_dir: Path, hp: Path, *extra: str) -> list[str]:
    return ["--run-dir", str(run_dir), "--hyperparams", str(hp), "--total-timesteps", "512",
            "--eval-freq", "128", "--checkpoint-freq", "128", "--no-eval-leaderboard",
            "--no-progress-bar", "--verbose", "0", *extra]


@pytest.fixture(scope="module")
def tiny_hp(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("hp") / "tiny.yaml"
    p.write_text(TINY_YAML)
    return p


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_hp):
    run_dir = tmp_path_factory.mktemp("runs") / "metro_tiny"
    result = train.main(tiny_args(run_dir, tiny_hp))
    return run_dir, result


# ----------------------------------------------------------------------------- a tiny run
def test_run_writes_models_checkpoints_and_stats(tiny_run):
    run_dir, result = tiny_run
    assert result["timesteps"] >= 512
    assert (run_dir / "model.zip").is_file() and (run_dir / "vecnormalize.pkl").is_file()
    ckpts = sorted((run_dir / "checkpoints").glob("rl_model_*_steps.zip"))
    assert len(ckpts) >= 4
    for c in ckpts:  # every checkpoint carries its VecNormalize statistics
        steps = c.name.split("_")[-2]
        assert (run_dir / "checkpoints" / f"rl_model_vecnormalize_{steps}_steps.pkl").is_file()
    last = T.latest_checkpoint(run_dir / "checkpoints")
    assert last.timesteps == result["timesteps"]  # the final model is also the last checkpoint
    saved = json.loads((run_dir / "args.json").read_text())
    assert saved["args"]["total_timesteps"] == 512 and saved["scenario"] == "metro"
    assert saved["commands"][0].startswith("python train.py") and "--run-dir" in saved["commands"][0]
    assert saved["hyperparams"]["env_config"] == {"horizon_s": 8}


def test_best_model_has_the_statistics_it_was_evaluated_with(tiny_run):
    run_dir, _ = tiny_run
    best = run_dir / "best_model"
    assert (best / "best_model.zip").is_file() and (best / "vecnormalize.pkl").is_file()
    info = json.loads((best / "best.json").read_text())
    # Checkpoint and evaluation fire on the same step: the checkpoint's stats are the best model's.
    ckpt_pkl = run_dir / "checkpoints" / f"rl_model_vecnormalize_{info['timesteps']}_steps.pkl"
    with open(best / "vecnormalize.pkl", "rb") as f, open(ckpt_pkl, "rb") as g:
        a, b = pickle.load(f), pickle.load(g)
    np.testing.assert_array_equal(a.obs_rms.mean, b.obs_rms.mean)
    np.testing.assert_array_equal(a.obs_rms.var, b.obs_rms.var)
    assert a.obs_rms.count > 100  # statistics of training observations, not a fresh VecNormalize


def test_tensorboard_has_custom_episode_and_eval_scalars(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir, _ = tiny_run
    tb_dirs = list((run_dir / "tb").iterdir())
    assert [d.name for d in tb_dirs] == ["maskable_ppo_1"]
    ea = EventAccumulator(str(tb_dirs[0]))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    for m in METRICS:
        assert f"episode/{m}" in tags, sorted(tags)
        assert f"eval/{m}" in tags, sorted(tags)
        values = [e.value for e in ea.Scalars(f"episode/{m}")]
        assert values and all(np.isfinite(values))
    assert "eval/mean_reward" in tags and "rollout/ep_rew_mean" in tags
    slo = [e.value for e in ea.Scalars("episode/slo_attainment")]
    assert all(0.0 <= v <= 1.0 for v in slo)


def test_monitor_csv_has_episode_metrics(tiny_run):
    run_dir, _ = tiny_run
    csv = run_dir / "monitor" / "train_0.monitor.csv"
    header = csv.read_text().splitlines()[1].split(",")
    assert header[:3] == ["r", "l", "t"] and set(METRICS) <= set(header)


def test_resume_continues_from_last_checkpoint(tiny_run, tiny_hp, tmp_path):
    src, first = tiny_run
    run_dir = tmp_path / src.name
    shutil.copytree(src, run_dir)
    ckpt = T.latest_checkpoint(run_dir / "checkpoints")
    with open(ckpt.vecnormalize, "rb") as f:
        saved = pickle.load(f)

    # The loader train.py uses restores exactly the saved statistics.
    venv = T.make_vec_env("gridenv/Metro-v1", 2, 0, 0.99, {}, {"horizon_s": 8},
                          vecnormalize_path=ckpt.vecnormalize)
    np.testing.assert_array_equal(venv.obs_rms.mean, saved.obs_rms.mean)
    np.testing.assert_array_equal(venv.obs_rms.var, saved.obs_rms.var)
    assert venv.obs_rms.count == saved.obs_rms.count and venv.ret_rms.var == saved.ret_rms.var
    assert venv.training and venv.norm_reward
    venv.close()

    monitor_lines = (run_dir / "monitor" / "train_0.monitor.csv").read_text().splitlines()
    result = train.main(["--run-dir", str(run_dir), "--resume", "--total-timesteps", "1024",
                         "--no-progress-bar"])
    assert result["resumed_from"].timesteps == ckpt.timesteps == first["timesteps"]
    assert result["timesteps"] >= 1024 > ckpt.timesteps
    with open(run_dir / "vecnormalize.pkl", "rb") as f:
        after = pickle.load(f)
    new_steps = result["timesteps"] - ckpt.timesteps
    assert after.obs_rms.count >= saved.obs_rms.count + new_steps  # continued, not restarted
    assert (run_dir / "checkpoints" / f"rl_model_{result['timesteps']}_steps.zip").is_file()
    # Logs continue: Monitor CSV appended, evaluation history kept.
    after_lines = (run_dir / "monitor" / "train_0.monitor.csv").read_text().splitlines()
    assert after_lines[: len(monitor_lines)] == monitor_lines and len(after_lines) > len(monitor_lines)
    evals = np.load(run_dir / "eval" / "evaluations.npz")["timesteps"]
    assert evals.min() <= ckpt.timesteps < evals.max()
    # Same TensorBoard run continued; unspecified arguments came from args.json.
    assert [d.name for d in (run_dir / "tb").iterdir()] == ["maskable_ppo_1"]
    record = json.loads((run_dir / "args.json").read_text())
    assert record["args"]["n_envs"] is None and record["args"]["eval_freq"] == 128
    assert record["args"]["hyperparams"] == str(tiny_hp)
    assert len(record["commands"]) == 2 and "--resume" in record["commands"][1]


def test_plain_ppo_run(tiny_hp, tmp_path):
    run_dir = tmp_path / "metro_ppo"
    result = train.main(tiny_args(run_dir, tiny_hp, "--algo", "ppo", "--total-timesteps", "128",
                                  "--eval-freq", "128"))
    assert result["timesteps"] == 128
    assert (run_dir / "best_model" / "vecnormalize.pkl").is_file()
    assert [d.name for d in (run_dir / "tb").iterdir()] == ["ppo_1"]


@pytest.mark.parametrize("algo", ["maskable_ppo", "ppo"])
def test_site_scoring_policy_run_acts_through_sb3policy(tmp_path, algo):
    """The default actor of configs/ppo.yaml, trained, saved and loaded as a leaderboard policy."""
    from agents.sb3_policy import SB3Policy
    from agents.site_policy import MaskableSiteScoringPolicy, SiteScoringPolicy

    hp = tmp_path / "site.yaml"
    hp.write_text(TINY_YAML.replace("  net_arch: [32, 32]\n", "  policy: site_scoring\n  site_hidden: [16]\n"
                                    "  critic_hidden: [16]\n").replace("{obs: true,", "{obs: false,"))
    run_dir = tmp_path / f"metro_site_{algo}"
    train.main(tiny_args(run_dir, hp, "--algo", algo, "--total-timesteps", "128", "--eval-freq", "0"))
    policy = SB3Policy(run_dir / "model.zip")
    expected = MaskableSiteScoringPolicy if algo == "maskable_ppo" else SiteScoringPolicy
    assert type(policy.model.policy) is expected
    assert policy.model.policy.mlp_extractor.site_mlp[0].out_features == 16
    env = gym.make("gridenv/Metro-v1", config={"horizon_s": 5}).unwrapped
    obs, _ = env.reset(seed=0)
    for _ in range(50):
        action = policy.act(obs, env.snapshot)
        assert action[0] == env.max_sites or env.snapshot.feasible[action[0]]
        obs, _, _, trunc, _ = env.step(action)
        if trunc:
            break


# ----------------------------------------------------------------------------- bad arguments
def _cli_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exc:
        train.main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_unknown_scenario_is_a_clear_error(capsys, tmp_path):
    err = _cli_error(capsys, ["--scenario", "atlantis", "--run-dir", str(tmp_path / "r")])
    assert "unknown scenario 'atlantis'" in err and "metro" in err


def test_missing_hyperparams_file_is_a_clear_error(capsys, tmp_path):
    err = _cli_error(capsys, ["--hyperparams", str(tmp_path / "nope.yaml"), "--run-dir", str(tmp_path / "r")])
    assert "hyperparameter file not found" in err and "nope.yaml" in err


def test_bad_yaml_key_is_a_clear_error(capsys, tmp_path):
    hp = tmp_path / "hp.yaml"
    hp.write_text("default:\n  n_steps: 64\nmetro:\n  learning_rat: 0.001\n")
    err = _cli_error(capsys, ["--hyperparams", str(hp), "--run-dir", str(tmp_path / "r")])
    assert "hp.yaml: metro: unknown hyperparameter 'learning_rat'" in err


def test_unknown_algo_and_bad_env_config(capsys, tmp_path):
    err = _cli_error(capsys, ["--algo", "dqn"])
    assert "--algo" in err and "dqn" in err
    err = _cli_error(capsys, ["--env-config", "{horizon", "--run-dir", str(tmp_path / "r")])
    assert "--env-config is not valid JSON" in err


def test_existing_run_needs_resume_or_overwrite(capsys, tiny_run):
    run_dir, _ = tiny_run
    err = _cli_error(capsys, ["--run-dir", str(run_dir)])
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err


def test_resume_without_checkpoint(capsys, tmp_path):
    err = _cli_error(capsys, ["--run-dir", str(tmp_path / "empty"), "--resume"])
    assert "no checkpoint" in err


@pytest.mark.parametrize("extra, message", [
    # was: torch's RuntimeError traceback from the model's constructor
    (["--device", "gpu0", "--no-eval-leaderboard"], "--device 'gpu0': Invalid device string"),
    # was: a FileExistsError traceback at mkdir
    (["--run-dir", "A_FILE", "--no-eval-leaderboard"], "--run-dir A_FILE: exists and is not a directory"),
    # was: found only after training ('leaderboard failed'), exit status 0
    (["--leaderboard-suite", "smoky"], "--leaderboard-suite: unknown suite 'smoky'; known suites: smoke"),
    (["--leaderboard-suite", "smoky", "--seeds", "0,1"], "--leaderboard-suite: unknown suite 'smoky'"),
], ids=["device", "run-dir-file", "suite", "suite-seeds"])
def test_flags_that_failed_late_are_refused_before_training(capsys, tmp_path, extra, message):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    extra = [str(a_file) if a == "A_FILE" else a for a in extra]
    argv = ["--run-dir", str(tmp_path / "r"), "--total-timesteps", "64", "--warm-start", "none", *extra]
    err = _cli_error(capsys, argv)
    assert message.replace("A_FILE", str(a_file)) in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_resume_with_other_algo_is_refused(capsys, tiny_run, tmp_path):
    src, _ = tiny_run
    shutil.copytree(src, tmp_path / "r")
    err = _cli_error(capsys, ["--run-dir", str(tmp_path / "r"), "--resume", "--algo", "ppo"])
    assert "trained with algo 'maskable_ppo'" in err


# ----------------------------------------------------------------------------- hyperparameters
def test_yaml_merges_default_and_scenario_entry(tmp_path):
    hp = tmp_path / "hp.yaml"
    hp.write_text(
        "default:\n  n_steps: 512\n  gamma: 0.995\n  net_arch: [64, 64]\n"
        "  normalize: {obs: true, reward: true}\n  env_config: {}\n"
        "metro:\n  n_steps: 128\n  net_arch: [16]\n  normalize: {reward: false}\n"
        "gridenv/Outage-v1:\n  gamma: 0.9\n  env_config: {horizon_s: 30}\n"
    )
    metro = T.load_hyperparams(hp, "metro")
    assert metro == {"n_steps": 128, "gamma": 0.995, "net_arch": [16],
                     "normalize": {"obs": True, "reward": False}, "env_config": {}}
    assert T.load_hyperparams(hp, "gridenv/Metro-v1") == metro  # by id, found under its name
    outage = T.load_hyperparams(hp, "outage")  # by name, found under its id
    assert outage["gamma"] == 0.9 and outage["n_steps"] == 512 and outage["env_config"] == {"horizon_s": 30}
    assert T.load_hyperparams(hp, "bursty")["gamma"] == 0.995  # no entry: the default


@pytest.mark.parametrize("text, match", [
    ("default:\n  n_steps: [1\n", "not valid YAML"),
    ("metro:\n  n_steps: 64\n", "'default:' entry"),
    ("default:\n  n_steps: 64\natlantis: {}\n", "unknown entry 'atlantis'"),
    ("default:\n  normalize: {obs: true, rewards: true}\n", "default.normalize.rewards: unknown key"),
    ("default:\n  n_steps: many\n", "default.n_steps: Input should be a valid integer .got 'many'"),
    ("default:\n  learning_rate: fast\n", "default.learning_rate: must be a positive number or 'lin_<number>', got 'fast'"),
    ("default:\n  n_steps: true\n", "default.n_steps: Input should be a valid integer .got True"),
    ("default:\n  gamma: .nan\n", "default.gamma: Input should be a finite number"),
    ("default:\n  n_envs: 0\n", "default.n_envs: Input should be greater than 0"),
    ("default:\n  n_steps: 64\n  n_steps: 128\n", "hp.yaml line 3: duplicate key 'default.n_steps' .first given on line 2"),
    ("default: {}\nmetro: {}\ngridenv/Metro-v1: {}\n", "both 'metro' and 'gridenv/Metro-v1'"),
    ("default:\n  level_from_site: true\n",
     "hp.yaml: entry 'default': level_from_site needs policy: site_scoring .* got policy: mlp"),
    ("default:\n  policy: mlp\nmetro:\n  level_from_site: true\n", "entry 'metro': level_from_site needs policy"),
    # another scenario's entry, merged with the default, is checked too
    ("default:\n  policy: site_scoring\n  level_from_site: true\noutage:\n  policy: mlp\n",
     "entry 'outage': level_from_site needs policy: site_scoring .* got policy: mlp"),
])
def test_bad_hyperparam_files(tmp_path, text, match):
    hp = tmp_path / "hp.yaml"
    hp.write_text(text)
    with pytest.raises(T.HyperparamError, match=match):
        T.load_hyperparams(hp, "metro")


def test_level_from_site_without_site_scoring_exits_2_before_writing(capsys, tmp_path):
    """The site-conditioned level head exists only in the site-scoring policy: asked for with
    the plain MLP it is refused in one line, not silently dropped, and nothing is written."""
    hp = tmp_path / "hp.yaml"
    hp.write_text(TINY_YAML + "  level_from_site: true\n")
    run_dir = tmp_path / "r"
    err = _cli_error(capsys, tiny_args(run_dir, hp, "--total-timesteps", "128", "--eval-freq", "0"))
    assert "level_from_site needs policy: site_scoring" in err and len(err.strip().splitlines()) == 1, err
    assert not run_dir.exists()
    # with the site-scoring policy the same key is accepted (as configs/ppo_cache.yaml uses it)
    hp.write_text(TINY_YAML + "  policy: site_scoring\n  level_from_site: true\n")
    assert T.load_hyperparams(hp, "metro")["level_from_site"] is True
    cache = T.load_hyperparams(ROOT / "configs" / "ppo_cache.yaml", "coding-agent")
    assert cache["level_from_site"] is True and cache["policy"] == "site_scoring"


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("ppo*.yaml")), ids=lambda p: p.name)
def test_shipped_ppo_yaml_is_valid_for_every_scenario(path):
    from gridenv.core.scenario import scenario_names

    for name in [*scenario_names(), "random-grid"]:
        hp = T.load_hyperparams(path, name)
        assert hp["n_envs"] * hp["n_steps"] % hp["batch_size"] == 0, name
        assert hp["normalize"]["reward"] and 0.9 < hp["gamma"] < 1
        assert hp["eval_seeds_start"] + hp["eval_episodes"] <= 10_000  # leaderboard seeds are held out


def test_args_parsing_and_help():
    from agents.arguments import TrainArgs, parse

    args, explicit = parse(TrainArgs, [], prog="train.py")
    assert args == TrainArgs() and explicit == set()
    assert args.scenario == "metro" and args.algo == "maskable_ppo" and args.total_timesteps > 100_000
    args, explicit = parse(TrainArgs, ["--total-timesteps", "10", "--no-progress-bar", "--resume",
                                       "--n-envs=3"], prog="train.py")
    assert (args.total_timesteps, args.progress_bar, args.resume, args.n_envs) == (10, False, True, 3)
    assert explicit == {"total_timesteps", "progress_bar", "resume", "n_envs"}
    help_text = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True,
                               text=True, timeout=60).stdout
    for f in TrainArgs.__dataclass_fields__:  # every field is a flag with its docstring as help
        flag = "--" + ("no-" if f == "progress_bar" else "") + f.replace("_", "-")
        assert flag in help_text, flag
    assert "skip the final evaluation" in help_text and "(default: None)" not in help_text


@pytest.mark.parametrize("argv, flag", [
    (["--total-timesteps", "0"], "--total-timesteps must be at least 1, got 0"),
    (["--n-envs", "-2"], "--n-envs must be at least 1, got -2"),
    (["--seed", "-1"], "--seed must be at least 0, got -1"),
    (["--eval-freq", "-5"], "--eval-freq must be at least 0"),
    (["--checkpoint-freq", "0"], "--checkpoint-freq must be at least 1"),
    (["--workers", "0", "--seeds", "0,1"], "--workers must be at least 1"),
    (["--seeds", "0,0"], "--seeds: expected distinct comma-separated non-negative integers"),
    (["--seeds", "1,,2"], "--seeds: expected distinct comma-separated non-negative integers"),
    (["--seeds", "1,-1"], "--seeds: expected distinct"),
    (["--verbose", "7"], "--verbose must be 0, 1 or 2"),
    (["--warm-start-level", "-1"], "--warm-start-level must be a batch level index >= 0, got -1"),
    (["--warm-start-core-level", "-3"], "--warm-start-core-level must be a batch level index >= 0, got -3"),
    (["--warm-start-updates", "0"], "--warm-start-updates must be at least 1, got 0"),
    (["--resume", "--overwrite"], "--resume and --overwrite contradict"),
    (["--update-threads", "0"], "--update-threads must be at least 1, got 0"),
    (["--warm-start-anchor", "-1"], "--warm-start-anchor must be at least 0, got -1"),
    (["--warm-start-anchor", "4", "--warm-start", "none"], "--warm-start-anchor needs the warm start's demonstrations"),
    (["--warm-start-anchor", "4", "--warm-start-steps", "0"], "--warm-start-anchor needs the warm start's demonstrations"),
    (["--warm-start-dagger", "-1"], "--warm-start-dagger must be at least 0, got -1"),
    (["--warm-start-dagger", "1", "--warm-start", "none"], "--warm-start-dagger refits the warm start's clone"),
    (["--total-timesteps", "many"], "--total-timesteps"),
])
def test_bad_flags_exit_2_naming_the_flag(argv, flag, tmp_path):
    """The script itself, as a user runs it: exit 2, the flag named, no traceback, nothing written."""
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *argv, "--run-dir", str(tmp_path / "r")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert flag in proc.stderr and "Traceback" not in proc.stderr
    if not flag.endswith("timesteps"):  # our own checks: one line
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "r").exists()


def test_a_warm_started_run_is_evaluated_before_ppo_and_a_cold_one_is_not(tiny_run, tiny_hp, tmp_path):
    """The clone is a candidate best model: PPO may move it down first (eval at timestep 0)."""
    run_dir, _ = tiny_run  # warm-started (slo-greedy, the default)
    with np.load(run_dir / "eval" / "evaluations.npz") as d:
        steps = d["timesteps"].tolist()
    assert steps[0] == 0 and steps[1:] and min(steps[1:]) > 0
    cold = tmp_path / "cold"
    train.main(tiny_args(cold, tiny_hp, "--warm-start", "none"))
    with np.load(cold / "eval" / "evaluations.npz") as d:
        assert d["timesteps"].tolist()[0] > 0


def test_warm_start_updates_reach_the_behaviour_cloning(tmp_path, tiny_hp, monkeypatch):
    from agents import warm_start as W

    seen = {}
    real = W.behaviour_clone

    def spy(*a, **kw):
        seen.update(kw)
        return real(*a, **kw)

    monkeypatch.setattr(W, "behaviour_clone", spy)
    train.main(tiny_args(tmp_path / "r", tiny_hp, "--warm-start-updates", "7", "--eval-freq", "0"))
    assert seen["min_updates"] == 7


def test_update_threads_apply_to_the_ppo_update_only(tmp_path, tiny_hp, monkeypatch):
    """--update-threads: the gradient steps run on that many torch threads, the rollout's policy
    forward (while env workers step) on --torch-threads."""
    import torch
    from sb3_contrib import MaskablePPO
    from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy

    seen = {"train": set(), "rollout": set()}
    real_train, real_forward = MaskablePPO.train, MaskableActorCriticPolicy.forward

    def spy_train(self, *a, **kw):
        seen["train"].add(torch.get_num_threads())
        return real_train(self, *a, **kw)

    def spy_forward(self, *a, **kw):  # the rollout's forward; the update calls evaluate_actions
        seen["rollout"].add(torch.get_num_threads())
        return real_forward(self, *a, **kw)

    monkeypatch.setattr(MaskablePPO, "train", spy_train)
    monkeypatch.setattr(MaskableActorCriticPolicy, "forward", spy_forward)
    threads = torch.get_num_threads()
    try:
        train.main(tiny_args(tmp_path / "r", tiny_hp, "--update-threads", "2", "--eval-freq", "0",
                             "--warm-start", "none"))
    finally:
        torch.set_num_threads(threads)
    assert seen["train"] == {2}
    assert seen["rollout"] == {1}


def test_warm_start_anchor_clones_after_every_ppo_update(tmp_path, tiny_hp, monkeypatch):
    """--warm-start-anchor K: after each PPO update (not before the first), K cloning steps on
    the warm start's own demonstrations; without the flag, none."""
    from agents import warm_start as W

    calls, demos = [], []
    real_anchor, real_collect = W.anchor_steps, W.collect_demonstrations

    def spy_anchor(policy, opt, obs, masks, actions, n_steps, rng, **kw):
        calls.append((n_steps, len(actions)))
        return real_anchor(policy, opt, obs, masks, actions, n_steps, rng, **kw)

    def spy_collect(*a, **kw):
        demos.append(real_collect(*a, **kw))
        return demos[-1]

    monkeypatch.setattr(W, "anchor_steps", spy_anchor)
    monkeypatch.setattr(W, "collect_demonstrations", spy_collect)
    train.main(tiny_args(tmp_path / "a", tiny_hp, "--warm-start-anchor", "3", "--eval-freq", "0"))
    # 512 steps of 2 envs x 64 = 4 rollouts, so 3 updates happen before a rollout starts
    assert calls == [(3, len(demos[0].actions))] * 3
    assert json.loads((tmp_path / "a" / "args.json").read_text())["args"]["warm_start_anchor"] == 3
    calls.clear()
    train.main(tiny_args(tmp_path / "b", tiny_hp, "--eval-freq", "0"))
    assert calls == []


def test_an_actor_drives_the_demonstrations_and_the_heuristic_labels_them():
    """collect_demonstrations(actor=...) (DAgger): the env follows the actor, the recorded
    actions are the heuristic's on the states the actor reaches."""
    from agents import warm_start as W
    from agents.training import make_env

    make = make_env("gridenv/Metro-v1", {"horizon_s": 20})
    own = W.collect_demonstrations(make, "slo-greedy", 400, seed=7)
    seen = []

    def shed_all(obs, mask):
        seen.append(mask.copy())
        return np.array([len(mask) - 1 - 3, 1])  # the shed slot (3 batch levels follow it)

    led = W.collect_demonstrations(make, "slo-greedy", 400, seed=7, actor=shed_all)
    assert len(seen) == len(led.actions) == 400
    assert (led.masks == np.stack(seen)).all()
    assert np.array_equal(led.obs[0], own.obs[0])  # same first state, then the actor's path
    assert not np.array_equal(led.obs[1:], own.obs[1:])
    assert led.shed_frac < 0.5  # labels are slo-greedy's, not the actor's (which shed everything)
    assert (led.rewards == 0.0).all() and own.rewards.sum() > 0.0  # the actor's rewards: shed pays 0
    both = own + led
    assert len(both.actions) == 800 and np.array_equal(both.actions[400:], led.actions)
    assert both.shed_frac == pytest.approx((own.shed_frac + led.shed_frac) / 2)


def test_warm_start_dagger_refits_on_the_clones_own_states(tmp_path, tiny_hp, monkeypatch):
    """--warm-start-dagger N: N more collections driven by the clone, each followed by cloning on
    everything so far; recorded with the clone's agreement on its own states."""
    from agents import warm_start as W

    collects, clones = [], []
    real_collect, real_clone = W.collect_demonstrations, W.behaviour_clone

    def spy_collect(*a, **kw):
        collects.append(kw.get("actor") is not None)
        return real_collect(*a, **kw)

    def spy_clone(policy, obs, masks, actions, **kw):
        clones.append(len(actions))
        return real_clone(policy, obs, masks, actions, **kw)

    monkeypatch.setattr(W, "collect_demonstrations", spy_collect)
    monkeypatch.setattr(W, "behaviour_clone", spy_clone)
    train.main(tiny_args(tmp_path / "d", tiny_hp, "--warm-start-dagger", "2", "--eval-freq", "0"))
    assert collects == [False, True, True]
    assert len(clones) == 3 and clones[1] == 2 * clones[0] and clones[2] == 3 * clones[0]
    ws = json.loads((tmp_path / "d" / "args.json").read_text())["warm_start"]
    assert ws["dagger_rounds"] == 2 and len(ws["dagger_accuracy_site"]) == 2
    assert all(0.0 <= a <= 1.0 for a in ws["dagger_accuracy_site"])
    assert ws["n_decisions"] == clones[2]


def test_anchor_steps_pull_a_policy_back_to_the_demonstrations():
    import torch

    from agents import warm_start as W
    from agents.training import make_env
    from sb3_contrib import MaskablePPO

    make = make_env("gridenv/Metro-v1", {"horizon_s": 20})
    demo = W.collect_demonstrations(make, "slo-greedy", 600, seed=7)
    model = MaskablePPO("MlpPolicy", make(), seed=0, device="cpu")
    policy = model.policy

    def nll() -> float:
        with torch.no_grad():
            _, lp, _ = policy.evaluate_actions(torch.as_tensor(demo.obs), torch.as_tensor(demo.actions),
                                               action_masks=demo.masks)
        return float(-lp.mean())

    before = nll()
    opt = torch.optim.Adam(policy.parameters(), lr=1e-3)
    W.anchor_steps(policy, opt, demo.obs, demo.masks, demo.actions, 50, np.random.default_rng(0), maskable=True)
    assert nll() < before - 0.1


def test_update_threads_callback_switches_at_the_rollout_boundaries():
    import torch

    cb = T.UpdateThreadsCallback(update_threads=2, rollout_threads=1)
    threads = torch.get_num_threads()
    try:
        cb._on_rollout_start()
        assert torch.get_num_threads() == 1
        cb._on_rollout_end()
        assert torch.get_num_threads() == 2
        cb._on_rollout_start()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(ValueError, match="torch threads must be >= 1"):
        T.UpdateThreadsCallback(update_threads=0, rollout_threads=1)


def test_a_warm_start_level_the_scenario_lacks_exits_2_naming_it(tmp_path):
    """Checked against the scenario's batch levels (one env built for the checks) before the run
    directory is created: one line, no traceback, nothing on disk."""
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "--warm-start-level", "9", "--total-timesteps", "200",
                           "--run-dir", str(tmp_path / "r")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "--warm-start-level 9: the scenario metro has 3 batch levels (0..2)" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "r").exists()


def _tree(path: Path) -> dict:
    """Every file and folder under `path`, files with their bytes: the directory's whole state."""
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else None for p in sorted(path.rglob("*"))}


def _obs_off(tmp_path: Path) -> Path:
    hp = tmp_path / "obs_off.yaml"
    hp.write_text(TINY_YAML.replace("{obs: true,", "{obs: false,"))
    return hp


@pytest.mark.parametrize("extra, message", [
    (["--warm-start-level", "9"], "--warm-start-level 9: the scenario metro has 3 batch levels (0..2)"),
    (["--warm-start-level", "1", "--warm-start-core-level", "3"], "--warm-start-core-level 3: the scenario metro has 3"),
    (["--init-from", str(ROOT / "models" / "continental")], "--init-from"),  # another interface
    (["--init-from", "TINY_RUN", "--hyperparams", "OBS_OFF"], "trained with observation normalization on"),
])
def test_an_argument_refused_late_leaves_no_run_directory(capsys, tmp_path, tiny_hp, tiny_run, extra, message):
    """Errors found once the scenario's env or the --init-from model is at hand exit 2 before
    anything is written: no run directory (no monitor/, tb/, args.json)."""
    extra = [{"TINY_RUN": str(tiny_run[0]), "OBS_OFF": str(_obs_off(tmp_path))}.get(a, a) for a in extra]
    run_dir = tmp_path / "r"
    err = _cli_error(capsys, tiny_args(run_dir, tiny_hp, *extra))
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not run_dir.exists()


@pytest.mark.parametrize("extra, message", [
    (["--warm-start-level", "9"], "--warm-start-level 9"),
    (["--hyperparams", "OBS_OFF", "--init-from", "TINY_RUN"], "trained with observation normalization on"),
    (["--hyperparams", "MISSING"], "hyperparameter file not found"),
])
def test_a_refused_overwrite_leaves_the_old_run_unchanged(capsys, tmp_path, tiny_hp, tiny_run, extra, message):
    """--overwrite deletes the old run only once the new one has passed every check."""
    src, _ = tiny_run
    run_dir = tmp_path / "r"
    shutil.copytree(src, run_dir)
    before = _tree(run_dir)
    extra = [{"TINY_RUN": str(src), "OBS_OFF": str(_obs_off(tmp_path)),
              "MISSING": str(tmp_path / "nope.yaml")}.get(a, a) for a in extra]
    err = _cli_error(capsys, tiny_args(run_dir, tiny_hp, "--overwrite", *extra))
    assert message in err
    assert _tree(run_dir) == before


def test_debug_shows_the_traceback(tmp_path):
    argv = [sys.executable, str(ROOT / "train.py"), "--scenario", "atlantis", "--run-dir", str(tmp_path / "r")]
    plain = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    debug = subprocess.run([*argv, "--debug"], capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and "unknown scenario 'atlantis'" in plain.stderr
    assert debug.returncode == 1 and "Traceback" in debug.stderr


def test_collapse_warning():
    lb = {"results": [{"policy": "run", "reward_mean": 1.0, "shed_frac": 0.9},
                      {"policy": "random", "reward_mean": 2.0, "shed_frac": 0.0}]}
    assert "collapsed to shedding: it sheds 90%" in T.collapse_warning("run", lb)
    lb["results"][0]["shed_frac"] = 0.1
    assert "earns less than the random heuristic" in T.collapse_warning("run", lb)
    lb["results"][0]["reward_mean"] = 3.0
    assert T.collapse_warning("run", lb) is None
    assert "shed 75%" in T.collapse_warning("run", None, [{"shed": 3, "arrived": 4}])
    assert T.collapse_warning("run", None, [{"shed": 1, "arrived": 4}]) is None


def test_a_run_whose_evaluation_sheds_warns(tmp_path, tiny_hp, capsys, monkeypatch):
    """The warning reaches the user and train_summary.json (threshold lowered so any run trips it)."""
    monkeypatch.setattr(T, "COLLAPSE_SHED_FRAC", -1.0)
    run_dir = tmp_path / "r"
    result = train.main(tiny_args(run_dir, tiny_hp, "--total-timesteps", "128", "--eval-freq", "128"))
    err = capsys.readouterr().err
    [w] = result["warnings"]
    assert "collapsed to shedding" in w and "--total-timesteps" in w
    assert f"train.py: warning: {w}" in err
    assert json.loads((run_dir / "train_summary.json").read_text())["warnings"] == [w]


# ----------------------------------------------------------------------------- wrappers
def test_episode_metrics_reach_monitor_info():
    env = T.make_env("gridenv/Metro-v1", {"horizon_s": 3})()
    env.reset(seed=0)
    shed = np.array([env.unwrapped.max_sites, 0])
    while True:
        _, _, term, trunc, info = env.step(shed)
        if term or trunc:
            break
    ep = info["episode"]
    assert {"r", "l", *T.EPISODE_METRICS} <= set(ep)
    assert ep["shed"] == info["episode_metrics"]["shed"] > 0
    assert ep["slo_attainment"] == info["episode_metrics"]["slo_attainment"]


def test_fixed_seed_cycle_repeats_arrivals():
    env = T.FixedSeedCycle(gym.make("gridenv/Metro-v1", config={"horizon_s": 3}), [7, 8])

    def first_prompts():
        out = []
        for _ in range(2):
            env.reset()
            out.append(env.unwrapped.snapshot.request.prompt_tokens)
        return out

    a = first_prompts()
    env.restart_seed_cycle()
    assert first_prompts() == a
    env.reset(seed=7)  # an explicit seed wins
    assert env.unwrapped.snapshot.request.prompt_tokens == a[0]


# ----------------------------------------------------------------------------- leaderboard
@pytest.mark.slow
def test_leaderboard_ranks_the_trained_agent_with_the_heuristics(tiny_run, tmp_path):
    pytest.importorskip("agents.evaluation")
    from agents.heuristics import heuristic_names

    src, _ = tiny_run
    run_dir = tmp_path / src.name
    shutil.copytree(src, run_dir)
    path, lb = T.leaderboard(run_dir, "metro", 1, suite="smoke", log=lambda *a: None)
    assert path is not None and path.is_file()
    lb = json.loads(path.read_text())
    names = {p["name"] for p in lb["policies"]}
    assert names == {*heuristic_names(), run_dir.name}
    assert lb["suite"]["scenarios"] == ["metro"] and lb["suite"]["seeds"] == [10000]
    mine = [e for e in lb["episodes"] if e["policy"] == run_dir.name]
    assert len(mine) == 1 and mine[0]["metrics"]["invalid_actions"] == 0


def test_train_on_a_scenario_yaml_path(tmp_path, tiny_hp):
    """`train.py --scenario path/to/my.yaml`: the id comes from the file, recorded in args.json, and the
    run directory is then a policy for evaluate.py on that scenario file."""
    import yaml

    raw = yaml.safe_load((ROOT / "configs" / "scenarios" / "metro.yaml").read_text())
    raw["name"] = "my-grid"
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump(raw))
    run_dir = tmp_path / "runs" / "mine"
    result = train.main(tiny_args(run_dir, tiny_hp, "--scenario", str(path), "--total-timesteps", "128",
                                  "--eval-freq", "0"))
    assert result["timesteps"] == 128
    record = json.loads((run_dir / "args.json").read_text())
    from gridenv.envs.registration import env_id

    assert (record["scenario"], record["env_id"]) == ("my-grid", env_id("my-grid"))
    assert record["scenario_file"] == str(path.resolve())
    from agents.evaluation import Suite, evaluate, parse_policies

    suite = Suite("t", "t", ("my-grid",), (1,), {"horizon_s": 5}, {"my-grid": str(path.resolve())})
    lb = evaluate(suite, parse_policies(f"mine={run_dir}"), resamples=20)
    assert {e["policy"] for e in lb["episodes"]} == {"mine", "random"} and not lb["skipped"]
