"""Train a (Maskable)PPO router on a gridenv scenario, CleanRL style: read it top to bottom.

    python train.py                                  # metro, MaskablePPO, a few minutes, then a leaderboard
    python train.py --scenario outage --algo ppo --seed 1
    python train.py --resume                         # continue runs/metro_maskable_ppo_s0 from its last checkpoint
    python train.py --total-timesteps 2000000 --resume   # ... and extend it to 2M steps
    python train.py --backend ray --seeds 0,1,2      # 3 runs in parallel on Ray, then one leaderboard
    python train.py --backend ray --sweep configs/sweeps/ppo_lr_ent.yaml --seeds 0,1

A run directory (default ``runs/<scenario>_<algo>_s<seed>``) holds:

    args.json                       arguments, merged hyperparameters, the command lines used
    model.zip, vecnormalize.pkl     final model and its VecNormalize statistics
    best_model/best_model.zip       best model of the in-training evaluation (EvalCallback) ...
    best_model/vecnormalize.pkl     ... and its statistics (saved on every new best)
    checkpoints/rl_model_<N>_steps.zip, checkpoints/rl_model_vecnormalize_<N>_steps.pkl
    tb/<algo>_1/                    TensorBoard: SB3 scalars + episode/* and eval/* metrics
    monitor/                        Monitor CSVs (per-episode reward, length and metrics)
    leaderboard/                    the trained agent against the heuristics (unless --no-eval-leaderboard)

``--algo ppo`` trains plain PPO without masks: an infeasible site choice is handled by the env's
documented fallback (``actions.invalid_action: shed``: the request is shed and counted in the
``invalid_actions`` metric), so PPO learns to avoid masked sites from the lost reward.

Load a trained agent as a leaderboard policy with ``agents.sb3_policy.SB3Policy(run_dir)``.
"""

import argparse
import ast
import dataclasses
import json
import shlex
import sys
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parent


@dataclass
class Args:
    scenario: str = "metro"
    """scenario name (configs/scenarios/<name>.yaml) or env id (gridenv/Metro-v1)"""
    algo: str = "maskable_ppo"
    """maskable_ppo (sb3-contrib MaskablePPO, reads env.action_masks()) or ppo (plain PPO; masked sites are shed by the env)"""
    total_timesteps: int = 500_000
    """total env steps (decisions) of the run; with --resume, the target including the steps already done (~2.5 min of training on metro on 2 cores)"""
    seed: int = 0
    """seed of the model and of the training envs' first resets (env i gets seed + i)"""
    n_envs: Optional[int] = None
    """number of DummyVecEnv sub-envs (default: n_envs of the hyperparameter file)"""
    run_dir: Optional[str] = None
    """where checkpoints, models, logs go (default: runs/<scenario>_<algo>_s<seed>); with --seeds or --sweep, the parent directory of the runs' directories (default: runs)"""
    resume: bool = False
    """continue the run in --run-dir from its last checkpoint (model, VecNormalize statistics, timestep count, best eval score)"""
    overwrite: bool = False
    """start a fresh run even if --run-dir already holds one (its files are replaced)"""
    hyperparams: str = "configs/ppo.yaml"
    """rl-zoo3-style YAML: a default: entry overridden by an entry per scenario name or env id"""
    env_config: Optional[str] = None
    """JSON merged over the hyperparameter file's env_config, i.e. into the scenario for training and in-training evaluation, e.g. '{"horizon_s": 60}'"""
    eval_freq: int = 100_000
    """evaluate on fixed seeds every this many env steps (0: no in-training evaluation, no best model)"""
    eval_episodes: Optional[int] = None
    """episodes per in-training evaluation (default: eval_episodes of the hyperparameter file)"""
    checkpoint_freq: int = 100_000
    """save a checkpoint (model + VecNormalize) every this many env steps"""
    no_eval_leaderboard: bool = False
    """skip the final evaluation of the trained agent against the heuristics"""
    leaderboard_seeds: int = 3
    """number of episode seeds of the final leaderboard (the first seeds of --leaderboard-suite)"""
    leaderboard_suite: str = "standard"
    """suite of configs/suites.yaml whose seeds and overrides the final leaderboard uses (on --scenario only)"""
    progress_bar: bool = True
    """show a progress bar during training (--no-progress-bar to hide it)"""
    torch_threads: int = 1
    """torch intra-op threads: 1 was faster than 2 for this small MLP on the 2-core machine"""
    device: str = "cpu"
    """torch device"""
    verbose: int = 1
    """0: quiet, 1: progress messages, 2: also SB3's per-rollout tables"""
    seeds: Optional[str] = None
    """comma-separated seeds, e.g. 0,1,2: one independent run per seed (and --sweep variant), in <run-dir>/<scenario>_<algo>_s<seed>[_<variant>], then one leaderboard of all of them against the heuristics (agents/backends.py: train_runs)"""
    sweep: Optional[str] = None
    """sweep YAML (configs/sweeps/): hyperparameter variants merged over --hyperparams; one run per variant and seed"""
    backend: str = "local"
    """where the runs go: local (this machine: --workers processes, default one run after another) or ray (a Ray task per run, on --ray-address or a local Ray with --workers CPUs; pip install -e '.[ray]')"""
    workers: Optional[int] = None
    """runs at once: local processes (default 1), or the CPUs of the local Ray (default: all cores)"""
    ray_address: Optional[str] = None
    """Ray cluster for --backend ray: auto, ray://host:10001 (default: $RAY_ADDRESS, else a local Ray for the run)"""


