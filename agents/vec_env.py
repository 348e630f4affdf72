"""Stable-Baselines3 VecEnvs over the native :class:`~gridenv.envs.vector.GridVectorEnv`.

``DummyVecEnv([Monitor(EpisodeMetricsInfo(gym.make(id)))] * n)`` steps n envs one by one, each
through three wrappers, and deep-copies every step's info dictionaries. :class:`GridVecEnv`
instead holds the n simulators in *shards* (GridVectorEnvs) that write observations and action
masks straight into rows of batched arrays:

* ``backend="native"``: one shard in this process.
* ``backend="subproc"``: ``n_workers`` worker processes, each holding a shard of about
  ``n / n_workers`` simulators: one pipe round trip per worker per step carries the whole
  shard's actions, observations, masks and rewards, so the workers use the other cores while
  the policy forward stays batched over all n envs in this process.
* ``backend="hybrid"``: as ``subproc``, but this process steps the first shard itself while
  the other ``n_workers - 1`` workers step theirs (on 2 cores: one worker; one process fewer
  competing for the cores, one pipe round trip fewer per step). A worker that raises sends
  its traceback back and :class:`VecEnvWorkerError` is raised here; a worker that dies is
  detected (``EOFError`` on its pipe, or its process gone) and reported the same way, never a
  hang. :meth:`GridVecEnv.close` (also at interpreter exit) stops the workers.

Equivalence with the DummyVecEnv path (what train.py relied on):

* seeds: ``venv.seed(s)`` then ``reset()`` seeds env i with ``s + i``; later resets continue each
  env's RNG (GridEnv's behaviour under DummyVecEnv).
* autoreset is SB3's (gymnasium's SAME_STEP): at an episode's end the returned observation is
  the next episode's first, and ``infos[i]`` holds ``terminal_observation`` (all zeros, as
  GridEnv's last observation) and ``TimeLimit.truncated = True`` (episodes are only truncated,
  so PPO bootstraps from the value there, as before).
* ``infos[i]["episode"]`` at an episode's end is what ``Monitor(info_keywords=keys)`` wrote:
  ``r`` (the summed float64 reward rounded to 6 digits), ``l``, ``t`` (s since creation), and
  each key of `info_keywords` from the env's ``episode_metrics``; with `monitor_dir`, the same
  rows go to ``<monitor_dir>/<prefix>_<i>.monitor.csv`` (one file per env, as before).
* rewards are float32 (DummyVecEnv's buffer type); ``env_method("action_masks")`` returns the
  n masks (rows of one array) for sb3-contrib's MaskablePPO (``get_action_masks`` stacks them).

Per-step infos carry nothing else (no ``action_mask``, ``rewards``, ``sim_time_s``): SB3 never
reads them and building n dictionaries per step is what made the old path slow.
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing as mp
import time
import weakref
from pathlib import Path
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.monitor import Monitor, ResultsWriter
from stable_baselines3.common.vec_env import VecEnv

import gridenv  # noqa: F401  (registers the gridenv/* ids)
from gridenv.envs.vector import GridVectorEnv, serve_shard

__all__ = ["GridVecEnv", "VecEnvWorkerError", "BACKENDS", "split_envs"]

#: ``vec_backend`` choices of the hyperparameter files (``dummy`` is SB3's DummyVecEnv path).
BACKENDS = ("dummy", "native", "subproc", "hybrid")

#: How often (s) a waiting parent checks that a silent worker is still alive.
_POLL_S = 1.0


class VecEnvWorkerError(RuntimeError):
    """A subprocess worker raised, died or could not start (the message says which and why)."""


def split_envs(n_envs: int, n_shards: int) -> list[range]:
    """Contiguous env index ranges of `n_shards` near-equal shards (the first ones get the extra)."""
    if n_shards < 1 or n_envs < n_shards:
        raise ValueError(f"cannot split {n_envs} envs over {n_shards} workers (need 1 <= workers <= envs)")
    base, extra = divmod(n_envs, n_shards)
    out, start = [], 0
    for k in range(n_shards):
        size = base + (k < extra)
        out.append(range(start, start + size))
        start += size
    return out


def shard_factory(env_id: str, config: dict | None) -> Callable[[int], GridVectorEnv]:
    """A picklable ``factory(n)`` -> SAME_STEP vector env of `n` copies of `env_id`.

    A fixed-scenario id gives ``GridVectorEnv(n, scenario, config)``; ``gridenv/RandomGrid-v1``
    gives ``RandomGridVectorEnv(n, spec=config)`` (a new generated grid at every reset; `config`
    holds RandomGridSpec fields there).
    """
    spec = gym.spec(env_id)
    if str(spec.entry_point).endswith(":RandomGridEnv"):
        from gridenv.envs.random_grid_env import RandomGridVectorEnv

        kwargs = dict(spec.kwargs or {})
        if config:
            kwargs["spec"] = config
        return functools.partial(RandomGridVectorEnv, autoreset_mode=AutoresetMode.SAME_STEP,
                                 copy=False, **kwargs)
    scenario = (spec.kwargs or {}).get("scenario")
    if scenario is None:
        raise ValueError(f"{env_id}: GridVecEnv needs a gridenv scenario id or gridenv/RandomGrid-v1 "
                         "(its spec has no 'scenario' kwarg): use vec_backend: dummy")
    return functools.partial(GridVectorEnv, scenario=scenario, config=config,
                             autoreset_mode=AutoresetMode.SAME_STEP, copy=False)


# ----------------------------------------------------------------------------- shards
class _LocalShard:
    """A GridVectorEnv in this process."""

    def __init__(self, factory, envs: range) -> None:
        self.envs = envs
        self.venv = factory(len(envs))

    def send_reset(self, seeds) -> None:
        self._seeds = seeds

    def recv_reset(self):
        for i, s in enumerate(self._seeds):
            self.venv.reset_env(i, s)
        return self.venv.observations, self.venv.action_masks

    def send_step(self, actions) -> None:
        self._actions = actions

    def recv_step(self):
        r = self.venv.step_batch(self._actions, same_step_reset=True)
        return r.obs, r.masks, r.rewards, r.truncated, [
            (e.index, e.final_obs, e.metrics, e.reward_usd, e.length) for e in r.ended
        ]

    def close(self) -> None:
        self.venv.close()


class _RemoteShard:
    """A GridVectorEnv in a worker process; one pipe round trip per command."""

    def __init__(self, ctx, factory, envs: range, k: int) -> None:
        self.envs, self.k = envs, k
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=serve_shard, args=(child, self.conn, None, None, len(envs), factory),
                                   daemon=True, name=f"gridenv-vec-worker-{k}")
        self.process.start()
        child.close()
        self._recv("start")

    def _where(self) -> str:
        return f"worker {self.k} (envs {self.envs.start}-{self.envs.stop - 1}, pid {self.process.pid})"

    def _recv(self, what: str):
        while not self.conn.poll(_POLL_S):
            if not self.process.is_alive():
                break
        try:
            status, payload = self.conn.recv()
        except (EOFError, ConnectionResetError, OSError):
            self.process.join(timeout=1.0)
            raise VecEnvWorkerError(
                f"{self._where()} died during {what} (exit code {self.process.exitcode})"
            ) from None
        if status != "ok":
            raise VecEnvWorkerError(f"{self._where()} failed during {what}:\n{payload}")
        return payload

    def _send(self, cmd: str, data: Any, what: str) -> None:
        try:
            self.conn.send((cmd, data))
        except (BrokenPipeError, ConnectionResetError, OSError):
            self.process.join(timeout=1.0)
            raise VecEnvWorkerError(
                f"{self._where()} died before {what} (exit code {self.process.exitcode})"
            ) from None

    def send_reset(self, seeds) -> None:
        self._send("reset", list(seeds), "reset")

    def recv_reset(self):
        return self._recv("reset")

    def send_step(self, actions) -> None:
        self._send("step", np.ascontiguousarray(actions), "step")

    def recv_step(self):
        return self._recv("step")

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self.conn.send(("close", None))
                if self.conn.poll(5.0):
                    self.conn.recv()
            except (BrokenPipeError, EOFError, ConnectionResetError, OSError):
                pass
            self.process.join(timeout=5.0)
            if self.process.is_alive():
                self.process.terminate()
                self.process.join(timeout=5.0)
        else:
            self.process.join(timeout=1.0)
        self.conn.close()


_OPEN: "weakref.WeakSet[GridVecEnv]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:  # no orphan workers when a script forgets close()
    for venv in list(_OPEN):
        venv.close()


# ----------------------------------------------------------------------------- the VecEnv
class GridVecEnv(VecEnv):
    """SB3 VecEnv of `n_envs` copies of a gridenv id, in-process or in worker processes.

    `backend`: ``native`` (one in-process shard), ``subproc`` (`n_workers` worker
    processes, default 2, the machine's cores here) or ``hybrid`` (`n_workers` shards, the
    first stepped in this process). `info_keywords`: end-of-episode metrics
    copied into ``info["episode"]`` (and the monitor CSVs), like ``Monitor(info_keywords=...)``.
    `monitor_dir`: write ``<monitor_prefix>_<i>.monitor.csv`` per env (appended to with
    `append_monitor`, for ``--resume``).
    """

    def __init__(
        self,
        env_id: str,
        n_envs: int,
        config: dict | None = None,
        backend: str = "native",
        n_workers: int = 2,
        info_keywords: Sequence[str] = (),
        monitor_dir: str | Path | None = None,
        monitor_prefix: str = "train",
        append_monitor: bool = False,
        start_method: str | None = None,
    ) -> None:
        if backend not in BACKENDS[1:]:
            raise ValueError(f"backend must be 'native', 'subproc' or 'hybrid', got {backend!r}")
        if n_envs < 1:
            raise ValueError(f"n_envs must be >= 1, got {n_envs}")
        self.env_id = env_id
        self.backend = backend
        factory = shard_factory(env_id, config)
        self.shards: list = []
        self._closed = False
        if backend == "native":
            self.shards = [_LocalShard(factory, range(n_envs))]
        else:
            ctx = mp.get_context(start_method or ("forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"))
            try:
                for k, envs in enumerate(split_envs(n_envs, n_workers)):
                    if backend == "hybrid" and k == 0:  # this process steps the first shard
                        self.shards.append(_LocalShard(factory, envs))
                    else:
                        self.shards.append(_RemoteShard(ctx, factory, envs, k))
            except BaseException:
                self.close()
                raise
        _OPEN.add(self)
        # Spaces from a one-env prototype in this process (cheap: no episode is generated).
        proto = factory(1)
        self.scenario = proto.scenario
        self.max_sites, self.n_levels = proto.max_sites, proto.n_levels
        self.interface = proto.interface
        super().__init__(n_envs, proto.single_observation_space, proto.single_action_space)
        self.render_mode = None
        self._obs = np.zeros((n_envs, *self.observation_space.shape), dtype=np.float32)
        self._masks = np.zeros((n_envs, self.max_sites + 1 + self.n_levels), dtype=bool)
        self._rewards = np.zeros(n_envs, dtype=np.float32)
        self._dones = np.zeros(n_envs, dtype=bool)
        self._actions: np.ndarray | None = None
        self.info_keywords = tuple(info_keywords)
        self.t_start = time.time()
        self._writers: list[ResultsWriter] | None = None
        if monitor_dir is not None:
            Path(monitor_dir).mkdir(parents=True, exist_ok=True)
            self._writers = [
                ResultsWriter(str(Path(monitor_dir) / f"{monitor_prefix}_{i}"),
                              header={"t_start": self.t_start, "env_id": env_id},
                              extra_keys=self.info_keywords, override_existing=not append_monitor)
                for i in range(n_envs)
            ]

    # ------------------------------------------------------------------ SB3 VecEnv API
    def reset(self):
        seeds = self._seeds
        for sh in self.shards:
            sh.send_reset([seeds[i] for i in sh.envs])
        for sh in self.shards:
            obs, masks = sh.recv_reset()
            self._obs[sh.envs.start:sh.envs.stop] = obs
            self._masks[sh.envs.start:sh.envs.stop] = masks
        self._reset_seeds()
        self._reset_options()
        return self._obs.copy()

    def step_async(self, actions: np.ndarray) -> None:
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs, 2):
            raise ValueError(f"actions must have shape ({self.num_envs}, 2), got {actions.shape}")
        for sh in self.shards:  # remote shards start stepping now
            sh.send_step(actions[sh.envs.start:sh.envs.stop])

    def step_wait(self):
        infos: list[dict] = [{} for _ in range(self.num_envs)]
        self._dones[:] = False
        results, error = [], None
        for sh in self.shards:  # hear from every worker, so none is left with a pending reply
            try:
                results.append((sh, sh.recv_step()))
            except VecEnvWorkerError as err:
                error = error or err
        if error is not None:
            raise error
        for sh, (obs, masks, rewards, truncated, ended) in results:
            lo, hi = sh.envs.start, sh.envs.stop
            self._obs[lo:hi] = obs
            self._masks[lo:hi] = masks
            self._rewards[lo:hi] = rewards
            self._dones[lo:hi] = truncated
            for j, final_obs, metrics, reward_usd, length in ended:
                i = lo + j
                info = infos[i]
                info["TimeLimit.truncated"] = True
                info["terminal_observation"] = final_obs
                info["episode_metrics"] = metrics
                episode = {"r": round(reward_usd, 6), "l": length, "t": round(time.time() - self.t_start, 6)}
                for key in self.info_keywords:
                    info[key] = episode[key] = float(metrics.get(key, np.nan))
                info["episode"] = episode
                if self._writers is not None:
                    self._writers[i].write_row(episode)
        return self._obs.copy(), self._rewards.copy(), self._dones.copy(), infos

    def action_masks(self) -> np.ndarray:
        """``(n_envs, mask_size)`` bool: every env's current action mask."""
        return self._masks.copy()

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list:
        idx = list(self._get_indices(indices))
        if method_name == "action_masks":
            masks = self._masks[idx] if indices is not None else self._masks.copy()
            return list(masks)  # np.stack (get_action_masks) gives the (n, mask) array back
        raise AttributeError(
            f"GridVecEnv supports env_method('action_masks') only, not {method_name!r} "
            "(use vec_backend: dummy for arbitrary env methods)"
        )

    _ATTRS = ("action_masks", "render_mode", "scenario", "max_sites", "n_levels", "interface")

    def get_attr(self, attr_name: str, indices=None) -> list:
        idx = list(self._get_indices(indices))
        if attr_name == "action_masks":
            return [self.action_masks] * len(idx)
        if attr_name == "render_mode":  # asked by VecEnv.__init__ before it is set: no rendering
            return [None] * len(idx)
        if attr_name in self._ATTRS:
            return [getattr(self, attr_name)] * len(idx)
        raise AttributeError(f"GridVecEnv has no per-env attribute {attr_name!r} (available: {self._ATTRS})")

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        raise AttributeError(f"GridVecEnv does not support set_attr({attr_name!r})")

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        # Each env reports what Monitor would (info["episode"]), and no other wrapper.
        return [issubclass(wrapper_class, Monitor)] * len(list(self._get_indices(indices)))

    def get_images(self):
        raise NotImplementedError("GridVecEnv does not render: use GridEnv")

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        for sh in self.shards:
            try:
                sh.close()
            except Exception:  # noqa: BLE001 (best effort: the others must close too)
                pass
        for w in getattr(self, "_writers", None) or []:
            w.close()
        _OPEN.discard(self)

    def worker_pids(self) -> list[int]:
        """Process ids of the subprocess workers (empty for the native backend)."""
        return [sh.process.pid for sh in self.shards if isinstance(sh, _RemoteShard)]

    def __repr__(self) -> str:
        return f"GridVecEnv({self.env_id!r}, n_envs={self.num_envs}, backend={self.backend!r}, shards={len(self.shards)})"
