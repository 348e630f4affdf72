"""Training one (Maskable)PPO run: :func:`train` (``train.py`` parses its arguments and calls it).

Everything here is plain Stable-Baselines3 / sb3-contrib plumbing:

* :func:`train` trains (or resumes) one run into its run directory (:mod:`agents.runs`) and
  ranks it against the heuristics (:func:`leaderboard`), warning when the policy collapsed to
  shedding (:func:`collapse_warning`).
* :func:`load_hyperparams` reads an rl-zoo3-style YAML (``default:`` + per-scenario entries,
  :class:`agents.schemas.HyperparamsFile`).
* :func:`make_vec_env` builds ``VecNormalize(DummyVecEnv([Monitor(EpisodeMetricsInfo(env))]))``,
  or with ``vec_backend: native|subproc|hybrid`` ``VecNormalize(GridVecEnv(...))`` (agents/vec_env.py).
* :class:`EpisodeMetricsInfo` copies chosen end-of-episode metrics from
  ``info["episode_metrics"]`` into top-level info keys, so ``Monitor(info_keywords=...)`` puts
  them in ``info["episode"]`` (and ``monitor.csv``).
* :class:`EpisodeMetricsCallback` records those per-episode metrics as TensorBoard scalars.
* :class:`SaveVecNormalizeCallback` saves the VecNormalize statistics beside the best model
  (``EvalCallback`` alone does not: SB3 issue #468).
* :func:`make_eval_callback` returns an (Maskable)EvalCallback that evaluates on a fixed list of
  seeds every time (common random numbers, so "new best" compares like with like) and logs the
  per-episode metrics of the evaluation episodes under ``eval/``.
* :func:`latest_checkpoint` finds the newest ``CheckpointCallback`` checkpoint of a run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
from pydantic import ValidationError
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

import gridenv  # noqa: F401  (registers the gridenv/* ids)
from agents import schemas
from agents.arguments import TrainArgs, warm_start_name
from agents.runs import CHECKPOINT_PREFIX, Checkpoint, checkpoint_paths, latest_checkpoint, resolve_model
from gridenv.core.scenario import deep_merge, scenario_names
from gridenv.envs.registration import RANDOM_GRID_ID, ScenarioRef
from gridenv.envs.registration import env_id as scenario_env_id
from gridenv.envs.registration import resolve_scenario as _resolve_file_or_name

__all__ = [
    "ALGOS",
    "EPISODE_METRICS",
    "HYPERPARAM_KEYS",
    "ConfigError",
    "HyperparamError",
    "train",
    "leaderboard",
    "collapse_warning",
    "find_hyperparams",
    "load_hyperparams",
    "check_entry",
    "EpisodeMetricsInfo",
    "FixedSeedCycle",
    "make_env",
    "make_vec_env",
    "EpisodeMetricsCallback",
    "UpdateThreadsCallback",
    "BehaviourAnchorCallback",
    "SaveVecNormalizeCallback",
    "make_eval_callback",
    "restore_eval_state",
    "Checkpoint",
    "latest_checkpoint",
    "linear_schedule",
]

#: ``--algo`` choices.
ALGOS = ("maskable_ppo", "ppo")

#: End-of-episode metrics (keys of ``info["episode_metrics"]``) copied into ``info["episode"]``
#: by Monitor and written to TensorBoard per episode (``episode/<key>``, ``eval/<key>``).
EPISODE_METRICS = (
    "goodput_tokens_per_s",
    "slo_attainment",
    "usd_per_mtok",
    "energy_kwh",
    "cost_usd",
    "ttft_p99_s",
    "shed",
    "arrived",
    "invalid_actions",
)

#: Keys a hyperparameter entry may hold (:class:`agents.schemas.HyperparamEntry`).
HYPERPARAM_KEYS = schemas.HYPERPARAM_KEYS
ROOT = Path(__file__).resolve().parents[1]


class ConfigError(ValueError):
    """Bad training arguments (unknown scenario or algo, unusable run directory, ...)."""


class HyperparamError(ConfigError):
    """A hyperparameter file that cannot be used (missing, bad YAML, unknown key, bad value)."""


# ----------------------------------------------------------------------------- scenarios
#: Names of the random-grid training distribution (gridenv/RandomGrid-v1: a new grid every reset).
RANDOM_GRID_NAME = "random-grid"
_RANDOM_GRID_ALIASES = (RANDOM_GRID_NAME, RANDOM_GRID_ID, RANDOM_GRID_ID.split("/", 1)[1])


def resolve_scenario(spec: str) -> ScenarioRef:
    """A scenario name, env id or YAML path, or ``random-grid`` / ``gridenv/RandomGrid-v1``
    (the generated-grid distribution; its ``env_config`` holds RandomGridSpec fields)."""
    if str(spec).strip() in _RANDOM_GRID_ALIASES:
        return ScenarioRef(RANDOM_GRID_NAME, RANDOM_GRID_ID, RANDOM_GRID_ID, False)
    return _resolve_file_or_name(spec)


def is_random_grid(ref: ScenarioRef) -> bool:
    return ref.env_id == RANDOM_GRID_ID


def check_run_flags(args: TrainArgs, ref: ScenarioRef, run_dir: Path) -> None:
    """ConfigError, before anything is trained, for flags that used to fail late: a --run-dir
    that is a file (a traceback at mkdir), a --device torch does not know (a traceback in the
    model's constructor), an unknown --leaderboard-suite (found after training, exit status 0)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir}: exists and is not a directory")
    import torch

    try:
        torch.device(args.device)
    except (RuntimeError, ValueError) as err:
        raise ConfigError(f"--device {args.device!r}: {err}") from None
    if not args.no_eval_leaderboard:
        from agents.evaluation import load_suites

        suite = ("generalization" if is_random_grid(ref) and args.leaderboard_suite == "standard"
                 else args.leaderboard_suite)
        suites = load_suites()
        if suite not in suites:
            raise ConfigError(f"--leaderboard-suite: unknown suite {suite!r}; known suites: {', '.join(suites)}")


def check_env_config(ref: ScenarioRef, env_config: dict | None) -> None:
    """Fail early, naming the flag, if `env_config` does not fit the scenario."""
    if not env_config:
        return
    if is_random_grid(ref):
        from gridenv.envs.random_grid_env import _grid_spec

        try:
            _grid_spec(dict(env_config))
        except (TypeError, ValueError) as err:
            raise ConfigError(f"env_config for {RANDOM_GRID_ID} must be RandomGridSpec fields "
                              f"(gridenv/core/random_grid.py): {err}") from None
        return
    from gridenv.core.scenario import load_scenario

    load_scenario(ref.source, env_config)


def _env_kwargs(env_id: str, config: dict | None) -> dict:
    """``gym.make`` keyword arguments: ``config`` for a scenario id, ``spec`` for RandomGrid."""
    if not config:
        return {}
    return {"spec": dict(config)} if env_id == RANDOM_GRID_ID else {"config": config}


# ----------------------------------------------------------------------------- hyperparameters
def check_entry(entry: Any, where: str) -> dict:
    """`entry` validated as a hyperparameter entry; HyperparamError naming `where` and the key."""
    try:
        return schemas.HyperparamEntry.model_validate(entry or {}).as_dict()
    except ValidationError as err:
        raise HyperparamError(schemas.format_validation_error(err, where)) from None


def find_hyperparams(path: str | os.PathLike) -> Path:
    """A hyperparameter file: as given (relative to the working directory), else in the checkout."""
    p = Path(path)
    if not p.is_absolute() and not p.exists() and (ROOT / p).exists():
        return ROOT / p  # the default works from any working directory
    return p


def load_hyperparams(path: str | Path, scenario: str) -> dict:
    """The ``default:`` entry of `path`, overridden by the entry for `scenario`.

    A per-scenario entry is keyed by the scenario name (``metro``) or its env id
    (``gridenv/Metro-v1``), not both. Nested mappings (``normalize``, ``env_config``) merge key by
    key; everything else (e.g. ``net_arch``) is replaced. Every entry of the file is validated
    (:class:`agents.schemas.HyperparamsFile`), so a typo in another scenario's entry is
    reported too.
    """
    path = Path(path)
    if not path.is_file():
        raise HyperparamError(f"hyperparameter file not found: {path}")
    try:
        hp = schemas.load(schemas.HyperparamsFile, path)
    except ValueError as err:
        raise HyperparamError(str(err)) from None
    ref = resolve_scenario(scenario)
    names = set(scenario_names()) | {ref.name, RANDOM_GRID_NAME}
    known = names | {scenario_env_id(n) for n in names} | {"default"}
    for key in hp.root:
        if key not in known:
            raise HyperparamError(
                f"{path}: unknown entry {key!r}: entries are 'default', scenario names "
                f"({', '.join(sorted(names))}) or env ids"
            )
    name, eid = ref.name, ref.env_id
    if name in hp.root and eid in hp.root:
        raise HyperparamError(f"{path}: both {name!r} and {eid!r} entries: keep one")
    for key in hp.root:  # what each entry asks for, merged with the default entry
        merged = deep_merge(hp.entry("default"), hp.entry(key))
        if merged.get("level_from_site") and merged.get("policy", "mlp") != "site_scoring":
            raise HyperparamError(f"{path}: entry {key!r}: level_from_site needs policy: site_scoring "
                                  f"(the level head it changes is the site-scoring policy's), "
                                  f"got policy: {merged.get('policy', 'mlp')}")
    return deep_merge(hp.entry("default"), hp.entry(name) if name in hp.root else hp.entry(eid))


def linear_schedule(initial: float) -> Callable[[float], float]:
    """rl-zoo3's ``lin_<x>``: decays linearly from `initial` to 0 over training."""

    def schedule(progress_remaining: float) -> float:
        return progress_remaining * initial

    return schedule


# ----------------------------------------------------------------------------- env wrappers
class EpisodeMetricsInfo(gym.Wrapper):
    """Copies chosen keys of ``info["episode_metrics"]`` (present at episode end) into ``info``.

    ``Monitor(info_keywords=keys)`` reads ``info[key]`` at episode end; placing this wrapper
    inside Monitor makes the env's end-of-episode metrics part of ``info["episode"]``.
    """

    def __init__(self, env: gym.Env, keys: tuple[str, ...] = EPISODE_METRICS):
        super().__init__(env)
        self.keys = tuple(keys)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            metrics = info.get("episode_metrics", {})
            for key in self.keys:
                info[key] = float(metrics.get(key, np.nan))
        return obs, reward, terminated, truncated, info


class FixedSeedCycle(gym.Wrapper):
    """Resets with ``seeds[0], seeds[1], ...`` (cycling) instead of continuing the RNG.

    Used for evaluation envs: :meth:`restart_seed_cycle` before each evaluation makes every
    evaluation run the same arrival sequences (common random numbers).
    """

    def __init__(self, env: gym.Env, seeds: list[int]):
        super().__init__(env)
        if not seeds:
            raise ValueError("FixedSeedCycle needs at least one seed")
        self.seeds = [int(s) for s in seeds]
        self._cursor = 0

    def restart_seed_cycle(self) -> None:
        self._cursor = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is None:
            seed = self.seeds[self._cursor % len(self.seeds)]
            self._cursor += 1
        return self.env.reset(seed=seed, options=options)


def make_env(
    env_id: str,
    config: dict | None = None,
    monitor_file: str | None = None,
    seeds: list[int] | None = None,
    append_monitor: bool = False,
) -> Callable[[], gym.Env]:
    """A thunk for DummyVecEnv: ``Monitor(EpisodeMetricsInfo([FixedSeedCycle](gym.make(id))))``."""

    def thunk() -> gym.Env:
        env = gym.make(env_id, **_env_kwargs(env_id, config))
        if seeds is not None:
            env = FixedSeedCycle(env, seeds)
        env = EpisodeMetricsInfo(env, EPISODE_METRICS)
        return Monitor(env, filename=monitor_file, info_keywords=EPISODE_METRICS,
                       override_existing=not append_monitor)

    return thunk


def make_vec_env(
    env_id: str,
    n_envs: int,
    seed: int,
    gamma: float,
    normalize: dict | None = None,
    config: dict | None = None,
    monitor_dir: str | Path | None = None,
    append_monitor: bool = False,
    eval_seeds: list[int] | None = None,
    vecnormalize_path: str | Path | None = None,
    backend: str = "dummy",
    n_workers: int = 2,
) -> VecNormalize:
    """``VecNormalize(DummyVecEnv([...] * n_envs))``, or over a native GridVecEnv.

    `backend` ``native`` / ``subproc`` / ``hybrid`` (training envs only; agents/vec_env.py)
    steps the envs in batched GridVectorEnv shards, in this process and/or in worker processes, with the
    same seeding, autoreset, ``info["episode"]`` and monitor CSVs as the DummyVecEnv path.

    Training envs (``eval_seeds`` None) are seeded ``seed, seed + 1, ...`` on their first reset
    and continue their RNG afterwards. An evaluation env (``eval_seeds`` given, one sub-env)
    resets on the fixed seed list and does not update its statistics or normalize rewards.
    With `vecnormalize_path`, the statistics are loaded from that file, and with
    `append_monitor` the Monitor CSVs in `monitor_dir` are appended to (``--resume``).
    """
    normalize = {"obs": True, "reward": True, **(normalize or {})}
    if backend not in ("dummy", "native", "subproc", "hybrid"):
        raise HyperparamError(f"vec_backend must be one of dummy, native, subproc, hybrid, got {backend!r}")
    if backend != "dummy" and eval_seeds is None:
        from agents.vec_env import GridVecEnv

        venv = GridVecEnv(env_id, n_envs, config, backend=backend, n_workers=n_workers,
                          info_keywords=EPISODE_METRICS, monitor_dir=monitor_dir,
                          append_monitor=append_monitor)
        venv.seed(seed)
        return _vec_normalize(venv, normalize, gamma, training=True, vecnormalize_path=vecnormalize_path)
    thunks = []
    for i in range(n_envs):
        monitor_file = None
        if monitor_dir is not None:
            Path(monitor_dir).mkdir(parents=True, exist_ok=True)
            monitor_file = str(Path(monitor_dir) / f"{'eval' if eval_seeds else 'train'}_{i}")
        thunks.append(make_env(env_id, config, monitor_file, eval_seeds, append_monitor))
    venv = DummyVecEnv(thunks)
    if eval_seeds is None:
        venv.seed(seed)
    return _vec_normalize(venv, normalize, gamma, training=eval_seeds is None,
                          vecnormalize_path=vecnormalize_path)


def _vec_normalize(venv, normalize: dict, gamma: float, training: bool,
                   vecnormalize_path: str | Path | None) -> VecNormalize:
    if vecnormalize_path is not None:
        vn = VecNormalize.load(str(vecnormalize_path), venv)
        vn.training = training
        vn.norm_reward = bool(normalize["reward"]) and training
        return vn
    return VecNormalize(
        venv,
        training=training,
        norm_obs=bool(normalize["obs"]),
        norm_reward=bool(normalize["reward"]) and training,
        clip_obs=float(normalize.get("clip_obs", 10.0)),
        clip_reward=float(normalize.get("clip_reward", 10.0)),
        gamma=gamma,
    )


# ----------------------------------------------------------------------------- callbacks
class EpisodeMetricsCallback(BaseCallback):
    """Records the end-of-episode metrics of every finished training episode.

    Writes ``episode/<metric>`` (mean over the episodes that ended since the last dump) to the
    logger, i.e. to TensorBoard at the end of each rollout, plus ``episode/count``.
    """

    def __init__(self, keys: tuple[str, ...] = EPISODE_METRICS, verbose: int = 0):
        super().__init__(verbose)
        self.keys = tuple(keys)
        self.n_episodes = 0

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", []):
            ep = info.get("episode")
            if ep is None:
                continue
            self.n_episodes += 1
            for key in self.keys:
                if key in ep and np.isfinite(ep[key]):
                    self.logger.record_mean(f"episode/{key}", float(ep[key]))
            self.logger.record("episode/count", self.n_episodes)
        return True


class UpdateThreadsCallback(BaseCallback):
    """Runs the PPO update on `update_threads` torch threads and the rollout on `rollout_threads`.

    During the rollout the env worker processes use the other cores, so a second torch thread
    there only competes with them; during the update they are idle, and the minibatch gradient
    steps can use every core (``python -m agents.bench_training`` variant ``fast-u2``)."""

    def __init__(self, update_threads: int, rollout_threads: int, verbose: int = 0):
        super().__init__(verbose)
        if update_threads < 1 or rollout_threads < 1:
            raise ValueError(f"torch threads must be >= 1, got update {update_threads}, rollout {rollout_threads}")
        self.update_threads, self.rollout_threads = int(update_threads), int(rollout_threads)

    def _on_rollout_start(self) -> None:
        import torch

        torch.set_num_threads(self.rollout_threads)

    def _on_rollout_end(self) -> None:
        import torch

        torch.set_num_threads(self.update_threads)

    def _on_step(self) -> bool:
        return True


class BehaviourAnchorCallback(BaseCallback):
    """``--warm-start-anchor``: after every PPO update, `n_steps` minibatch steps of behaviour
    cloning on the warm start's demonstrations (:func:`agents.warm_start.anchor_steps`, Adam at
    PPO's current learning rate), so PPO refines the clone instead of drifting away from it.
    Logs the demonstrations' minibatch NLL as ``train/anchor_nll``."""

    def __init__(self, demo, venv: VecNormalize, n_steps: int, maskable: bool, seed: int = 0, verbose: int = 0):
        super().__init__(verbose)
        if n_steps < 1:
            raise ValueError(f"anchor steps must be >= 1, got {n_steps}")
        self.demo, self.venv, self.n_steps, self.maskable = demo, venv, int(n_steps), maskable
        self.rng = np.random.default_rng([int(seed), 0xA9C])
        self.optimizer = None
        self.rollouts = 0

    def _on_rollout_start(self) -> None:
        self.rollouts += 1
        if self.rollouts == 1:  # no PPO update yet
            return
        import torch

        from agents.warm_start import anchor_steps

        policy = self.model.policy
        lr = float(self.model.lr_schedule(self.model._current_progress_remaining))
        if self.optimizer is None:
            self.optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        # the policy reads the observation as normalized now: only the sampled rows are
        nll = anchor_steps(policy, self.optimizer, self.demo.obs, self.demo.masks, self.demo.actions, self.n_steps,
                           self.rng, maskable=self.maskable,
                           normalize=self.venv.normalize_obs if self.venv.norm_obs else None)
        self.logger.record("train/anchor_nll", nll)

    def _on_step(self) -> bool:
        return True


class SaveVecNormalizeCallback(BaseCallback):
    """Saves the training VecNormalize to ``save_dir/vecnormalize.pkl`` (use as callback_on_new_best).

    Also writes ``save_dir/best.json`` (timesteps, mean reward) so ``--resume`` can restore the
    EvalCallback's best score instead of overwriting the best model with the next evaluation.
    """

    def __init__(self, save_dir: str | Path, verbose: int = 0):
        super().__init__(verbose)
        self.save_dir = Path(save_dir)

    def _on_step(self) -> bool:
        vn = self.model.get_vec_normalize_env()
        self.save_dir.mkdir(parents=True, exist_ok=True)
        if vn is not None:
            vn.save(str(self.save_dir / "vecnormalize.pkl"))
        best = getattr(self.parent, "best_mean_reward", None)
        (self.save_dir / "best.json").write_text(
            json.dumps({"timesteps": int(self.num_timesteps), "best_mean_reward": best})
        )
        if self.verbose:
            print(f"saved VecNormalize statistics beside the best model in {self.save_dir}")
        return True


def make_eval_callback(algo: str, eval_env: VecNormalize, collapse_check=None, eval_at_start: bool = False,
                       **kwargs) -> EvalCallback:
    """An EvalCallback (``ppo``) or MaskableEvalCallback (``maskable_ppo``) that

    * restarts the eval env's fixed seed cycle before each evaluation,
    * records the mean end-of-episode metrics of the evaluation episodes as ``eval/<metric>``, and
    * with `collapse_check` (``f(timesteps, episode metrics, mean reward) -> warning or None``,
      e.g. :func:`eval_collapse_warning`), prints a ``train.py: warning:`` line after an
      evaluation where the policy collapsed, and keeps them in ``collapse_warnings``;
    * with `eval_at_start`, evaluates once before the first rollout (timestep 0), so a policy
      that starts good (a warm start, ``--init-from``) is itself a candidate best model: PPO
      can move a clone down before it moves it up, and the best model is then the clone.

    `kwargs` go to the callback (eval_freq, n_eval_episodes, best_model_save_path, ...).
    """
    if algo == "maskable_ppo":
        from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback as Base
    elif algo == "ppo":
        Base = EvalCallback
    else:
        raise ValueError(f"unknown algo {algo!r}: choose one of {ALGOS}")

    class _FixedSeedEvalCallback(Base):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            self._episode_metrics: list[dict] = []
            self.last_episode_metrics: list[dict] = []
            self.collapse_warnings: list[str] = []

        def _on_training_start(self) -> None:
            super()._on_training_start()
            if eval_at_start and self.eval_freq > 0 and self.n_calls == 0:
                self._on_step()  # n_calls is 0, a multiple of eval_freq: one evaluation now

        def _on_step(self) -> bool:
            evaluating = self.eval_freq > 0 and self.n_calls % self.eval_freq == 0
            if evaluating:
                self.eval_env.env_method("restart_seed_cycle")
                self._episode_metrics = []
            cont = super()._on_step()
            if evaluating and self._episode_metrics:
                self.last_episode_metrics = list(self._episode_metrics)
                for key in EPISODE_METRICS:
                    vals = [m[key] for m in self._episode_metrics if key in m and np.isfinite(m[key])]
                    if vals:
                        self.logger.record(f"eval/{key}", float(np.mean(vals)))
                if self.verbose:
                    m = self._episode_metrics
                    print(
                        "eval metrics: goodput {:.0f} tok/s, SLO {:.3f}, {:.4f} $/Mtok".format(
                            np.mean([x["goodput_tokens_per_s"] for x in m]),
                            np.mean([x["slo_attainment"] for x in m]),
                            np.mean([x["usd_per_mtok"] for x in m]),
                        )
                    )
                self.logger.dump(self.num_timesteps)
                if collapse_check is not None:
                    warning = collapse_check(self.num_timesteps, self.last_episode_metrics,
                                             float(self.last_mean_reward))
                    if warning:
                        print(f"train.py: warning: {warning}", file=sys.stderr, flush=True)
                        self.collapse_warnings.append(warning)
            return cont

        def _log_success_callback(self, locals_: dict, globals_: dict) -> None:
            super()._log_success_callback(locals_, globals_)
            info = locals_["info"]
            if locals_["done"] and "episode" in info:
                self._episode_metrics.append(dict(info["episode"]))

    return _FixedSeedEvalCallback(eval_env, **kwargs)


def restore_eval_state(eval_callback: EvalCallback, run_dir: str | Path) -> None:
    """On ``--resume``: the best score so far (``best_model/best.json``) and the evaluation
    history (``eval/evaluations.npz``), so the callback neither replaces the best model with a
    worse one nor rewrites the history with only the resumed part."""
    run_dir = Path(run_dir)
    best_json = run_dir / "best_model" / "best.json"
    if best_json.is_file():
        best = json.loads(best_json.read_text()).get("best_mean_reward")
        if best is not None:
            eval_callback.best_mean_reward = float(best)
    npz = run_dir / "eval" / "evaluations.npz"
    if npz.is_file():
        with np.load(npz) as d:
            if d["results"].ndim == 2 and d["results"].shape[1] == eval_callback.n_eval_episodes:
                eval_callback.evaluations_timesteps = [int(t) for t in d["timesteps"]]
                eval_callback.evaluations_results = [list(r) for r in d["results"]]
                eval_callback.evaluations_length = [list(r) for r in d["ep_lengths"]]


# ----------------------------------------------------------------------------- checkpoints
# Checkpoint and latest_checkpoint are defined in agents.runs (imported above).


# ----------------------------------------------------------------------------- warm start, init-from
def _warm_start(model, venv: VecNormalize, heuristic: str, args: TrainArgs, ref: ScenarioRef,
                env_config: dict | None, n_envs: int, gamma: float, algo: str):
    """Behaviour cloning of `heuristic` into the new model (agents/warm_start.py)."""
    from agents import warm_start as W

    # Demonstration episodes use the training seeds after the training envs' own (seed + i).
    # At most a quarter of the run's steps: a smoke run of a few hundred steps stays a smoke run.
    n_decisions = max(1, min(args.warm_start_steps, args.total_timesteps // 4))
    # On RandomGrid every episode is cut at 1/25 of the decisions: 25+ grids, not two or three.
    def collect(seed: int, actor=None):
        return W.collect_demonstrations(make_env(ref.env_id, env_config), heuristic, n_decisions, seed=seed,
                                        max_per_episode=max(n_decisions // 25, 1) if is_random_grid(ref) else None,
                                        level=args.warm_start_level, core_level=args.warm_start_core_level,
                                        actor=actor)

    def policy_obs(all_obs, new_obs):
        """What the policy reads: with observation normalization, the statistics take in the new rows."""
        if not venv.norm_obs:
            return all_obs
        venv.obs_rms.update(new_obs)
        return venv.normalize_obs(all_obs).astype(np.float32)

    demo = collect(args.seed + n_envs)
    obs = policy_obs(demo.obs, demo.obs)
    maskable = algo == "maskable_ppo"
    before, after, acc_site, acc_level = W.behaviour_clone(model.policy, obs, demo.masks, demo.actions,
                                                           maskable=maskable, seed=args.seed,
                                                           min_updates=args.warm_start_updates)
    returns = W.normalized_returns(demo.rewards, demo.episode_starts, gamma, venv)
    r2 = W.fit_critic(model.policy, obs, returns, seed=args.seed)
    # DAgger (Ross et al. 2011): the clone drives, the heuristic labels the states it visits, and
    # the clone is refitted on everything so far. A clone's own mistakes lead it to states the
    # heuristic never showed it; this shows it those. The critic keeps the heuristic's returns.
    dagger_acc = []
    for r in range(args.warm_start_dagger):
        chosen = []

        def actor(raw_obs, mask):
            o = raw_obs[None].astype(np.float32)
            if venv.norm_obs:
                o = venv.normalize_obs(o).astype(np.float32)
            kw = {"action_masks": mask[None]} if maskable else {}
            a = model.predict(o, deterministic=True, **kw)[0][0]
            chosen.append(int(a[0]))
            return a

        more = collect(args.seed + n_envs + 1000 * (r + 1), actor)
        dagger_acc.append(float(np.mean(np.asarray(chosen) == more.actions[:, 0])))
        demo = demo + more
        obs = policy_obs(demo.obs, more.obs)
        _, after, acc_site, acc_level = W.behaviour_clone(model.policy, obs, demo.masks, demo.actions,
                                                          maskable=maskable, seed=args.seed + r + 1,
                                                          min_updates=args.warm_start_updates)
    return W.WarmStartReport(heuristic, len(demo.actions), demo.n_episodes, demo.shed_frac, acc_site,
                             acc_level, before, after, None if not np.isfinite(r2) else r2,
                             level=args.warm_start_level, core_level=args.warm_start_core_level,
                             dagger_rounds=args.warm_start_dagger,
                             dagger_accuracy_site=dagger_acc or None), demo


@dataclass(frozen=True)
class InitSource:
    """``--init-from``: a trained model, its statistics and its recorded interface."""

    model: Path
    vecnormalize: Path | None
    interface: dict | None
    interface_file: Path | None


def _init_source(spec: str) -> InitSource:
    """The model of ``--init-from`` (a run directory, ``models/<name>``, or a .zip)."""
    from agents.sb3_policy import read_interface_record

    try:
        files = resolve_model(spec)
    except FileNotFoundError as err:
        raise ConfigError(f"--init-from: {err}") from None
    record, where = read_interface_record(files.model)
    return InitSource(files.model, files.vecnormalize if files.vecnormalize.is_file() else None, record, where)


def _mode_hint(record_mode: str, current_mode: str, max_sites: int) -> str:
    if record_mode == "relative" and current_mode != "relative":
        return (f" The model reads the 'relative' observation with {max_sites} site slots: give the scenario "
                f"'observation: {{mode: relative}}' and 'actions: {{max_sites: {max_sites}}}', or pass "
                f"--env-config '{{\"observation\": {{\"mode\": \"relative\"}}, \"actions\": {{\"max_sites\": {max_sites}}}}}'.")
    if record_mode != current_mode:
        return f" The model reads the {record_mode!r} observation, the scenario gives {current_mode!r}."
    return ""


def check_init_interface(init: InitSource, interface) -> None:
    """ConfigError naming the mismatch unless the model of `init` was made for `interface`."""
    from gridenv.core.interface import InterfaceMismatchError, check_compatible

    if init.interface is None:
        raise ConfigError(f"--init-from {init.model}: the model has no interface record (interface.json or "
                          "args.json), so it cannot be checked against the scenario: re-export or migrate it")
    decl = init.interface.get("interface", {})
    rec_mode = decl.get("mode", "slots")
    rec_sites = (decl.get("action") or {}).get("max_sites", "?")
    try:
        check_compatible(init.interface, interface, what=f"--init-from {init.model}")
    except InterfaceMismatchError as err:
        raise ConfigError(f"{err}.{_mode_hint(rec_mode, interface.mode, rec_sites)}") from None


def _load_init(init: InitSource, Algo, args: TrainArgs, env: gym.Env, norm_obs: bool):
    """`init`'s model and its VecNormalize attributes (None without the file), checked against
    the scenario's `env` (interface, spaces) and the hyperparameters' observation normalization."""
    check_init_interface(init, env.unwrapped.interface)
    try:
        source = Algo.load(init.model, device=args.device)
    except Exception as err:  # noqa: BLE001 - another algorithm's archive, a damaged file
        raise ConfigError(f"--init-from {init.model}: cannot load it as {args.algo} "
                          f"({type(err).__name__}: {err})") from None
    if source.observation_space.shape != env.observation_space.shape or \
            list(source.action_space.nvec) != list(env.action_space.nvec):
        raise ConfigError(f"--init-from {init.model}: made for observations {source.observation_space.shape} and "
                          f"actions {list(source.action_space.nvec)}, the scenario has "
                          f"{env.observation_space.shape} and {list(env.action_space.nvec)}")
    src = None
    if init.vecnormalize is not None:
        import pickle

        with open(init.vecnormalize, "rb") as f:
            src = pickle.load(f).__dict__  # VecNormalize without its venv: read the attributes
        if bool(src["norm_obs"]) != norm_obs:
            raise ConfigError(f"--init-from {init.model}: trained with observation normalization "
                              f"{'on' if src['norm_obs'] else 'off'}, the hyperparameters say "
                              f"{'on' if norm_obs else 'off'} (normalize.obs)")
    elif norm_obs:
        raise ConfigError(f"--init-from {init.model}: no vecnormalize.pkl beside it, and the hyperparameters "
                          "normalize observations (normalize.obs)")
    return source, src


def _model_from_init(source, src_stats: dict | None, Algo, args: TrainArgs, venv: VecNormalize, hp: dict,
                     run_dir: Path):
    """A new model with the architecture and weights of the ``--init-from`` model `source` (and
    its statistics `src_stats`, checked by :func:`_load_init`)."""
    for key in ("policy", "net_arch", "activation_fn", "ortho_init", "site_hidden", "critic_hidden", "level_from_site"):
        hp.pop(key, None)  # the architecture is the source model's
    for key in ("learning_rate", "clip_range"):
        if isinstance(hp.get(key), str):
            hp[key] = linear_schedule(float(hp[key][4:]))
    model = Algo(type(source.policy), venv, seed=args.seed, device=args.device, verbose=int(args.verbose >= 2),
                 tensorboard_log=str(run_dir / "tb"), policy_kwargs=dict(source.policy_kwargs), **hp)
    model.policy.load_state_dict(source.policy.state_dict())
    if src_stats is not None:
        if venv.norm_obs:
            venv.obs_rms = src_stats["obs_rms"]
        venv.ret_rms = src_stats["ret_rms"]
    return model


def _preflight(ref: ScenarioRef, env_config: dict | None, args: TrainArgs, warm_start: str | None,
               init: InitSource | None, Algo, normalize: dict):
    """The checks that need the scenario's env, run before anything is written to the run
    directory: the warm start's batch levels, and ``--init-from``'s model (returned loaded, with
    its statistics) against the scenario. One env is built (when needed) and closed."""
    levels = warm_start is not None and args.warm_start_steps > 0 and init is None and \
        (args.warm_start_level is not None or args.warm_start_core_level is not None)
    if not levels and init is None:
        return None, None
    env = make_env(ref.env_id, env_config)()
    try:
        if levels:
            n_levels = int(np.asarray(env.action_space.nvec)[1])
            for flag, lv in (("--warm-start-level", args.warm_start_level),
                             ("--warm-start-core-level", args.warm_start_core_level)):
                if lv is not None and not 0 <= lv < n_levels:
                    raise ConfigError(f"{flag} {lv}: the scenario {ref.name} has {n_levels} batch levels "
                                      f"(0..{n_levels - 1})")
        if init is not None:
            return _load_init(init, Algo, args, env, bool(normalize.get("obs", True)))  # make_vec_env's default
        return None, None
    finally:
        env.close()


# ----------------------------------------------------------------------------- one run
_RUN_FILES = ("args.json", "model.zip", "vecnormalize.pkl", "train_summary.json")
_RUN_DIRS = ("checkpoints", "best_model", "tb", "monitor", "eval", "leaderboard")


def _read_record(run_dir: Path) -> schemas.RunRecord | None:
    path = run_dir / "args.json"
    return schemas.load(schemas.RunRecord, path) if path.is_file() else None


def train(args: TrainArgs, explicit: set = frozenset(), command: str = "") -> dict:
    """Train (or resume) one run; returns paths and figures. Raises ConfigError on bad arguments.

    `explicit` names the fields given on the command line (with ``--resume`` they win over the
    run's saved arguments); `command` is recorded in ``args.json``.
    """
    import torch
    from sb3_contrib import MaskablePPO
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import CheckpointCallback

    # 1. Arguments: scenario, run dir, and on --resume the arguments the run was started with.
    ref = resolve_scenario(args.scenario)
    run_dir = Path(args.run_dir or f"runs/{ref.name}_{args.algo}_s{args.seed}")
    check_run_flags(args, ref, run_dir)
    ckpt = None
    if args.resume:
        ckpt = latest_checkpoint(run_dir / "checkpoints")
        if ckpt is None:
            raise ConfigError(f"--resume: no checkpoint with its vecnormalize file in {run_dir / 'checkpoints'}")
        record = _read_record(run_dir)
        saved = record.args if record else {}
        if "scenario" in explicit and "scenario" in saved and resolve_scenario(saved["scenario"]).name != ref.name:
            raise ConfigError(f"--resume: the run in {run_dir} was trained on scenario {saved['scenario']!r}")
        if "algo" in explicit and "algo" in saved and saved["algo"] != args.algo:
            raise ConfigError(f"--resume: the run in {run_dir} was trained with algo {saved['algo']!r}")
        # Explicit flags win; everything else comes from the run's saved arguments.
        args = TrainArgs(**{**{k: v for k, v in saved.items() if k in TrainArgs.__dataclass_fields__},
                            **{k: getattr(args, k) for k in explicit}, "resume": True})
        ref = resolve_scenario(args.scenario)
    replace = False
    if not args.resume and ((run_dir / "args.json").exists() or (run_dir / "checkpoints").exists()):
        if not args.overwrite:
            raise ConfigError(f"{run_dir} already holds a run: pass --resume to continue it, "
                              "--overwrite to replace it, or another --run-dir")
        replace = True  # once every check below has passed
    hp_path = find_hyperparams(args.hyperparams)
    hp = load_hyperparams(hp_path, ref.source)
    if args.env_config:
        try:
            extra = json.loads(args.env_config)
        except json.JSONDecodeError as err:
            raise ConfigError(f"--env-config is not valid JSON: {err}") from None
        if not isinstance(extra, dict):
            raise ConfigError("--env-config must be a JSON object, e.g. '{\"horizon_s\": 60}'")
        hp["env_config"] = deep_merge(hp.get("env_config") or {}, extra)
    saved_hp = dict(hp)
    # Run-level entries of the file; what is left are the algorithm's constructor arguments.
    n_envs = args.n_envs or hp.pop("n_envs", 4)
    eval_episodes = args.eval_episodes or hp.pop("eval_episodes", 2)
    eval_seeds = [hp.pop("eval_seeds_start", 5_000) + i for i in range(eval_episodes)]
    env_config = hp.pop("env_config", None) or None
    normalize = hp.pop("normalize", {})
    vec_backend = hp.pop("vec_backend", None) or "dummy"
    vec_workers = hp.pop("vec_workers", None) or 2
    for key in ("n_envs", "eval_episodes", "total_timesteps"):  # given on the command line instead
        hp.pop(key, None)
    check_env_config(ref, env_config)  # fail here, with the flag named, rather than inside the first env
    warm_start = warm_start_name(args)
    if warm_start is not None:
        from agents.warm_start import teacher_names

        if warm_start not in teacher_names():
            raise ConfigError(f"--warm-start: unknown heuristic {warm_start!r}; choose one of "
                              f"{', '.join(teacher_names())}, or none")
    init = None
    if args.init_from and not ckpt:
        init = _init_source(args.init_from)
    Algo = MaskablePPO if args.algo == "maskable_ppo" else PPO
    init_model, init_stats = _preflight(ref, env_config, args, None if ckpt else warm_start, init, Algo, normalize)
    # Every check has passed: only now is the run directory touched (a refused run leaves no trace).
    if replace:
        import shutil

        for sub in _RUN_DIRS:
            shutil.rmtree(run_dir / sub, ignore_errors=True)
        for name in _RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
    torch.set_num_threads(args.torch_threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    log = print if args.verbose else (lambda *a, **k: None)

    # 2. Envs: VecNormalize(DummyVecEnv([Monitor(EpisodeMetricsInfo(gym.make(id)))] * n_envs)).
    #    Reward normalization uses PPO's gamma; on --resume the statistics come from the checkpoint.
    gamma = hp.get("gamma", 0.99)
    venv = make_vec_env(ref.env_id, n_envs, args.seed, gamma, normalize, env_config,
                        monitor_dir=run_dir / "monitor", append_monitor=ckpt is not None,
                        vecnormalize_path=ckpt.vecnormalize if ckpt else None,
                        backend=vec_backend, n_workers=vec_workers)

    # 3. The model: new, or the checkpoint's (with its timestep count and optimizer state).
    warm_report = warm_demo = None
    if ckpt:
        model = Algo.load(ckpt.model, env=venv, device=args.device, tensorboard_log=str(run_dir / "tb"))
        log(f"resumed {ckpt.model} at {model.num_timesteps} timesteps")
    elif init is not None:
        # 3b. --init-from: the trained policy's architecture and weights (and its VecNormalize
        #     statistics), the hyperparameter file's PPO settings; the interface must match.
        model = _model_from_init(init_model, init_stats, Algo, args, venv, hp, run_dir)
        log(f"initialized from {init.model} (interface {venv.get_attr('interface')[0].version})")
    else:
        policy_kwargs = {
            "net_arch": hp.pop("net_arch", [64, 64]),
            "activation_fn": {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[hp.pop("activation_fn", "tanh")],
            "ortho_init": hp.pop("ortho_init", True),
        }
        policy_name = hp.pop("policy", "mlp")
        site_hidden, critic_hidden = hp.pop("site_hidden", [64, 64]), hp.pop("critic_hidden", [128, 128])
        level_from_site = bool(hp.pop("level_from_site", False))
        if policy_name == "site_scoring":  # agents/site_policy.py: one network scores every site
            from agents.site_policy import MaskableSiteScoringPolicy, SiteScoringPolicy

            policy = MaskableSiteScoringPolicy if args.algo == "maskable_ppo" else SiteScoringPolicy
            policy_kwargs.pop("net_arch")
            iface = venv.get_attr("interface")[0]
            policy_kwargs.update(site_hidden=site_hidden, critic_hidden=critic_hidden,
                                 n_site_features=iface.n_site_features)
            if level_from_site:  # the batch-level head also reads the chosen site's features
                policy_kwargs.update(level_from_site=True,
                                     feasible_index=[f.name for f in iface.site_features].index("feasible"))
        else:  # level_from_site without site_scoring is refused by load_hyperparams
            policy = "MlpPolicy"
        for key in ("learning_rate", "clip_range"):
            if isinstance(hp.get(key), str):  # "lin_3e-4"
                hp[key] = linear_schedule(float(hp[key][4:]))
        model = Algo(policy, venv, seed=args.seed, device=args.device, verbose=int(args.verbose >= 2),
                     tensorboard_log=str(run_dir / "tb"), policy_kwargs=policy_kwargs, **hp)
        if warm_start is not None and args.warm_start_steps > 0:
            # 3c. Imitation warm start (agents/warm_start.py): clone the heuristic's decisions on
            #     training seeds after the training envs' (seed + n_envs, ...), then fit the critic.
            warm_report, warm_demo = _warm_start(model, venv, warm_start, args, ref, env_config, n_envs, gamma,
                                                 args.algo)
            log(warm_report.line())
    remaining = args.total_timesteps - model.num_timesteps

    # 4. Record what was run (agents.schemas.RunRecord).
    previous = _read_record(run_dir) if args.resume else None
    record = schemas.RunRecord(
        args=dataclasses.asdict(args), scenario=ref.name, env_id=ref.env_id,
        scenario_file=ref.source if ref.is_file else None, n_envs=n_envs,
        hyperparams=saved_hp | {"env_config": env_config or {}}, eval_seeds=eval_seeds,
        init_from=str(init.model) if init is not None else (previous.init_from if previous else None),
        warm_start=(dataclasses.asdict(warm_report) if warm_report is not None
                    else (previous.warm_start if previous else None)),
        interface=venv.get_attr("interface")[0].record(),  # checked by SB3Policy / export
        commands=[*(previous.commands if previous else []),
                  command or shlex.join(["python", "train.py", *sys.argv[1:]])])
    (run_dir / "args.json").write_text(record.model_dump_json(indent=2))

    # 5. Callbacks: checkpoints (+ VecNormalize), per-episode metrics to TensorBoard, and an
    #    evaluation on fixed seeds that saves the best model with its VecNormalize statistics.
    callbacks = [
        CheckpointCallback(save_freq=max(args.checkpoint_freq // n_envs, 1), save_path=str(run_dir / "checkpoints"),
                           name_prefix=CHECKPOINT_PREFIX, save_vecnormalize=True),
        EpisodeMetricsCallback(),
    ]
    if args.update_threads is not None and args.update_threads != args.torch_threads:
        callbacks.insert(0, UpdateThreadsCallback(args.update_threads, args.torch_threads))
    if args.warm_start_anchor and warm_demo is not None:
        callbacks.append(BehaviourAnchorCallback(warm_demo, venv, args.warm_start_anchor,
                                                 maskable=args.algo == "maskable_ppo", seed=args.seed))
    eval_cb = None
    if args.eval_freq > 0:
        eval_env = make_vec_env(ref.env_id, 1, args.seed, gamma, normalize, env_config,
                                monitor_dir=run_dir / "monitor", append_monitor=ckpt is not None,
                                eval_seeds=eval_seeds)
        reference = ReferenceOnEvalSeeds(ref.env_id, env_config, eval_seeds)
        eval_cb = make_eval_callback(
            args.algo, eval_env, n_eval_episodes=eval_episodes, eval_freq=max(args.eval_freq // n_envs, 1),
            collapse_check=lambda steps, metrics, reward: eval_collapse_warning(
                run_dir.name, steps, metrics, reward, reference),
            # A warm-started or fine-tuned policy is scored before PPO changes it (not on resume).
            eval_at_start=ckpt is None and (warm_report is not None or init_model is not None),
            best_model_save_path=str(run_dir / "best_model"), log_path=str(run_dir / "eval"), deterministic=True,
            callback_on_new_best=SaveVecNormalizeCallback(run_dir / "best_model"), verbose=args.verbose,
        )
        if ckpt:  # keep the best model unless the resumed run beats it, and the evaluation history
            restore_eval_state(eval_cb, run_dir)
        callbacks.append(eval_cb)

    # 6. Train.
    t0 = time.perf_counter()
    steps0 = model.num_timesteps
    interrupted = False
    if remaining > 0:
        log(f"training {args.algo} on {ref.env_id} for {remaining} steps with {n_envs} envs -> {run_dir}")
        try:
            model.learn(total_timesteps=remaining, callback=callbacks, tb_log_name=args.algo,
                        reset_num_timesteps=ckpt is None, progress_bar=args.progress_bar)
        except KeyboardInterrupt:  # Ctrl-C: stop early, but keep what was learned (saved below)
            interrupted = True
            print(f"train.py: interrupted at {model.num_timesteps} steps: saving the model and its "
                  "statistics (--resume continues from here)", file=sys.stderr, flush=True)
    else:
        log(f"{run_dir} already at {model.num_timesteps} >= --total-timesteps {args.total_timesteps}: nothing to train")
    seconds = time.perf_counter() - t0
    steps_per_s = (model.num_timesteps - steps0) / seconds if model.num_timesteps > steps0 else None
    log(f"{model.num_timesteps - steps0} steps in {seconds:.0f} s"
        + (f" ({steps_per_s:.0f} steps/s, incl. evaluations)" if steps_per_s else ""))

    # 7. Save the final model and its VecNormalize statistics, also as the last checkpoint (so
    #    --resume continues from exactly here).
    model.save(run_dir / "model.zip")
    venv.save(str(run_dir / "vecnormalize.pkl"))
    last, last_pkl = checkpoint_paths(run_dir / "checkpoints", model.num_timesteps)
    if not last.exists():
        last.parent.mkdir(parents=True, exist_ok=True)
        model.save(last)
        venv.save(str(last_pkl))
    venv.close()
    result = {"run_dir": run_dir, "model": run_dir / "model.zip", "vecnormalize": run_dir / "vecnormalize.pkl",
              "timesteps": int(model.num_timesteps), "train_seconds": seconds, "steps_per_s": steps_per_s,
              "resumed_from": ckpt, "leaderboard": None, "warnings": [], "interrupted": interrupted,
              "eval_warnings": list(getattr(eval_cb, "collapse_warnings", [])) if eval_cb is not None else []}

    # 8. The trained agent against the heuristics, on the scenario as published (full horizon),
    #    and a plain warning if the policy learned to shed (the usual failure of short runs).
    lb = None
    if interrupted:
        log("interrupted: no leaderboard (evaluate.py --policies name=<run dir> ranks it later)")
    elif not args.no_eval_leaderboard:
        if is_random_grid(ref):  # no one grid: the held-out generated grids
            suite = "generalization" if args.leaderboard_suite == "standard" else args.leaderboard_suite
            result["leaderboard"], lb = leaderboard(run_dir, None, args.leaderboard_seeds, suite, log)
        else:
            result["leaderboard"], lb = leaderboard(run_dir, ref.source, args.leaderboard_seeds,
                                                    args.leaderboard_suite, log)
    last_eval = getattr(eval_cb, "last_episode_metrics", None) if eval_cb is not None else None
    warning = collapse_warning(run_dir.name, lb, last_eval,
                               reference.result if eval_cb is not None else None)
    if warning:
        print(f"train.py: warning: {warning}", file=sys.stderr)
        result["warnings"].append(warning)
    summary = {**result, "resumed_from": str(ckpt.model) if ckpt else None}
    summary = {k: (str(v) if isinstance(v, Path) else v) for k, v in summary.items()}
    (run_dir / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return result


#: A policy that sheds more than this fraction of the requests has collapsed to shedding.
#: With a reference (``random`` on the same episodes), the fraction counts only the requests
#: random served: requests no site could take (masked everywhere) are shed by every policy.
COLLAPSE_SHED_FRAC = 0.5

#: What to do about a collapse (the end of every collapse warning).
COLLAPSE_HINT = ("keep the imitation warm start on (--warm-start slo-greedy, the default; "
                 "--warm-start-steps for more decisions), fine-tune the generalist "
                 "(--init-from models/generalist, for relative-mode scenarios), or train longer "
                 "(--total-timesteps); check the reward scale and --env-config")


def _shed_share(shed: float, arrived: float, ref_shed: float | None = None) -> float | None:
    """Shed share of the requests, beyond the `ref_shed` that no policy could serve."""
    base = ref_shed if ref_shed is not None and 0 <= ref_shed < arrived else 0.0
    if arrived - base <= 0:
        return None
    return max(shed - base, 0.0) / (arrived - base)


@dataclass
class EvalReference:
    """The ``random`` heuristic on the in-training evaluation's episodes (same seeds)."""

    reward_mean: float  #: $ per episode
    shed: float  #: requests shed, summed over the episodes
    arrived: float  #: requests arrived, summed over the episodes


class ReferenceOnEvalSeeds:
    """Runs ``random`` once, lazily, on the evaluation seeds (what collapse is judged against)."""

    def __init__(self, env_id: str, env_config: dict | None, seeds: list[int], policy: str = "random"):
        self.env_id, self.env_config, self.seeds, self.policy = env_id, env_config, list(seeds), policy
        self.result: EvalReference | None = None
        self.error: str | None = None

    def __call__(self) -> EvalReference | None:
        if self.result is None and self.error is None:
            try:
                self.result = reference_on_seeds(self.env_id, self.env_config, self.seeds, self.policy)
            except Exception as err:  # noqa: BLE001 - a warning aid must never stop training
                self.error = f"{type(err).__name__}: {err}"
        return self.result


def reference_on_seeds(env_id: str, env_config: dict | None, seeds: list[int],
                       policy: str = "random") -> EvalReference:
    """Mean reward and shed counts of heuristic `policy` on episodes ``reset(seed=s)``."""
    from agents.heuristics import make_heuristic

    rewards, shed, arrived = [], 0.0, 0.0
    for seed in seeds:
        env = gym.make(env_id, **_env_kwargs(env_id, env_config))
        pol = make_heuristic(policy)
        pol.reset(seed)
        obs, info = env.reset(seed=seed)
        total = 0.0
        while True:
            obs, reward, terminated, truncated, info = env.step(pol.act(obs, info["snapshot"]))
            total += float(reward)
            if terminated or truncated:
                break
        env.close()
        m = info["episode_metrics"]
        rewards.append(total)
        shed += float(m.get("shed", 0.0))
        arrived += float(m.get("arrived", 0.0))
    return EvalReference(float(np.mean(rewards)), shed, arrived)


def eval_collapse_warning(name: str, timesteps: int, metrics: list[dict], mean_reward: float,
                          reference: Callable[[], EvalReference | None] | EvalReference | None = None) -> str | None:
    """A one-line warning if an in-training evaluation shows a collapsed policy, else None.

    Collapsed: it sheds more than :data:`COLLAPSE_SHED_FRAC` of the requests (of those the
    reference served, when there is one), or earns less per episode than the reference
    (``random`` on the same evaluation seeds)."""
    ref = reference() if callable(reference) else reference
    shed = sum(float(m.get("shed", 0.0)) for m in metrics)
    arrived = sum(float(m.get("arrived", 0.0)) for m in metrics)
    share = _shed_share(shed, arrived, ref.shed if ref else None)
    where = f"{name}, evaluation at {timesteps:,} steps"
    vs = (f" (random on the same episodes: {ref.reward_mean:.3f} $, sheds {ref.shed / ref.arrived:.0%})"
          if ref is not None and ref.arrived > 0 else "")
    if share is not None and share > COLLAPSE_SHED_FRAC:
        return (f"{where}: the policy has collapsed to shedding: it sheds {shed / arrived:.0%} of the "
                f"requests and earns {mean_reward:.3f} $ per episode{vs}; {COLLAPSE_HINT}")
    if ref is not None and mean_reward < ref.reward_mean:
        return (f"{where}: the policy earns {mean_reward:.3f} $ per episode, less than the random "
                f"heuristic{vs}; {COLLAPSE_HINT}")
    return None


def collapse_warning(name: str, lb: dict | None, eval_metrics: list[dict] | None = None,
                     reference: EvalReference | None = None) -> str | None:
    """A one-line warning if the trained policy collapsed, else None.

    From the leaderboard (the run's rows, one per scenario): on some scenario it sheds more
    than :data:`COLLAPSE_SHED_FRAC` of the requests (beyond what ``random`` sheds there), or
    earns less than the ``random`` heuristic. Without a leaderboard, from the last in-training
    evaluation (beyond what `reference`, ``random`` on the same seeds, shed, when given).
    """
    hint = f"{COLLAPSE_HINT}; the model is saved either way"
    if lb is not None:
        rows = [r for r in lb["results"] if r["policy"] == name]
        rnd = {r.get("scenario"): r for r in lb["results"] if r["policy"] == "random"}
        shedding, below = [], []
        for mine in rows:
            sc = mine.get("scenario", "?")
            ref = rnd.get(mine.get("scenario"))
            shed = mine.get("shed_frac")
            ref_shed = ref.get("shed_frac") if ref else None
            if shed is not None:
                share = _shed_share(shed, 1.0, ref_shed) if ref_shed is not None else shed
                if share is not None and share > COLLAPSE_SHED_FRAC:
                    shedding.append(f"{shed:.0%} on {sc}")
                    continue
            if ref is not None and mine["reward_mean"] < ref["reward_mean"]:
                below.append(f"{sc} ({mine['reward_mean']:.3f} vs {ref['reward_mean']:.3f} $ per episode)")
        if shedding:
            return (f"the policy of {name} collapsed to shedding: it sheds {', '.join(shedding)} of "
                    f"the requests on the leaderboard; {hint}")
        if below:
            return (f"the policy of {name} earns less than the random heuristic on the leaderboard on "
                    f"{', '.join(below)}; {hint}")
        return None
    if eval_metrics:
        shed = sum(m.get("shed", 0.0) for m in eval_metrics)
        arrived = sum(m.get("arrived", 0.0) for m in eval_metrics)
        share = _shed_share(shed, arrived, reference.shed if reference else None)
        if share is not None and share > COLLAPSE_SHED_FRAC:
            return (f"the policy of {name} collapsed to shedding: it shed {shed / arrived:.0%} of the "
                    f"requests in its last evaluation; {hint}")
    return None


def leaderboard(run_dir: Path, scenario: str | None, n_seeds: int, suite: str = "standard",
                log=print, workers: int | None = None) -> tuple[Path | None, dict | None]:
    """The trained agent against every heuristic on `n_seeds` held-out seeds of `scenario`.

    Uses the first `n_seeds` seeds of `suite` (``standard``: the scenario at its full horizon,
    seeds 10000, 10001, ...: never used in training or model selection) and writes
    run_dir/leaderboard/ (leaderboard.json/.csv/.md, plots, learning curves from run_dir/tb).
    `scenario` None: every scenario of `suite` (a random-grid run: the held-out generated grids
    of ``generalization``). The agent is the run directory's model (:func:`agents.runs.resolve_model`: the best model
    of the in-training evaluation when there is one). Returns (leaderboard.json path, the
    leaderboard), or (None, None) on failure: training results are kept either way.
    """
    from agents import report
    from agents.evaluation import evaluate, get_suite, parse_policies
    from agents.heuristics import heuristic_names

    run_dir = Path(run_dir).resolve()
    out = run_dir / "leaderboard"
    workers = workers or min(2, os.cpu_count() or 1)
    try:
        s = get_suite(suite, scenarios=[scenario] if scenario is not None else None)
        s = dataclasses.replace(s, seeds=s.seeds[:n_seeds])
        log(f"leaderboard: {run_dir.name} vs heuristics on {', '.join(s.scenarios)}, seeds "
            f"{list(s.seeds)} -> {out}")
        t0 = time.perf_counter()
        lb = evaluate(s, parse_policies([*heuristic_names(), f"{run_dir.name}={resolve_model(run_dir).run_dir}"]),
                      workers=workers)
        report.write_leaderboard(lb, out)
        if (run_dir / "tb").is_dir():
            report.plot_learning_curves(run_dir / "tb", out / "learning_curves.png")
    except Exception as err:  # noqa: BLE001 - the trained model is kept whatever happens here
        print(f"train.py: leaderboard failed: {type(err).__name__}: {err}", file=sys.stderr)
        return None, None
    print(report.leaderboard_markdown(lb).split("\n## ")[0].rstrip())
    for f in lb["failures"]:
        print(f"train.py: leaderboard episode failed: {f['policy']} on {f['scenario']} seed {f['seed']}: "
              f"{f['error']}", file=sys.stderr)
    log(f"leaderboard in {time.perf_counter() - t0:.0f} s: {out}")
    return out / "leaderboard.json", lb
