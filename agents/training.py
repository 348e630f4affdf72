"""Helpers for ``train.py``: hyperparameter files, env factories, checkpoints and callbacks.

Everything here is plain Stable-Baselines3 / sb3-contrib plumbing; ``train.py`` reads top to
bottom and calls into this module for the parts that are not specific to one run.

* :func:`load_hyperparams` reads an rl-zoo3-style YAML (``default:`` + per-scenario entries).
* :func:`make_vec_env` builds ``VecNormalize(DummyVecEnv([Monitor(EpisodeMetricsInfo(env))]))``,
  or with ``vec_backend: native|subproc`` ``VecNormalize(GridVecEnv(...))`` (agents/vec_env.py).
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

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import yaml
from stable_baselines3.common.callbacks import BaseCallback, EvalCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

import gridenv  # noqa: F401  (registers the gridenv/* ids)
from gridenv.core.scenario import deep_merge
from gridenv.envs.registration import env_id as scenario_env_id

__all__ = [
    "ALGOS",
    "EPISODE_METRICS",
    "HYPERPARAM_KEYS",
    "ConfigError",
    "HyperparamError",
    "load_hyperparams",
    "resolve_scenario",
    "EpisodeMetricsInfo",
    "FixedSeedCycle",
    "make_env",
    "make_vec_env",
    "EpisodeMetricsCallback",
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
    "invalid_actions",
)

#: Keys a hyperparameter entry may hold. Anything else is a typo: :class:`HyperparamError`.
HYPERPARAM_KEYS = {
    # run settings
    "n_envs": int,
    # training envs: "dummy" (SB3 DummyVecEnv of Monitor-wrapped GridEnvs), "native" (one
    # in-process GridVectorEnv), "subproc" (vec_workers processes) or "hybrid" (vec_workers
    # shards, the first in the training process), agents/vec_env.py
    "vec_backend": str,
    "vec_workers": int,
    "total_timesteps": int,
    "normalize": dict,  # {obs: bool, reward: bool, clip_obs: float, clip_reward: float}
    "env_config": dict,  # deep-merged into the scenario YAML for the *training* envs only
    "eval_episodes": int,
    "eval_seeds_start": int,
    # PPO / MaskablePPO constructor arguments
    "n_steps": int,
    "batch_size": int,
    "n_epochs": int,
    "learning_rate": (float, int, str),  # a number, or "lin_<x>" for a linear decay from x
    "gamma": float,
    "gae_lambda": float,
    "ent_coef": float,
    "vf_coef": float,
    "clip_range": (float, str),
    "max_grad_norm": float,
    "target_kl": (float, type(None)),
    "normalize_advantage": bool,
    # policy: "mlp" (SB3's MlpPolicy, net_arch) or "site_scoring" (agents/site_policy.py: one
    # network shared by all sites scores each of them; site_hidden, critic_hidden)
    "policy": str,
    "site_hidden": list,
    "critic_hidden": list,
    # policy_kwargs
    "net_arch": (list, dict),
    "activation_fn": str,  # "tanh" | "relu"
    "ortho_init": bool,
}

_NORMALIZE_KEYS = {"obs", "reward", "clip_obs", "clip_reward"}


class ConfigError(ValueError):
    """Bad training arguments (unknown scenario or algo, unusable run directory, ...)."""


class HyperparamError(ConfigError):
    """A hyperparameter file that cannot be used (missing, bad YAML, unknown key, bad value)."""


# ----------------------------------------------------------------------------- hyperparameters
def resolve_scenario(name: str) -> tuple[str, str]:
    """``metro`` or ``gridenv/Metro-v1`` -> (``metro``, ``gridenv/Metro-v1``); ValueError if unknown."""
    from gridenv.core.scenario import scenario_names

    names = scenario_names()
    by_id = {scenario_env_id(n): n for n in names}
    if name in names:
        return name, scenario_env_id(name)
    if name in by_id:
        return by_id[name], name
    raise ConfigError(
        f"unknown scenario {name!r}: choose one of {', '.join(names)} "
        f"(or an env id: {', '.join(by_id)})"
    )


def _check_entry(entry: Any, where: str) -> dict:
    if entry is None:
        return {}
    if not isinstance(entry, dict):
        raise HyperparamError(f"{where}: expected a mapping of hyperparameters, got {type(entry).__name__}")
    for key, value in entry.items():
        if key not in HYPERPARAM_KEYS:
            raise HyperparamError(
                f"{where}: unknown hyperparameter {key!r} (allowed: {', '.join(sorted(HYPERPARAM_KEYS))})"
            )
        types = HYPERPARAM_KEYS[key]
        if isinstance(value, bool) and types in (int, float):
            raise HyperparamError(f"{where}: {key} must be a number, got {value!r}")
        if types is float and isinstance(value, int):
            continue
        if not isinstance(value, types):
            raise HyperparamError(f"{where}: {key} has the wrong type ({type(value).__name__}): {value!r}")
        if key == "normalize":
            bad = set(value) - _NORMALIZE_KEYS
            if bad:
                raise HyperparamError(
                    f"{where}: unknown normalize key(s) {sorted(bad)} (allowed: {sorted(_NORMALIZE_KEYS)})"
                )
        if isinstance(value, str) and key in ("learning_rate", "clip_range") and not re.fullmatch(r"lin_[0-9.eE+-]+", value):
            raise HyperparamError(f"{where}: {key} must be a number or 'lin_<number>', got {value!r}")
    return entry


def load_hyperparams(path: str | Path, scenario: str) -> dict:
    """The ``default:`` entry of `path`, overridden by the entry for `scenario`.

    A per-scenario entry is keyed by the scenario name (``metro``) or its env id
    (``gridenv/Metro-v1``), not both. Nested mappings (``normalize``, ``env_config``) merge key by
    key; everything else (e.g. ``net_arch``) is replaced. Every entry of the file is validated,
    so a typo in another scenario's entry is reported too.
    """
    path = Path(path)
    if not path.is_file():
        raise HyperparamError(f"hyperparameter file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise HyperparamError(f"{path}: invalid YAML: {err}") from err
    if not isinstance(data, dict) or "default" not in data:
        raise HyperparamError(f"{path}: expected a mapping with a 'default:' entry")
    from gridenv.core.scenario import scenario_names

    known = set(scenario_names()) | {scenario_env_id(n) for n in scenario_names()} | {"default"}
    for key, entry in data.items():
        if key not in known:
            raise HyperparamError(
                f"{path}: unknown entry {key!r}: entries are 'default', scenario names "
                f"({', '.join(scenario_names())}) or env ids"
            )
        _check_entry(entry, f"{path} [{key}]")
    name, eid = resolve_scenario(scenario)
    if name in data and eid in data:
        raise HyperparamError(f"{path}: both {name!r} and {eid!r} entries: keep one")
    merged = deep_merge(data["default"] or {}, data.get(name) or data.get(eid) or {})
    return merged


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
        env = gym.make(env_id, config=config or None)
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


def make_eval_callback(algo: str, eval_env: VecNormalize, **kwargs) -> EvalCallback:
    """An EvalCallback (``ppo``) or MaskableEvalCallback (``maskable_ppo``) that

    * restarts the eval env's fixed seed cycle before each evaluation, and
    * records the mean end-of-episode metrics of the evaluation episodes as ``eval/<metric>``.

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

        def _on_step(self) -> bool:
            evaluating = self.eval_freq > 0 and self.n_calls % self.eval_freq == 0
            if evaluating:
                self.eval_env.env_method("restart_seed_cycle")
                self._episode_metrics = []
            cont = super()._on_step()
            if evaluating and self._episode_metrics:
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
@dataclass(frozen=True)
class Checkpoint:
    model: Path
    vecnormalize: Path
    timesteps: int


_CKPT = re.compile(r"^(?P<prefix>.+)_(?P<steps>\d+)_steps\.zip$")


def latest_checkpoint(checkpoint_dir: str | Path) -> Checkpoint | None:
    """The newest ``<prefix>_<N>_steps.zip`` with its ``<prefix>_vecnormalize_<N>_steps.pkl``.

    Checkpoints without their statistics file are skipped (they cannot be resumed exactly).
    """
    d = Path(checkpoint_dir)
    if not d.is_dir():
        return None
    found = []
    for p in d.iterdir():
        m = _CKPT.match(p.name)
        if not m:
            continue
        pkl = d / f"{m['prefix']}_vecnormalize_{m['steps']}_steps.pkl"
        if pkl.is_file():
            found.append(Checkpoint(p, pkl, int(m["steps"])))
    return max(found, key=lambda c: c.timesteps) if found else None