# ----------------------------------------------------------------------------- argument parsing
def _field_docs(cls) -> dict[str, str]:
    """The docstring under each dataclass field (what tyro shows as help; argparse needs it spelled out)."""
    tree = ast.parse(Path(__file__).read_text())
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls.__name__).body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = str(nxt.value.value)
    return docs


def build_parser(suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """argparse generated from the Args fields (``--total-timesteps`` for ``total_timesteps``)."""
    parser = argparse.ArgumentParser(
        prog="train.py", description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter if not suppress_defaults else argparse.HelpFormatter,
        argument_default=argparse.SUPPRESS if suppress_defaults else None,
    )
    docs = _field_docs(Args)
    hints = typing.get_type_hints(Args)
    for f in dataclasses.fields(Args):
        flag = "--" + f.name.replace("_", "-")
        typ = hints[f.name]
        if typing.get_origin(typ) is typing.Union:  # Optional[X]
            typ = next(t for t in typing.get_args(typ) if t is not type(None))
        kw = {} if suppress_defaults else {"default": f.default}
        if typ is bool and f.default is True:
            parser.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_false",
                                help=docs.get(f.name), **kw)
        elif typ is bool:
            parser.add_argument(flag, action="store_true", help=docs.get(f.name), **kw)
        else:
            choices = {"algo": ("maskable_ppo", "ppo"), "backend": ("local", "ray")}.get(f.name)
            parser.add_argument(flag, type=typ, choices=choices, help=docs.get(f.name), **kw)
    return parser


def parse_args(argv: Optional[list] = None) -> tuple[Args, set]:
    """The Args, and the names of the fields given explicitly on the command line."""
    args = Args(**vars(build_parser().parse_args(argv)))
    explicit = set(vars(build_parser(suppress_defaults=True).parse_args(argv)))
    return args, explicit


# ----------------------------------------------------------------------------- training
def train(args: Args, explicit: set = frozenset(), command: str = "") -> dict:
    """Train (or resume) one run; returns paths and figures. Raises ConfigError on bad arguments."""
    import torch
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import CheckpointCallback

    from agents import training as T
    from gridenv.core.scenario import deep_merge

    # 1. Arguments: scenario, run dir, and on --resume the arguments the run was started with.
    scenario, env_id = T.resolve_scenario(args.scenario)
    run_dir = Path(args.run_dir or f"runs/{scenario}_{args.algo}_s{args.seed}")
    ckpt = None
    if args.resume:
        ckpt = T.latest_checkpoint(run_dir / "checkpoints")
        if ckpt is None:
            raise T.ConfigError(f"--resume: no checkpoint with its vecnormalize file in {run_dir / 'checkpoints'}")
        saved = json.loads((run_dir / "args.json").read_text())["args"] if (run_dir / "args.json").is_file() else {}
        if "scenario" in explicit and "scenario" in saved and T.resolve_scenario(saved["scenario"])[0] != scenario:
            raise T.ConfigError(f"--resume: the run in {run_dir} was trained on scenario {saved['scenario']!r}")
        if "algo" in explicit and "algo" in saved and saved["algo"] != args.algo:
            raise T.ConfigError(f"--resume: the run in {run_dir} was trained with algo {saved['algo']!r}")
        # Explicit flags win; everything else comes from the run's saved arguments.
        args = Args(**{**{k: v for k, v in saved.items() if k in Args.__dataclass_fields__},
                       **{k: getattr(args, k) for k in explicit}, "resume": True})
        scenario, env_id = T.resolve_scenario(args.scenario)
    elif (run_dir / "args.json").exists() or (run_dir / "checkpoints").exists():
        if not args.overwrite:
            raise T.ConfigError(f"{run_dir} already holds a run: pass --resume to continue it, "
                             "--overwrite to replace it, or another --run-dir")
        import shutil

        for sub in ("checkpoints", "best_model", "tb", "monitor", "eval", "leaderboard"):
            shutil.rmtree(run_dir / sub, ignore_errors=True)
        for name in ("args.json", "model.zip", "vecnormalize.pkl", "train_summary.json"):
            (run_dir / name).unlink(missing_ok=True)
    if args.algo not in T.ALGOS:
        raise T.ConfigError(f"unknown algo {args.algo!r}: choose one of {', '.join(T.ALGOS)}")
    hp_path = Path(args.hyperparams)
    if not hp_path.is_absolute() and not hp_path.exists() and (ROOT / hp_path).exists():
        hp_path = ROOT / hp_path  # the default works from any working directory
    hp = T.load_hyperparams(hp_path, scenario)
    if args.env_config:
        try:
            extra = json.loads(args.env_config)
        except json.JSONDecodeError as err:
            raise T.ConfigError(f"--env-config is not valid JSON: {err}") from err
        if not isinstance(extra, dict):
            raise T.ConfigError("--env-config must be a JSON object, e.g. '{\"horizon_s\": 60}'")
        hp["env_config"] = deep_merge(hp.get("env_config") or {}, extra)
    # Run-level entries of the file; what is left are the algorithm's constructor arguments.
    n_envs = args.n_envs or hp.pop("n_envs", 4)
    eval_episodes = args.eval_episodes or hp.pop("eval_episodes", 2)
    eval_seeds = [hp.pop("eval_seeds_start", 5_000) + i for i in range(eval_episodes)]
    env_config = hp.pop("env_config", None) or None
    normalize = hp.pop("normalize", {})
    vec_backend, vec_workers = hp.pop("vec_backend", "dummy"), hp.pop("vec_workers", 2)
    for key in ("n_envs", "eval_episodes"):  # when given on the command line instead
        hp.pop(key, None)
    torch.set_num_threads(args.torch_threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = print if args.verbose else (lambda *a, **k: None)

    # 2. Envs: VecNormalize(DummyVecEnv([Monitor(EpisodeMetricsInfo(gym.make(id)))] * n_envs)).
    #    Reward normalization uses PPO's gamma; on --resume the statistics come from the checkpoint.
    gamma = hp.get("gamma", 0.99)
    venv = T.make_vec_env(env_id, n_envs, args.seed, gamma, normalize, env_config,
                          monitor_dir=run_dir / "monitor", append_monitor=ckpt is not None,
                          vecnormalize_path=ckpt.vecnormalize if ckpt else None,
                          backend=vec_backend, n_workers=vec_workers)

    # 3. The model: new, or the checkpoint's (with its timestep count and optimizer state).
    Algo = MaskablePPO if args.algo == "maskable_ppo" else PPO
    if ckpt:
        model = Algo.load(ckpt.model, env=venv, device=args.device, tensorboard_log=str(run_dir / "tb"))
        log(f"resumed {ckpt.model} at {model.num_timesteps} timesteps")
    else:
        policy_kwargs = {
            "net_arch": hp.pop("net_arch", [64, 64]),
            "activation_fn": {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[hp.pop("activation_fn", "tanh")],
            "ortho_init": hp.pop("ortho_init", True),
        }
        policy_name = hp.pop("policy", "mlp")
        site_hidden, critic_hidden = hp.pop("site_hidden", [64, 64]), hp.pop("critic_hidden", [128, 128])
        if policy_name == "site_scoring":  # agents/site_policy.py: one network scores every site
            from agents.site_policy import MaskableSiteScoringPolicy, SiteScoringPolicy

            policy = MaskableSiteScoringPolicy if args.algo == "maskable_ppo" else SiteScoringPolicy
            policy_kwargs.pop("net_arch")
            policy_kwargs.update(site_hidden=site_hidden, critic_hidden=critic_hidden,
                                 n_site_features=venv.get_attr("interface")[0].n_site_features)
        elif policy_name == "mlp":
            policy = "MlpPolicy"
        else:
            raise T.HyperparamError(f"policy: {policy_name!r} is not one of 'mlp', 'site_scoring'")
        for key in ("learning_rate", "clip_range"):
            if isinstance(hp.get(key), str):  # "lin_3e-4"
                hp[key] = T.linear_schedule(float(hp[key][4:]))
        model = Algo(policy, venv, seed=args.seed, device=args.device, verbose=int(args.verbose >= 2),
                     tensorboard_log=str(run_dir / "tb"), policy_kwargs=policy_kwargs, **hp)
    remaining = args.total_timesteps - model.num_timesteps

    # 4. Record what was run.
    record = {"args": dataclasses.asdict(args), "scenario": scenario, "env_id": env_id, "n_envs": n_envs,
              "hyperparams": T.load_hyperparams(hp_path, scenario) | {"env_config": env_config or {}},
              "eval_seeds": eval_seeds, "commands": [],
              "interface": venv.get_attr("interface")[0].record()}  # checked by SB3Policy / export
    if (run_dir / "args.json").is_file() and args.resume:
        record["commands"] = json.loads((run_dir / "args.json").read_text()).get("commands", [])
    record["commands"].append(command or shlex.join([sys.executable, *sys.argv]))
    (run_dir / "args.json").write_text(json.dumps(record, indent=2, default=str))

    # 5. Callbacks: checkpoints (+ VecNormalize), per-episode metrics to TensorBoard, and an
    #    evaluation on fixed seeds that saves the best model with its VecNormalize statistics.
    callbacks = [
        CheckpointCallback(save_freq=max(args.checkpoint_freq // n_envs, 1), save_path=str(run_dir / "checkpoints"),
                           name_prefix="rl_model", save_vecnormalize=True),
        T.EpisodeMetricsCallback(),
    ]
    if args.eval_freq > 0:
        eval_env = T.make_vec_env(env_id, 1, args.seed, gamma, normalize, env_config,
                                  monitor_dir=run_dir / "monitor", append_monitor=ckpt is not None,
                                  eval_seeds=eval_seeds)
        eval_cb = T.make_eval_callback(
            args.algo, eval_env, n_eval_episodes=eval_episodes, eval_freq=max(args.eval_freq // n_envs, 1),
            best_model_save_path=str(run_dir / "best_model"), log_path=str(run_dir / "eval"), deterministic=True,
            callback_on_new_best=T.SaveVecNormalizeCallback(run_dir / "best_model"), verbose=args.verbose,
        )
        if ckpt:  # keep the best model unless the resumed run beats it, and the evaluation history
            T.restore_eval_state(eval_cb, run_dir)
        callbacks.append(eval_cb)

    # 6. Train.
    t0 = time.perf_counter()
    steps0 = model.num_timesteps
    if remaining > 0:
        log(f"training {args.algo} on {env_id} for {remaining} steps with {n_envs} envs -> {run_dir}")
        model.learn(total_timesteps=remaining, callback=callbacks, tb_log_name=args.algo,
                    reset_num_timesteps=ckpt is None, progress_bar=args.progress_bar)
    else:
        log(f"{run_dir} already at {model.num_timesteps} >= --total-timesteps {args.total_timesteps}: nothing to train")
    seconds = time.perf_counter() - t0
    steps_per_s = (model.num_timesteps - steps0) / seconds if model.num_timesteps > steps0 else float("nan")
    log(f"{model.num_timesteps - steps0} steps in {seconds:.0f} s ({steps_per_s:.0f} steps/s, incl. evaluations)")

    # 7. Save the final model and its VecNormalize statistics, also as the last checkpoint (so
    #    --resume continues from exactly here).
    model.save(run_dir / "model.zip")
    venv.save(str(run_dir / "vecnormalize.pkl"))
    last = run_dir / "checkpoints" / f"rl_model_{model.num_timesteps}_steps.zip"
    if not last.exists():
        last.parent.mkdir(parents=True, exist_ok=True)
        model.save(last)
        venv.save(str(run_dir / "checkpoints" / f"rl_model_vecnormalize_{model.num_timesteps}_steps.pkl"))
    venv.close()
    result = {"run_dir": run_dir, "model": run_dir / "model.zip", "vecnormalize": run_dir / "vecnormalize.pkl",
              "timesteps": int(model.num_timesteps), "train_seconds": seconds, "steps_per_s": steps_per_s,
              "resumed_from": ckpt, "leaderboard": None}

    # 8. The trained agent against the heuristics, on the scenario as published (full horizon).
    if not args.no_eval_leaderboard:
        result["leaderboard"] = leaderboard(run_dir, scenario, args.leaderboard_seeds, args.leaderboard_suite, log)
    summary = {**result, "resumed_from": str(ckpt.model) if ckpt else None}
    summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in summary.items()}
    (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return result


def leaderboard(run_dir: Path, scenario: str, n_seeds: int, suite: str = "standard", log=print) -> Optional[Path]:
    """The trained agent against every heuristic on `n_seeds` held-out seeds of `scenario`.

    Runs the evaluation harness through its CLI (``evaluate.py``, agents/evaluation.py) on the
    first `n_seeds` seeds of `suite` (``standard``: the scenario at its full horizon, seeds
    10000, 10001, ...: never used in training or model selection), and writes run_dir/leaderboard/
    (leaderboard.json/.csv/.md, plots, learning curves from run_dir/tb). The agent is the best
    model of the in-training evaluation when there is one, else the final model. Returns the
    leaderboard.json path (None on failure: training results are kept either way).
    """
    import subprocess

    from agents.evaluation import get_suite
    from agents.heuristics import heuristic_names

    run_dir = run_dir.resolve()
    model = run_dir / "best_model" / "best_model.zip"
    if not model.is_file():
        model = run_dir / "model.zip"
    seeds = ",".join(str(s) for s in get_suite(suite).seeds[:n_seeds])
    policies = ",".join([*heuristic_names(), f"{run_dir.name}={model}"])
    out = run_dir / "leaderboard"
    cmd = [sys.executable, str(ROOT / "evaluate.py"), "--suite", suite, "--scenarios", scenario,
           "--seeds", seeds, "--policies", policies, "--out", str(out), "--tb-logdir", str(run_dir / "tb"),
           "--quiet"]
    log(f"leaderboard: {run_dir.name} vs heuristics on {scenario}, seeds {seeds} -> {out}")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        print(f"train.py: leaderboard failed (exit {proc.returncode}): {shlex.join(cmd)}\n{proc.stderr}",
              file=sys.stderr)
        return None
    print(proc.stdout.rstrip())
    log(f"leaderboard in {time.perf_counter() - t0:.0f} s: {out}")
    return out / "leaderboard.json"


def main(argv: Optional[list] = None) -> dict:
    args, explicit = parse_args(argv)
    command = shlex.join(["python", "train.py", *(sys.argv[1:] if argv is None else argv)])
    from agents.training import ConfigError

    try:
        if args.seeds or args.sweep or args.backend != "local":  # several runs, or runs on Ray
            from agents.backends import BackendUnavailable, train_runs

            try:
                return train_runs(args, explicit, command, script=__file__)
            except BackendUnavailable as err:
                print(f"train.py: error: {err}", file=sys.stderr)
                sys.exit(2)
        return train(args, explicit, command)
    except ConfigError as err:  # bad scenario, hyperparameter file, run dir: a CLI error, not a traceback
        build_parser().error(str(err))


if __name__ == "__main__":
    main()
